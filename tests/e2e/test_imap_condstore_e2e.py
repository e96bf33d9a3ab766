"""
CONDSTORE and QRESYNC (RFC 7162) end to end: the real service in a
subprocess, imaplib and raw sockets on 127.0.0.1; mod-sequences raised by
another connection, by a Maildir tool behind the server, kept across a
restart; and a resync of a 10,000-message folder after 10 flag changes
returning only those 10 (the folder generated as files, as
L{tests.imap_scale} does, so the index is built at the first open).
"""

from __future__ import annotations

import imaplib
import os
import re
import time
from collections.abc import Iterator

import pytest

from tests.imap_helpers import PASSWORD, Raw, Users, deliver, message, start_server
from tests.imap_scale import fill
from tests.service_runner import TIMEOUT, ServiceProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = start_server(tmp_path_factory.mktemp("imap-condstore-e2e"))
    yield running
    running.terminate()


_users = Users()


@pytest.fixture
def user(server: ServiceProcess) -> str:
    return _users.take()


def raw_login(server: ServiceProcess, user: str) -> Raw:
    raw = Raw(server.port("imap"))
    assert raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())[-1].startswith(b"a OK")
    return raw


def code(lines: list[bytes], name: bytes) -> int:
    for line in lines:
        found = re.search(rb"\[" + name + rb" (\d+)\]", line)
        if found:
            return int(found.group(1))
    raise AssertionError(f"no {name!r} in {lines!r}")


def fetches(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if re.match(rb"^\* \d+ FETCH ", line)]


def test_imaplib_enable_select_condstore_fetch_and_conditional_store(server, user):
    for number in range(3):
        deliver(server, user, message(f"m{number}"))
    client = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=TIMEOUT)
    client.login(user, PASSWORD)
    assert "CONDSTORE" in client.capabilities and "QRESYNC" in client.capabilities
    typ, data = client._simple_command("ENABLE", "CONDSTORE")
    assert typ == "OK"
    assert client.untagged_responses.pop("ENABLED") == [b"CONDSTORE"]
    typ, _ = client._simple_command("SELECT", "INBOX", "(CONDSTORE)")
    assert typ == "OK"
    client.state = "SELECTED"  # imaplib's select() takes no parameters
    highest = int(client.untagged_responses.pop("HIGHESTMODSEQ")[0])
    typ, data = client.uid("FETCH", "1:*", "(FLAGS)", "(CHANGEDSINCE %d)" % highest)
    assert typ == "OK" and data == [None]
    typ, data = client.uid("STORE", "2", "+FLAGS", r"(\Seen)")
    assert typ == "OK" and b"MODSEQ (" in data[0]
    stored = int(re.search(rb"MODSEQ \((\d+)\)", data[0]).group(1))
    assert stored > highest
    typ, data = client.uid("FETCH", "1:*", "(FLAGS)", "(CHANGEDSINCE %d)" % highest)
    assert typ == "OK" and len([d for d in data if d]) == 1 and b"UID 2 " in data[0]
    typ, data = client._simple_command("UID", "STORE", "1:3", "(UNCHANGEDSINCE %d)" % highest, "+FLAGS.SILENT", r"(\Flagged)")
    assert typ == "OK" and data == [b"[MODIFIED 2] Conditional STORE failed"]
    typ, data = client.uid("SEARCH", "MODSEQ", str(highest + 1))
    assert typ == "OK"
    assert data[0].split(b" (")[0].split() == [b"1", b"2", b"3"]
    client.logout()


