"""
``mailapp dns --check`` fetches the MTA-STS policy file over HTTPS from a
rig host ``mta-sts.check.test`` (a certificate from the test CA): ok when
the checker trusts the CA (``[relay] tls_ca_file``) and the policy lists
the MX host; wrong when the certificate does not verify or the policy
leaves the MX out; missing when the policy host has no address.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.test_rig_outbound_tls import RigCA
from tests.rig.dns import address_records
from tests.rig.https import start_https
from tests.rig.network import Host, Internet
from tests.rig.servers import BIN

URL = "https://mta-sts.check.test/.well-known/mta-sts.txt"

#: Serves the policy file, read at each request (the test changes it).
_POLICY_HANDLER = r"""
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        policy = open(sys.argv[4], "rb").read()
        self.send_response(200 if self.path == "/.well-known/mta-sts.txt" else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(policy)))
        self.end_headers()
        self.wfile.write(policy)
"""


def _config(path: Path, host: Host, state: Path, relay: str = "") -> Path:
    path.write_text(
        '[server]\nhostname = "mail.check.test"\n'
        f"state_dir = {json.dumps(str(state))}\n"
        '[domains]\nlocal = ["check.test"]\n'
        f"[listeners.smtp]\nprotocol = \"smtp\"\nendpoint = 'tcp:25:interface={host.ipv4}'\ntls = \"none\"\n"
        f"[relay]\n{relay}\n"
    )
    return path


def _verdict(host: Host, config: Path) -> tuple[str, str]:
    """The MTA-STS policy line of ``mailapp dns --check`` (its verdict) and the whole output."""
    done = host.run([str(BIN / "mailapp"), "--config", str(config), "dns", "--check", "check.test", "--timeout", "3"], check=False)
    out = done.stdout + done.stderr
    [line] = [line for line in out.splitlines() if line.endswith(URL)]
    return line.split()[0], out


def test_dns_check_fetches_the_mta_sts_policy_and_judges_it(internet: Internet, tmp_path: Path) -> None:
    ca = RigCA()
    ca.write(tmp_path / "ca.pem")
    checker = internet.add_host("checker", "checker.rig.test")
    web = internet.add_host("web", "mta-sts.check.test")
    ca.issue("mta-sts.check.test", tmp_path / "web-cert.pem", tmp_path / "web-key.pem")
    policy = tmp_path / "mta-sts.txt"
    policy.write_text("version: STSv1\r\nmode: enforce\r\nmx: mail.check.test\r\nmax_age: 86400\r\n")
    https = start_https(web, tmp_path / "web-cert.pem", tmp_path / "web-key.pem", _POLICY_HANDLER, str(policy))
    zone = [("check.test", "MX", 10, "mail.check.test"), ("mail.check.test", "A", checker.ipv4)]
    internet.dns.serve({"check.test": zone + address_records("mta-sts.check.test", web)})
    trusting = _config(tmp_path / "trusting.toml", checker, tmp_path / "state", f"tls_ca_file = {json.dumps(str(tmp_path / 'ca.pem'))}")
    untrusting = _config(tmp_path / "untrusting.toml", checker, tmp_path / "state")

    verdict, out = _verdict(checker, trusting)
    assert verdict == "ok", out
    verdict, out = _verdict(checker, untrusting)
    assert verdict == "wrong" and "the certificate of mta-sts.check.test does not verify" in out, out

    policy.write_text("version: STSv1\r\nmode: enforce\r\nmx: other.check.test\r\nmax_age: 86400\r\n")
    verdict, out = _verdict(checker, trusting)
    assert verdict == "wrong" and "it does not list the MX host mail.check.test" in out, out
    assert "found:  version: STSv1" in out and "mx: other.check.test" in out

    internet.dns.serve({"check.test": zone})
    verdict, out = _verdict(checker, trusting)
    assert verdict == "missing" and "mta-sts.check.test has no address" in out, out
    https.stop()
