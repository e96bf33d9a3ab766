"""
In the rig: ARC on forwarded mail, end to end. alice on A writes to
x@b.test, an alias on B that forwards to bob on D. B seals the copy it
forwards with b.test's key (published in the rig's DNS); D stores it, and
an independent verifier (dkimpy's arc_verify, its DNS through dnspython
and the rig's name server) finds the chain cv=pass, sealed by b.test.
"""

from __future__ import annotations

import base64
import json

from tests.rig.clients import imap_messages, submit
from tests.rig.dns import mail_domain, txt_records
from tests.rig.network import Internet
from tests.rig.servers import MailServer
from tests.e2e.test_rig_relay import wait_for

ALICE, ALICE_PASSWORD = "alice@a.test", "alice-secret"
BOB, BOB_PASSWORD = "bob@d.test", "bob-secret"

# Runs in the client host: dkimpy's own DNS (dnspython, the host's resolv.conf: the rig's server).
_VERIFY = r"""
import base64, json, sys
import dkim
message = base64.b64decode(json.loads(sys.argv[1]))
cv, sets, reason = dkim.arc_verify(message)
print(json.dumps({
    "cv": cv.decode() if cv else None,
    "reason": reason,
    "sets": [{"i": s["instance"], "d": s["as-domain"].decode(), "aar": s["aar-value"].decode()} for s in sets],
}))
"""


def test_mail_an_alias_on_b_forwards_to_d_arrives_with_an_arc_chain_that_passes(internet: Internet) -> None:
    a = internet.add_host("a", "mail.a.test")
    b = internet.add_host("b", "mail.b.test")
    d = internet.add_host("d", "mail.d.test")
    client = internet.add_host("client", "client.rig.test")
    servers = {domain: MailServer(host, domain) for domain, host in (("a.test", a), ("b.test", b), ("d.test", d))}
    # B seals with its own DKIM key, made and published the way an admin does it.
    servers["b.test"].mailapp("dkim", "keygen", "b.test", "--selector", "arc")
    published = json.loads(servers["b.test"].mailapp("--json", "dkim", "list", "b.test").stdout)
    zones = {domain: mail_domain(domain, host) for domain, host in (("a.test", a), ("b.test", b), ("d.test", d))}
    zones["b.test"] += txt_records(published)
    internet.dns.serve(zones)
    servers["a.test"].add_user(ALICE, ALICE_PASSWORD)
    servers["b.test"].mailapp("alias", "add", "x@b.test", BOB)
    servers["d.test"].add_user(BOB, BOB_PASSWORD)
    for server in servers.values():
        server.start()

    message = "From: Alice <alice@a.test>\r\nTo: x@b.test\r\nSubject: via b\r\nMessage-ID: <arc-rig@a.test>\r\n\r\nHello, Bob.\r\n"
    assert submit(client, a.ipv4, ALICE, ALICE_PASSWORD, ["x@b.test"], message) == {}

    def inbox() -> list[bytes]:
        return imap_messages(client, d.ipv4, BOB, BOB_PASSWORD)

    wait_for(lambda: len(inbox()) == 1, "the forwarded copy to reach bob on D", 60, internet.log_report)
    [stored] = inbox()
    assert b"ARC-Seal:" in stored and b"Hello, Bob." in stored
    verdict = client.python(_VERIFY, base64.b64encode(stored).decode())
    assert verdict["cv"] == "pass", verdict
    [sealed] = verdict["sets"]
    assert (sealed["i"], sealed["d"]) == (1, "b.test")
    assert "mail.b.test" in sealed["aar"] and "arc=none" in sealed["aar"]
    assert "arc.sealed" in servers["b.test"].log(200_000)
