"""
Verified outbound TLS across the rig: the relay of a.test (a real mailapp,
its MX lookups and TLSA lookups through the rig's name server) sends one
message to five domains, each an MX that is a real mailapp with STARTTLS:

- ``v.test``: its MX's certificate is self-signed (does not verify); a.test
  says ``verify`` for it: refused, 4.7.5, the message waits;
- ``g.test``: its MX's certificate is from the test CA; ``verify`` too:
  delivered;
- ``o.test``: a self-signed certificate, no policy published, a.test's
  default (``opportunistic``): delivered;
- ``s.test``: the same kind of certificate, and an MTA-STS policy in
  ``enforce`` mode served over HTTPS (a certificate from the test CA) by a
  rig host ``mta-sts.s.test``: refused;
- ``e.test``: DANE-EE TLSA (SHA-256 of the SPKI) published in a zone whose
  answers carry the AD bit: its certificate matches: delivered;
- ``f.test``: the same, but the TLSA names another key: refused.

Then a message sent with REQUIRETLS to g.test (verified, but a mailapp MX,
which does not offer REQUIRETLS) comes back to its sender as a 5.7.10
bounce. The MTA-STS policy is cached in a.test's state directory. a.test trusts the test CA (``tls_ca_file``) and the rig's AD bit
(``dnssec_ad_trust = "any"``: the rig's name server is not on loopback).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.e2e.test_rig_relay import wait_for
from tests.rig.clients import imap_messages, submit
from tests.rig.dns import address_records, mail_domain
from tests.rig.network import PYTHON, Internet
from tests.rig.servers import MailServer

ALICE, PASSWORD = "alice@a.test", "alice-secret"
DOMAINS = ("v.test", "g.test", "o.test", "s.test", "e.test", "f.test")

_SUBMIT_REQUIRETLS = r"""
import json, smtplib, ssl, sys
a = json.loads(sys.argv[1])
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE   # a.test's own certificate is self-signed
with smtplib.SMTP(a["address"], 587, timeout=20) as client:
    client.ehlo()
    before = client.has_extn("requiretls")
    client.starttls(context=context)
    client.ehlo()
    after = client.has_extn("requiretls")
    client.login(a["user"], a["password"])
    client.sendmail(a["user"], [a["recipient"]], a["message"].encode(), mail_options=["REQUIRETLS"])
print(json.dumps({"before": before, "after": after}))
"""

_HTTPS = r"""
import http.server, ssl, sys
policy = open(sys.argv[3], "rb").read()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/.well-known/mta-sts.txt":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(policy)))
        self.end_headers()
        self.wfile.write(policy)

server = http.server.HTTPServer((sys.argv[4], 443), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"""


class RigCA:
    """A small CA made for the test, and the leaf certificates it issues."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailapp rig test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.name = name
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, hostname: str, cert_path: Path, key_path: Path) -> ec.EllipticCurvePrivateKey:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        write_pair(cert_path, key_path, leaf, key)
        return key

    def write(self, path: Path) -> None:
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))


def write_pair(cert_path: Path, key_path: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)


def spki_sha256(key: ec.EllipticCurvePrivateKey) -> str:
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _states(server: MailServer) -> dict[str, tuple[str, str]]:
    """{recipient: (state, last reply)} of every queue entry of C{server}."""
    states = {}
    for entry in server.queue():
        for recipient in entry["recipients"]:
            states[recipient["address"]] = (recipient["state"], recipient["last_reply"])
    return states


def _delivered(server: MailServer) -> set[str]:
    log = server.log(200000)
    return {line.split("to=<", 1)[1].split(">", 1)[0] for line in log.splitlines() if "relay delivered" in line and "to=<" in line}


