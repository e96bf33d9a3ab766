"""
In the rig: two mailapp servers whose aliases forward to each other
(x@a.test -> y@b.test -> x@a.test), and a third, c.test, whose user starts
the loop. Forwarded copies leave from SRS addresses; the hop limit stops
the loop (554 5.4.6); the one DSN travels back along the SRS chain to the
original sender, who gets exactly one.
"""

from __future__ import annotations

import email
import email.policy
import re
import time

from tests.rig.clients import imap_messages, submit
from tests.rig.dns import mail_domain
from tests.rig.network import Internet
from tests.rig.servers import MailServer
from tests.e2e.test_rig_relay import wait_for

CAROL, CAROL_PASSWORD = "carol@c.test", "carol-secret"


def test_two_servers_forwarding_to_each_other_stop_at_the_hop_limit_and_the_sender_gets_one_dsn(internet: Internet) -> None:
    started = time.monotonic()
    a = internet.add_host("a", "mail.a.test")
    b = internet.add_host("b", "mail.b.test")
    c = internet.add_host("c", "mail.c.test")
    client = internet.add_host("client", "client.rig.test")
    internet.dns.serve({d: mail_domain(d, host) for d, host in (("a.test", a), ("b.test", b), ("c.test", c))})
    servers = {}
    for domain, host in (("a.test", a), ("b.test", b), ("c.test", c)):
        servers[domain] = MailServer(host, domain, relay="retry_schedule = [1]\nforward_burst = 100\n")
    servers["a.test"].mailapp("alias", "add", "x@a.test", "y@b.test")
    servers["b.test"].mailapp("alias", "add", "y@b.test", "x@a.test")
    servers["c.test"].add_user(CAROL, CAROL_PASSWORD)
    for server in servers.values():
        server.start()

    def report() -> str:
        return internet.log_report()

    assert submit(client, c.ipv4, CAROL, CAROL_PASSWORD, ["x@a.test"], "Subject: round and round\r\n\r\nhi\r\n") == {}

    def dsns() -> list[bytes]:
        return [m for m in imap_messages(client, c.ipv4, CAROL, CAROL_PASSWORD) if b"multipart/report" in m]

    wait_for(lambda: len(dsns()) >= 1, "the DSN to reach carol", 90, report)
    wait_for(lambda: all(s.queue() == [] for s in servers.values()), "every queue to empty", 30, report)
    looped = time.monotonic()
    time.sleep(3)  # time for a second DSN, if there were one
    [dsn] = dsns()
    parsed = email.message_from_bytes(dsn, policy=email.policy.compat32)
    # Its To: is the SRS address the looping copy was sent from, which led back to carol.
    assert "=c.test=carol@" in parsed["To"], parsed["To"]
    text = dsn.decode("utf-8", "replace")
    assert "5.4.6" in text
    # The DSN names the SRS address it was about, not carol's: the copy in the loop never carried her address as its sender.
    assert re.search(r"Final-Recipient: rfc822;\s*x@a\.test|Final-Recipient: rfc822;\s*y@b\.test", text), text
    hops = [len(re.findall(rb"^Received:", m, re.M)) for m in [dsn]]
    print(f"loop: started to DSN {looped - started:.1f} s; the returned headers carry {hops[0]} Received: fields")
    logs = "".join(s.log(200_000) for s in servers.values())
    assert "SRS0=" in logs or "SRS1=" in logs, "forwarded copies left from SRS addresses"
