"""
End-to-end POP3: the real service (:func:`mailapp.service.makeService`) in a
subprocess (:mod:`tests.service_runner`), mail sent to it with :mod:`smtplib`
and read back with :mod:`poplib` (and a raw socket for input poplib never
sends), over real sockets on 127.0.0.1.

IMAP does not exist yet: where the issue speaks of IMAP (a message deleted by
another client, the \\Seen flag a POP3 download sets), the tests go through
the store API instead, from another process (:func:`run_with_store`).
"""

from __future__ import annotations

import base64
import email.policy
import os
import poplib
import re
import smtplib
import socket
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailapp.store import open_message_file
from tests.service_runner import TIMEOUT, ServiceProcess, listener, run_with_store, unverified_tls

HOSTNAME = "mail.example.test"
PASSWORD = "pop-secret"

LISTENERS = (
    listener("smtp", "smtp")
    + listener("pop3", "pop3", tls="starttls")
    + listener("pop3_dev", "pop3", tls="none", allow_plaintext_auth=True)
    + listener("pop3s", "pop3", tls="implicit")
)
LIMITS = "\n[limits]\nmax_message_size = 20971520\n"

#: Users are created before the server starts (see the note on the accounts
#: database in the POP3 issue report: adding one while it runs is not safe yet).
USERS = [f"user{n}@example.test" for n in range(1, 41)]
_unused = iter(USERS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = ServiceProcess(tmp_path_factory.mktemp("pop3-e2e"), LISTENERS, LIMITS)
    running.add_users({address: PASSWORD for address in USERS})
    running.start()
    yield running
    running.terminate()


@pytest.fixture
def user(server: ServiceProcess) -> str:
    """A user of its own, so each test starts from an empty INBOX."""
    return next(_unused)


def _message(recipient: str, subject: str, body: str = "hello\n") -> bytes:
    message = EmailMessage()
    message["From"] = "sender@remote.test"
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject.replace(' ', '.')}@client.test>"
    message["Date"] = "Thu, 01 Jan 2026 00:00:00 +0000"
    message.set_content(body)
    return message.as_bytes(policy=email.policy.SMTP)


