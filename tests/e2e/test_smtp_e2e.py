"""
End-to-end SMTP: the real service from :func:`mailapp.service.makeService`,
over real sockets on 127.0.0.1 (port 0), spoken to with :mod:`smtplib` and,
for malformed input, a raw :mod:`socket`.

smtplib blocks, so the server runs in a subprocess
(:class:`tests.service_runner.ServiceProcess`) that reports the port of every
listener; the tests talk to the ports. A subprocess also lets the
durability test kill the server with SIGKILL and the shutdown test send it
SIGTERM, exactly as an operator (or the kernel) would. Every wait is bounded.
"""

from __future__ import annotations

import base64
import email.policy
import os
import smtplib
import socket
import sqlite3
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailapp.store import open_message_file
from mailapp.store.index import INDEX_NAME
from tests.service_runner import ServiceProcess, listener

HOSTNAME = "mail.example.test"
ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"
PASSWORDS = {ALICE: "alice-secret", BOB: "bob-secret", CAROL: "carol-secret"}
MAX_MESSAGE_SIZE = 20 * 1024 * 1024
TIMEOUT = 10.0

LISTENERS = (
    listener("smtp", "smtp", tls="starttls")
    + listener("submission", "submission", tls="starttls", allow_plaintext_auth=False)
    + listener("submission_dev", "submission", tls="none", allow_plaintext_auth=True)
    + listener("submissions", "submission", tls="implicit")
)


class Server(ServiceProcess):
    """The SMTP test server: the listeners above, alice, bob, carol and team@."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, LISTENERS, f"[limits]\nmax_message_size = {MAX_MESSAGE_SIZE}\n")

    def add_accounts(self) -> None:
        """alice, bob and carol, and team@ for alice and bob, written before the server starts."""
        self.add_users(PASSWORDS, {"team@example.test": [ALICE, BOB]})

    def new_files(self, account: str) -> set[Path]:
        """The message files in C{account}'s INBOX new/ (nothing here reads mail, so none moves to cur/)."""
        directory = self.maildir(account) / "new"
        return set(directory.iterdir()) if directory.is_dir() else set()


def _start_server(root: Path) -> Server:
    server = Server(root)
    server.add_accounts()
    server.start()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that only add mail; each compares the Maildirs before and after."""
    running = _start_server(tmp_path_factory.mktemp("e2e"))
    yield running
    running.terminate()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server of its own, for tests that kill or stop it."""
    running = _start_server(tmp_path)
    yield running
    if running.process is not None and running.process.poll() is None:
        running.terminate()


class Arrivals:
    """The files that appear in some Maildirs between construction and :meth:`of`."""

    def __init__(self, server: Server, *accounts: str) -> None:
        self._server = server
        self._before = {account: server.new_files(account) for account in accounts}

    def of(self, account: str) -> list[Path]:
        return sorted(self._server.new_files(account) - self._before[account])


