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

L{SessionDeadlines} (in L{mailapp.deadlines}, re-exported here) bounds
each session however it trickles.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger, LogPublisher

from mailapp import logevents
from mailapp.abuse import AbuseGuard, address_key
from mailapp.config import DEFAULT_LIMITS, DEFAULT_SECURITY, LOGIN_PROTOCOLS, SecurityConfig, listener_budget
from mailapp.deadlines import Overrun, SessionDeadlines, cancel_call
from mailapp.errors import AddressLoginsBusy
from mailapp.interfaces import IMailbox

_log = Logger()

__all__ = [
    "ADMIT_SETTLE_SECONDS",
    "BANNED",
    "BUDGET_PREFIX",
    "CLOSE_GRACE",
    "LOGIN_TIMEOUT",
    "AuthOutcome",
    "ConnectionCounts",
    "Overrun",
    "RefusalLog",
    "SessionDeadlines",
    "SessionFactory",
    "SessionLimits",
    "budget_key",
    "session_limits",
]

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

#: Seconds a command line may take from its first byte to its end (a person
#: typing into telnet is done well within it; a trickler is not).
LINE_SECONDS = 60.0
#: Bytes per second message data must average (Postfix's smtpd_min_data_rate)...
MIN_DATA_RATE = 500
#: ... after this many free seconds at its start.
DATA_GRACE = 30.0
#: Seconds the log keeps quiet about one address's further refused connections.
REFUSAL_LOG_WINDOW = 60.0


@dataclass(frozen=True, kw_only=True)
class SessionLimits:
    """
    How many sessions a listener admits, the part of every protocol's policy
    that L{SessionFactory.admit} reads (the policies extend it), and the
    login rules every protocol with logins shares. Built from the config by
    L{session_limits}.
    """

    #: This listener's open connections.
    max_connections: int = DEFAULT_LIMITS.max_connections
    #: One client address's open connections, on every listener together.
    max_connections_per_ip: int = DEFAULT_LIMITS.max_connections_per_ip
    #: This listener's connections that have not logged in; None where there
    #: is no login (the MX), so every connection is the listener's to use.
    max_unauthenticated: int | None = None
    #: Every listener's connections together (C{[limits] max_connections});
    #: None for a factory used alone (a test).
    max_server_connections: int | None = None
    #: Idle seconds before login (submission, POP3, IMAP); after it, the protocol's own timeout.
    login_timeout: float = float(DEFAULT_LIMITS.login_timeout_seconds)
    #: Seconds a whole session may last, however busy; None: no limit (IMAP, whose sessions IDLE for days).
    session_deadline: float | None = None
    #: Seconds from connect to a successful login, whatever the client sends; None where there is no login.
    login_deadline: float | None = None
    #: Seconds a command line may take from its first byte to its end.
    line_seconds: float = float(DEFAULT_LIMITS.command_line_seconds)
    #: Bytes per second message data (SMTP DATA, an IMAP literal) must average, after C{data_grace} free seconds.
    min_data_rate: float = DEFAULT_LIMITS.min_data_rate
    data_grace: float = float(DEFAULT_LIMITS.data_grace_seconds)
    #: Whether a login may be sent before TLS (the config allows it on loopback listeners only).
    allow_plaintext_auth: bool = False
    #: Base delay of the factory's own guard when none is given (tests); the server's guard has its own.
    auth_failure_delay: float = DEFAULT_SECURITY.auth_failure_delay
    #: Commands before a login succeeds (a SASL exchange's continuation lines not counted);
    #: SMTP counts them on submission only (the MX never logs in).
    max_commands_before_auth: int = DEFAULT_LIMITS.max_commands_before_auth


