"""
NOTIFY (RFC 5465) end to end: the real service in a subprocess, mail sent
with smtplib through the SMTP listener (the Router's delivery into the
store), and imaplib as the client, which never IDLEs here: what NOTIFY
watches comes as unsolicited responses between commands.
"""

from __future__ import annotations

import imaplib
import time

from tests.imap_helpers import account_per_test, deliver, login, message, module_server

#: How long a test waits for a notification to arrive (it comes within milliseconds).
WAIT = 10.0

server = module_server("imap-notify-e2e")
user = account_per_test()


def notify(client: imaplib.IMAP4, arguments: str) -> list[bytes]:
    """Send NOTIFY (imaplib's way for an extension the server announces) and return the STATUS responses before its OK."""
    # xatom would register the command for the state of its first use only; NOTIFY is valid in both.
    imaplib.Commands.setdefault("NOTIFY", ("AUTH", "SELECTED"))
    typ, data = client.xatom("NOTIFY", arguments)
    assert typ == "OK", (typ, data)
    return list(client.untagged_responses.pop("STATUS", []))


def unsolicited_until(client: imaplib.IMAP4, wanted: bytes) -> list[bytes]:
    """Read the lines the server sends on its own, with no command in flight, until one starts with C{wanted}."""
    lines = []
    deadline = time.monotonic() + WAIT
    client.sock.settimeout(WAIT)
    while time.monotonic() < deadline:
        line = client.readline()
        assert line, "connection closed"
        lines.append(line)
        if line.startswith(wanted):
            return lines
    raise AssertionError(f"no {wanted!r} in {lines!r}")


def test_smtp_delivery_to_a_watched_inbox_is_told_as_status_while_another_folder_is_selected(server, user):
    a = login(server, user)
    assert "NOTIFY" in a.capabilities
    assert a.select("Drafts")[0] == "OK"
    notify(a, "SET (INBOXES (MessageNew MessageExpunge))")
    started = time.monotonic()
    deliver(server, user, message("notified"))
    lines = unsolicited_until(a, b"* STATUS ")
    elapsed = time.monotonic() - started
    assert lines[-1].startswith(b'* STATUS "INBOX" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY '), lines
    assert lines[-1].rstrip().endswith(b" UNSEEN 1)"), lines
    assert elapsed < 2.0, elapsed
    # The session goes on as before: Drafts is still selected, and the next command is answered.
    assert a.noop()[0] == "OK"
    assert a.status("INBOX", "(MESSAGES)")[1] == [b'"INBOX" (MESSAGES 1)']
    a.logout()


def test_notify_set_status_lists_the_watched_mailboxes_before_its_ok(server, user):
    deliver(server, user, message("before"))
    a = login(server, user)
    a.select("Drafts")
    data = notify(a, "SET STATUS (PERSONAL (MessageNew MessageExpunge))")
    statuses = sorted(d.split(b'"')[1] for d in data)
    assert statuses == [b"Archive", b"INBOX", b"Junk", b"Sent", b"Trash"], data
    a.logout()


def test_new_mail_in_the_selected_inbox_is_pushed_with_its_fetch_atts_without_idle(server, user):
    a = login(server, user)
    a.select("INBOX")
    notify(a, "SET (SELECTED (MessageNew (UID RFC822.SIZE) MessageExpunge))")
    deliver(server, user, message("selected"))
    lines = unsolicited_until(a, b"* 1 FETCH ")
    assert b"* 1 EXISTS\r\n" in lines, lines
    assert lines[-1].startswith(b"* 1 FETCH (UID 1 RFC822.SIZE "), lines
    a.logout()


def test_a_folder_another_client_creates_is_told_as_list(server, user):
    a = login(server, user)
    notify(a, "SET (PERSONAL (MailboxName SubscriptionChange))")
    b = login(server, user)
    assert b.create("Projects")[0] == "OK"
    assert unsolicited_until(a, b"* LIST ")[-1] == b'* LIST () "/" "Projects"\r\n'
    assert b.subscribe("Projects")[0] == "OK"
    assert unsolicited_until(a, b"* LIST ")[-1] == b'* LIST (\\Subscribed) "/" "Projects"\r\n'
    b.logout()
    a.logout()


def test_after_notify_none_a_delivery_says_nothing_until_asked(server, user):
    a = login(server, user)
    a.select("Drafts")
    notify(a, "SET (INBOXES (MessageNew MessageExpunge))")
    notify(a, "NONE")
    deliver(server, user, message("quiet"))
    # Durable at SMTP's 250; a STATUS sent at any time after would be read with one of these replies.
    for _ in range(2):
        assert a.noop()[0] == "OK"
    assert "STATUS" not in a.untagged_responses, a.untagged_responses
    a.logout()
