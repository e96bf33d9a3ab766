"""
A POP3 session's output back-pressure: one push producer registered with
the transport for the whole connection (L{SessionOutput}), so that a client
which pipelines RETRs and does not read what comes back makes the session
stop taking commands once the transport's buffer is full, instead of the
server holding every response it asked for (a RETR line of 8 bytes buys a
message of up to L{mailapp.pop3.policy.CHUNK_SIZE} read ahead).

A large message streamed from its file (L{mailapp.pop3.maildrop._MessageSender})
is a producer too, and a transport takes one: it registers with the session's
output (L{SessionOutput.consumer}), which passes pause, resume and stop on.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from mailapp.dotstuffing import Consumer

__all__ = ["SessionOutput"]


@implementer(IPushProducer)
class SessionOutput:
    """
    The producer a POP3 session registers with its transport. C{paused}
    says whether the transport asked it to wait; C{resumed} is called when
    the transport has room again.
    """

    def __init__(self, transport: Consumer, resumed: Callable[[], None]) -> None:
        self.paused = False
        self._transport = transport
        self._resumed = resumed
        self._registered = False
        #: The message file being streamed, if any: it pauses and resumes with us.
        self._inner: Any = None

    def register(self) -> None:
        self._transport.registerProducer(self, True)
        self._registered = True

    def release(self) -> None:
        """Unregister (at close: Twisted's TLS never starts its shutdown while a producer is registered)."""
        if self._registered:
            self._registered = False
            self._transport.unregisterProducer()

    def consumer(self) -> Consumer:
        """The transport as a producer of a message stream sees it: writes go through, registration stays here."""
        return _Inner(self)

    def pauseProducing(self) -> None:
        self.paused = True
        if self._inner is not None:
            self._inner.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self._inner is not None:
            self._inner.resumeProducing()
        self._resumed()

    def stopProducing(self) -> None:
        if self._inner is not None:
            self._inner.stopProducing()


class _Inner:
    """L{SessionOutput.consumer}: the transport, with a producer's registration kept by the session's output."""

    def __init__(self, output: SessionOutput) -> None:
        self._output = output

    def write(self, data: bytes) -> None:
        self._output._transport.write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._output._inner = producer
        if self._output.paused:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._output._inner = None
