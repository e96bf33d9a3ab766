"""
End-to-end: Maildir files have LF line ends (what mutt, formail and Dovecot
expect), named with Dovecot's ``,S=<file size>,W=<wire size>``, while IMAP
and POP3 send every message with CRLF, byte for byte as SMTP received it,
with RFC822.SIZE and POP3 sizes of that form. Files from state format 1
(CRLF, no ``W=``) and a Dovecot Maildir copied in are served as well.

The real service in a subprocess (:mod:`tests.service_runner`), driven with
smtplib, imaplib, poplib and a raw socket.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailapp.store.index import INDEX_NAME
from tests.imap_helpers import Raw
from tests.service_runner import TIMEOUT, ServiceProcess, listener, run_with_store

PASSWORD = "line-secret"
USERS = [f"user{n}@example.test" for n in range(1, 11)]
LISTENERS = (
    listener("smtp", "smtp")
    + listener("imap", "imap", allow_plaintext_auth=True)
    + listener("pop3", "pop3", allow_plaintext_auth=True)
)
_unused = iter(USERS)

#: A message with a multipart body, as an SMTP client sends it (CRLF).
SENT = (
    b"From: Sender <sender@remote.test>\r\nTo: someone@example.test\r\nSubject: line ends\r\n"
    b"Message-ID: <line.ends@remote.test>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"preamble\r\n--b\r\nContent-Type: text/plain\r\n\r\nfirst part\r\nsecond line\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\n" + b"0123456789" * 2000 + b"\r\n--b--\r\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = ServiceProcess(tmp_path_factory.mktemp("line-endings"), LISTENERS)
    running.add_users({address: PASSWORD for address in USERS})
    running.start()
    yield running
    running.terminate()


@pytest.fixture
def user(server: ServiceProcess) -> str:
    """A user of its own, so each test starts from an empty INBOX."""
    return next(_unused)


def _deliver(server: ServiceProcess, recipient: str, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as client:
        assert client.sendmail("sender@remote.test", [recipient], message) == {}


def _files(server: ServiceProcess, account: str) -> list[Path]:
    directory = server.maildir(account)
    return sorted(p for sub in ("new", "cur") for p in (directory / sub).iterdir())


def _imap(server: ServiceProcess, account: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=TIMEOUT)
    client.login(account, PASSWORD)
    client.select("INBOX")
    return client


def _fetch(client: imaplib.IMAP4, uid: int, item: str) -> bytes:
    status, data = client.uid("FETCH", str(uid), f"({item})")
    assert status == "OK", data
    assert isinstance(data[0], tuple), data
    return data[0][1]


def _size(client: imaplib.IMAP4, uid: int) -> int:
    status, data = client.uid("FETCH", str(uid), "(RFC822.SIZE)")
    assert status == "OK"
    match = re.search(rb"RFC822\.SIZE (\d+)", data[0])
    assert match, data
    return int(match.group(1))


def _flags(client: imaplib.IMAP4, uid: int) -> set[bytes]:
    status, data = client.uid("FETCH", str(uid), "(FLAGS)")
    assert status == "OK"
    match = re.search(rb"FLAGS \(([^)]*)\)", data[0])
    assert match, data
    return set(match.group(1).split()) - {b"\\Recent"}


def _pop(server: ServiceProcess, account: str) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=TIMEOUT)
    client.user(account)
    client.pass_(PASSWORD)
    return client


def _retr_raw(server: ServiceProcess, account: str, number: int) -> tuple[int, bytes]:
    """POP3 RETR over a raw socket: the announced size and the exact bytes (dot-stuffing undone)."""
    with socket.create_connection(("127.0.0.1", server.port("pop3")), timeout=TIMEOUT) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(f"USER {account}\r\nPASS {PASSWORD}\r\nRETR {number}\r\n".encode())
        assert reader.readline().startswith(b"+OK")
        assert reader.readline().startswith(b"+OK")
        status = reader.readline()
        match = re.match(rb"\+OK (\d+) octets", status)
        assert match, status
        lines = []
        while (line := reader.readline()) != b".\r\n":
            assert line, "connection closed mid-message"
            lines.append(line[1:] if line.startswith(b"..") else line)
        sock.sendall(b"QUIT\r\n")
        return int(match.group(1)), b"".join(lines)


# -- mail received over SMTP ----------------------------------------------------------------------


def test_a_message_received_over_smtp_is_stored_with_lf_and_no_cr(server: ServiceProcess, user: str) -> None:
    _deliver(server, user, SENT)
    [path] = _files(server, user)
    stored = path.read_bytes()
    assert b"\r" not in stored
    assert stored.endswith(SENT.replace(b"\r\n", b"\n"))


def test_the_stored_file_name_carries_the_file_size_and_the_crlf_size(server: ServiceProcess, user: str) -> None:
    _deliver(server, user, SENT)
    [path] = _files(server, user)
    stored = path.read_bytes()
    wire = stored.replace(b"\n", b"\r\n")
    assert re.search(rf",S={len(stored)},W={len(wire)},U=1$", path.name), path.name


def test_rfc822_size_and_pop3_sizes_are_the_crlf_size(server: ServiceProcess, user: str) -> None:
    _deliver(server, user, SENT)
    _deliver(server, user, b"Subject: second\r\n\r\nshort\r\n")
    wires = [path.read_bytes().replace(b"\n", b"\r\n") for path in sorted(_files(server, user), key=lambda p: p.name[-3:])]
    client = _imap(server, user)
    try:
        assert [_size(client, 1), _size(client, 2)] == [len(w) for w in wires]
    finally:
        client.logout()
    pop = _pop(server, user)
    try:
        assert pop.stat() == (2, sum(len(w) for w in wires))
        assert pop.list()[1] == [b"1 %d" % len(wires[0]), b"2 %d" % len(wires[1])]
    finally:
        pop.quit()


def test_imap_and_pop3_send_the_message_byte_for_byte_as_received(server: ServiceProcess, user: str) -> None:
    _deliver(server, user, SENT)
    [path] = _files(server, user)
    wire = path.read_bytes().replace(b"\n", b"\r\n")
    assert wire.endswith(SENT)
    client = _imap(server, user)
    try:
        assert _fetch(client, 1, "BODY.PEEK[]") == wire
    finally:
        client.logout()
    size, retrieved = _retr_raw(server, user, 1)
    assert (size, retrieved) == (len(wire), wire)


def test_partial_fetches_and_sections_have_crlf_offsets(server: ServiceProcess, user: str) -> None:
    _deliver(server, user, SENT)
    [path] = _files(server, user)
    wire = path.read_bytes().replace(b"\n", b"\r\n")
    header, _, text = wire.partition(b"\r\n\r\n")
    client = _imap(server, user)
    try:
        for start, length in [(0, 10), (7, 30), (len(wire) - 50, 100), (len(header) - 3, 9)]:
            assert _fetch(client, 1, f"BODY.PEEK[]<{start}.{length}>") == wire[start : start + length]
        assert _fetch(client, 1, "BODY.PEEK[TEXT]") == text
        assert _fetch(client, 1, "BODY.PEEK[HEADER]") == header + b"\r\n\r\n"
        assert _fetch(client, 1, "BODY.PEEK[1]") == b"first part\r\nsecond line"
        assert _fetch(client, 1, "BODY.PEEK[2]") == b"0123456789" * 2000
        assert _fetch(client, 1, "BODY.PEEK[2]<19995.10>") == (b"0123456789" * 2000)[19995:20005]
    finally:
        client.logout()


def test_a_bare_cr_sent_over_smtp_is_stored_as_a_line_end_and_sent_as_crlf(server: ServiceProcess, user: str) -> None:
    # SMTP turns a bare CR (and a bare LF) inside the data into CRLF (README, "Line endings").
    with socket.create_connection(("127.0.0.1", server.port("smtp")), timeout=TIMEOUT) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(f"HELO client.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<{user}>\r\nDATA\r\n".encode())
        for _ in range(4):
            reader.readline()
        sock.sendall(b"Subject: bare\r\n\r\nbefore\rafter\r\nlone\nfeed\r\n.\r\nQUIT\r\n")
        assert reader.readline().startswith(b"250")
    [path] = _files(server, user)
    stored = path.read_bytes()
    assert b"\r" not in stored and stored.endswith(b"\n\nbefore\nafter\nlone\nfeed\n")
    client = _imap(server, user)
    try:
        body = _fetch(client, 1, "BODY.PEEK[]")
        assert body.endswith(b"Subject: bare\r\n\r\nbefore\r\nafter\r\nlone\r\nfeed\r\n")
        assert _size(client, 1) == len(body)
    finally:
        client.logout()
    assert _retr_raw(server, user, 1) == (len(body), body)


def test_an_imap_append_with_a_bare_lf_comes_back_byte_for_byte(server: ServiceProcess, user: str) -> None:
    # A bare LF could not survive LF storage: such a message is kept as received.
    # (imaplib would turn the bare LF into CRLF itself, so this is a raw APPEND.)
    appended = b"Subject: appended\r\n\r\nhalf\nline\r\n"
    raw = Raw(server.port("imap"))
    try:
        assert raw.command(b"a", f"LOGIN {user} {PASSWORD}".encode())[-1].startswith(b"a OK")
        raw.send(b"b APPEND INBOX {%d}\r\n" % len(appended))
        assert raw.line().startswith(b"+")
        raw.send(appended + b"\r\n")
        assert raw.until(b"b")[-1].startswith(b"b OK")
        assert raw.command(b"c", b"SELECT INBOX")[-1].startswith(b"c OK")
        fetched = raw.command(b"d", b"UID FETCH 1 (RFC822.SIZE BODY.PEEK[])")
        assert fetched[0] == b"* 1 FETCH (UID 1 RFC822.SIZE %d BODY[] {%d}\r\n" % (len(appended), len(appended)) + appended + b")"
    finally:
        raw.close()
    [path] = _files(server, user)
    assert path.read_bytes() == appended


# -- a Dovecot Maildir copied in --------------------------------------------------------------------


def test_a_dovecot_maildir_copied_into_a_users_directory_is_served_with_its_sizes_and_flags(
    server: ServiceProcess, user: str
) -> None:
    seen = b"From: a@remote.test\nSubject: read before\n\nalready read\n"
    unread = b"From: b@remote.test\nSubject: new here\n\nnot read\nyet\n"
    directory = server.maildir(user)
    for sub in ("cur", "new", "tmp"):
        (directory / sub).mkdir(parents=True)
    (directory / "dovecot-uidlist").write_text("3 V1733000000 N3 G3085f01b7f11094c501100008c4a11c1\n1 1733000000.M123P456.host\n")
    (directory / "cur" / f"1733000000.M123P456.host,S={len(seen)},W={len(seen) + 4}:2,FS").write_bytes(seen)
    (directory / "new" / f"1733000100.M124P456.host,S={len(unread)},W={len(unread) + 5}").write_bytes(unread)
    client = _imap(server, user)
    try:
        assert [_size(client, 1), _size(client, 2)] == [len(seen) + 4, len(unread) + 5]
        assert _flags(client, 1) == {b"\\Seen", b"\\Flagged"}
        assert _flags(client, 2) == set()
        assert _fetch(client, 1, "BODY.PEEK[]") == seen.replace(b"\n", b"\r\n")
        assert _fetch(client, 2, "BODY.PEEK[TEXT]") == b"not read\r\nyet\r\n"
    finally:
        client.logout()
    pop = _pop(server, user)
    try:
        assert pop.list()[1] == [b"1 %d" % (len(seen) + 4), b"2 %d" % (len(unread) + 5)]
    finally:
        pop.quit()
    assert _retr_raw(server, user, 2) == (len(unread) + 5, unread.replace(b"\n", b"\r\n"))


# -- state format 1 ----------------------------------------------------------------------------------------


def _format_1_state(root: Path, account: str) -> tuple[ServiceProcess, list[bytes]]:
    """
    A state directory as format 1 left it: FORMAT 1, an index, and CRLF
    files named with S= only (one unread, one \\Seen and \\Flagged).
    """
    server = ServiceProcess(root, LISTENERS)
    server.add_users({account: PASSWORD})
    run_with_store(server.state_dir, "async def run(store, account):\n    await store.mailbox(account).folder('INBOX')\n", account)
    messages = [
        b"Return-Path: <s@remote.test>\r\nSubject: old one\r\n\r\nstored with\r\nCRLF\r\n",
        b"Return-Path: <s@remote.test>\r\nSubject: old two\r\n\r\n" + b"x" * 70000 + b"\r\nend\r\n",
    ]
    directory = server.maildir(account)
    names = [f"new/1700000000.M1P1Q1.old,S={len(messages[0])},U=1", f"cur/1700000001.M2P1Q2.old,S={len(messages[1])},U=2:2,FS"]
    for name, data in zip(names, messages):
        (directory / name).write_bytes(data)
    index = sqlite3.connect(directory / INDEX_NAME)
    with index:
        index.executemany(
            "INSERT INTO messages (folder, uid, filename, flags, size, internaldate) VALUES ('INBOX', ?, ?, ?, ?, 1700000000)",
            [(1, names[0], "", len(messages[0])), (2, names[1], "\\Flagged \\Seen", len(messages[1]))],
        )
        index.execute("UPDATE folders SET uidnext = 3 WHERE name = 'INBOX'")
    index.close()
    (server.state_dir / "FORMAT").write_text("1\n")
    return server, messages


def test_a_format_1_state_directory_is_upgraded_at_start_and_its_crlf_files_served_exactly(tmp_path: Path) -> None:
    account = "old@example.test"
    server, messages = _format_1_state(tmp_path, account)
    before = sorted((p.name, p.read_bytes()) for p in _files(server, account))
    server.start()
    try:
        assert (server.state_dir / "FORMAT").read_text() == "2\n"
        assert "upgraded from format 1 to 2" in server.log()
        assert sorted((p.name, p.read_bytes()) for p in _files(server, account)) == before
        client = _imap(server, account)
        try:
            status, data = client.uid("SEARCH", "ALL")
            assert data == [b"1 2"]
            assert [_size(client, 1), _size(client, 2)] == [len(messages[0]), len(messages[1])]
            assert _flags(client, 2) == {b"\\Seen", b"\\Flagged"}
            assert _fetch(client, 1, "BODY.PEEK[]") == messages[0]
            assert _fetch(client, 2, "BODY.PEEK[]<65540.20>") == messages[1][65540:65560]
        finally:
            client.logout()
        pop = _pop(server, account)
        try:
            assert pop.list()[1] == [b"1 %d" % len(messages[0]), b"2 %d" % len(messages[1])]
        finally:
            pop.quit()
        assert _retr_raw(server, account, 2) == (len(messages[1]), messages[1])
        # New mail after the upgrade is stored with LF beside the old files.
        _deliver(server, account, b"Subject: after\r\n\r\nnew\r\n")
        [new] = [p for p in _files(server, account) if ",W=" in p.name]
        assert b"\r" not in new.read_bytes()
    finally:
        server.terminate()
