"""
COMPRESS=DEFLATE (RFC 4978) against the real service with Python's imaplib,
which has no COMPRESS of its own: after the tagged OK the client's socket
reads and writes go through zlib's raw DEFLATE (L{compress}), on the plain
listener, after STARTTLS and over implicit TLS (compression inside TLS);
and IMAP4rev2 (RFC 9051) enabled over a raw socket.
"""

from __future__ import annotations

import imaplib
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.imap_helpers import PASSWORD, Users, deliver, message, start_server
from tests.service_runner import TIMEOUT, ServiceProcess, unverified_tls

imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = start_server(tmp_path_factory.mktemp("imap-compress-e2e"))
    yield running
    running.terminate()


_users = Users()


@pytest.fixture
def user(server: ServiceProcess) -> str:
    return _users.take()


class _InflatingFile:
    """imaplib's C{file}: lines and reads of the server's inflated stream."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.inflate = zlib.decompressobj(-15)
        self.buffer = b""
        self.compressed_bytes = 0

    def _fill(self) -> bool:
        data = self.raw.read1(65536) if hasattr(self.raw, "read1") else self.raw.read(65536)
        if not data:
            return False
        self.compressed_bytes += len(data)
        self.buffer += self.inflate.decompress(data)
        return True

    def readline(self, limit: int = -1) -> bytes:
        while b"\n" not in self.buffer and self._fill():
            pass
        end = self.buffer.find(b"\n") + 1 or len(self.buffer)
        line, self.buffer = self.buffer[:end], self.buffer[end:]
        return line

    def read(self, size: int) -> bytes:
        while len(self.buffer) < size and self._fill():
            pass
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def close(self) -> None:
        self.raw.close()


def compress(client: imaplib.IMAP4) -> _InflatingFile:
    """COMPRESS DEFLATE, then both directions through zlib."""
    typ, data = client._simple_command("COMPRESS", "DEFLATE")
    assert typ == "OK", data
    # Whatever imaplib's buffered file read past the OK would be compressed: there is none,
    # since the server sends nothing more until the next command.
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    sock = client.sock

    def send(data: bytes) -> None:
        sock.sendall(deflate.compress(data) + deflate.flush(zlib.Z_SYNC_FLUSH))

    client.send = send  # type: ignore[method-assign]
    inflating = _InflatingFile(client.file)
    client.file = inflating  # type: ignore[assignment]
    return inflating


def _session_through_compression(client: imaplib.IMAP4, server: ServiceProcess, user: str) -> None:
    client.login(user, PASSWORD)
    assert "COMPRESS=DEFLATE" in client.capability()[1][0].decode().split()
    body = "".join(f"line {n} of a long and repetitive body\r\n" for n in range(2000))
    deliver(server, user, message("squeezed", body))
    inflating = compress(client)
    typ, data = client.select("INBOX")
    assert (typ, data) == ("OK", [b"1"])
    typ, fetched = client.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK"
    assert fetched[0][1].endswith(body.encode())
    # The message went over the wire compressed.
    assert inflating.compressed_bytes < len(body) // 5
    typ, data = client._simple_command("COMPRESS", "DEFLATE")
    assert typ == "NO" and data[0].startswith(b"[COMPRESSIONACTIVE]"), (typ, data)
    typ, _ = client.append("INBOX", None, None, message("appended"))
    assert typ == "OK"
    assert client.search(None, "SUBJECT", "appended")[1] == [b"2"]
    assert client.logout()[0] == "BYE"


def test_compress_on_the_plain_listener(server, user):
    client = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=TIMEOUT)
    _session_through_compression(client, server, user)


def test_compress_after_starttls(server, user):
    client = imaplib.IMAP4("127.0.0.1", server.port("imapstrict"), timeout=TIMEOUT)
    assert "COMPRESS=DEFLATE" not in client.capabilities
    client.starttls(unverified_tls())
    _session_through_compression(client, server, user)


def test_compress_over_implicit_tls(server, user):
    client = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=unverified_tls(), timeout=TIMEOUT)
    _session_through_compression(client, server, user)


def test_imap4rev2_enabled_over_a_real_socket_answers_rev2_style(server, user):
    from tests.imap_helpers import Raw

    deliver(server, user, message("rev2"))
    raw = Raw(server.port("imap"))
    assert b" IMAP4rev2 " in raw.greeting
    raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
    assert raw.command(b"b", b"ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2"
    selected = raw.command(b"c", b"SELECT INBOX")
    assert b"* 1 EXISTS" in selected and not any(b"RECENT" in line for line in selected)
    assert raw.command(b"d", b"SEARCH ALL")[0] == b'* ESEARCH (TAG "d") ALL 1'
    assert b"\\Recent" not in raw.command(b"e", b"FETCH 1 FLAGS")[0]
    raw.close()
