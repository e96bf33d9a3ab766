"""
IDLE (RFC 2177): the client waits, and the session tells it of changes to
the selected folder as they happen, until the client sends ``DONE``.

Changes come from the store's event bus (the session's hint calls
L{Idle.changed}) and, for what other processes do, from a slow poll
(C{idle_poll}). Updates run one at a time, and ``DONE`` is answered only
after the one in progress, so no untagged response follows the tagged OK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Coroutine

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import logevents
from mailapp.errors import MailboxGone
from mailapp.imap.wire import Token, expect_count

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["Idle", "idle"]

_log = Logger()


def idle(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 0, "IDLE")

    async def start() -> None:
        await session.update(allow_expunge=True, force=True)
        session.write(b"+ idling\r\n")
        Idle(session, tag).start()

    return start()


class Idle:
    """One IDLE command in progress, from its ``+`` to its ``DONE``."""

    def __init__(self, session: IMAPServer, tag: bytes) -> None:
        self._session = session
        #: The IDLE command's tag; None once ``DONE`` (or anything else) has come.
        self._tag: bytes | None = tag
        self._timer: Any = None
        self._updateQueued = False
        self._lock = defer.DeferredLock()

    def start(self) -> None:
        session = self._session
        session.idling = self
        session.reader.takeNextLine(self._line)
        self._timer = session.callLater(session.policy.idle_poll, self._poll)
        if session.selected is not None and session.selected.dirty:
            self.changed()

    def stop(self) -> None:
        """The connection is gone: no more polls."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _poll(self) -> None:
        self._timer = None
        if self._tag is None:
            return
        selected = self._session.selected
        if selected is not None:
            selected.dirty = True
            selected.look_outside = True
            self.changed()
        self._timer = self._session.callLater(self._session.policy.idle_poll, self._poll)

    def changed(self) -> None:
        """The selected folder changed: update the client's view (once, for every change until the update starts)."""
        if self._updateQueued:
            return  # one is queued and has not started: it will see this change too
        self._updateQueued = True
        session = self._session

        def run() -> defer.Deferred[None]:
            self._updateQueued = False
            if self._tag is None or not session.isConnected():
                return defer.succeed(None)
            return defer.Deferred.fromCoroutine(session.update(allow_expunge=True))

        def failed(reason: Failure) -> None:
            if reason.check(MailboxGone):
                session.untagged(b"BYE [UNAVAILABLE] This account was deleted")
                session.close()
                return
            _log.failure("imap idle update failed", reason, log_event=logevents.IMAP_INTERNAL_ERROR)

        self._lock.run(run).addErrback(failed)

    def _line(self, line: bytes) -> None:
        tag, self._tag = self._tag, None
        assert tag is not None
        session = self._session
        session.idling = None
        self.stop()

        def finish() -> defer.Deferred[None]:
            if line.strip().upper() == b"DONE":
                session.tagged(tag, b"OK", b"IDLE terminated")
            else:
                session.bad(tag, b"Expected DONE")
            return defer.succeed(None)

        session.hold(self._lock.run(finish), tag)
