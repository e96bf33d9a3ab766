"""
Relaying across the rig's small internet, the way the shipped config does
it: MX lookups through the system resolver (resolv.conf names the rig's name
server), no ``transports``, real TCP to other hosts' addresses.

A user on a.test (mailapp on host ``a``) submits one message from their own
machine (host ``client``) through A's submission port to four domains:

- b.test: its MX is a scripted SMTP peer that answers 451 to the first
  transaction and 250 to the next (a peer rather than a mailapp, because
  mailapp has no "fail once" mode, and because the peer records every
  transaction it saw, refused ones included);
- c.test: two MX hosts; the preferred one (10) is up but has nothing on
  port 25, the other (20) is a mailapp for c.test;
- d.test: a null MX (``MX 0 .``);
- e.test: does not exist (NXDOMAIN).
"""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Callable
from email.message import EmailMessage

from tests.rig.clients import imap_messages, submit
from tests.rig.dns import mail_domain
from tests.rig.network import Internet
from tests.rig.servers import MailServer, ScriptedSMTPPeer

ALICE, ALICE_PASSWORD = "alice@a.test", "alice-secret"
BOB, CAROL, DAVE, ERIN = "bob@b.test", "carol@c.test", "dave@d.test", "erin@e.test"
CAROL_PASSWORD = "carol-secret"


