"""
LMTP (RFC 2033) and BDAT (RFC 3030) against the real service: raw commands
over loopback and unix sockets (smtplib has no BDAT, and its LMTP class
reads one reply after DATA, not one per recipient), the Maildir store's
spool after a client drops mid-chunk, and a real Postfix, run as a private
instance by the test, delivering into mailapp over LMTP what smtplib gave
its smtpd, read back from the INBOX with imaplib.
"""

from __future__ import annotations

import imaplib
import json
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailapp.accounts import AccountsDatabase, QuotaOverride
from tests import needs
from tests.postfix_runner import PostfixProcess
from tests.service_runner import TIMEOUT, ServiceProcess, listener

ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"
PASSWORDS = {ALICE: "alice-secret", BOB: "bob-secret"}


def lmtp_listener(name: str, endpoint: str) -> str:
    return f'\n[listeners.{name}]\nprotocol = "lmtp"\nendpoint = {json.dumps(endpoint)}\ntls = "none"\n'


def wait_until(condition: Callable[[], object], timeout: float, describe: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(describe())
        time.sleep(0.05)


class Client:
    """A raw SMTP/LMTP client: send bytes, read whole replies (bounded)."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.connection.settimeout(TIMEOUT)
        self.buffer = b""

    def reply(self) -> list[bytes]:
        """One reply's lines."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                data = self.connection.recv(65536)
                if not data:
                    raise AssertionError(f"connection closed after {lines!r}")
                self.buffer += data
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] == b" ":
                return lines

    def replies(self, count: int) -> list[bytes]:
        """The last line of each of the next C{count} replies."""
        return [self.reply()[-1] for _ in range(count)]

    def send(self, data: bytes) -> None:
        self.connection.sendall(data)

    def close(self) -> None:
        self.connection.close()


def imap_messages(server: ServiceProcess, account: str) -> list[bytes]:
    client = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=TIMEOUT)
    try:
        client.login(account, PASSWORDS[account])
        client.select("INBOX", readonly=True)
        _, data = client.fetch("1:*", "(BODY.PEEK[])")
        return [item[1] for item in data if isinstance(item, tuple)]
    finally:
        client.logout()


@pytest.fixture
def lmtp_socket_dir(tmp_path: Path) -> Path:
    # A unix socket's path must fit in 108 bytes: a short directory of the test's own.
    directory = Path("/tmp") / f"mailapp-lmtp-{tmp_path.name[-20:]}-{time.monotonic_ns() % 10**9}"
    directory.mkdir(mode=0o755)
    yield directory
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()


@pytest.fixture
def server(tmp_path: Path, lmtp_socket_dir: Path) -> Iterator[ServiceProcess]:
    running = ServiceProcess(
        tmp_path,
        listener("smtp", "smtp")
        + listener("imap", "imap", allow_plaintext_auth=True)
        + listener("lmtp", "lmtp")
        + lmtp_listener("lmtpunix", f"unix:{lmtp_socket_dir / 'lmtp.sock'}"),
    )
    running.add_users(PASSWORDS)
    running.start()
    yield running
    running.terminate()


def connect_tcp(server: ServiceProcess, name: str) -> Client:
    client = Client(socket.create_connection(("127.0.0.1", server.port(name)), timeout=TIMEOUT))
    assert client.reply()[-1].startswith(b"220 ")
    return client


def test_pipelined_bdat_chunks_reach_the_inbox_byte_for_byte_and_each_gets_its_reply(server):
    client = connect_tcp(server, "smtp")
    # A bare LF, a bare CR, a line of a lone dot and 8-bit octets: BINARYMIME keeps them all.
    first = b"Subject: binary\r\nMIME-Version: 1.0\r\n\r\n.\r\nbare\nLF and bare\rCR "
    second = bytes(range(1, 256)) + b"\r\n"
    client.send(
        b"EHLO client.test\r\nMAIL FROM:<sender@remote.test> BODY=BINARYMIME\r\nRCPT TO:<alice@example.test>\r\n"
        + b"BDAT %d\r\n" % len(first) + first
        + b"BDAT %d LAST\r\n" % len(second) + second
        + b"QUIT\r\n"
    )
    ehlo = client.reply()
    assert b"250-CHUNKING" in ehlo and b"250-BINARYMIME" in ehlo
    replies = client.replies(5)
    assert replies[:3] == [b"250 2.1.0 Ok", b"250 2.1.5 Ok", b"250 2.0.0 Ok: %d octets received" % len(first)]
    assert replies[3].startswith(b"250 2.0.0 Ok: queued as "), replies
    assert replies[4].startswith(b"221 ")
    client.close()
    [message] = imap_messages(server, ALICE)
    assert message.endswith(first + second)