def test_select_qresync_after_changes_by_another_connection(server, user):
    for number in range(5):
        deliver(server, user, message(f"m{number}"))
    first = raw_login(server, user)
    first.command(b"e", b"ENABLE QRESYNC")
    lines = first.command(b"s", b"SELECT INBOX")
    validity, highest = code(lines, b"UIDVALIDITY"), code(lines, b"HIGHESTMODSEQ")
    first.command(b"x", b"LOGOUT")
    other = raw_login(server, user)
    other.command(b"s", b"SELECT INBOX")
    other.command(b"t", b"UID STORE 2,4 +FLAGS (\\Answered)")
    other.command(b"u", b"UID STORE 3 +FLAGS.SILENT (\\Deleted)")
    other.command(b"v", b"EXPUNGE")
    again = raw_login(server, user)
    again.command(b"e", b"ENABLE QRESYNC")
    lines = again.command(b"s", b"SELECT INBOX (QRESYNC (%d %d))" % (validity, highest))
    assert b"* VANISHED (EARLIER) 3" in lines
    assert [re.sub(rb"MODSEQ \(\d+\)", b"MODSEQ (n)", line) for line in fetches(lines)] == [
        b"* 2 FETCH (UID 2 FLAGS (\\Answered) MODSEQ (n))",
        b"* 3 FETCH (UID 4 FLAGS (\\Answered) MODSEQ (n))",
    ]
    assert code(lines, b"HIGHESTMODSEQ") > highest
    # Expunges by the other connection now come as VANISHED.
    other.command(b"w", b"UID STORE 5 +FLAGS.SILENT (\\Deleted)")
    other.command(b"x", b"EXPUNGE")
    assert again.command(b"n", b"NOOP")[0] == b"* VANISHED 5"
    assert again.command(b"c", b"SELECT Archive")[0] == b"* OK [CLOSED] Previous mailbox closed"


def test_a_maildir_tool_s_flag_change_raises_the_modseq(server, user):
    deliver(server, user, message("read by mutt"))
    raw = raw_login(server, user)
    lines = raw.command(b"s", b"SELECT INBOX (CONDSTORE)")
    highest = code(lines, b"HIGHESTMODSEQ")
    raw.command(b"c", b"CLOSE")
    directory = server.maildir(user)
    [name] = os.listdir(directory / "new")
    os.rename(directory / "new" / name, directory / "cur" / (name + ":2,S"))  # what mutt does when it reads it
    lines = raw.command(b"s", b"SELECT INBOX")
    assert code(lines, b"HIGHESTMODSEQ") > highest
    lines = raw.command(b"f", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % highest)
    assert len(fetches(lines)) == 1 and b"\\Seen" in fetches(lines)[0]


def test_modseqs_survive_a_restart(server, user):
    deliver(server, user, message("kept"))
    raw = raw_login(server, user)
    raw.command(b"s", b"SELECT INBOX")
    before = raw.command(b"f", b"FETCH 1 (MODSEQ)")
    raw.close()
    server.terminate()
    server.start()
    raw = raw_login(server, user)
    raw.command(b"s", b"SELECT INBOX")
    after = raw.command(b"f", b"FETCH 1 (MODSEQ)")
    assert fetches(before) == fetches(after) and fetches(after)


def test_a_resync_of_10000_messages_after_10_flag_changes_returns_only_those_10(server, user):
    server.terminate()
    fill(server.maildir(user), 10_000)
    server.start()
    raw = raw_login(server, user)
    raw.command(b"e", b"ENABLE QRESYNC")
    lines = raw.command(b"s", b"SELECT INBOX")  # builds the index from the Maildir
    assert b"* 10000 EXISTS" in lines
    validity, highest = code(lines, b"UIDVALIDITY"), code(lines, b"HIGHESTMODSEQ")
    raw.command(b"c", b"UNSELECT")
    other = raw_login(server, user)
    other.command(b"s", b"SELECT INBOX")
    changed = [7, 700, 1400, 2100, 3300, 4000, 5500, 6600, 8800, 9999]
    for uid in changed:
        assert other.command(b"t", b"UID STORE %d +FLAGS.SILENT (\\Flagged)" % uid)[-1].startswith(b"t OK")
    started = time.monotonic()
    lines = raw.command(b"r", b"SELECT INBOX (QRESYNC (%d %d))" % (validity, highest))
    elapsed = time.monotonic() - started
    assert lines[-1].startswith(b"r OK")
    found = fetches(lines)
    assert [int(re.search(rb"UID (\d+)", line).group(1)) for line in found] == changed
    assert not [line for line in lines if b"VANISHED" in line]
    assert elapsed < 5, elapsed  # a generous bound for a shared machine; make bench has the figure
