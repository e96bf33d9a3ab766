"""
DEFLATE on a session's byte stream (raw DEFLATE, RFC 1951, as IMAP's
COMPRESS=DEFLATE uses it, RFC 4978): the two halves that
L{mailapp.linesession.LineSession} puts around a connection once a protocol
has agreed to compress.

  - B{Out:} L{CompressingTransport} stands in for the session's transport
    (plain TCP, implicit TLS, or TCP after STARTTLS: compression sits inside
    TLS). Every C{write} is compressed and flushed with C{Z_SYNC_FLUSH}, so
    the client can decode all of it at once; a session that gathers its
    output (IMAP writes once per burst) therefore flushes once per burst.
    Flow control is the wrapped transport's: the compressed bytes fill its
    buffer, and the producers registered with it are paused as before.
  - B{In:} L{Inflater} keeps what the client sent still compressed and
    inflates it at most L{INFLATE_STEP} bytes at a time, when the session
    asks. A small input can inflate to gigabytes (a decompression bomb), so
    nothing is inflated ahead of the session: the line limits, the literal
    limits and the back-pressure then see the inflated bytes as they would
    see them in the clear.
"""

from __future__ import annotations

import zlib
from typing import Any

from zope.interface import directlyProvides, providedBy

__all__ = ["INFLATE_STEP", "CompressingTransport", "Inflater"]

#: Inflated bytes produced per step; the session holds at most its line limit and one step.
INFLATE_STEP = 64 * 1024
#: Raw DEFLATE: no zlib header or checksum (RFC 4978 3).
_RAW_DEFLATE = -15


class Inflater:
    """The client's compressed input, inflated a step at a time (L{inflate})."""

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(_RAW_DEFLATE)
        self._pending = b""

    @property
    def pending(self) -> int:
        """Compressed bytes received and not yet inflated."""
        return len(self._pending)

    def feed(self, data: bytes) -> None:
        """Keep C{data}, compressed, until L{inflate} is asked for it."""
        self._pending += data

    def inflate(self, limit: int = INFLATE_STEP) -> bytes:
        """
        At most C{limit} inflated bytes from what is pending (empty when
        nothing is). Raises C{zlib.error} for data that is not DEFLATE.
        Bytes after the end of the DEFLATE stream are dropped: a client
        that finishes its stream has nothing more it can say.
        """
        while self._pending:
            if self._inflate.eof:
                self._pending = b""
                break
            data = self._inflate.decompress(self._pending, limit)
            self._pending = self._inflate.unconsumed_tail
            if data:
                return data
        return b""


class CompressingTransport:
    """
    A transport that compresses what is written to it into C{transport},
    flushing each write; everything else is the wrapped transport's. It
    provides the interfaces the wrapped transport does (L{ISSLTransport}
    over TLS: the session still knows it is encrypted).
    """

    def __init__(self, transport: Any, level: int = 6) -> None:
        self.wrapped = transport
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, _RAW_DEFLATE)
        directlyProvides(self, providedBy(transport))

    def write(self, data: bytes) -> None:
        if data:
            self.wrapped.write(self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH))

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    @property
    def disconnecting(self) -> bool:
        return bool(self.wrapped.disconnecting)

    def loseConnection(self) -> None:
        self.wrapped.loseConnection()

    def abortConnection(self) -> None:
        self.wrapped.abortConnection()

    def getPeer(self) -> Any:
        return self.wrapped.getPeer()

    def getHost(self) -> Any:
        return self.wrapped.getHost()

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.wrapped.setTcpNoDelay(enabled)

    def pauseProducing(self) -> None:
        self.wrapped.pauseProducing()

    def resumeProducing(self) -> None:
        self.wrapped.resumeProducing()

    def startTLS(self, contextFactory: Any) -> None:
        # Compression inside TLS, never TLS inside compression (RFC 4978 6):
        # no protocol starts TLS after compressing.
        raise RuntimeError("TLS cannot start inside a compressed stream")

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.wrapped.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.wrapped.unregisterProducer()

    def __getattr__(self, name: str) -> Any:
        # The rest of the wrapped transport (getPeerCertificate over TLS, and the like).
        return getattr(self.wrapped, name)
