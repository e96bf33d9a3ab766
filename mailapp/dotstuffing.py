"""
Dot-stuffed multi-line data, the framing SMTP (RFC 5321 4.5.2) and POP3
(RFC 1939 3) share: a line that starts with a dot gets a second one, and a
line of one dot ends the data. Here are both directions, each correct
across chunk boundaries (the relay's own client once missed a dot at one),
and the producer that streams a message file out dot-stuffed with the
transport's back-pressure, so that a session holds about one chunk whatever
the message size.
"""

from __future__ import annotations

from typing import IO, Any, Callable, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["Consumer", "DotStuffer", "FileSender", "unstuff"]


class DotStuffer:
    """The sending side: stuff a stream of chunks, then L{end} it."""

    def __init__(self) -> None:
        self._atLineStart = True

    def stuff(self, data: bytes) -> bytes:
        if not data:
            return data
        out = data.replace(b"\n.", b"\n..")
        if self._atLineStart and data[:1] == b".":
            out = b"." + out
        self._atLineStart = data[-1:] == b"\n"
        return out

    def end(self) -> bytes:
        """The terminator, after a CRLF if the data did not end with one."""
        return b".\r\n" if self._atLineStart else b"\r\n.\r\n"


def unstuff(piece: bytes, atLineStart: bool) -> bytes:
    """
    The receiving side, for a piece of a line that is not the terminator:
    the dot a sender added at a line's start taken off (RFC 5321 4.5.2).
    """
    return piece[1:] if atLineStart and piece.startswith(b".") else piece


class Consumer(Protocol):
    """What L{FileSender} writes to: a transport (an L{IConsumer}, structurally)."""

    def write(self, data: bytes) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


#: Reads up to C{size} bytes of an open file off the reactor thread.
ChunkReader = Callable[[IO[bytes], int], "defer.Deferred[bytes]"]
#: Cuts the chunks it is given; returns what to send and whether that is the end.
ChunkFilter = Callable[[bytes], "tuple[bytes, bool]"]


@implementer(IPushProducer)
class FileSender:
    """
    Streams one open file to a consumer (the session's transport),
    dot-stuffed, then the terminator. The next chunk is read (C{read}, on a
    worker thread) only once the previous one is written and the consumer
    has not asked us to pause.

    C{done} fires with C{True} when the terminating line is written, or with
    C{False} when the connection went away first (L{stopProducing}); it
    fails if a read fails (the multi-line response is then half sent, so the
    session must hang up). The file is closed in every case, once no read
    is using it.
    """

    def __init__(
        self,
        consumer: Consumer,
        file: IO[bytes],
        read: ChunkReader,
        chunkSize: int,
        progress: Callable[[], None],
        cut: ChunkFilter | None = None,
    ) -> None:
        self.done: defer.Deferred[bool] = defer.Deferred()
        self._consumer = consumer
        self._file = file
        self._read = read
        self._chunkSize = chunkSize
        self._progress = progress
        self._cut = cut
        self._stuffer = DotStuffer()
        self._paused = False
        self._reading = False
        self._stopped = False

    def start(self) -> defer.Deferred[bool]:
        self._consumer.registerProducer(self, True)
        self._next()
        return self.done

    def _next(self) -> None:
        if self._paused or self._reading or self._stopped:
            return
        self._reading = True
        self._read(self._file, self._chunkSize).addCallbacks(self._got, self._failed)

    def _got(self, data: bytes) -> None:
        self._reading = False
        if self._stopped:
            self._file.close()
            return
        # A regular file returns a short read only at its end.
        finished = len(data) < self._chunkSize
        if self._cut is not None:
            data, cut = self._cut(data)
            finished = finished or cut
        if data:
            self._consumer.write(self._stuffer.stuff(data))
            self._progress()
        if finished:
            self._consumer.unregisterProducer()
            self._file.close()
            self._consumer.write(self._stuffer.end())
            self.done.callback(True)
        else:
            self._next()

    def _failed(self, reason: Failure) -> None:
        self._reading = False
        self._file.close()
        if not self._stopped:
            self._stopped = True
            self._consumer.unregisterProducer()
            self.done.errback(reason)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._next()

    def stopProducing(self) -> None:
        """The connection is gone: close the file (once no read is using it)."""
        if self._stopped:
            return
        self._stopped = True
        if not self._reading:
            self._file.close()
        self.done.callback(False)
