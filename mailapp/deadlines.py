"""
The bounds on a session that no trickle of bytes can stretch (idle
timeouts restart at every byte, so a client sending one byte every 20
seconds kept its connection for ever): a whole-session deadline (SMTP,
POP3), a deadline for logging in (submission, POP3, IMAP, whose logged-in
sessions may IDLE for days), a time limit for each command line from its
first byte, and a minimum average rate for message data (SMTP DATA, IMAP
literals). The limits are the listener's L{mailapp.sessions.SessionLimits}.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from mailapp import logevents

if TYPE_CHECKING:
    from mailapp.sessions import SessionLimits

__all__ = ["Overrun", "SessionDeadlines", "cancel_call"]

_log = Logger()


class Overrun(enum.Enum):
    """Which bound of L{SessionDeadlines} a session overran; the value is what the client is told."""

    SESSION = b"Session time limit reached; closing connection"
    LOGIN = b"No login in time; closing connection"
    LINE = b"Command line too slow; closing connection"
    DATA = b"Data too slow; closing connection"


class SessionDeadlines:
    """
    The bounds on one session that no trickle of bytes can stretch (idle
    timeouts restart at every byte): the session's deadline, the login's,
    one per command line from its first byte, and a minimum average rate for
    message data. When one is overrun it is logged and C{expired} is called
    with the L{Overrun}; the session then says so in its protocol's words and
    closes, and no other bound fires.

    Sessions call L{lineStarted} when they are waiting for the rest of a
    line, L{lineEnded} when they have one, L{dataStarted}, L{dataReceived}
    and L{dataEnded} around message data, and L{hold} while their own
    back-pressure (a slow disk) keeps the client from sending: the rate
    counts only the time the client could send. The factory starts and
    stops them (L{SessionFactory.connected}, L{SessionFactory.disconnected},
    L{SessionFactory.loggedIn}).
    """

    def __init__(self, session: Any, policy: SessionLimits, seconds: Any, expired: Any) -> None:
        self._session = session
        self._policy = policy
        self._seconds = seconds
        self._expired = expired
        self._started: float | None = None
        self._sessionCall: Any = None
        self._loginCall: Any = None
        self._lineCall: Any = None
        self._dataCall: Any = None
        self._dataStarted: float | None = None
        self._dataBytes = 0
        self._held = 0.0
        self._holds = 0
        self._holdStarted: float | None = None
        self._over = False

    def _later(self, delay: float, overrun: Overrun) -> Any:
        # Through the session's callLater, which tests replace with a fake clock's.
        return self._session.callLater(max(0.0, delay), self._overrun, overrun)

    def start(self) -> None:
        self._started = self._seconds()
        if self._policy.session_deadline is not None:
            self._sessionCall = self._later(self._policy.session_deadline, Overrun.SESSION)
        if self._policy.login_deadline is not None:
            self._loginCall = self._later(self._policy.login_deadline, Overrun.LOGIN)

    def loggedIn(self, loggedIn: bool = True) -> None:
        """Logged in: the login deadline is met; logged out again (SMTP's STARTTLS): it is back, from the connect."""
        if loggedIn:
            self._loginCall = cancel_call(self._loginCall)
        elif self._loginCall is None and self._started is not None and self._policy.login_deadline is not None and not self._over:
            self._loginCall = self._later(self._started + self._policy.login_deadline - self._seconds(), Overrun.LOGIN)

    def lineStarted(self) -> None:
        """Part of a line has come: the rest must come within C{line_seconds} of the first part (idempotent)."""
        if self._lineCall is None and not self._over:
            self._lineCall = self._later(self._policy.line_seconds, Overrun.LINE)

    def lineEnded(self) -> None:
        self._lineCall = cancel_call(self._lineCall)

    def dataStarted(self) -> None:
        self.lineEnded()
        self._dataStarted = self._seconds()
        self._dataBytes = 0
        self._held = 0.0
        self._holdStarted = self._dataStarted if self._holds else None
        self._scheduleData()

    def dataReceived(self, count: int) -> None:
        """C{count} more bytes of the message data; cheap: no timer is touched."""
        self._dataBytes += count

    def dataEnded(self) -> None:
        self._dataStarted = None
        self._dataCall = cancel_call(self._dataCall)

    def hold(self, until: defer.Deferred[Any]) -> None:
        """The session stops reading until C{until} fires: that time does not count against the client's rate."""
        self._holds += 1
        if self._holds == 1:
            self._holdStarted = self._seconds()

        def release(result: Any) -> Any:
            self._holds -= 1
            if self._holds == 0 and self._holdStarted is not None:
                self._held += self._seconds() - self._holdStarted
                self._holdStarted = None
            return result

        until.addBoth(release)

    def _scheduleData(self) -> None:
        # Due when the data so far, at the minimum rate, is used up after the grace.
        assert self._dataStarted is not None
        active = self._seconds() - self._dataStarted - self._held
        if self._holdStarted is not None:
            active -= self._seconds() - self._holdStarted
        due = self._policy.data_grace + self._dataBytes / self._policy.min_data_rate
        self._dataCall = self._session.callLater(max(0.0, due - active), self._checkData)

    def _checkData(self) -> None:
        self._dataCall = None
        if self._dataStarted is None or self._over:
            return
        active = self._seconds() - self._dataStarted - self._held
        if self._holdStarted is not None:
            # Our own back-pressure: look again later.
            self._dataCall = self._session.callLater(1.0, self._checkData)
            return
        if active >= self._policy.data_grace + self._dataBytes / self._policy.min_data_rate:
            self._overrun(Overrun.DATA)
        else:
            self._scheduleData()

    def stop(self) -> None:
        """The session has ended (or is ending): nothing more fires."""
        self._over = True
        self._dataStarted = None
        for name in ("_sessionCall", "_loginCall", "_lineCall", "_dataCall"):
            setattr(self, name, cancel_call(getattr(self, name)))

    def _overrun(self, overrun: Overrun) -> None:
        if self._over:
            return
        self.stop()
        factory = getattr(self._session, "factory", None)
        _log.info(
            "session overran protocol={protocol} client={client} overrun={overrun} after {seconds:.1f} s",
            log_event=logevents.SESSION_OVERRUN,
            protocol=getattr(factory, "protocol_name", "unknown"),
            listener=getattr(factory, "listener_name", "unknown"),
            client=getattr(self._session, "_peerIP", ""),
            overrun=overrun.name.lower(),
            seconds=self._seconds() - self._started if self._started is not None else 0.0,
        )
        self._expired(overrun)


def cancel_call(call: Any) -> Any:
    """Cancel a delayed call if it is still pending; None, for the attribute that held it."""
    if call is not None and call.active():
        call.cancel()
    return None
