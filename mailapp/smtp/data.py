"""
The message's bytes in an SMTP session: DATA's byte stream after ``354``
up to ``<CRLF>.<CRLF>``, BDAT's chunks (RFC 3030), and the header fields
the server writes or adds.

L{_MessageStream} is the one path both take to the spool: the header checks,
the NUL check, the size limit (counted, never buffered: past it nothing more
is written, while the bytes are still taken so that the session stays in
step), the fields added to a submitted message, and writes in batches whose
Deferred the session waits for before it reads more (back-pressure).

L{_DataReceiver} owns the rules that keep SMTP smuggling out: the end of
data is only ``<CRLF>.<CRLF>``; a bare LF or bare CR inside the data is
stored as CRLF and never ends it; data is streamed to the spool as it comes,
lines of any length included, so neither a long line nor a large message can
grow memory or drop the session out of DATA mode.

L{_ChunkReceiver} takes BDAT's chunks as they are: exactly the announced
octets, no dot-stuffing, no line end looked for or changed.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
from typing import Any, Callable

from mailapp.dotstuffing import unstuff
from mailapp.headercheck import HeaderCheck
from mailapp.smtp.policy import DATA_FLUSH, MAX_HEADER_BLOCK

__all__ = ["_ChunkReceiver", "_DataReceiver", "_MessageStream", "address_literal", "missing_headers", "received_header"]

_BARE = re.compile(rb"\r|\n")


class _MessageStream:
    """
    A message on its way to the spool (or to a L{HeldMessage}), whichever
    command carries it: see the module docstring. C{done} once L{_end} ran.
    """

    def __init__(
        self,
        message: Any,
        limit: int,
        prefix: bytes = b"",
        addMissing: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.message = message
        self.limit = limit
        self.size = 0
        self.tooBig = False
        self.done = False
        #: Hop count and header field sizes, checked as the header block streams by.
        self.headers = HeaderCheck()
        #: Whether a NUL byte was seen: such a message is refused, never stored or relayed.
        self.hasNul = False
        self.lastWrite: Any = None
        self._atLineStart = True
        self._out: list[bytes] = []
        self._outSize = 0
        self._prefix = prefix
        self._addMissing = addMissing
        self._headers: bytearray | None = bytearray() if addMissing else None
        if not addMissing:
            self._emit(prefix)

    def feed(self, buffer: bytes) -> bytes:
        """Consume what belongs to the message of C{buffer}; return the rest (the next command's bytes)."""
        raise NotImplementedError

    def _end(self) -> None:
        """The last byte is in: add what a submitted message lacks, and write the rest."""
        self.done = True
        self._finishHeaders()
        self._flush(final=True)

    def _emit(self, data: bytes, body: bool = False) -> None:
        if body:
            if not self.headers.done:
                self.headers.feed(data)
            if not self.hasNul and b"\x00" in data:
                self.hasNul = True
            self.size += len(data)
            if self.size > self.limit:
                self.tooBig = True
        if self.tooBig:
            return
        if self._headers is not None and body:
            searched = max(0, len(self._headers) - 3)
            self._headers += data
            if (
                self._headers.find(b"\r\n\r\n", searched) >= 0
                or self._headers.startswith(b"\r\n")
                or len(self._headers) > MAX_HEADER_BLOCK
            ):
                self._finishHeaders()
            return
        self._out.append(data)
        self._outSize += len(data)

    def _finishHeaders(self) -> None:
        if self._headers is None or self._addMissing is None:
            return
        headers, self._headers = bytes(self._headers), None
        added = self._addMissing(headers.split(b"\r\n\r\n", 1)[0])
        if not self.tooBig:
            self._out[:0] = [self._prefix, added]
            self._out.append(headers)
            self._outSize += len(self._prefix) + len(added) + len(headers)

    def _flush(self, final: bool) -> None:
        if self.tooBig:
            self._out = []
            self._outSize = 0
            return
        if self._out and (final or self._outSize >= DATA_FLUSH):
            self.lastWrite = self.message.write(b"".join(self._out))
            self._out = []
            self._outSize = 0


class _DataReceiver(_MessageStream):
    """
    The DATA phase: unstuffs dots, finds ``<CRLF>.<CRLF>`` and nothing else,
    turns bare CR and bare LF into CRLF, enforces the size limit without
    buffering, and streams to the spool.
    """

    #: Whole runs of plain lines are handed over at once; tests turn this off
    #: to check it against the line-by-line path.
    fastPath = True

    def feed(self, buffer: bytes) -> bytes:
        """Consume what it can of C{buffer}; return what follows the end of data."""
        position = 0
        fast = self.fastPath
        while not self.done:
            if fast and self._atLineStart and not buffer.startswith(b".", position):
                # Fast path: hand over a run of whole lines at once, up to the
                # next line that starts with a dot (stuffed, or the end).
                last = buffer.rfind(b"\r\n", position)
                if last >= 0:
                    dot = buffer.find(b"\r\n.", position, last + 2)
                    end = (dot if dot >= 0 else last) + 2
                    run = buffer[position:end]
                    crlf = run.count(b"\r\n")
                    if run.count(b"\r") == crlf and run.count(b"\n") == crlf:
                        self._emit(run, body=True)
                        position = end
                        continue
                    fast = False  # bare CR or LF in this buffer: go line by line
            end = buffer.find(b"\r\n", position)
            if end < 0:
                rest = buffer[position:]
                # Keep a trailing CR: it may be the first half of a CRLF.
                keep = 1 if rest.endswith(b"\r") else 0
                if len(rest) - keep >= DATA_FLUSH:
                    self._content(rest[: len(rest) - keep], complete=False)
                    rest = rest[len(rest) - keep :]
                self._flush(final=False)
                return rest
            line = buffer[position:end]
            position = end + 2
            if self._atLineStart and line == b".":
                self._end()
                return buffer[position:]
            self._content(line, complete=True)
        return buffer[position:]

    def _content(self, piece: bytes, complete: bool) -> None:
        piece = unstuff(piece, self._atLineStart)
        if b"\r" in piece or b"\n" in piece:
            piece = _BARE.sub(b"\r\n", piece)
        if complete:
            piece += b"\r\n"
        self._atLineStart = complete
        self._emit(piece, body=True)


class _ChunkReceiver(_MessageStream):
    """
    BDAT (RFC 3030): a message in chunks, each exactly the octets its
    command announced, taken as they are (a bare LF, a bare CR, a line
    that starts with a dot: all kept as sent). L{expect} starts a chunk;
    L{feed} takes what it can of it; the last chunk ends the message.
    """

    #: Octets of the current chunk not received yet.
    remaining = 0
    #: The current chunk's size, and whether it is the last (BDAT ... LAST).
    chunk = 0
    last = False

    def expect(self, size: int, last: bool) -> None:
        self.chunk = self.remaining = size
        self.last = last
        if size == 0 and last:
            self._end()  # BDAT 0 LAST: the message ends with what came before

    def feed(self, buffer: bytes) -> bytes:
        """Consume what belongs to the current chunk of C{buffer}; return the rest."""
        taken = buffer[: self.remaining]
        self.remaining -= len(taken)
        if taken:
            self._emit(taken, body=True)
        if self.remaining == 0 and self.last:
            self._end()
        else:
            self._flush(final=False)
        return buffer[len(taken) :]


def address_literal(ip: str) -> str:
    """
    A client's address as RFC 5321 (4.1.3) writes it in a trace header:
    ``[192.0.2.1]``, ``[IPv6:2001:db8::1]``; an IPv4 client of a dual-stack
    listener (``::ffff:192.0.2.1``) as IPv4.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return f"[{ip}]"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:
            return f"[IPv6:{address}]"
        address = address.ipv4_mapped
    return f"[{address}]"



def received_header(
    helo: str | None, ip: str, hostname: str, protocol: str, queue_id: str, recipients: list[str], now: float
) -> bytes:
    """
    The ``Received:`` field this server prepends (RFC 5321 4.4), with the
    recipient only when there is one (a shared file must not show Bcc
    recipients to each other), dated C{now}: the session's clock
    (C{reactor.seconds()}), so that a test on a L{task.Clock} sees its date.
    """
    target = f"\r\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    client = address_literal(ip) if ip else "local socket"
    return (
        f"Received: from {helo} ({client})\r\n"
        f"\tby {hostname} (mailapp) with {protocol} id {queue_id}{target};\r\n"
        f"\t{email.utils.formatdate(now, localtime=False)}\r\n"
    ).encode("utf-8")


def missing_headers(headers: bytes, hostname: str, now: float) -> bytes:
    """
    The ``Date:`` (C{now}, the session's clock) and ``Message-ID:`` fields a
    submitted message's header block C{headers} lacks.
    """
    names = {line.split(b":", 1)[0].strip().lower() for line in headers.split(b"\r\n") if b":" in line and line[:1] not in b" \t"}
    added = b""
    if b"date" not in names:
        added += b"Date: " + email.utils.formatdate(now, localtime=False).encode() + b"\r\n"
    if b"message-id" not in names:
        added += b"Message-ID: " + email.utils.make_msgid(domain=hostname).encode() + b"\r\n"
    return added