def wait_for(condition: Callable[[], bool], what: str, timeout: float, report: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{report()}")


def _message() -> str:
    message = EmailMessage()
    message["From"] = ALICE
    message["To"] = ", ".join([BOB, CAROL, DAVE, ERIN])
    message["Subject"] = "one message, four domains"
    message.set_content("Hello from a.test.\n")
    return message.as_string(policy=email.policy.SMTP)


def _dsn_recipients(raw: bytes) -> dict[str, str]:
    """{final recipient: status} of a DSN, from its message/delivery-status part."""
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert parsed.get_content_type() == "multipart/report", parsed.get_content_type()
    assert parsed.get_param("report-type") == "delivery-status"
    [status_part] = [part for part in parsed.walk() if part.get_content_type() == "message/delivery-status"]
    statuses: dict[str, str] = {}
    # compat32 parses message/delivery-status as a list of header blocks: the
    # per-message fields, then one block per recipient.
    for block in status_part.get_payload()[1:]:
        statuses[block["Final-Recipient"].split(";", 1)[1].strip()] = block["Status"]
    return statuses


def test_one_message_to_four_domains_by_mx_retry_fallback_null_mx_and_nxdomain(internet: Internet) -> None:
    started = time.monotonic()
    a = internet.add_host("a", "mail.a.test")
    b = internet.add_host("b", "mx.b.test")
    c_down = internet.add_host("c-down", "mx1.c.test")
    c = internet.add_host("c", "mx2.c.test")
    client = internet.add_host("client", "client.rig.test")
    internet.dns.serve(
        {
            "a.test": mail_domain("a.test", a),
            "b.test": mail_domain("b.test", b),
            "c.test": mail_domain("c.test", (10, c_down.hostname, c_down), (20, c.hostname, c)),
            "d.test": [("d.test", "MX", 0, ".")],
        }
    )
    peer = ScriptedSMTPPeer(b, ["451 4.3.0 not now, try again later", "250 2.0.0 Ok: queued as B1"])
    peer.start()
    server_a = MailServer(a, "a.test")
    server_a.add_user(ALICE, ALICE_PASSWORD)
    server_c = MailServer(c, "c.test")
    server_c.add_user(CAROL, CAROL_PASSWORD)
    server_a.start()
    server_c.start()
    ready = time.monotonic()

    assert submit(client, a.ipv4, ALICE, ALICE_PASSWORD, [BOB, CAROL, DAVE, ERIN], _message()) == {}

    def report() -> str:
        return internet.log_report()

    wait_for(lambda: server_a.queue() == [], "A's relay queue to empty", 45, report)
    delivered = time.monotonic()

    # b.test: refused once with 451, accepted on the retry, so received exactly once.
    transactions = peer.transactions()
    assert [t["reply"][:3] for t in transactions] == ["451", "250"], transactions
    for transaction in transactions:
        assert transaction["mail_from"] == f"<{ALICE}>"
        assert transaction["rcpt_to"] == [f"<{BOB}>"]
        assert transaction["client"] in a.addresses
        assert "Subject: one message, four domains" in transaction["data"]
    assert len(peer.accepted()) == 1

    # c.test: the preferred MX is down, the second took it; Carol has it once.
    [carol_copy] = imap_messages(client, c.ipv4, CAROL, CAROL_PASSWORD)
    assert b"Subject: one message, four domains" in carol_copy
    assert b"by mx2.c.test (mailapp) with ESMTPS" in carol_copy  # A used STARTTLS
    assert b"from mail.a.test ([192.0.2." in carol_copy or b"from mail.a.test ([2001:db8::" in carol_copy

    # a.test: Alice has DSNs for d.test (null MX) and e.test (NXDOMAIN), nothing else.
    inbox = imap_messages(client, a.ipv4, ALICE, ALICE_PASSWORD)
    statuses: dict[str, str] = {}
    for message in inbox:
        assert message.startswith(b"Return-Path: <>\r\n"), message[:200]
        for recipient, status in _dsn_recipients(message).items():
            assert recipient not in statuses, f"two DSNs for {recipient}"
            statuses[recipient] = status
    assert statuses == {DAVE: "5.1.10", ERIN: "5.1.2"}
    dsns = b"".join(inbox)
    assert b"d.test does not accept mail (null MX)" in dsns
    assert b"domain e.test does not exist (NXDOMAIN)" in dsns
    assert b"Subject: one message, four domains" in dsns  # the original headers are returned
    assert server_a.queue() == []

    finished = time.monotonic()
    print(
        f"\nrig relay scenario: hosts, DNS and servers ready in {ready - started:.2f} s; "
        f"submission to an empty queue {delivered - ready:.2f} s; checks {finished - delivered:.2f} s"
    )
    assert finished - started < 60


def test_a_domain_whose_mx_has_only_an_ipv6_address_gets_its_mail_over_ipv6(internet: Internet) -> None:
    a = internet.add_host("a", "mail.a.test")
    f = internet.add_host("f", "mx.f.test")
    client = internet.add_host("client", "client.rig.test")
    internet.dns.serve(
        {
            "a.test": mail_domain("a.test", a),
            "f.test": [("f.test", "MX", 10, "mx.f.test"), ("mx.f.test", "AAAA", f.ipv6)],
        }
    )
    server_a, server_f = MailServer(a, "a.test"), MailServer(f, "f.test")
    server_a.add_user(ALICE, ALICE_PASSWORD)
    server_f.add_user("frank@f.test", "frank-secret")
    server_a.start()
    server_f.start()
    message = f"From: {ALICE}\r\nTo: frank@f.test\r\nSubject: over six\r\n\r\nHello.\r\n"
    assert submit(client, a.ipv4, ALICE, ALICE_PASSWORD, ["frank@f.test"], message) == {}
    wait_for(lambda: server_a.queue() == [], "A's relay queue to empty", 20, internet.log_report)
    [copy] = imap_messages(client, f.ipv4, "frank@f.test", "frank-secret")
    assert b"Subject: over six" in copy
    assert f"from mail.a.test ([IPv6:{a.ipv6}])".encode() in copy  # RFC 5321 4.1.3
    assert imap_messages(client, a.ipv4, ALICE, ALICE_PASSWORD) == []  # no DSN


def test_a_domain_whose_mx_is_this_server_bounces_as_a_loop_instead_of_looping(internet: Internet) -> None:
    a = internet.add_host("a", "mail.a.test")
    client = internet.add_host("client", "client.rig.test")
    # g.test is not a local domain of A, but its MX is A's address (another name for A).
    internet.dns.serve(
        {
            "a.test": mail_domain("a.test", a),
            "g.test": [("g.test", "MX", 10, "alias-of-a.g.test"), ("alias-of-a.g.test", "A", a.ipv4)],
        }
    )
    server_a = MailServer(a, "a.test")
    server_a.add_user(ALICE, ALICE_PASSWORD)
    server_a.start()
    message = f"From: {ALICE}\r\nTo: gina@g.test\r\nSubject: to myself\r\n\r\nHello.\r\n"
    assert submit(client, a.ipv4, ALICE, ALICE_PASSWORD, ["gina@g.test"], message) == {}
    wait_for(lambda: server_a.queue() == [], "A's relay queue to empty", 20, internet.log_report)
    [dsn] = imap_messages(client, a.ipv4, ALICE, ALICE_PASSWORD)
    assert _dsn_recipients(dsn) == {"gina@g.test": "5.4.6"}
    assert b"loops back to myself" in dsn
