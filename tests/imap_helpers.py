"""Shared pieces of the IMAP end-to-end tests: one server for the module, raw sockets, SMTP delivery."""

from __future__ import annotations

import imaplib
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service_runner import TIMEOUT, ServiceProcess, listener, unverified_tls

PASSWORD = "imap-secret"
USERS = [f"user{n}@example.test" for n in range(1, 41)]

LISTENERS = (
    listener("smtp", "smtp")
    + listener("imap", "imap", "starttls", allow_plaintext_auth=True)
    + listener("imapstrict", "imap", "starttls", allow_plaintext_auth=False)
    + listener("imaps", "imap", "implicit")
    + listener("pop3", "pop3", "starttls", allow_plaintext_auth=True)
)
EXTRA = "\n[limits]\nmax_message_size = 1048576\n"


def start_server(root: Path) -> ServiceProcess:
    server = ServiceProcess(root, LISTENERS, EXTRA)
    server.add_users({user: PASSWORD for user in USERS})
    server.start()
    return server


class Users:
    """Hands each test its own account, so tests never see each other's mail."""

    def __init__(self) -> None:
        self._free = list(USERS)

    def take(self) -> str:
        return self._free.pop(0)


def deliver(server: ServiceProcess, recipient: str, message: bytes, sender: str = "sender@remote.test") -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as client:
        client.sendmail(sender, [recipient], message)


def login(server: ServiceProcess, user: str, listener_name: str = "imap") -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.port(listener_name), timeout=TIMEOUT)
    client.login(user, PASSWORD)
    return client


def message(subject: str = "hello", body: str = "body line\r\n", sender: str = "Sender <sender@remote.test>") -> bytes:
    return (
        f"From: {sender}\r\nTo: someone@example.test\r\nSubject: {subject}\r\n"
        f"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\n{body}"
    ).encode("utf-8")


class Raw:
    """A line-level IMAP conversation over a real socket, every read bounded."""

    def __init__(self, port: int, tls: bool = False) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if tls:
            sock = unverified_tls().wrap_socket(sock)
        self.sock: socket.socket | ssl.SSLSocket = sock
        self.buffer = b""
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def line(self) -> bytes:
        deadline = time.monotonic() + TIMEOUT
        while b"\r\n" not in self.buffer:
            if time.monotonic() > deadline or not self._fill():
                raise AssertionError(f"no complete line; have {self.buffer[:200]!r}")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise AssertionError("connection closed in a literal")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def until(self, tag: bytes) -> list[bytes]:
        """Every line up to and including the tagged reply (literals inlined)."""
        lines = []
        while True:
            line = self.line()
            if line.endswith(b"}") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1 : -1])
                line += b"\r\n" + self.read(size) + self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def closed(self, timeout: float = TIMEOUT) -> bool:
        """True once the server has closed the connection (whatever it sent first)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except (ConnectionResetError, ssl.SSLError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


def module_server(name: str) -> Any:
    """A module-scoped C{server} fixture: one real service (L{start_server}) for a module's tests."""

    @pytest.fixture(scope="module")
    def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
        running = start_server(tmp_path_factory.mktemp(name))
        yield running
        running.terminate()

    return server


def account_per_test() -> Any:
    """A C{user} fixture: each test its own account of L{USERS}, so that it starts from an empty mailbox."""
    users = Users()

    @pytest.fixture
    def user(server: ServiceProcess) -> str:
        return users.take()

    return user