def test_outbound_tls_policies_verify_mta_sts_enforce_dane_and_opportunistic(internet: Internet, tmp_path: Path) -> None:
    ca = RigCA()
    ca_path = tmp_path / "ca.pem"
    ca.write(ca_path)
    a = internet.add_host("a", "mail.a.test")
    peers = {domain: internet.add_host(domain.split(".")[0], f"mx.{domain}") for domain in DOMAINS}
    web = internet.add_host("web", "mta-sts.s.test")
    client = internet.add_host("client", "client.rig.test")

    servers = {}
    for domain, host in peers.items():
        server = MailServer(host, domain)
        server.add_user(f"bob@{domain}", "bob-secret")
        servers[domain] = server
    # e.test's MX has a key of its own, pinned by DANE-EE; f.test's TLSA pins another key.
    e_tls = servers["e.test"].state_dir / "tls"
    e_key = ca.issue("mx.e.test", e_tls / "cert.pem", e_tls / "key.pem")
    other_key = ec.generate_private_key(ec.SECP256R1())
    g_tls = servers["g.test"].state_dir / "tls"
    ca.issue("mx.g.test", g_tls / "cert.pem", g_tls / "key.pem")

    policy = tmp_path / "mta-sts.txt"
    policy.write_text("version: STSv1\r\nmode: enforce\r\nmx: mx.s.test\r\nmax_age: 86400\r\n", encoding="utf-8")
    ca.issue("mta-sts.s.test", tmp_path / "web-cert.pem", tmp_path / "web-key.pem")

    zones: dict[str, list[Any]] = {"a.test": mail_domain("a.test", a)}
    for domain, host in peers.items():
        zones[domain] = mail_domain(domain, host)
    zones["s.test"] += [*address_records("mta-sts.s.test", web), ("_mta-sts.s.test", "TXT", "v=STSv1; id=20261201")]
    zones["e.test"].append(("_25._tcp.mx.e.test", "TLSA", 3, 1, 1, spki_sha256(e_key)))
    zones["f.test"].append(("_25._tcp.mx.f.test", "TLSA", 3, 1, 1, spki_sha256(other_key)))
    internet.dns.serve(zones, secure=["e.test", "f.test"])

    https = web.popen(
        [PYTHON, "-c", _HTTPS, str(tmp_path / "web-cert.pem"), str(tmp_path / "web-key.pem"), str(policy), web.ipv4],
        "https.log",
        stdout_pipe=True,
    )
    https.wait_line("ready")

    sender = MailServer(
        a,
        "a.test",
        relay=f'tls_ca_file = {json.dumps(str(ca_path))}\ndnssec_ad_trust = "any"\n',
        extra='[relay.tls_policies]\n"v.test" = "verify"\n"g.test" = "verify"\n',
    )
    sender.add_user(ALICE, PASSWORD)
    for server in [*servers.values(), sender]:
        server.start()

    recipients = [f"bob@{domain}" for domain in DOMAINS]
    message = f"From: {ALICE}\r\nTo: {', '.join(recipients)}\r\nSubject: TLS policies\r\n\r\nHello.\r\n"
    assert submit(client, a.ipv4, ALICE, PASSWORD, recipients, message) == {}

    def report() -> str:
        return sender.log(8000)

    wait_for(lambda: {"bob@g.test", "bob@o.test", "bob@e.test"} <= _delivered(sender), "delivery to g.test, o.test and e.test", 30, report)

    def refused() -> bool:
        states = _states(sender)
        return all(
            states.get(f"bob@{d}", ("", ""))[0] == "pending" and "4.7.5" in states[f"bob@{d}"][1]
            for d in ("v.test", "s.test", "f.test")
        )

    wait_for(refused, "4.7.5 for v.test, s.test and f.test", 30, report)
    states = _states(sender)
    assert "verify policy" in states["bob@v.test"][1] and "certificate" in states["bob@v.test"][1]
    assert "sts policy" in states["bob@s.test"][1]
    assert "dane policy" in states["bob@f.test"][1] and "TLSA" in states["bob@f.test"][1]
    delivered = _delivered(sender)
    assert not delivered & {"bob@v.test", "bob@s.test", "bob@f.test"}
    # TLS-RPT: the failures are on record for the policy domains.
    day = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    lines = [json.loads(line) for line in (sender.state_dir / "tls-rpt" / f"{day}.jsonl").read_text().splitlines()]
    seen = {(line["policy_domain"], line["result_type"]) for line in lines}
    assert ("e.test", None) in seen
    assert ("f.test", "validation-failure") in seen
    assert ("s.test", "certificate-not-trusted") in seen
    cached = json.loads((sender.state_dir / "mta-sts" / "s.test.json").read_text())
    assert (cached["id"], cached["mode"], cached["mx"]) == ("20261201", "enforce", ["mx.s.test"])

    secret = f"From: {ALICE}\r\nTo: bob@g.test\r\nSubject: only over TLS\r\n\r\nSecret.\r\n"
    offered = client.python(_SUBMIT_REQUIRETLS, {"address": a.ipv4, "user": ALICE, "password": PASSWORD, "recipient": "bob@g.test", "message": secret})
    assert offered == {"before": False, "after": True}  # REQUIRETLS is offered only inside TLS

    def bounced() -> bool:
        return any(b"5.7.10" in message for message in imap_messages(client, a.ipv4, ALICE, PASSWORD))

    wait_for(bounced, "the 5.7.10 bounce of the REQUIRETLS message", 30, report)
    received = imap_messages(client, peers["g.test"].ipv4, "bob@g.test", "bob-secret")
    assert any(b"Subject: TLS policies" in m for m in received) and not any(b"only over TLS" in m for m in received)
    https.stop()