def session_limits(config: Any, listener: Any) -> dict[str, Any]:
    """
    The L{SessionLimits} fields for C{listener} under C{config}, as keyword
    arguments for a protocol's policy: the one place the builders get them.
    """
    budget = listener_budget(config, listener)
    limits = config.limits
    session_deadline = {"smtp": limits.smtp_session_seconds, "submission": limits.smtp_session_seconds, "pop3": limits.pop3_session_seconds}
    return {
        "max_connections": budget.max_connections,
        "max_connections_per_ip": limits.max_connections_per_ip,
        "max_unauthenticated": budget.max_unauthenticated,
        "max_server_connections": limits.max_connections,
        "login_timeout": float(limits.login_timeout_seconds),
        "session_deadline": _seconds(session_deadline.get(listener.protocol)),
        "login_deadline": float(limits.login_deadline_seconds) if listener.protocol in LOGIN_PROTOCOLS else None,
        "line_seconds": float(limits.command_line_seconds),
        "min_data_rate": float(limits.min_data_rate),
        "data_grace": float(limits.data_grace_seconds),
        "allow_plaintext_auth": listener.allow_plaintext_auth,
        "max_commands_before_auth": limits.max_commands_before_auth,
    }


def _seconds(value: int | None) -> float | None:
    return float(value) if value is not None else None


class RefusalLog:
    """
    The log lines for refused connections, at most one per client address
    (L{address_key}) per C{window} seconds, then one summary of how many
    more were refused in that window: one client refusing itself 86,356
    times in 40 seconds once wrote 19 MB of identical lines. The service
    shares one among the listeners. Every refusal still reaches the metrics
    (through the telemetry publisher for those not logged).
    """

    def __init__(self, clock: Any, window: float = REFUSAL_LOG_WINDOW, max_addresses: int = 10_000) -> None:
        self._clock = clock
        self._window = window
        self._max_addresses = max_addresses
        #: address key -> [window start, refusals not logged, the summary's call or None, protocol, listener]
        self._windows: dict[str, list[Any]] = {}

    def refused(
        self, factory: Any, ip: str, reason: str, event: str = logevents.SESSION_REFUSED, protocol: str | None = None, **fields: Any
    ) -> None:
        """Log (or count, within the address's window) one refused connection of C{factory}'s listener."""
        protocol = protocol or factory.protocol_name
        key = address_key(ip)
        now = self._clock.seconds()
        window = self._windows.get(key)
        if window is not None and now - window[0] < self._window:
            window[1] += 1
            if window[2] is None:
                window[2] = self._clock.callLater(window[0] + self._window - now, self._summarise, key)
            if factory.telemetry is not None:
                factory.telemetry(
                    {"log_event": event, "protocol": protocol, "listener": factory.listener_name, "client": ip, "reason": reason, **fields}
                )
            return
        if window is not None:
            self._summarise(key)
        while len(self._windows) >= self._max_addresses:
            self._summarise(next(iter(self._windows)))
        self._windows[key] = [now, 0, None, protocol, factory.listener_name]
        if event == logevents.SESSION_REFUSED:
            _log.info(
                "session refused protocol={protocol} listener={listener} client={client}: {reason}",
                log_event=event,
                protocol=protocol,
                listener=factory.listener_name,
                client=ip,
                reason=reason,
                **fields,
            )
        else:
            _log.info(
                "refused banned client={client} protocol={protocol} remaining={remaining:.0f}",
                log_event=event,
                protocol=protocol,
                listener=factory.listener_name,
                client=ip,
                reason=reason,
                **fields,
            )

    def _summarise(self, key: str) -> None:
        window = self._windows.pop(key, None)
        if window is None:
            return
        started, count, call, protocol, listener = window
        cancel_call(call)
        if count:
            _log.info(
                "refused {count} more connections from {client} in the last {seconds:.0f} s",
                log_event=logevents.SESSION_REFUSED_SUMMARY,
                protocol=protocol,
                listener=listener,
                client=key,
                count=count,
                seconds=min(self._window, self._clock.seconds() - started),
            )

    def flush(self) -> None:
        """Write every pending summary now (the server is stopping)."""
        for key in list(self._windows):
            self._summarise(key)