def _send(server: ServiceProcess, recipient: str, *messages: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as client:
        for message in messages:
            assert client.sendmail("sender@remote.test", [recipient], message) == {}


def _pop(server: ServiceProcess, name: str = "pop3_dev") -> poplib.POP3:
    if name == "pop3s":
        return poplib.POP3_SSL("127.0.0.1", server.port(name), timeout=TIMEOUT, context=unverified_tls())
    return poplib.POP3("127.0.0.1", server.port(name), timeout=TIMEOUT)


def _login(server: ServiceProcess, account: str, name: str = "pop3_dev") -> poplib.POP3:
    client = _pop(server, name)
    client.user(account)
    client.pass_(PASSWORD)
    return client


def _inbox(server: ServiceProcess, account: str) -> dict[str, object]:
    """INBOX through the store API: UIDVALIDITY and (uid, flags, size) per message."""
    code = """
    async def run(store, account):
        folder = await store.mailbox(account).folder("INBOX")
        status = await folder.status()
        messages = await folder.messages()
        return {"uidvalidity": status.uidvalidity, "messages": [[m.uid, sorted(m.flags), m.size] for m in messages]}
    """
    return run_with_store(server.state_dir, code, account)  # type: ignore[no-any-return]


def _wire(lines: list[bytes]) -> bytes:
    """What poplib received, as bytes again (it strips each CRLF and undoes the dot-stuffing)."""
    return b"".join(line + b"\r\n" for line in lines)


def _error(call: object, *args: object) -> bytes:
    with pytest.raises(poplib.error_proto) as raised:
        call(*args)  # type: ignore[operator]
    return raised.value.args[0]  # type: ignore[no-any-return]


# -- TLS and logging in ----------------------------------------------------------------


def test_pop3_refuses_plaintext_login_and_offers_it_after_stls(server: ServiceProcess, user: str) -> None:
    client = _pop(server, "pop3")
    try:
        assert client.getwelcome() == f"+OK {HOSTNAME} POP3 mailapp ready".encode()
        before = client.capa()
        assert "STLS" in before and "USER" not in before and "SASL" not in before
        guidance = b"-ERR [AUTH] Plaintext authentication is not allowed without TLS; use STLS first"
        assert _error(client.user, user) == guidance
        assert _error(client._shortcmd, "AUTH PLAIN " + _plain(user)) == guidance
        assert client.stls(unverified_tls()) == b"+OK Begin TLS negotiation"
        after = client.capa()
        assert after == {
            "TOP": [],
            "UIDL": [],
            "USER": [],
            "SASL": ["PLAIN"],
            "RESP-CODES": [],
            "AUTH-RESP-CODE": [],
            "PIPELINING": [],
            "UTF8": ["USER"],
            "IMPLEMENTATION": ["mailapp"],
        }
        client.user(user)
        assert client.pass_(PASSWORD) == b"+OK Logged in; maildrop has 0 messages (0 octets)"
        assert client.quit() == f"+OK {HOSTNAME} signing off (0 messages left)".encode()
    finally:
        client.close()


def test_pop3s_logs_in_over_implicit_tls_with_auth_plain(server: ServiceProcess, user: str) -> None:
    client = _pop(server, "pop3s")
    try:
        assert "STLS" not in client.capa()
        assert client._shortcmd("AUTH PLAIN " + _plain(user)).startswith(b"+OK Logged in")
        assert client.stat() == (0, 0)
        client.quit()
    finally:
        client.close()


def _plain(account: str) -> str:
    return base64.b64encode(f"\0{account}\0{PASSWORD}".encode()).decode()


def test_bytes_pipelined_after_stls_are_never_run(server: ServiceProcess, user: str) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port("pop3")), timeout=TIMEOUT)
    try:
        assert _read_line(sock).startswith(b"+OK ")
        sock.sendall(f"STLS\r\nUSER {user}\r\nPASS {PASSWORD}\r\n".encode())
        assert _read_line(sock) == b"+OK Begin TLS negotiation\r\n"
        time.sleep(0.2)
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing more in the clear
            sock.recv(1, socket.MSG_PEEK)
        sock.setblocking(True)
        sock.settimeout(TIMEOUT)
        secure = unverified_tls().wrap_socket(sock)
        secure_stream = secure.makefile("rb")
        secure.sendall(b"STAT\r\nCAPA\r\n")
        # Had USER and PASS run, STAT would succeed; it is still AUTHORIZATION.
        assert secure_stream.readline() == b"-ERR STAT is not valid in the AUTHORIZATION state\r\n"
        assert secure_stream.readline() == b"+OK Capability list follows\r\n"
        secure.close()
    finally:
        sock.close()


def _read_line(sock: socket.socket) -> bytes:
    """One line, a byte at a time, so that nothing after it is consumed."""
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        assert byte, f"connection closed after {line!r}"
        line += byte
    return line


def test_failed_login_is_answered_after_a_delay(server: ServiceProcess, user: str) -> None:
    client = _pop(server)
    try:
        client.user(user)
        started = time.monotonic()
        assert _error(client.pass_, "wrong") == b"-ERR [AUTH] Authentication failed"
        assert time.monotonic() - started >= 0.9
        client.user(user)
        assert client.pass_(PASSWORD).startswith(b"+OK Logged in")
    finally:
        client.close()


def test_second_session_on_a_maildrop_gets_in_use(server: ServiceProcess, user: str) -> None:
    first = _login(server, user)
    second = _pop(server, "pop3s")
    try:
        second.user(user)
        assert _error(second.pass_, PASSWORD) == b"-ERR [IN-USE] Your maildrop is open in another POP3 session; try again later"
        first.quit()
        second.user(user)
        assert second.pass_(PASSWORD).startswith(b"+OK Logged in")
        second.quit()
    finally:
        first.close()
        second.close()


# -- every transaction command ---------------------------------------------------------


