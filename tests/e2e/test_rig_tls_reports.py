"""
TLS-RPT reports sent across the rig (RFC 8460 3, 5): a.test (a real
mailapp) relays a message to b.test, whose MX is pinned by DANE (TLSA in a
zone whose answers carry the AD bit), so the session is on record for
b.test's report. b.test publishes ``_smtp._tls`` with two destinations:

- ``mailto:tlsrpt@d.test``: d.test is another real mailapp; the report
  arrives in that mailbox as a ``multipart/report; report-type=tlsrpt``
  with the gzipped JSON, DKIM-signed by a.test (the Router's signer), and
  the signature verifies with dkimpy against a.test's published keys;
- ``https://reports.b.test/tlsrpt``: a rig host serving HTTPS (a certificate
  from the test CA, which a.test trusts) receives the POST.

A day is not waited for: the day's lines are renamed to yesterday's and
a.test is restarted, which runs the daily check at once (as after any
restart). A restart after that sends nothing again.
"""

from __future__ import annotations

import base64
import datetime
import email
import email.policy
import gzip
import json
import time
from pathlib import Path

from tests.e2e.test_rig_outbound_tls import RigCA, spki_sha256
from tests.e2e.test_rig_relay import wait_for
from tests.rig.clients import imap_messages, submit
from tests.rig.dns import address_records, mail_domain, txt_records
from tests.rig.https import start_https
from tests.rig.network import Internet
from tests.rig.servers import MailServer

_RECEIVER = r"""
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[4], "a") as out:
            out.write(json.dumps({"path": self.path, "type": self.headers["Content-Type"], "body": body.hex()}) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
"""


def test_a_days_tls_report_is_mailed_dkim_signed_and_posted_once(internet: Internet, tmp_path: Path) -> None:
    ca = RigCA()
    ca_path = tmp_path / "ca.pem"
    ca.write(ca_path)
    a = internet.add_host("a", "mail.a.test")
    b = internet.add_host("b", "mx.b.test")
    d = internet.add_host("d", "mx.d.test")
    web = internet.add_host("web", "reports.b.test")
    client = internet.add_host("client", "client.rig.test")

    sender = MailServer(a, "a.test", relay=f'tls_ca_file = {json.dumps(str(ca_path))}\ndnssec_ad_trust = "any"\n')
    server_b = MailServer(b, "b.test")
    server_d = MailServer(d, "d.test")
    b_tls = server_b.state_dir / "tls"
    b_key = ca.issue("mx.b.test", b_tls / "cert.pem", b_tls / "key.pem")
    ca.issue("reports.b.test", tmp_path / "web-cert.pem", tmp_path / "web-key.pem")
    sender.mailapp("dkim", "keygen", "a.test", "--selector", "rpt")
    published = json.loads(sender.mailapp("--json", "dkim", "list", "a.test").stdout)
    internet.dns.serve(
        {
            "a.test": mail_domain("a.test", a) + txt_records(published),
            "b.test": mail_domain("b.test", b)
            + address_records("reports.b.test", web)
            + [
                ("_25._tcp.mx.b.test", "TLSA", 3, 1, 1, spki_sha256(b_key)),
                ("_smtp._tls.b.test", "TXT", "v=TLSRPTv1; rua=mailto:tlsrpt@d.test,https://reports.b.test/tlsrpt"),
            ],
            "d.test": mail_domain("d.test", d),
        },
        secure=["b.test"],
    )
    posts = tmp_path / "posts.jsonl"
    https = start_https(web, tmp_path / "web-cert.pem", tmp_path / "web-key.pem", _RECEIVER, str(posts))
    sender.add_user("alice@a.test", "alice-secret")
    server_b.add_user("bob@b.test", "bob-secret")
    server_d.add_user("tlsrpt@d.test", "report-secret")
    for server in (server_b, server_d, sender):
        server.start()

    def report() -> str:
        return sender.log(8000) + server_d.log(3000)

    message = "From: alice@a.test\r\nTo: bob@b.test\r\nSubject: one session\r\n\r\nHello.\r\n"
    assert submit(client, a.ipv4, "alice@a.test", "alice-secret", ["bob@b.test"], message) == {}
    reports = sender.state_dir / "tls-rpt"
    today = datetime.datetime.now(datetime.UTC)
    lines = reports / f"{today:%Y-%m-%d}.jsonl"
    wait_for(lines.exists, "the session's TLS-RPT line", 30, report)
    wait_for(lambda: bool(imap_messages(client, b.ipv4, "bob@b.test", "bob-secret")), "delivery to b.test", 30, report)

    # A day later: the day's lines are yesterday's; a restart runs the daily check at once.
    sender.stop()
    yesterday = today - datetime.timedelta(days=1)
    lines.rename(reports / f"{yesterday:%Y-%m-%d}.jsonl")
    sender.start()

    def mailed() -> list[bytes]:
        return imap_messages(client, d.ipv4, "tlsrpt@d.test", "report-secret")

    wait_for(lambda: bool(mailed()), "the report in tlsrpt@d.test", 30, report)
    wait_for(posts.exists, "the report's POST", 30, report)
    [copy] = mailed()
    parsed = email.message_from_bytes(copy, policy=email.policy.default)
    assert parsed["TLS-Report-Domain"] == "b.test"
    assert parsed["TLS-Report-Submitter"] == "mail.a.test"
    assert parsed["From"] == "postmaster@a.test"
    assert str(parsed["Subject"]).startswith("Report Domain: b.test Submitter: mail.a.test Report-ID: <")
    assert parsed.get_content_type() == "multipart/report" and parsed.get_param("report-type") == "tlsrpt"
    [_, attachment] = parsed.iter_parts()
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    mailed_report = json.loads(gzip.decompress(attachment.get_payload(decode=True)))
    [policy] = mailed_report["policies"]
    assert policy["policy"]["policy-type"] == "tlsa" and policy["policy"]["policy-domain"] == "b.test"
    assert policy["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 0}
    # dkimpy with its own DNS (the rig's name server): a.test's signatures verify.
    head = copy.split(b"\r\n\r\n", 1)[0]
    assert sum(line.lower().startswith(b"dkim-signature:") for line in head.split(b"\r\n")) == 2
    verified = client.python(
        "import base64, json, sys, dkim\n"
        "message = base64.b64decode(json.loads(sys.argv[1]))\n"
        "print(json.dumps([bool(dkim.DKIM(message).verify(idx=i)) for i in (0, 1)]))\n",
        base64.b64encode(copy).decode("ascii"),
    )
    assert verified == [True, True]

    [post] = [json.loads(line) for line in posts.read_text().splitlines()]
    assert (post["path"], post["type"]) == ("/tlsrpt", "application/tlsrpt+gzip")
    assert json.loads(gzip.decompress(bytes.fromhex(post["body"]))) == mailed_report

    # Once per report: another restart sends nothing again.
    sender.stop()
    sender.start()
    time.sleep(2)  # the check at start-up has run by then (it reads two small files)
    sent = json.loads(next((reports / "reports").glob("*.sent")).read_text())
    assert sent["-"] == "sent"
    sender.stop()
    assert len(mailed()) == 1 and len(posts.read_text().splitlines()) == 1
    https.stop()
