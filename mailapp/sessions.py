"""
What every protocol's factory does with its sessions: count them (per
listener, per client address, those not logged in yet, and the whole
server's) so a flood gets a polite refusal instead of our memory, refuse
banned addresses (the process-wide L{AbuseGuard}), and close them on
shutdown without cutting off work in flight.

Each listener has its own budget (L{SessionLimits}), so that idle IMAP or
POP3 connections cannot take the places the MX needs to receive mail; the
connections of a listener with logins that have not logged in yet have a
smaller budget still, and a shorter idle timeout.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger, LogPublisher

from mailapp import logevents
from mailapp.abuse import AbuseGuard
from mailapp.config import SecurityConfig, listener_budget
from mailapp.interfaces import IMailbox

_log = Logger()

#: What a banned address is told at connect, after each protocol's own prefix.
BANNED = b"Too many failed logins from your address; try again later"

#: Seconds a closing connection gets to take its last reply and finish the
#: TLS shutdown before it is cut. Twisted's TLS waits for the client's
#: close_notify and a TCP close waits for the output buffer to drain, so a
#: client that stops reading (or never answers close_notify) would otherwise
#: keep its connection, and one of its address's connection slots, for ever.
CLOSE_GRACE = 30.0


#: The login timeout when the config says nothing: idle seconds before login.
LOGIN_TIMEOUT = 60.0


@dataclass(frozen=True, kw_only=True)
class SessionLimits:
    """
    How many sessions a listener admits, the part of every protocol's policy
    that L{SessionFactory.admit} reads (the policies extend it). Built from
    the config by L{session_limits}.
    """

    #: This listener's open connections.
    max_connections: int = 1000
    #: One client address's open connections, on every listener together.
    max_connections_per_ip: int = 20
    #: This listener's connections that have not logged in; None where there
    #: is no login (the MX), so every connection is the listener's to use.
    max_unauthenticated: int | None = None
    #: Every listener's connections together (C{[limits] max_connections});
    #: None for a factory used alone (a test).
    max_server_connections: int | None = None
    #: Idle seconds before login (submission, POP3, IMAP); after it, the protocol's own timeout.
    login_timeout: float = LOGIN_TIMEOUT


def session_limits(config: Any, listener: Any) -> dict[str, Any]:
    """
    The L{SessionLimits} fields for C{listener} under C{config}, as keyword
    arguments for a protocol's policy: the one place the builders get them.
    """
    budget = listener_budget(config, listener)
    return {
        "max_connections": budget.max_connections,
        "max_connections_per_ip": config.limits.max_connections_per_ip,
        "max_unauthenticated": budget.max_unauthenticated,
        "max_server_connections": config.limits.max_connections,
        "login_timeout": float(config.limits.login_timeout_seconds),
    }


class ConnectionCounts:
    """
    Open connections in total and per client address. The service gives one
    to every listener, so that C{max_server_connections} and the limit per
    address hold for the whole server, not for each port (a client cannot
    get 8 x max_connections_per_ip by using every listener).
    """

    def __init__(self) -> None:
        self.total = 0
        self.perIP: dict[str, int] = {}

    def add(self, ip: str) -> None:
        self.total += 1
        self.perIP[ip] = self.perIP.get(ip, 0) + 1

    def remove(self, ip: str) -> None:
        self.total -= 1
        count = self.perIP.get(ip, 1) - 1
        if count > 0:
            self.perIP[ip] = count
        else:
            self.perIP.pop(ip, None)


class AuthOutcome(enum.Enum):
    """What a session says after a failed login, once its delay is over."""

    RETRY = "retry"  # "wrong password", the session goes on
    TOO_MANY = "too_many"  # too many failures in this session: say so and close
    BANNED = "banned"  # the address is now banned: say so and close


class SessionFactory(ServerFactory):
    """
    A listener's factory. Subclasses set C{policy} (a L{SessionLimits}) and
    build sessions that call L{admit} and L{connected} when they start,
    L{loggedIn} when a login succeeds, L{disconnected} when they end, keep
    their client's address in C{_peerIP}, and offer C{shutdown()}, which
    returns a Deferred that fires when the session has closed (or None).

    C{guard} is the server's L{AbuseGuard}; a factory built without one (a
    test, a factory used alone) gets its own, whose base delay is the
    policy's C{auth_failure_delay}.
    """

    policy: Any
    reactor: Any
    #: The portal L{login} verifies credentials through (the subclass sets it).
    portal: Any

    def __init__(self, inflight: Any = None, guard: AbuseGuard | None = None) -> None:
        self._inflight = inflight
        self._guard = guard
        self.sessions: set[Any] = set()
        #: The sessions in L{sessions} that have logged in.
        self.loggedInSessions: set[Any] = set()
        #: Shared by every listener of a server (the service sets it); a
        #: factory used alone counts its own sessions.
        self.counts = ConnectionCounts()
        self._since: dict[Any, float] = {}
        self._closing: dict[Any, Any] = {}

    @property
    def guard(self) -> AbuseGuard:
        if self._guard is None:
            delay = float(getattr(self.policy, "auth_failure_delay", 1.0))
            self._guard = AbuseGuard(
                self.reactor.seconds, SecurityConfig(auth_failure_delay=delay, auth_failure_delay_max=max(delay * 16, delay))
            )
        return self._guard

    def login(self, session: Any, name: str, password: bytes) -> defer.Deferred[Any]:
        """
        Verify a session's credentials through C{self.portal} (firing with
        the portal's C{(interface, avatar, logout)}), unless its address has
        as many logins in progress as it has failures left before a ban
        (L{AbuseGuard.attemptStarted}): then it fails with
        C{UnauthorizedLogin} without trying the password.
        """
        ip = session._peerIP
        if not self.guard.attemptStarted(ip):
            return defer.fail(UnauthorizedLogin("too many logins in progress from this address"))
        d = defer.maybeDeferred(self.portal.login, UsernamePassword(name, password), None, IMailbox)

        def ended(result: Any) -> Any:
            self.guard.attemptEnded(ip)
            return result

        return d.addBoth(ended)

    def banned(self, ip: str, protocol: str) -> bool:
        """Whether C{ip} is banned; the session then says L{BANNED} in its protocol's words and closes."""
        remaining = self.guard.banRemaining(ip)
        if remaining <= 0:
            return False
        _log.info(
            "refused banned client={client} protocol={protocol} remaining={remaining:.0f}",
            log_event=logevents.AUTH_BANNED_REFUSED,
            client=ip,
            protocol=protocol,
            remaining=remaining,
        )
        return True

    def authFailed(self, session: Any, protocol: str, account: str | bytes, max_failures: int) -> defer.Deferred[AuthOutcome]:
        """
        A failed login on C{session}: count it (the session's C{_authFailures}
        and the server's guard, which logs it), and fire with what to answer
        once the guard's delay is over, on the session's clock.
        """
        session._authFailures += 1
        verdict = self.guard.failed(protocol, session._peerIP, account)
        if verdict.banned:
            outcome = AuthOutcome.BANNED
        elif session._authFailures >= max_failures:
            outcome = AuthOutcome.TOO_MANY
        else:
            outcome = AuthOutcome.RETRY
        answered: defer.Deferred[AuthOutcome] = defer.Deferred()
        session.callLater(verdict.delay, answered.callback, outcome)
        return answered

    def inflight(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """Count C{d} as work a shutdown waits for (bounded by the service)."""
        return self._inflight.track(d) if self._inflight is not None else d

    #: Set by the service for each listener: what the session events say.
    protocol_name = "unknown"
    listener_name = "unknown"
    #: Set by the service: where L{command_done} publishes (see L{mailapp.metrics}).
    telemetry: LogPublisher | None = None

    def admit(self, ip: str) -> bytes | None:
        """None to let a client in, or why not (for the protocol's refusal)."""
        policy: SessionLimits = self.policy
        refusal = None
        ceiling = policy.max_server_connections
        if len(self.sessions) >= policy.max_connections or (ceiling is not None and self.counts.total >= ceiling):
            refusal = b"Too many connections; try again later"
        elif self.counts.perIP.get(ip, 0) >= policy.max_connections_per_ip:
            refusal = b"Too many connections from your address; try again later"
        elif policy.max_unauthenticated is not None and self.unauthenticated() >= policy.max_unauthenticated:
            refusal = b"Too many connections waiting to log in; try again later"
        if refusal is not None:
            _log.info(
                "session refused protocol={protocol} listener={listener} client={client}: {reason}",
                log_event=logevents.SESSION_REFUSED,
                protocol=self.protocol_name,
                listener=self.listener_name,
                client=ip,
                reason=refusal.decode("ascii"),
            )
        return refusal

    def unauthenticated(self) -> int:
        """This listener's open sessions that have not logged in."""
        return len(self.sessions) - len(self.loggedInSessions)

    def loggedIn(self, session: Any, loggedIn: bool = True) -> None:
        """
        C{session} has logged in (or, with C{loggedIn} false, is back to
        not logged in: SMTP's STARTTLS forgets an AUTH): it leaves (or
        rejoins) the listener's C{max_unauthenticated} budget.
        """
        if not loggedIn:
            self.loggedInSessions.discard(session)
        elif session in self.sessions:
            self.loggedInSessions.add(session)

    def connected(self, session: Any) -> None:
        self.sessions.add(session)
        self.counts.add(session._peerIP)
        self._since[session] = time.monotonic()
        _log.info(
            "session started protocol={protocol} listener={listener} client={client}",
            log_event=logevents.SESSION_STARTED,
            protocol=self.protocol_name,
            listener=self.listener_name,
            client=session._peerIP,
        )

    def close(self, session: Any, grace: float = CLOSE_GRACE) -> None:
        """
        End C{session}'s connection once its buffered output is written, and
        cut it (C{abortConnection}) if that has not happened within C{grace}
        seconds. The session must have unregistered any producer it gave its
        transport: Twisted's TLS does not start its shutdown while one is
        registered, which kept every IMAP connection over TLS open after
        LOGOUT. Calling it again changes nothing.
        """
        transport = session.transport
        if transport is None:
            return
        transport.loseConnection()
        if session not in self._closing:
            self._closing[session] = session.callLater(grace, self._cut, session, transport, grace)

    def _cut(self, session: Any, transport: Any, grace: float) -> None:
        self._closing.pop(session, None)
        _log.info(
            "closing connection cut after {grace} s protocol={protocol} client={client}: the client took neither its last reply nor the close",
            log_event=logevents.SESSION_CUT,
            grace=grace,
            protocol=self.protocol_name,
            client=getattr(session, "_peerIP", ""),
        )
        transport.abortConnection()

    def command_done(self, command: str, started: float) -> None:
        """
        A session answered C{command}, begun at C{started} (C{time.perf_counter()}):
        tell the telemetry publisher (metrics), if any. Cheap when there is none.
        """
        if self.telemetry is not None:
            self.telemetry(
                {
                    "log_event": logevents.SESSION_COMMAND,
                    "protocol": self.protocol_name,
                    "listener": self.listener_name,
                    "command": command,
                    "seconds": time.perf_counter() - started,
                }
            )

    def disconnected(self, session: Any) -> None:
        cut = self._closing.pop(session, None)
        if cut is not None and cut.active():
            cut.cancel()
        if session in self.sessions:
            started = self._since.pop(session, None)
            _log.info(
                "session ended protocol={protocol} listener={listener} client={client} after {seconds:.3f} s",
                log_event=logevents.SESSION_ENDED,
                protocol=self.protocol_name,
                listener=self.listener_name,
                client=session._peerIP,
                seconds=time.monotonic() - started if started is not None else 0.0,
            )
            self.sessions.discard(session)
            self.loggedInSessions.discard(session)
            self.counts.remove(session._peerIP)

    def stopFactory(self) -> None:
        """
        Tell every session the server is stopping. A goodbye is only buffered
        when this returns: the service's stop waits (bounded) for each
        session to close, so the reactor does not end before it is written.
        """
        for session in list(self.sessions):
            closed = session.shutdown()
            if closed is not None:
                self.inflight(closed)