def test_every_transaction_command_over_mail_sent_by_smtp(server: ServiceProcess, user: str) -> None:
    sent = [_message(user, f"message {n}", body=f".dot line {n}\n" + "text\n" * n) for n in range(1, 4)]
    _send(server, user, *sent)
    inbox = _inbox(server, user)
    stored = [size for _, _, size in inbox["messages"]]  # type: ignore[attr-defined]
    uidls = [f"{inbox['uidvalidity']}.{uid}".encode() for uid, _, _ in inbox["messages"]]  # type: ignore[attr-defined]
    client = _login(server, user)
    try:
        assert client.stat() == (3, sum(stored))
        assert client.list() == (
            f"+OK 3 messages ({sum(stored)} octets)".encode(),
            [f"{n} {size}".encode() for n, size in enumerate(stored, 1)],
            sum(len(f"{n} {size}") + 2 for n, size in enumerate(stored, 1)),
        )
        assert client.list(2) == f"+OK 2 {stored[1]}".encode()
        assert client.uidl()[1] == [b"%d %s" % (n, uidl) for n, uidl in enumerate(uidls, 1)]
        assert client.uidl(3) == b"+OK 3 " + uidls[2]
        response, lines, octets = client.retr(1)
        assert response == f"+OK {stored[0]} octets".encode()
        assert octets == stored[0] and _wire(lines).endswith(sent[0])
        response, lines, _ = client.top(2, 1)
        assert response == b"+OK Top of message follows"
        header = sent[1].split(b"\r\n\r\n")[0]
        assert _wire(lines).endswith(header + b"\r\n\r\n.dot line 2\r\n")
        assert client.dele(1) == b"+OK Message 1 marked for deletion"
        assert _error(client.retr, 1) == b"-ERR Message 1 is deleted"
        assert client.stat() == (2, sum(stored[1:]))
        assert client.rset() == b"+OK Maildrop has 3 messages (%d octets)" % sum(stored)
        assert client.noop() == b"+OK"
        assert client.dele(3) == b"+OK Message 3 marked for deletion"
        assert client.quit() == f"+OK {HOSTNAME} signing off (2 messages left)".encode()
    finally:
        client.close()
    after = _inbox(server, user)
    # RETR (not TOP) marked message 1 \Seen for IMAP; message 3 is gone.
    assert [(uid, flags) for uid, flags, _ in after["messages"]] == [  # type: ignore[attr-defined]
        (inbox["messages"][0][0], ["\\Seen"]),  # type: ignore[index]
        (inbox["messages"][1][0], []),  # type: ignore[index]
    ]


def test_bad_input_gets_clear_errors_and_the_session_goes_on(server: ServiceProcess, user: str) -> None:
    _send(server, user, _message(user, "only one"))
    client = _login(server, user)
    try:
        for command, reply in [
            ("RETR 0", b"-ERR No such message"),
            ("RETR -1", b"-ERR Invalid message number"),
            ("RETR 2", b"-ERR No such message"),
            ("RETR 18446744073709551617", b"-ERR No such message"),
            ("TOP 1 x", b"-ERR Invalid line count"),
            ("XTND XMIT", b"-ERR Unknown command"),
            ("USER someone", b"-ERR USER is not valid in the TRANSACTION state"),
            ("STLS", b"-ERR STLS is not valid in the TRANSACTION state"),
        ]:
            assert _error(client._shortcmd, command) == reply, command
        assert client.stat()[0] == 1
        client.sock.sendall(b"NOOP " + b"x" * 2000 + b"\r\n")
        assert client._getline()[0] == b"-ERR Line too long; closing connection"
        assert client.sock.recv(10) == b""
    finally:
        client.close()


# -- the maildrop: snapshot, deletion, UIDL ------------------------------------------------


def test_mail_arriving_during_a_session_is_listed_in_the_next_one(server: ServiceProcess, user: str) -> None:
    _send(server, user, _message(user, "before"))
    client = _login(server, user)
    try:
        assert client.stat()[0] == 1
        _send(server, user, _message(user, "during"))
        assert client.stat()[0] == 1
        assert len(client.uidl()[1]) == 1
        assert _error(client.retr, 2) == b"-ERR No such message"
        assert client.quit() == f"+OK {HOSTNAME} signing off (2 messages left)".encode()
    finally:
        client.close()
    client = _login(server, user)
    try:
        assert client.stat()[0] == 2
        assert b"Subject: during" in _wire(client.retr(2)[1])
        client.quit()
    finally:
        client.close()