def test_a_client_dropping_mid_chunk_leaves_nothing_in_the_spool(server):
    client = connect_tcp(server, "smtp")
    client.send(b"EHLO client.test\r\nMAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
    client.replies(3)
    client.send(b"BDAT 500000 LAST\r\nSubject: cut\r\n\r\n" + b"z" * 200_000)
    spool = server.state_dir / "mail" / ".spool"
    wait_until(lambda: spool.exists() and any(spool.iterdir()), TIMEOUT, lambda: f"no spool file while receiving\n{server.log()}")
    client.close()
    wait_until(lambda: not any(spool.iterdir()), TIMEOUT, lambda: f"spool not emptied: {list(spool.iterdir())}\n{server.log()}")
    assert imap_messages(server, ALICE) == []


def test_lmtp_over_tcp_answers_each_recipient_after_data_and_refuses_a_remote_one(server):
    client = connect_tcp(server, "lmtp")
    client.send(
        b"LHLO mx.example.net\r\nMAIL FROM:<sender@remote.test>\r\n"
        b"RCPT TO:<alice@example.test>\r\nRCPT TO:<someone@remote.test>\r\nRCPT TO:<bob@example.test>\r\n"
        b"DATA\r\nSubject: per recipient\r\n\r\nhello\r\n.\r\n"
    )
    client.reply()  # LHLO
    replies = client.replies(7)
    assert replies[:5] == [
        b"250 2.1.0 Ok",
        b"250 2.1.5 Ok",
        b"550 5.1.2 Not a local recipient: this LMTP server delivers to local mailboxes only",
        b"250 2.1.5 Ok",
        b"354 End data with <CR><LF>.<CR><LF>",
    ]
    assert replies[5].startswith(b"250 2.1.5 <alice@example.test> Ok: delivered as ")
    assert replies[6].startswith(b"250 2.1.5 <bob@example.test> Ok: delivered as ")
    client.close()
    assert [m.endswith(b"Subject: per recipient\r\n\r\nhello\r\n") for m in imap_messages(server, BOB)] == [True]


def test_lmtp_over_a_unix_socket_takes_bdat_with_one_reply_per_recipient(server, lmtp_socket_dir):
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(str(lmtp_socket_dir / "lmtp.sock"))
    client = Client(connection)
    assert client.reply() == [b"220 mail.example.test LMTP mailapp"]
    body = b"Subject: over the socket\r\n\r\nchunked\r\n"
    client.send(
        b"LHLO mx.example.net\r\nMAIL FROM:<> BODY=BINARYMIME\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
        + b"BDAT %d LAST\r\n" % len(body) + body
    )
    client.reply()
    replies = client.replies(5)
    assert replies[:3] == [b"250 2.1.0 Ok", b"250 2.1.5 Ok", b"250 2.1.5 Ok"]
    assert replies[3].startswith(b"250 2.1.5 <alice@example.test> Ok")
    assert replies[4].startswith(b"250 2.1.5 <bob@example.test> Ok")
    client.close()
    [message] = imap_messages(server, ALICE)
    assert b"Received: from mx.example.net (local socket)\r\n" in message
    assert message.endswith(body)


def test_swaks_over_lmtp_on_the_unix_socket_reads_one_reply_per_recipient(server, lmtp_socket_dir):
    result = subprocess.run(
        [
            needs.command("swaks"),
            "--protocol", "LMTP",
            "--socket", str(lmtp_socket_dir / "lmtp.sock"),
            "--helo", "mx.example.net",
            "--from", "sender@remote.test",
            "--to", f"{ALICE},nobody@example.test,{BOB}",
            "--header", "Subject: swaks over lmtp",
            "--timeout", "10",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # swaks goes on after a refused recipient, and reads one reply per accepted one after the data.
    assert "<** 550 5.1.1 No such user here" in result.stdout, result.stdout
    assert "<-  250 2.1.5 <alice@example.test> Ok: delivered as " in result.stdout, result.stdout
    assert "<-  250 2.1.5 <bob@example.test> Ok: delivered as " in result.stdout, result.stdout
    assert result.returncode == 24 or result.returncode == 0, result.stdout  # 24: a recipient was refused
    assert [b"Subject: swaks over lmtp" in m for m in imap_messages(server, BOB)] == [True]


def test_an_lmtp_unix_socket_is_listened_on_again_after_sigkill(tmp_path, lmtp_socket_dir):
    path = lmtp_socket_dir / "again.sock"
    server = ServiceProcess(tmp_path / "again", lmtp_listener("lmtp", f"unix:{path}"))
    server.start()
    try:
        server.kill()
        assert path.exists()  # the killed server's socket is still there
        server.start()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(str(path))
        client = Client(connection)
        assert client.reply() == [b"220 mail.example.test LMTP mailapp"]
        client.close()
    finally:
        server.terminate()


def test_postfix_delivers_over_lmtp_into_the_inboxes_imap_reads_and_bounces_only_the_full_mailbox(tmp_path):
    started = time.monotonic()
    postfix = PostfixProcess()
    try:
        socket_path = postfix.directory / "lmtp.sock"
        mailapp = ServiceProcess(
            tmp_path / "mailapp",
            listener("imap", "imap", allow_plaintext_auth=True) + lmtp_listener("lmtp", f"unix:{socket_path}"),
        )
        mailapp.add_users({**PASSWORDS, CAROL: "carol-secret"})
        with AccountsDatabase(mailapp.state_dir / "accounts.sqlite3", ("example.test",)) as database:
            # Room for the SIZE= Postfix declares (about 300), not for the stored copy with our trace fields
            # (about 480): refused after the data, beside the others' 250s (RFC 2033 4.2).
            database.set_quota(CAROL, QuotaOverride(bytes=400, messages=None))
        mailapp.start()
        try:
            postfix.start(f"lmtp:unix:{socket_path}")
            with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=TIMEOUT) as client:
                refused = client.sendmail(
                    "sender@remote.test",
                    [ALICE, CAROL, BOB],
                    b"Subject: through postfix\r\nMessage-ID: <postfix-lmtp@remote.test>\r\n\r\nvia LMTP\r\n",
                )
            assert refused == {}

            def delivered() -> bool:
                return len(imap_messages(mailapp, ALICE)) == 1 and len(imap_messages(mailapp, BOB)) == 1

            wait_until(
                delivered,
                TIMEOUT,
                lambda: f"Postfix did not deliver in time\n{postfix.queue()}\n{postfix.log()}\n{mailapp.log()}",
            )
            [message] = imap_messages(mailapp, ALICE)
            assert b"Message-ID: <postfix-lmtp@remote.test>" in message
            assert b"by mail.example.test (mailapp) with LMTP id " in message
            assert message.endswith(b"\r\n\r\nvia LMTP\r\n")
            # Postfix logs each delivery (through postlogd) after mailapp's 250, which made the message.
            sent = [f"status=sent (250 2.1.5 <{account}> Ok: delivered as " for account in (ALICE, BOB)]
            wait_until(lambda: all(line in postfix.log() for line in sent), TIMEOUT, postfix.log)
            # The full mailbox's own refusal, in the same LMTP transaction: Postfix bounces that recipient only.
            wait_until(
                lambda: "to=<carol@example.test>" in postfix.log(), TIMEOUT, lambda: f"no outcome for carol\n{postfix.log()}"
            )
            assert "552 5.2.2 <carol@example.test> Mailbox full (in reply to end of DATA command)" in postfix.log(), postfix.log()
            assert "status=bounced" in postfix.log(), postfix.log()
        finally:
            mailapp.terminate()
    finally:
        postfix.stop()
    assert time.monotonic() - started < 15
