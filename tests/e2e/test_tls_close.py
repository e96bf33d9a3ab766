"""
Closing under TLS, as clients nobody here wrote see it: after IMAP
``LOGOUT``, POP3 ``QUIT`` or SMTP ``QUIT``, the server must end the
connection itself (mbsync and others wait for the server's EOF), over
implicit TLS and after STARTTLS alike. Each test reads until end of stream,
bounded in time: a server that keeps the connection open fails the test
instead of hanging it.

A client that stops reading must not keep its connection (and a slot of
``max_connections_per_ip``) for ever: :mod:`tests.test_tls_close` also
checks that such a connection is aborted once its output has been stuck.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from tests.service_runner import ServiceProcess, listener, unverified_tls

ALICE = "alice@example.test"
PASSWORD = "alice-password-1"
EOF_WITHIN = 5.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    listeners = (
        listener("imaps", "imap", tls="implicit")
        + listener("imap", "imap", tls="starttls")
        + listener("pop3s", "pop3", tls="implicit")
        + listener("pop3", "pop3", tls="starttls")
        + listener("submissions", "submission", tls="implicit")
        + listener("submission", "submission", tls="starttls")
    )
    server = ServiceProcess(tmp_path_factory.mktemp("tls-close"), listeners)
    server.add_users({ALICE: PASSWORD})
    server.start()
    yield server
    server.terminate()


class Line:
    """A line-at-a-time client over a plain or TLS socket, every read bounded."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(EOF_WITHIN)
        self.buffer = b""

    def starttls(self) -> None:
        assert not self.buffer, self.buffer
        self.sock = unverified_tls().wrap_socket(self.sock)
        self.sock.settimeout(EOF_WITHIN)

    def send(self, line: bytes) -> None:
        self.sock.sendall(line + b"\r\n")

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed while waiting for a line; got {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def until(self, prefix: bytes) -> bytes:
        while True:
            line = self.line()
            if line.startswith(prefix):
                return line

    def end_of_stream(self) -> float:
        """Seconds until the server closed the connection (recv() gives b"" or TLS EOF)."""
        started = time.monotonic()
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buffer += chunk
        except (ssl.SSLEOFError, ConnectionResetError):
            pass
        except TimeoutError:
            raise AssertionError(f"the server did not close the connection within {EOF_WITHIN} s") from None
        return time.monotonic() - started


def connect(server: ServiceProcess, name: str) -> Line:
    sock = socket.create_connection(("127.0.0.1", server.port(name)), timeout=EOF_WITHIN)
    if name.endswith("s"):
        sock = unverified_tls().wrap_socket(sock)
    return Line(sock)


@pytest.mark.parametrize("name", ["imaps", "imap"])
def test_imap_logout_over_tls_closes_the_connection(server: ServiceProcess, name: str) -> None:
    client = connect(server, name)
    assert client.line().startswith(b"* OK")
    if name == "imap":
        client.send(b"s STARTTLS")
        assert client.until(b"s ").startswith(b"s OK")
        client.starttls()
    client.send(f'a LOGIN {ALICE} "{PASSWORD}"'.encode())
    assert client.until(b"a ").startswith(b"a OK")
    client.send(b"b SELECT INBOX")
    assert client.until(b"b ").startswith(b"b OK")
    client.send(b"c LOGOUT")
    assert client.line().startswith(b"* BYE")
    assert client.line().startswith(b"c OK")
    assert client.end_of_stream() < EOF_WITHIN


@pytest.mark.parametrize("name", ["pop3s", "pop3"])
def test_pop3_quit_over_tls_closes_the_connection(server: ServiceProcess, name: str) -> None:
    client = connect(server, name)
    assert client.line().startswith(b"+OK")
    if name == "pop3":
        client.send(b"STLS")
        assert client.line().startswith(b"+OK")
        client.starttls()
    client.send(f"USER {ALICE}".encode())
    assert client.line().startswith(b"+OK")
    client.send(f"PASS {PASSWORD}".encode())
    assert client.line().startswith(b"+OK")
    client.send(b"QUIT")
    assert client.line().startswith(b"+OK")
    assert client.end_of_stream() < EOF_WITHIN


@pytest.mark.parametrize("name", ["submissions", "submission"])
def test_smtp_quit_over_tls_closes_the_connection(server: ServiceProcess, name: str) -> None:
    client = connect(server, name)
    assert client.line().startswith(b"220")
    if name == "submission":
        client.send(b"EHLO client.test")
        assert client.until(b"250 ").startswith(b"250 ")
        client.send(b"STARTTLS")
        assert client.line().startswith(b"220")
        client.starttls()
    client.send(b"EHLO client.test")
    assert client.until(b"250 ").startswith(b"250 ")
    client.send(b"QUIT")
    assert client.line().startswith(b"221")
    assert client.end_of_stream() < EOF_WITHIN