def test_mail_sent_by_smtp_is_downloaded_and_deleted_only_on_quit(server: ServiceProcess, user: str) -> None:
    """The source notes' flow: SMTP in, POP3 out, optionally deleted; checked through the store API."""
    sent = [_message(user, "keep me"), _message(user, "delete me")]
    _send(server, user, *sent)
    [keep, delete] = [uid for uid, _, _ in _inbox(server, user)["messages"]]  # type: ignore[attr-defined]

    dropped = _login(server, user)
    assert _wire(dropped.retr(2)[1]).endswith(sent[1])
    dropped.dele(2)
    dropped.close()  # no QUIT: the connection just goes away
    deadline = time.monotonic() + TIMEOUT
    while True:  # the server notices the drop and releases the maildrop
        client = _pop(server)
        client.user(user)
        try:
            client.pass_(PASSWORD)
            break
        except poplib.error_proto as e:
            client.close()
            assert b"[IN-USE]" in e.args[0] and time.monotonic() < deadline
            time.sleep(0.05)
    try:
        assert client.stat()[0] == 2
        assert [uid for uid, _, _ in _inbox(server, user)["messages"]] == [keep, delete]  # type: ignore[attr-defined]
        assert _wire(client.retr(1)[1]).endswith(sent[0])
        client.dele(2)
        assert client.quit() == f"+OK {HOSTNAME} signing off (1 messages left)".encode()
    finally:
        client.close()
    assert _inbox(server, user)["messages"] == [[keep, ["\\Seen"], server_size(server, user, keep)]]


def server_size(server: ServiceProcess, account: str, uid: int) -> int:
    [path] = [p for sub in ("cur", "new") for p in (server.maildir(account) / sub).iterdir() if f",U={uid}" in p.name]
    with open_message_file(path) as handle:
        return handle.seek(0, os.SEEK_END)


def test_message_removed_by_another_client_is_gone_from_the_next_session(server: ServiceProcess, user: str) -> None:
    _send(server, user, _message(user, "first"), _message(user, "second"))
    inbox = _inbox(server, user)
    [first, second] = [uid for uid, _, _ in inbox["messages"]]  # type: ignore[attr-defined]
    before = _login(server, user)
    try:
        uidl_second = before.uidl(2)
        expunge = """
        async def run(store, uid):
            folder = await store.mailbox(ACCOUNT).folder("INBOX")
            return await folder.expunge([uid])
        """.replace("ACCOUNT", repr(user))
        assert run_with_store(server.state_dir, expunge, first) == [first]
        # This session's snapshot still numbers it, and the store still holds its content a while.
        assert b"Subject: first" in b"\r\n".join(before.retr(1)[1])
        before.quit()
    finally:
        before.close()
    after = _login(server, user)
    try:
        assert after.stat()[0] == 1
        assert after.uidl(1) == b"+OK 1 " + uidl_second.split(b" ", 2)[2]
        assert after.uidl(1) == f"+OK 1 {inbox['uidvalidity']}.{second}".encode()
        after.quit()
    finally:
        after.close()


def test_uidl_survives_a_server_restart(tmp_path: Path) -> None:
    fresh = ServiceProcess(tmp_path, LISTENERS, LIMITS)
    fresh.add_users({"restart@example.test": PASSWORD})
    fresh.start()
    try:
        _send(fresh, "restart@example.test", _message("restart@example.test", "one"), _message("restart@example.test", "two"))
        client = _login(fresh, "restart@example.test")
        client.dele(1)
        client.quit()
        before = _login(fresh, "restart@example.test")
        listing = before.uidl()[1]
        before.quit()
        fresh.terminate()
        fresh.start()
        after = _login(fresh, "restart@example.test")
        assert after.uidl()[1] == listing
        after.quit()
    finally:
        fresh.terminate()


# -- big messages and throughput --------------------------------------------------------


