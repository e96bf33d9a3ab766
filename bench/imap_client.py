"""
Small asyncio clients for the IMAP workloads: an IMAP session over a raw
socket (literals read by byte count, every read bounded by a timeout) and an
SMTP sender that keeps one connection open. Not imaplib/smtplib: the
workloads time the server, not a line-by-line client, and open thousands of
sessions at once.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
_EXISTS = re.compile(rb"^\* (\d+) EXISTS\r\n$")
LIMIT = 1 << 24


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of C{values} (which must not be empty)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


class IMAP:
    """One IMAP session. C{on_exists(n, when)} is called for every untagged EXISTS, as it arrives."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.on_exists: Callable[[int, float], None] | None = None
        self._tag = 0
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float) -> IMAP:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=LIMIT), timeout)
        session = cls(reader, writer, timeout)
        greeting = await session.response_line()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"unexpected IMAP greeting {greeting!r}")
        return session

    async def _fill(self) -> None:
        chunk = await asyncio.wait_for(self.reader.read(1 << 18), self.timeout)
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(self._buffer), None)
        self._buffer += chunk

    async def response_line(self) -> bytes:
        """
        One response line, with any literals it carries (their bytes
        included). Reads in large chunks into a buffer of its own: one
        C{wait_for} per line would cost more than the server's work.
        """
        buffer = self._buffer
        start = 0
        while True:
            end = buffer.find(b"\r\n", start)
            while end < 0:
                start = max(0, len(buffer) - 1)
                await self._fill()
                end = buffer.find(b"\r\n", start)
            if buffer[end - 1 : end] == b"}":
                match = _LITERAL.search(buffer, max(0, end - 24), end + 2)
                if match is not None and match.end() == end + 2:
                    size = int(match.group(1))
                    while len(buffer) < end + 2 + size:
                        await self._fill()
                    start = end + 2 + size
                    continue
            line = bytes(buffer[: end + 2])
            del buffer[: end + 2]
            break
        if self.on_exists is not None:
            exists = _EXISTS.match(line)
            if exists:
                self.on_exists(int(exists.group(1)), time.perf_counter())
        return line

    async def command(self, text: bytes) -> tuple[list[bytes], bytes]:
        """Send one command; return its untagged lines and the tagged OK (anything else raises)."""
        self._tag += 1
        tag = b"t%d" % self._tag
        self.writer.write(tag + b" " + text + b"\r\n")
        untagged = []
        while True:
            line = await self.response_line()
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"{text[:40]!r} failed: {line!r}")
                return untagged, line
            untagged.append(line)

    async def login(self, user: str, password: str) -> None:
        await self.command(b"LOGIN " + user.encode() + b" " + password.encode())

    async def idle(self) -> bytes:
        """Start IDLE; return once the server says it is idling."""
        self._tag += 1
        self.idle_tag = b"t%d" % self._tag
        self.writer.write(self.idle_tag + b" IDLE\r\n")
        while True:
            line = await self.response_line()
            if line.startswith(b"+"):
                return line
            if line.startswith(self.idle_tag):
                raise RuntimeError(f"IDLE refused: {line!r}")

    async def listen(self) -> None:
        """Read untagged responses until the connection closes (run as a task while idling)."""
        while True:
            try:
                await self.response_line()
            except TimeoutError:
                continue
            except (asyncio.IncompleteReadError, ConnectionError):
                return

    def close(self) -> None:
        self.writer.close()


class SMTP:
    """One SMTP connection that sends one message at a time and reports when each 250 arrived."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float) -> SMTP:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        session = cls(reader, writer, timeout)
        await session._reply(b"220")
        writer.write(b"EHLO load.bench.test\r\n")
        await session._reply(b"250")
        return session

    async def _reply(self, expected: bytes) -> bytes:
        while True:
            line = await asyncio.wait_for(self.reader.readline(), self.timeout)
            if not line:
                raise ConnectionError("the SMTP server closed the connection")
            if line[3:4] != b"-":
                if not line.startswith(expected):
                    raise RuntimeError(f"expected {expected!r}, got {line!r}")
                return line

    async def send(self, recipient: str, data: bytes) -> tuple[float, float]:
        """Send one message (pipelined envelope); return (end of DATA sent, 250 received), perf_counter."""
        self.writer.write(b"MAIL FROM:<load@bench.test>\r\nRCPT TO:<" + recipient.encode() + b">\r\nDATA\r\n")
        for expected in (b"250", b"250", b"354"):
            await self._reply(expected)
        self.writer.write(data + b".\r\n")
        sent = time.perf_counter()
        await self._reply(b"250")
        return sent, time.perf_counter()

    async def quit(self) -> None:
        self.writer.write(b"QUIT\r\n")
        try:
            await self._reply(b"221")
        finally:
            self.writer.close()
