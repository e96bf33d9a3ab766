"""
DKIM signatures made by mailapp, checked by verifiers nobody here wrote,
against keys published in the rig's real name server:

- a message signed by L{mailapp.dkim.signing}, one signature at a time,
  verifies with dkimpy's ``dkimverify`` command and OpenDKIM's
  ``opendkim-testmsg`` (Debian's opendkim-tools);
- a user on A submits to a user on B: B's stored copy carries the two
  signatures, which verify against A's published keys;
- ``mailapp dns --check`` against a zone with some records right, one
  missing and one wrong.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mailapp.dkim.keys import KeyStore, SigningKeys
from mailapp.dkim.signing import sign_one
from tests import needs
from tests.rig.clients import imap_messages, submit
from tests.rig.dns import mail_domain
from tests.rig.network import Host, Internet
from tests.rig.servers import BIN, MailServer
from tests.rig.dns import txt_records

MESSAGE = (
    b"From: Alice <alice@a.test>\r\n"
    b"To: Bob <bob@b.test>\r\n"
    b"Subject: signed by mailapp\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <signed.1@a.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n" + b"A line of the body, long enough to be folded by nobody.\r\n" * 60
)


@pytest.fixture(scope="module")
def a_keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    store = KeyStore(tmp_path_factory.mktemp("a-state"))
    store.generate("a.test", "rig")
    keys = store.signing_keys("a.test")
    assert keys is not None
    return keys


@pytest.fixture(scope="module")
def verifier(module_internet: Internet, a_keys: SigningKeys) -> Host:
    host = module_internet.add_host("verifier", "verifier.rig.test")
    module_internet.dns.serve({"a.test": txt_records(a_keys)})
    return host


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_dkimverify_accepts_each_signature(verifier: Host, a_keys: SigningKeys, algorithm: str) -> None:
    [key] = [key for key in a_keys.keys if key.algorithm == algorithm]
    signed = sign_one(MESSAGE, key) + MESSAGE
    done = verifier.run([str(BIN / "dkimverify")], input=signed.decode("ascii"), check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "signature ok"), done.stderr
    tampered = signed.replace(b"Subject: signed by mailapp", b"Subject: signed by someone")
    done = verifier.run([str(BIN / "dkimverify")], input=tampered.decode("ascii"), check=False)
    assert done.returncode == 1


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_opendkim_accepts_each_signature(verifier: Host, a_keys: SigningKeys, algorithm: str) -> None:
    testmsg = needs.command("opendkim-testmsg")
    [key] = [key for key in a_keys.keys if key.algorithm == algorithm]
    signed = sign_one(MESSAGE, key) + MESSAGE
    done = verifier.run([testmsg], input=signed.decode("ascii"), check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    tampered = signed.replace(b"signed.1@a.test", b"signed.2@a.test")
    done = verifier.run([testmsg], input=tampered.decode("ascii"), check=False)
    assert done.returncode != 0


def test_submitted_mail_reaches_another_server_with_two_signatures_that_verify(module_internet: Internet, verifier: Host) -> None:
    internet = module_internet
    a = internet.add_host("a", "mail.a.test")
    b = internet.add_host("b", "mx.b.test")
    server_a = MailServer(a, "a.test")
    server_b = MailServer(b, "b.test")
    server_a.mailapp("dkim", "keygen", "a.test", "--selector", "first")
    published = json.loads(server_a.mailapp("--json", "dkim", "list", "a.test").stdout)
    internet.dns.serve(
        {"a.test": mail_domain("a.test", a) + txt_records(published), "b.test": mail_domain("b.test", b)}
    )
    server_a.add_user("alice@a.test", "alice-secret")
    server_b.add_user("bob@b.test", "bob-secret")
    server_a.start()
    server_b.start()
    message = MESSAGE.decode("ascii").replace("<signed.1@a.test>", "<rig.1@a.test>")
    assert submit(verifier, a.ipv4, "alice@a.test", "alice-secret", ["bob@b.test"], message) == {}
    deadline = time.monotonic() + 30
    while not (stored := imap_messages(verifier, b.ipv4, "bob@b.test", "bob-secret")) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert stored, server_a.log() + server_b.log()
    [copy] = stored
    head = copy.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    signatures = [line for line in head.split(b"\r\n") if line.lower().startswith(b"dkim-signature:")]
    assert len(signatures) == 2
    assert b"a=rsa-sha256" in signatures[0] and b"s=first-rsa;" in signatures[0]
    assert b"a=ed25519-sha256" in signatures[1] and b"s=first-ed25519;" in signatures[1]
    for signature in signatures:
        assert b"c=relaxed/relaxed" in signature and b" t=" in signature
        assert b"h=from : to : subject : date : message-id : mime-version : content-type : from : to :" in signature
    # dkimpy with its own DNS (dnspython over resolv.conf: the rig's name server).
    results = verifier.python(
        "import base64, json, sys, dkim\n"
        "message = base64.b64decode(json.loads(sys.argv[1]))\n"
        "print(json.dumps([bool(dkim.DKIM(message).verify(idx=i)) for i in (0, 1)]))\n",
        __import__("base64").b64encode(copy).decode("ascii"),
    )
    assert results == [True, True]
    # Signed in the signing process (the default), not in the server's threads.
    assert "dkim.signer_started" in server_a.log(tail=1_000_000)


def test_dns_check_says_which_records_are_right_missing_and_wrong(module_internet: Internet, verifier: Host, tmp_path: Path) -> None:
    config = tmp_path / "check.toml"
    config.write_text(
        '[server]\nhostname = "mail.check.test"\n'
        f"state_dir = {json.dumps(str(tmp_path / 'state'))}\n"
        '[domains]\nlocal = ["check.test"]\n'
        f"[listeners.smtp]\nprotocol = \"smtp\"\nendpoint = 'tcp:25:interface={verifier.ipv4}'\ntls = \"none\"\n"
        '[listeners.submission]\nprotocol = "submission"\nendpoint = "tcp:587"\ntls = "starttls"\n'
        '[listeners.imaps]\nprotocol = "imap"\nendpoint = "tcp:993"\ntls = "implicit"\n'
        "[tls]\ngenerate_self_signed = true\n"
    )

    def mailapp(*args: str) -> tuple[int, str]:
        done = verifier.run([str(BIN / "mailapp"), "--config", str(config), *args], check=False)
        return done.returncode, done.stdout + done.stderr

    assert mailapp("dkim", "keygen", "check.test", "--selector", "k")[0] == 0
    records = json.loads(mailapp("--json", "dns", "check.test")[1])["records"]
    by_kind: dict[str, list[dict[str, str]]] = {}
    for record in records:
        by_kind.setdefault(record["kind"], []).append(record)
    zone: list[tuple[object, ...]] = [("check.test", "MX", 10, "mail.check.test"), ("mail.check.test", "A", verifier.ipv4)]
    zone.append(("check.test", "TXT", "v=spf1 mx ~all"))  # another valid SPF: ok
    rsa, ed = by_kind["dkim"]
    zone += txt_records([{"record_name": rsa["name"], "record": rsa["value"]}])
    # The Ed25519 record has some other key: wrong.
    zone.append((ed["name"], "TXT", "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="))
    # No _dmarc record: missing.
    zone += [(r["name"], "TXT", r["value"]) for kind in ("mta-sts", "tls-rpt") for r in by_kind[kind]]
    zone += [(r["name"], "SRV", *r["value"].split()) for r in by_kind["srv"]]
    module_internet.dns.serve({"check.test": zone})
    status, out = mailapp("dns", "--check", "check.test", "--timeout", "3")
    assert status == 1, out
    verdicts = {tuple(line.split()[:3]) for line in out.splitlines() if line and not line.startswith(" ")}
    assert ("ok", "MX", "check.test") in verdicts
    assert ("ok", "A", "mail.check.test") in verdicts
    assert ("ok", "TXT", "check.test") in verdicts
    assert ("ok", "TXT", rsa["name"]) in verdicts
    assert ("wrong", "TXT", ed["name"]) in verdicts
    assert ("missing", "TXT", "_dmarc.check.test") in verdicts
    assert ("ok", "TXT", "_mta-sts.check.test") in verdicts
    assert ("ok", "SRV", "_submission._tcp.check.test") in verdicts
    assert "found:  v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=" in out
    assert ("missing", "URL", "https://mta-sts.check.test/.well-known/mta-sts.txt") in verdicts  # no policy host
    assert "9 of 12 records ok" in out