def test_ten_mebibyte_message_sent_by_smtp_is_retrieved_byte_identical(server: ServiceProcess, user: str) -> None:
    message = EmailMessage()
    message["From"] = "sender@remote.test"
    message["To"] = user
    message["Subject"] = "big"
    message["Message-ID"] = "<big@client.test>"
    message.set_content(".leading dot line\n" * 3)
    message.add_attachment(os.urandom(10 * 1024 * 1024), maintype="application", subtype="octet-stream", filename="r.bin")
    sent = message.as_bytes(policy=email.policy.SMTP)
    _send(server, user, sent)
    [(uid, _, size)] = _inbox(server, user)["messages"]  # type: ignore[misc]
    [path] = [p for p in (server.maildir(user) / "new").iterdir()]
    with open_message_file(path) as handle:
        stored = handle.read()
    assert len(stored) == size and stored.endswith(sent)
    client = _login(server, user)
    try:
        assert client.list(1) == f"+OK 1 {size}".encode()
        peak_before = server.reset_peak_memory()
        response, lines, octets = client.retr(1)
        peak_after = server.status("VmHWM")["VmHWM"]
        assert response == f"+OK {size} octets".encode()
        assert octets == size
        assert _wire(lines) == stored
        client.quit()
    finally:
        client.close()
    sys.stderr.write(f"\nserver peak resident memory over a 10 MiB RETR: {peak_before} kB -> {peak_after} kB\n")
    # Streamed, not loaded: the server's peak grew by far less than the message.
    assert peak_after - peak_before < 4 * 1024, (peak_before, peak_after)


def test_timing_of_stat_list_uidl_and_retr_of_a_thousand_4k_messages(server: ServiceProcess, user: str) -> None:
    """Not a benchmark gate (the bounds are loose): prints the figures for the issue note."""
    count = 1000
    fill = """
    from twisted.internet import defer

    async def run(store, argument):
        account, count = argument
        folder = await store.mailbox(account).folder("INBOX")
        body = b"Subject: load\\r\\n\\r\\n" + (b"x" * 62 + b"\\r\\n") * 64
        body = body[: 4096 - 2] + b"\\r\\n"
        return len(await defer.gatherResults([folder.append(body) for _ in range(count)]))
    """
    assert run_with_store(server.state_dir, fill, [user, count]) == count
    client = _login(server, user)
    try:
        timings = {}
        started = time.perf_counter()
        assert client.stat() == (count, count * 4096)
        timings["STAT"] = time.perf_counter() - started
        started = time.perf_counter()
        assert len(client.list()[1]) == count
        timings["LIST"] = time.perf_counter() - started
        started = time.perf_counter()
        assert len(client.uidl()[1]) == count
        timings["UIDL"] = time.perf_counter() - started
        started = time.perf_counter()
        total = 0
        for number in range(1, count + 1):
            total += client.retr(number)[2]
        timings["RETR x1000"] = time.perf_counter() - started
        assert total == count * 4096
        client.quit()
    finally:
        client.close()
    report = ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in timings.items())
    sys.stderr.write(f"\nPOP3 timing, {count} messages of 4 KiB in one session: {report}\n")
    assert timings["RETR x1000"] < 60


def _read_pipelined(sock: socket.socket, replies: int) -> list[tuple[bytes, bytes | None]]:
    """C{replies} responses from a raw socket: (status line, unstuffed body of a multi-line one or None)."""
    buffer, found = b"", []
    deadline = time.monotonic() + TIMEOUT
    while len(found) < replies:
        end = buffer.find(b"\r\n")
        status = buffer[:end] if end >= 0 else b""
        multi = re.fullmatch(rb"\+OK \d+ octets", status) is not None  # a RETR's
        terminator = buffer.find(b"\r\n.\r\n", end) if multi else -1
        if end >= 0 and (not multi or terminator >= 0 or buffer[end + 2 : end + 5] == b".\r\n"):
            if not multi:
                found.append((status, None))
                buffer = buffer[end + 2 :]
                continue
            if buffer[end + 2 : end + 5] == b".\r\n":
                body, buffer = b"", buffer[end + 5 :]
            else:
                body, buffer = buffer[end + 2 : terminator + 2], buffer[terminator + 5 :]
            found.append((status, b"".join(line[1:] if line.startswith(b".") else line for line in body.splitlines(keepends=True))))
            continue
        assert time.monotonic() < deadline, found[-1:]
        data = sock.recv(1 << 16)
        assert data, f"connection closed after {len(found)} replies"
        buffer += data
    assert buffer == b"", buffer[:200]
    return found