def _unverified_tls() -> ssl.SSLContext:
    """The dev certificate is self-signed: encrypt, but do not check who we talk to."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _smtp(server: Server, listener: str) -> smtplib.SMTP:
    if listener == "submissions":
        return smtplib.SMTP_SSL("127.0.0.1", server.port(listener), timeout=TIMEOUT, context=_unverified_tls())
    return smtplib.SMTP("127.0.0.1", server.port(listener), timeout=TIMEOUT)


def _message(sender: str, recipient: str, subject: str, body: str = "hello\n") -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject.replace(' ', '.')}@client.test>"
    message["Date"] = "Thu, 01 Jan 2026 00:00:00 +0000"
    message.set_content(body)
    return message.as_bytes(policy=email.policy.SMTP)


def _wire(path: Path) -> bytes:
    """A stored message as IMAP and POP3 send it (the file itself has LF line ends)."""
    with open_message_file(path) as handle:
        return handle.read()


def _body(stored: bytes) -> bytes:
    return stored.split(b"\r\n\r\n", 1)[1]


class RawClient:
    """A line-level SMTP client over a plain socket, for input smtplib would never send."""

    def __init__(self, port: int, implicit_tls: bool = False) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self._buffer = b""
        if implicit_tls:
            self.start_tls()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes | None:
        while b"\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> list[bytes]:
        """The lines of one (possibly multi-line) reply; fails at end of stream."""
        lines = []
        while True:
            line = self._line()
            if line is None:
                raise AssertionError(f"connection closed mid-reply after {lines!r}")
            lines.append(line)
            if line[3:4] != b"-":
                return lines

    def codes_until_closed(self) -> list[bytes]:
        """The code of every reply until the server closes the connection."""
        codes = []
        while True:
            line = self._line()
            if line is None:
                return codes
            if line[3:4] != b"-":
                codes.append(line[:3])

    def start_tls(self) -> None:
        assert not self._buffer, f"bytes arrived in the clear after the 220: {self._buffer!r}"
        self.sock = _unverified_tls().wrap_socket(self.sock)

    def close(self) -> None:
        self.sock.close()


# -- greeting and EHLO --------------------------------------------------------


def test_greeting_is_220_with_hostname(server: Server) -> None:
    client = RawClient(server.port("smtp"))
    try:
        assert client.reply() == [f"220 {HOSTNAME} ESMTP mailapp".encode()]
    finally:
        client.close()


def test_ehlo_on_the_mx_listener_offers_starttls_and_size_but_no_auth(server: Server) -> None:
    with _smtp(server, "smtp") as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        assert client.esmtp_features == {
            "pipelining": "",
            "size": str(MAX_MESSAGE_SIZE),
            "8bitmime": "",
            "enhancedstatuscodes": "",
            "dsn": "",
            "smtputf8": "",
            "chunking": "",
            "binarymime": "",
            "starttls": "",
            "help": "",
        }
        assert not client.has_extn("auth")


# -- delivery status notifications ----------------------------------------------------


def test_notify_success_delay_with_envid_and_ret_hdrs_gets_a_delivered_dsn_with_headers_only(server: Server) -> None:
    arrivals = Arrivals(server, ALICE, BOB)
    with _smtp(server, "submission_dev") as client:
        client.login(ALICE, PASSWORDS[ALICE])
        refused = client.sendmail(
            ALICE, [BOB], _message(ALICE, BOB, "with a receipt"),
            mail_options=["RET=HDRS", "ENVID=receipt+2B1"], rcpt_options=["NOTIFY=SUCCESS,DELAY", f"ORCPT=rfc822;{BOB}"],
        )
        assert refused == {}
    [copy] = arrivals.of(BOB)
    assert b"Subject: with a receipt" in _wire(copy)
    deadline = time.monotonic() + TIMEOUT
    while not arrivals.of(ALICE) and time.monotonic() < deadline:
        time.sleep(0.05)
    [report_file] = arrivals.of(ALICE)
    report = _wire(report_file)
    assert b"Return-Path: <>" in report and b"report-type=delivery-status" in report
    for field in (b"Action: delivered", b"Status: 2.0.0", b"Original-Envelope-Id: receipt+1", f"Original-Recipient: rfc822; {BOB}".encode()):
        assert field in report
    assert b"Subject: with a receipt" in report and b"Content-Type: text/rfc822-headers" in report


# -- routing --------------------------------------------------------------------


def test_mixed_recipients_get_their_own_replies_and_one_linked_copy_each(server: Server) -> None:
    arrivals = Arrivals(server, ALICE, BOB)
    with _smtp(server, "smtp") as client:
        client.ehlo("client.test")
        assert client.mail("sender@remote.test") == (250, b"2.1.0 Ok")
        assert client.rcpt(ALICE) == (250, b"2.1.5 Ok")
        assert client.rcpt(BOB) == (250, b"2.1.5 Ok")
        assert client.rcpt("team@example.test") == (250, b"2.1.5 Ok")
        assert client.rcpt("nobody@example.test") == (550, b"5.1.1 No such user here")
        code, text = client.data(_message("sender@remote.test", "team@example.test", "mixed recipients"))
        assert code == 250
        assert text.startswith(b"2.0.0 Ok: queued as ")
    [alice_copy] = arrivals.of(ALICE)
    [bob_copy] = arrivals.of(BOB)
    assert os.stat(alice_copy).st_ino == os.stat(bob_copy).st_ino
    assert b"Subject: mixed recipients" in _wire(alice_copy)


def test_ten_mebibyte_binary_attachment_is_stored_byte_for_byte(server: Server) -> None:
    message = EmailMessage()
    message["From"] = ALICE
    message["To"] = BOB
    message["Subject"] = "big attachment"
    message["Message-ID"] = "<big.attachment@client.test>"
    message["Date"] = "Thu, 01 Jan 2026 00:00:00 +0000"
    message.set_content("see attached\n")
    message.add_attachment(os.urandom(10 * 1024 * 1024), maintype="application", subtype="octet-stream", filename="random.bin")
    sent = message.as_bytes(policy=email.policy.SMTP)
    assert sent.endswith(b"\r\n") and b"\n" not in sent.replace(b"\r\n", b"")
    arrivals = Arrivals(server, BOB)
    with _smtp(server, "smtp") as client:
        client.ehlo("client.test")
        assert client.esmtp_features["size"] == str(MAX_MESSAGE_SIZE)
        assert client.sendmail("sender@remote.test", [BOB], sent) == {}
    [stored_path] = arrivals.of(BOB)
    stored = _wire(stored_path)
    trace, original = stored[: len(stored) - len(sent)], stored[len(stored) - len(sent) :]
    assert original == sent
    trace_names = [line.split(b":", 1)[0] for line in trace.split(b"\r\n") if line and line[:1] not in b" \t"]
    assert trace_names == [b"Return-Path", b"Delivered-To", b"Received"]


# -- relay and authentication -----------------------------------------------------


def test_mx_listener_refuses_to_relay_to_a_remote_domain(server: Server) -> None:
    with _smtp(server, "smtp") as client:
        client.ehlo("client.test")
        assert client.mail("sender@remote.test")[0] == 250
        assert client.rcpt("x@remote.test") == (554, b"5.7.1 Relay access denied")


@pytest.mark.parametrize("listener", ["submission", "submission_dev", "submissions"])
def test_submission_listener_requires_auth_before_mail(server: Server, listener: str) -> None:
    with _smtp(server, listener) as client:
        client.ehlo("client.test")
        assert client.mail(ALICE) == (530, b"5.7.0 Authentication required")


def test_submission_neither_offers_nor_accepts_auth_before_starttls(server: Server) -> None:
    with _smtp(server, "submission") as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN " + _plain(ALICE)) == (538, b"5.7.11 Encryption required: use STARTTLS first")


def _plain(account: str) -> str:
    return base64.b64encode(f"\0{account}\0{PASSWORDS[account]}".encode()).decode()


def test_submission_accepts_login_after_starttls(server: Server) -> None:
    with _smtp(server, "submission") as client:
        client.ehlo("client.test")
        assert client.starttls(context=_unverified_tls())[0] == 220
        client.ehlo("client.test")
        assert client.has_extn("auth")
        assert client.login(ALICE, PASSWORDS[ALICE]) == (235, b"2.7.0 Authentication successful")


def test_submissions_accepts_login_over_implicit_tls(server: Server) -> None:
    with _smtp(server, "submissions") as client:
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        assert client.login(ALICE, PASSWORDS[ALICE]) == (235, b"2.7.0 Authentication successful")


def test_logged_in_user_cannot_send_as_another_user(server: Server) -> None:
    with _smtp(server, "submission_dev") as client:
        client.ehlo("client.test")
        client.login(ALICE, PASSWORDS[ALICE])
        assert client.mail(BOB) == (553, b"5.7.1 Sender address not owned by you")


# -- attacks on the byte stream -------------------------------------------------------


def test_commands_pipelined_after_starttls_never_run_inside_tls(server: Server) -> None:
    client = RawClient(server.port("smtp"))
    try:
        assert client.reply()[0].startswith(b"220 ")
        client.send(b"EHLO x\r\nSTARTTLS\r\nRSET\r\n")
        assert client.reply()[-1] == b"250 HELP"
        assert client.reply() == [b"220 2.0.0 Ready to start TLS"]
        client.start_tls()
        client.send(b"EHLO x\r\n")
        ehlo = client.reply()
        assert ehlo[0] == f"250-{HOSTNAME}".encode()
        assert b"250-STARTTLS" not in ehlo
        client.send(b"QUIT\r\n")
        assert client.codes_until_closed() == [b"221"]
    finally:
        client.close()


def _open_data(client: RawClient, recipient: str = ALICE) -> None:
    assert client.reply()[0].startswith(b"220 ")
    client.send(f"EHLO x\r\nMAIL FROM:<sender@remote.test>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode())
    assert [reply[-1][:3] for reply in (client.reply(), client.reply(), client.reply(), client.reply())] == [
        b"250",
        b"250",
        b"250",
        b"354",
    ]


@pytest.mark.parametrize("false_end", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n"], ids=["LF.LF", "CR.CR", "LF.CRLF", "CRLF.LF"])
def test_smuggled_message_after_a_false_end_of_data_stays_in_the_body(server: Server, false_end: bytes) -> None:
    arrivals = Arrivals(server, ALICE, BOB)
    client = RawClient(server.port("smtp"))
    try:
        _open_data(client)
        client.send(
            b"Subject: smuggling\r\n\r\nhello"
            + false_end
            + b"MAIL FROM:<e@x.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled text\r\n.\r\nQUIT\r\n"
        )
        assert client.codes_until_closed() == [b"250", b"221"]
    finally:
        client.close()
    [stored] = arrivals.of(ALICE)
    body = _body(_wire(stored))
    assert b"MAIL FROM:<e@x.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled text\r\n" in body
    assert arrivals.of(BOB) == []


def test_long_data_line_keeps_the_session_in_data_and_no_command_after_it_runs(server: Server) -> None:
    arrivals = Arrivals(server, ALICE, BOB)
    long_line = b"x" * 100_000
    commands = b"RSET\r\nMAIL FROM:<e@x.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    client = RawClient(server.port("smtp"))
    try:
        _open_data(client)
        client.send(b"Subject: long line\r\n\r\n" + long_line + b"\r\n" + commands + b".\r\nQUIT\r\n")
        assert client.codes_until_closed() == [b"250", b"221"]
    finally:
        client.close()
    [stored] = arrivals.of(ALICE)
    assert _body(_wire(stored)) == long_line + b"\r\n" + commands
    assert arrivals.of(BOB) == []


# -- local delivery --------------------------------------------------------------------


def _tcp_sockets_of(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of every TCP socket process C{pid} holds, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in (Path(f"/proc/{pid}/net/tcp"), Path(f"/proc/{pid}/net/tcp6")):
        if not table.exists():
            continue
        for row in table.read_text().splitlines()[1:]:
            fields = row.split()
            if fields[9] in inodes:
                found.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)))
    return found


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_local_delivery_opens_no_outbound_connection(server: Server) -> None:
    """
    With no relay configured there is nothing to connect to; the check is that
    alice->bob lands in bob's Maildir while every TCP socket the server holds
    is one of its listeners or a connection accepted on one.
    """
    assert server.config.relay.smarthost is None and not server.config.relay.transports
    arrivals = Arrivals(server, BOB)
    with _smtp(server, "submission_dev") as client:
        client.ehlo("client.test")
        client.login(ALICE, PASSWORDS[ALICE])
        assert client.sendmail(ALICE, [BOB], _message(ALICE, BOB, "local only")) == {}
        assert server.process is not None
        sockets = _tcp_sockets_of(server.process.pid)
    [stored] = arrivals.of(BOB)
    assert b"Subject: local only" in _wire(stored)
    ours = set(server.ports.values())
    assert sockets and all(local in ours for local, _ in sockets), sockets


# -- process lifecycle ---------------------------------------------------------------


def test_accepted_message_survives_sigkill_right_after_250(fresh_server: Server) -> None:
    arrivals = Arrivals(fresh_server, ALICE)
    sent = _message("sender@remote.test", ALICE, "durable", body="must not be lost\n" * 1000)
    with _smtp(fresh_server, "smtp") as client:
        client.ehlo("client.test")
        assert client.sendmail("sender@remote.test", [ALICE], sent) == {}
        fresh_server.kill()
    [stored] = arrivals.of(ALICE)
    assert _wire(stored).endswith(sent)
    fresh_server.start()
    index_path = fresh_server.maildir(ALICE) / INDEX_NAME
    index = sqlite3.connect(f"file:{index_path}?mode=ro", uri=True, timeout=TIMEOUT)
    try:
        rows = index.execute("SELECT folder, filename, size FROM messages").fetchall()
    finally:
        index.close()
    assert rows == [("INBOX", f"new/{stored.name}", len(_wire(stored)))]


def test_sigterm_says_421_to_idle_sessions_and_exits(fresh_server: Server) -> None:
    clients = [RawClient(fresh_server.port(name)) for name in ("smtp", "submission_dev")]
    clients.append(RawClient(fresh_server.port("submissions"), implicit_tls=True))
    try:
        for client in clients:
            assert client.reply()[0].startswith(b"220 ")
            client.send(b"EHLO x\r\n")
            assert client.reply()[-1][:3] == b"250"
        started = time.monotonic()
        assert fresh_server.terminate(timeout=TIMEOUT) == 0
        assert time.monotonic() - started < TIMEOUT
        for client in clients:
            assert client.codes_until_closed() == [b"421"]
    finally:
        for client in clients:
            client.close()