#: What starts a listener budget's key in L{ConnectionCounts} (never a client address's).
BUDGET_PREFIX = "@"
#: How long a worker waits before deciding on a client near a limit (L{SessionFactory.admitSoon}).
ADMIT_SETTLE_SECONDS = 0.005


def budget_key(listener: str, unauthenticated: bool = False) -> str:
    """The key under which listener C{listener}'s sessions (or those not logged in yet) are shared between processes."""
    return f"{BUDGET_PREFIX}{listener}/unauthenticated" if unauthenticated else f"{BUDGET_PREFIX}{listener}"


class ConnectionCounts:
    """
    Open connections in total and per client (L{address_key}: an IPv4
    address or an IPv6 /64). The service gives one to every listener, so
    that C{max_server_connections} and the limit per address hold for the
    whole server, not for each port (a client cannot get 8 x
    max_connections_per_ip by using every listener).

    With worker processes (L{mailapp.workers}) the counts include the other
    processes' open connections, as they report them (L{share} out,
    L{learn} in, L{forget} a process that died), so the limits hold for the
    whole server, a few milliseconds behind.

    Each listener's own budgets travel the same way, as keys of their own
    (L{budget_key}: C{@NAME} for its open sessions, C{@NAME/unauthenticated}
    for those not logged in yet), which no client address can be and which
    the total leaves out: a factory counts its own sessions itself and asks
    L{elsewhere_of} for the other processes'.
    """

    def __init__(self) -> None:
        self.total = 0
        self.perIP: dict[str, int] = {}
        #: Called with (client key, +1 or -1) for each of this process's connections; None in a single process.
        self.share: Callable[[str, int], None] | None = None
        #: The other processes' open connections: origin -> client key -> count.
        self.elsewhere: dict[str, dict[str, int]] = {}
        #: The other processes' open connections per origin (their clients', not the listener budgets).
        self._openElsewhere: dict[str, int] = {}
        #: How many processes accept on the listeners (the ready workers; 1 in a single process).
        self.serving = 1

    def overBudget(self, here: int, key: str, limit: int) -> bool:
        """
        Whether one more session would pass a budget of C{limit} sessions,
        this process holding C{here} and the others what they reported
        under C{key} (L{budget_key}). The others' counts are a few
        milliseconds behind, so workers admitting at once could each see
        room for the last places (two workers let 260-270 MX sessions in
        against 250). Near the limit (within a tenth of it, at least two
        places per process) a process also keeps to its fair share, C{limit}
        over the processes serving, rounded up, plus one (the workers take
        turns at accepting within one connection of each other, so an
        uneven split does not refuse a client another worker had room
        for): together they pass the limit by at most one place per
        process. Far from it, the total alone decides, and one worker may
        hold more than its share.
        """
        total = here + self.elsewhere_of(key)
        if total >= limit:
            return True
        if self.serving > 1 and total >= limit - max(limit // 10, 2 * self.serving):
            return here >= -(-limit // self.serving) + 1
        return False

    def near(self, total: int, limit: int) -> bool:
        """Whether C{total} is within two places per serving process of C{limit} (L{SessionFactory.admitSoon})."""
        return total + 2 * self.serving >= limit

    def open_in(self, origin: str) -> int:
        """The connections process C{origin} has open, as it reported them."""
        return self._openElsewhere.get(origin, 0)

    def open_here(self) -> int:
        """This process's own open connections."""
        return self.total - sum(self._openElsewhere.values())

    def of(self, ip: str) -> int:
        """The open connections of C{ip}'s client (its /64 for IPv6)."""
        return self.perIP.get(address_key(ip), 0)

    def add(self, ip: str) -> None:
        key = address_key(ip)
        self._change(key, 1)
        if self.share is not None:
            self.share(key, 1)

    def remove(self, ip: str) -> None:
        key = address_key(ip)
        self._change(key, -1)
        if self.share is not None:
            self.share(key, -1)

    def shareBudget(self, key: str, delta: int) -> None:
        """One of this process's sessions joined (C{delta} +1) or left (-1) the listener budget C{key}: tell the others."""
        if self.share is not None:
            self.share(key, delta)

    def elsewhere_of(self, key: str) -> int:
        """What the other processes count under C{key} (a listener budget's, L{budget_key})."""
        return sum(table.get(key, 0) for table in self.elsewhere.values())

    def _change(self, key: str, delta: int) -> None:
        if not key.startswith(BUDGET_PREFIX):
            self.total += delta
        count = self.perIP.get(key, 0) + delta
        if count > 0:
            self.perIP[key] = count
        else:
            self.perIP.pop(key, None)

    def learn(self, origin: str, key: str, delta: int) -> None:
        """
        Process C{origin} opened (C{delta} +1) or closed (-1) a connection
        of client C{key}. A close of one this process never heard of (opened
        before it started) changes nothing, so no count goes below zero.
        """
        table = self.elsewhere.setdefault(origin, {})
        before = table.get(key, 0)
        after = max(0, before + delta)
        if after:
            table[key] = after
        else:
            table.pop(key, None)
        if after != before:
            self._change(key, after - before)
            if not key.startswith(BUDGET_PREFIX):
                self._openElsewhere[origin] = self._openElsewhere.get(origin, 0) + after - before

    def forget(self, origin: str) -> None:
        """Process C{origin} is gone, and its connections with it."""
        for key, count in self.elsewhere.pop(origin, {}).items():
            self._change(key, -count)
        self._openElsewhere.pop(origin, None)


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
    A line-based protocol's L{mailapp.linesession.LineSession} does all of
    that; the webmail's connections do it themselves.

    C{guard} is the server's L{AbuseGuard}; a factory built without one (a
    test, a factory used alone) gets its own, whose base delay is the
    policy's C{auth_failure_delay}.
    """

    #: The listener's limits; each protocol's factory narrows it to its own policy.
    policy: SessionLimits
    reactor: Any
    #: The portal L{login} verifies credentials through (None: a listener with no logins).
    portal: Any
    #: The server's TLS context factory for STARTTLS (None: this listener offers none).
    tls: Any

    def __init__(
        self,
        inflight: Any = None,
        guard: AbuseGuard | None = None,
        *,
        portal: Any = None,
        policy: SessionLimits | None = None,
        reactor: Any = None,
        tls: Any = None,
    ) -> None:
        # What every protocol's factory has, set once here rather than by each.
        self.portal = portal
        if policy is not None:
            self.policy = policy
        if reactor is not None:
            self.reactor = reactor
        self.tls = tls
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
        self._refusals: RefusalLog | None = None

    @property
    def refusals(self) -> RefusalLog:
        """Where refused connections are logged; the service shares one among the listeners."""
        if self._refusals is None:
            self._refusals = RefusalLog(self.reactor)
        return self._refusals

    @refusals.setter
    def refusals(self, value: RefusalLog) -> None:
        self._refusals = value

    def deadlinesFor(self, session: Any) -> SessionDeadlines:
        """
        C{session}'s L{SessionDeadlines} under this listener's policy; it
        calls C{session.deadlineExpired(overrun)}, which must answer in the
        protocol's words and close. L{connected} starts them.
        """
        return SessionDeadlines(session, self.policy, lambda: self.reactor.seconds(), lambda overrun: session.deadlineExpired(overrun))

    @property
    def guard(self) -> AbuseGuard:
        if self._guard is None:
            delay = float(self.policy.auth_failure_delay)
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
        L{AddressLoginsBusy} (a temporary failure, not counted) without
        trying the password.
        """
        ip = session._peerIP
        if not self.guard.attemptStarted(ip):
            return defer.fail(AddressLoginsBusy())
        d: defer.Deferred[Any] = defer.maybeDeferred(self.portal.login, UsernamePassword(name, password), None, IMailbox)

        def ended(result: Any) -> Any:
            self.guard.attemptEnded(ip)
            return result

        return d.addBoth(ended)

    def banned(self, ip: str, protocol: str) -> bool:
        """Whether C{ip} is banned; the session then says L{BANNED} in its protocol's words and closes."""
        remaining = self.guard.banRemaining(ip)
        if remaining <= 0:
            return False
        self.refusals.refused(self, ip, "banned", event=logevents.AUTH_BANNED_REFUSED, protocol=protocol, remaining=remaining)
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
        counts = self.counts
        # This listener's sessions here, and in the other worker processes (none in a single process).
        if counts.overBudget(len(self.sessions), budget_key(self.listener_name), policy.max_connections) or (
            ceiling is not None and counts.total >= ceiling
        ):
            refusal = b"Too many connections; try again later"
        elif counts.of(ip) >= policy.max_connections_per_ip:
            refusal = b"Too many connections from your address; try again later"
        elif policy.max_unauthenticated is not None and counts.overBudget(
            self.unauthenticated(), budget_key(self.listener_name, True), policy.max_unauthenticated
        ):
            refusal = b"Too many connections waiting to log in; try again later"
        if refusal is not None:
            self.refusals.refused(self, ip, refusal.decode("ascii"))
        return refusal

    def admitSoon(self, ip: str) -> bool:
        """
        Whether the decision on a client of C{ip} should wait
        L{ADMIT_SETTLE_SECONDS} first: only with several processes serving,
        and only within two places per process of a limit it is counted
        against (its address's, or a budget of this listener). The other
        processes' counts arrive a few milliseconds late, so a client that
        just opened a connection on another worker would not be counted
        yet; after the wait it is, and a limit such as
        C{max_connections_per_ip} holds exactly for clients that connect
        one after the other.
        """
        counts = self.counts
        if counts.serving < 2:
            return False
        policy: SessionLimits = self.policy
        return (
            counts.near(counts.of(ip), policy.max_connections_per_ip)
            or counts.near(len(self.sessions) + counts.elsewhere_of(budget_key(self.listener_name)), policy.max_connections)
            or (
                policy.max_unauthenticated is not None
                and counts.near(self.unauthenticated() + counts.elsewhere_of(budget_key(self.listener_name, True)), policy.max_unauthenticated)
            )
        )

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
            if session in self.loggedInSessions:
                self.loggedInSessions.discard(session)
                self.counts.shareBudget(budget_key(self.listener_name, True), 1)
        elif session in self.sessions and session not in self.loggedInSessions:
            self.loggedInSessions.add(session)
            self.counts.shareBudget(budget_key(self.listener_name, True), -1)
        deadlines = getattr(session, "deadlines", None)
        if deadlines is not None:
            deadlines.loggedIn(loggedIn)

    def connected(self, session: Any) -> None:
        self.sessions.add(session)
        self.counts.add(session._peerIP)
        self.counts.shareBudget(budget_key(self.listener_name), 1)
        self.counts.shareBudget(budget_key(self.listener_name, True), 1)
        self._since[session] = time.monotonic()
        deadlines = getattr(session, "deadlines", None)
        if deadlines is not None:
            deadlines.start()
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
        LOGOUT. Calling it again keeps the earlier of the two cuts (a server
        shutting down cuts sooner than a session's own close).
        """
        transport = session.transport
        if transport is None:
            return
        transport.loseConnection()
        cut = session.callLater(grace, self._cut, session, transport, grace)
        earlier = self._closing.get(session)
        if earlier is not None and earlier.active() and earlier.getTime() <= cut.getTime():
            cut.cancel()
            return
        if earlier is not None and earlier.active():
            earlier.cancel()
        self._closing[session] = cut

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
        deadlines = getattr(session, "deadlines", None)
        if deadlines is not None:
            deadlines.stop()
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
            if session in self.loggedInSessions:
                self.loggedInSessions.discard(session)
            else:
                self.counts.shareBudget(budget_key(self.listener_name, True), -1)
            self.counts.remove(session._peerIP)
            self.counts.shareBudget(budget_key(self.listener_name), -1)

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