def test_pipelined_retrs_over_a_raw_socket_get_every_message_whole_and_in_order(server: ServiceProcess, user: str) -> None:
    """A client pipelining (RFC 2449) 60 RETRs, a DELE and QUIT in one write: read-ahead batches, a big message streamed between them."""
    from mailapp.pop3 import CHUNK_SIZE

    count = 60
    messages = [
        _message(user, f"message {n}", ".a dot first\n" + f"body {n}\n" * (n % 7 + 1) + (".\n" if n % 5 == 0 else ""))
        for n in range(1, count + 1)
    ]
    messages[29] = _message(user, "big one", ".dotted\n" * (2 * CHUNK_SIZE // 8))
    _send(server, user, *messages)
    reference = _login(server, user)
    try:
        expected = [_wire(reference.retr(n)[1]) for n in range(1, count + 1)]
        uidl_before = reference.uidl()[1]
        reference.quit()
    finally:
        reference.close()
    assert len(expected[29]) > CHUNK_SIZE
    with socket.create_connection(("127.0.0.1", server.port("pop3_dev")), timeout=TIMEOUT) as sock:
        sock.sendall(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
        assert [status[:3] for status, _ in _read_pipelined(sock, 3)] == [b"+OK"] * 3
        sock.sendall(b"".join(b"RETR %d\r\n" % n for n in range(1, count + 1)) + b"DELE 2\r\nQUIT\r\n")
        replies = _read_pipelined(sock, count + 2)
    for n, ((status, body), wanted) in enumerate(zip(replies, expected), 1):
        assert status == b"+OK %d octets" % len(wanted), (n, status)
        assert body == wanted, n
    assert replies[count][0] == b"+OK Message 2 marked for deletion"
    assert replies[count + 1][0].startswith(b"+OK mail.example.test signing off (59 messages left)")
    after = _login(server, user)
    try:
        assert after.stat()[0] == count - 1
        ids = [line.split()[1] for line in uidl_before]
        assert [line.split()[1] for line in after.uidl()[1]] == ids[:1] + ids[2:]
        after.quit()
    finally:
        after.close()


def test_a_client_that_pipelines_retrs_and_does_not_read_is_not_buffered_in_server_memory(server: ServiceProcess, user: str) -> None:
    """400 RETRs of 60 KiB (24 MiB) sent at once, nothing read for 2 s: the server stops taking commands, its memory stays flat."""
    count, size = 400, 60 * 1024
    fill = """
    from twisted.internet import defer

    async def run(store, argument):
        account, count, size = argument
        folder = await store.mailbox(account).folder("INBOX")
        body = b"Subject: wide\\r\\n\\r\\n" + (b"w" * 1022 + b"\\r\\n") * (size // 1024)
        return len(await defer.gatherResults([folder.append(body[: size - 2] + b"\\r\\n") for _ in range(count)]))
    """
    assert run_with_store(server.state_dir, fill, [user, count, size]) == count
    with socket.create_connection(("127.0.0.1", server.port("pop3_dev")), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
        assert [status[:3] for status, _ in _read_pipelined(sock, 3)] == [b"+OK"] * 3
        before = server.reset_peak_memory()
        sock.sendall(b"".join(b"RETR %d\r\n" % n for n in range(1, count + 1)))
        time.sleep(2)
        peak = server.status("VmHWM")["VmHWM"]
        sock.sendall(b"QUIT\r\n")
        replies = _read_pipelined(sock, count + 1)
    assert [len(body or b"") for _, body in replies[:count]] == [size] * count
    sys.stderr.write(f"\nserver peak resident memory while a client did not read 24 MiB of RETRs: {before} kB -> {peak} kB\n")
    assert peak - before < 8 * 1024, (before, peak)
