"""
Brute-force and abuse resistance shared by every protocol: one
L{AbuseGuard} per process, built by the composition root and handed to every
protocol factory, so that what a client does on IMAP counts on SMTP, POP3
and the webmail too.

What it promises:

  - every failed authentication is answered after a delay that doubles with
    each recent failure of the client address I{or} of the account (from
    C{auth_failure_delay} up to C{auth_failure_delay_max}); a correct
    password is never delayed, so an attacker cannot slow a user down;
  - C{ban_after_failures} failures from one address within C{ban_window}
    seconds ban that address for C{ban_seconds}: each protocol then refuses
    it politely at connect. Only addresses are banned, never accounts, so
    the right password keeps working from every other address. Addresses in
    C{ban_exempt_networks} are never banned (they are still delayed);
  - every failure is logged once, as one line in a stable format that
    C{etc/fail2ban/filter.d/mailapp.conf} parses::

        auth failed protocol=imap client=203.0.113.9 account="alice@example.test"

    The client comes before the account, and the account (chosen by the
    client) is quoted with its quotes, backslashes and control characters
    escaped, so that no user name can make a filter read another address;
  - messages accepted from one authenticated sender are counted over a
    sliding hour against C{max_messages_per_hour};
  - on the MX, messages and bytes from one client address (an IPv6
    client's whole /64, which one host usually owns) are counted over a
    sliding minute against C{mx_messages_per_minute} and
    C{mx_bytes_per_minute} (L{MXRateLimiter});
  - memory stays bounded: each table keeps at most C{max_tracked} keys,
    forgets entries whose failures have left the window, and drops the least
    recently seen key when full.

With worker processes (L{mailapp.workers}) each process has its guard, and
each tells the others (through L{AbuseGuard.share}, relayed by the parent)
of every failure, ban, forgiven account, recipient probe and accepted
message it records, and of every MX message and its bytes counted against
the per-minute rates (only while a rate is on); they count it too
(L{AbuseGuard.learn}), so the limits hold for the server, not per process,
a few milliseconds behind. Logins being verified
(L{AbuseGuard.attemptStarted}) stay per process.

Time comes from an injected C{clock} (a callable returning seconds), so that
tests drive it with L{twisted.internet.task.Clock.seconds}.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from twisted.logger import Logger

from mailapp import logevents
from mailapp.config import SecurityConfig
from mailapp.networks import in_networks

__all__ = ["AbuseGuard", "AuthFailure", "MXRateLimiter", "SendingLimiter", "address_key", "quote_account"]

log = Logger()

#: Keys each table (addresses, accounts, bans, senders) keeps at most.
MAX_TRACKED = 100_000
#: MX client addresses the rate tracker keeps at most: two short deques each,
#: about 1.9 KB, so 19 MB in all. Evicting one needs 10,000 other clients
#: within the minute, and those are not slowed by a per-address limit anyway.
MX_MAX_TRACKED = 10_000
#: An account name longer than this is cut in the log and in the table.
_MAX_ACCOUNT = 256
#: Failure times kept per key: enough to ban and to reach any delay cap.
_MAX_TIMES = 64


def quote_account(account: str) -> str:
    """
    C{account} in double quotes, with C{"}, C{\\} and every control or
    non-ASCII character escaped, and cut at 256 characters: one safe token
    on one log line, whatever the client sent.
    """
    out = []
    for char in account[:_MAX_ACCOUNT]:
        if char in '"\\':
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    if len(account) > _MAX_ACCOUNT:
        out.append("...")
    return '"' + "".join(out) + '"'


def address_key(ip: str) -> str:
    """
    What counts as one client: an IPv4 address (an IPv4-mapped IPv6 address
    counts as its IPv4 address), or an IPv6 /64. One customer or host gets
    a whole /64 (RFC 6177), so counting single IPv6 addresses would give a
    client 2**64 connection limits and 2**64 chances before a ban.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _account_key(account: str) -> str:
    return account.strip().lower()[:_MAX_ACCOUNT]


#: Unknown recipients an address may ask for within the ban window before each answer is delayed.
UNKNOWN_RECIPIENTS_FREE = 5


class _Recent:
    """
    Times of recent events per key, within C{window} seconds, in a bounded
    table ordered by last event (so the stalest keys are at the front).
    With C{weighted}, each event also has an amount (bytes), summed by
    L{total}; the events are then C{(time, amount)} pairs.
    """

    def __init__(self, window: float, keep: int, max_keys: int, weighted: bool = False) -> None:
        self.window = window
        self._keep = keep
        self._max_keys = max_keys
        self._weighted = weighted
        self._times: OrderedDict[str, deque[Any]] = OrderedDict()

    def _when(self, event: Any) -> float:
        return event[0] if self._weighted else event  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self._times)

    def count(self, key: str, now: float) -> int:
        times = self._times.get(key)
        if times is None:
            return 0
        while times and now - self._when(times[0]) >= self.window:
            times.popleft()
        if not times:
            del self._times[key]
            return 0
        return len(times)

    def oldest(self, key: str, now: float) -> float | None:
        return self._when(self._times[key][0]) if self.count(key, now) else None

    def total(self, key: str, now: float) -> int:
        """The sum of the amounts of C{key}'s events in the window (weighted tables)."""
        if not self.count(key, now):
            return 0
        return sum(amount for _, amount in self._times[key])

    def add(self, key: str, now: float, amount: int = 1) -> int:
        """Record one event (of C{amount}, in a weighted table); how many are in the window now, this one included."""
        self._expire(now)
        self.count(key, now)
        times = self._times.get(key)
        if times is None:
            times = self._times[key] = deque(maxlen=self._keep)
        else:
            self._times.move_to_end(key)
        times.append((now, amount) if self._weighted else now)
        while len(self._times) > self._max_keys:
            self._times.popitem(last=False)
        return len(times)

    def forget(self, key: str) -> None:
        self._times.pop(key, None)

    def resize(self, window: float, keep: int) -> None:
        """New window and depth (a reload); events already recorded stay."""
        self.window = window
        self._keep = keep
        for key, times in list(self._times.items()):
            if times.maxlen != keep:
                self._times[key] = deque(times, maxlen=keep)

    def _expire(self, now: float) -> None:
        """Drop keys whose last event has left the window (they are at the front)."""
        while self._times:
            key, times = next(iter(self._times.items()))
            if times and now - self._when(times[-1]) < self.window:
                return
            del self._times[key]


@dataclass(frozen=True)
class AuthFailure:
    """What a session does with a failed login: answer after C{delay} seconds, then hang up if C{banned}."""

    delay: float
    banned: bool


class SendingLimiter:
    """Messages accepted per authenticated sender over a sliding hour."""

    HOUR = 3600.0

    def __init__(self, clock: Callable[[], float], per_hour: int, max_tracked: int = MAX_TRACKED) -> None:
        self._clock = clock
        self.per_hour = per_hour
        self._sent = _Recent(self.HOUR, per_hour, max_tracked)

    def allowed(self, account: str) -> bool:
        """Whether one more message from C{account} is within the limit (nothing is counted)."""
        return self._sent.count(_account_key(account), self._clock()) < self.per_hour

    def accepted(self, account: str) -> None:
        """Count one message accepted from C{account}."""
        self._sent.add(_account_key(account), self._clock())

    def __len__(self) -> int:
        return len(self._sent)


#: The MX rate facts the processes of a server tell each other (L{AbuseGuard.share}).
MX_MESSAGE: Final = "mx_message"
MX_BYTES: Final = "mx_bytes"


class MXRateLimiter:
    """
    Messages and bytes per client address (an IPv6 /64) over a sliding
    minute, for the unauthenticated MX. A message is counted when its
    MAIL FROM is accepted, so that parallel connections cannot all pass
    before any of them ends (the lesson of logins counted when they start);
    its bytes when its data has arrived, whether it is stored or not. 0
    turns a limit off. At most C{max_tracked} addresses are kept (the least
    recently seen is forgotten first), each with at most
    C{messages_per_minute} (or 1,000) events.
    """

    MINUTE = 60.0
    #: Events kept per address when only bytes are limited.
    _KEEP_UNLIMITED = 1000

    def __init__(
        self, clock: Callable[[], float], messages_per_minute: int = 0, bytes_per_minute: int = 0, max_tracked: int = MX_MAX_TRACKED
    ) -> None:
        self._clock = clock
        self.messages_per_minute = messages_per_minute
        self.bytes_per_minute = bytes_per_minute
        self._messages = _Recent(self.MINUTE, self._keep(), max_tracked)
        self._bytes = _Recent(self.MINUTE, self._keep(), max_tracked, weighted=True)
        #: Called with C{(fact, fields)} for each message or bytes counted here, for the server's
        #: other processes to L{learn} (the guard's L{AbuseGuard.share}); None in a single process.
        self.tell: Callable[..., None] | None = None

    def _keep(self) -> int:
        return self.messages_per_minute or self._KEEP_UNLIMITED

    def reconfigure(self, messages_per_minute: int, bytes_per_minute: int) -> None:
        """New limits (a reload); what was counted stays."""
        self.messages_per_minute = messages_per_minute
        self.bytes_per_minute = bytes_per_minute
        self._messages.resize(self.MINUTE, self._keep())
        self._bytes.resize(self.MINUTE, self._keep())

    def messageStarted(self, ip: str, declared: int = 0) -> str | None:
        """
        A MAIL FROM from C{ip}, declaring C{declared} bytes (0: no C{SIZE=}).
        C{None} when it is within the limits (and it is counted), else what
        is over (C{"messages"} or C{"bytes"}; nothing is counted).
        """
        key = address_key(ip)
        now = self._clock()
        if self.messages_per_minute and self._messages.count(key, now) >= self.messages_per_minute:
            return "messages"
        if self.bytes_per_minute:
            received = self._bytes.total(key, now)
            # A first message is let in whatever its size: the limit is per minute, not per message.
            if received >= self.bytes_per_minute or (received and received + declared > self.bytes_per_minute):
                return "bytes"
        self._messages.add(key, now)
        if self.tell is not None and self.messages_per_minute:
            self.tell(MX_MESSAGE, client=key)
        return None

    def dataReceived(self, ip: str, size: int) -> bool:
        """
        C{size} bytes of one message's data arrived from C{ip}: counted, and
        whether they are within the bytes per minute (else the message is refused).
        """
        if not self.bytes_per_minute:
            return True
        key = address_key(ip)
        now = self._clock()
        before = self._bytes.total(key, now)
        self._bytes.add(key, now, size)
        if self.tell is not None:
            self.tell(MX_BYTES, client=key, size=size)
        return before == 0 or before + size <= self.bytes_per_minute

    def learn(self, fact: str, key: str, size: object = None) -> None:
        """
        A message (C{MX_MESSAGE}) or bytes (C{MX_BYTES}, C{size} of them) another process
        counted for client C{key}: counted here too, so the rates hold for the whole server.
        """
        now = self._clock()
        if fact == MX_MESSAGE:
            self._messages.add(key, now)
        elif fact == MX_BYTES and isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            self._bytes.add(key, now, size)

    def __len__(self) -> int:
        return max(len(self._messages), len(self._bytes))


def attempt_key(address: str) -> str:
    """
    The key under which the logins an address (L{address_key}) has in
    progress are shared between processes, as a listener's budget is in
    L{mailapp.sessions.ConnectionCounts} (its C{@} prefix keeps them out of
    the connection totals, and a worker's go when it dies).
    """
    return f"@login/{address}"


class AbuseGuard:
    """
    The process-wide failed-login delays and address bans, and the sending
    rate; see the module docstring. Sessions call L{banned} at connect,
    L{failed} after every failed login (and answer after the delay it
    returns), L{succeeded} after a good one, and L{mayAcceptMessage} /
    L{messageAccepted} around an authenticated sender's message.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        security: SecurityConfig | None = None,
        max_messages_per_hour: int = 1000,
        max_tracked: int = MAX_TRACKED,
        mx_messages_per_minute: int = 0,
        mx_bytes_per_minute: int = 0,
    ) -> None:
        self._clock = clock
        self.security = security if security is not None else SecurityConfig()
        window = float(self.security.ban_window)
        keep = max(self.security.ban_after_failures, _MAX_TIMES)
        self._addresses = _Recent(window, keep, max_tracked)
        self._accounts = _Recent(window, keep, max_tracked)
        #: Unknown recipients asked for, per address (see L{unknownRecipient}).
        self._probes = _Recent(window, max(UNKNOWN_RECIPIENTS_FREE + 32, _MAX_TIMES), max_tracked)
        self._bans: OrderedDict[str, float] = OrderedDict()
        #: Logins being verified now, per address (see L{attemptStarted}).
        self._attempts: dict[str, int] = {}
        #: The aliases' forwarding rate (L{mailapp.forwarding.ForwardingRate}),
        #: when the relay forwards: shared with the other processes as a fact.
        self.forwarding: Any = None
        #: With worker processes, the server's L{mailapp.sessions.ConnectionCounts}:
        #: this process's logins in progress go to the others under
        #: L{attempt_key}, and theirs count here. None in a single process.
        self.attemptCounts: Any = None
        self._max_tracked = max_tracked
        self._exempt = tuple(self.security.ban_exempt_networks)
        self.sending = SendingLimiter(clock, max_messages_per_hour, max_tracked)
        #: The MX's messages and bytes per client address; off unless given (the service gives the config's).
        self.mx = MXRateLimiter(clock, mx_messages_per_minute, mx_bytes_per_minute, min(max_tracked, MX_MAX_TRACKED))
        #: Called with C{(fact, fields)} for each fact this guard records,
        #: for the server's other processes to L{learn}; None in a single process.
        self.share: Callable[[str, dict[str, Any]], None] | None = None
        self.mx.tell = self._tell

    def _tell(self, fact: str, **fields: Any) -> None:
        if self.share is not None:
            self.share(fact, fields)

    def learn(self, fact: str, fields: dict[str, Any]) -> None:
        """
        A fact another process of this server recorded (see L{share}):
        counted here as if it had happened here, but without its log line,
        delay or ban decision, which the process that saw it made. Malformed
        facts are ignored.
        """
        now = self._clock()
        client, account = fields.get("client"), fields.get("account")
        if fact == "failed" and isinstance(client, str):
            self._addresses.add(client, now)
            if isinstance(account, str) and account:
                self._accounts.add(account, now)
        elif fact == "banned" and isinstance(client, str) and isinstance(fields.get("until"), (int, float)):
            self._bans.pop(client, None)
            self._bans[client] = float(fields["until"])
            self._addresses.forget(client)
        elif fact == "succeeded" and isinstance(account, str):
            self._accounts.forget(account)
        elif fact == "probe" and isinstance(client, str):
            self._probes.add(client, now)
        elif fact == "sent" and isinstance(account, str):
            self.sending.accepted(account)
        elif fact == "forwarded" and isinstance(fields.get("alias"), str) and self.forwarding is not None:
            self.forwarding.learn(fields["alias"])
        elif fact in (MX_MESSAGE, MX_BYTES) and isinstance(client, str):
            self.mx.learn(fact, client, fields.get("size"))

    def reconfigure(self, config: Any) -> None:
        """
        SIGHUP: the new C{[security]} settings and hourly sending limit apply
        from now on. Bans in force and the failures already counted stay.
        """
        self.security = config.security
        self._exempt = tuple(self.security.ban_exempt_networks)
        keep = max(self.security.ban_after_failures, _MAX_TIMES)
        self._addresses.resize(float(self.security.ban_window), keep)
        self._accounts.resize(float(self.security.ban_window), keep)
        self._probes.resize(float(self.security.ban_window), max(UNKNOWN_RECIPIENTS_FREE + 32, _MAX_TIMES))
        per_hour = config.limits.max_messages_per_hour
        self.sending.per_hour = per_hour
        self.sending._sent.resize(SendingLimiter.HOUR, per_hour)
        self.mx.reconfigure(config.limits.mx_messages_per_minute, config.limits.mx_bytes_per_minute)

    @classmethod
    def fromConfig(cls, config: Any, reactor: Any) -> AbuseGuard:
        """The guard for a whole server: C{config.security}, C{[limits]}'s sending rates, the reactor's clock."""
        clock = getattr(reactor, "seconds", None) or time.time
        limits = config.limits
        return cls(
            clock,
            config.security,
            limits.max_messages_per_hour,
            mx_messages_per_minute=limits.mx_messages_per_minute,
            mx_bytes_per_minute=limits.mx_bytes_per_minute,
        )

    # -- bans ------------------------------------------------------------------------

    def exempt(self, ip: str) -> bool:
        """Whether C{ip} is in C{ban_exempt_networks} (never banned)."""
        return in_networks(ip, self._exempt)

    def banned(self, ip: str) -> bool:
        """Whether C{ip} is banned now; a session refuses it at connect."""
        return self.banRemaining(ip) > 0

    def banRemaining(self, ip: str) -> float:
        """Seconds left of C{ip}'s ban, 0 when it is not banned."""
        key = address_key(ip)
        until = self._bans.get(key)
        if until is None:
            return 0.0
        remaining = until - self._clock()
        if remaining <= 0:
            del self._bans[key]
            return 0.0
        return remaining

    def _ban(self, key: str, now: float, failures: int) -> None:
        # Every ban lasts ban_seconds, so insertion order is expiry order.
        while self._bans:
            first, until = next(iter(self._bans.items()))
            if until > now and len(self._bans) < self._max_tracked:
                break
            del self._bans[first]
        self._bans.pop(key, None)
        self._bans[key] = now + self.security.ban_seconds
        self._addresses.forget(key)
        self._tell("banned", client=key, until=self._bans[key])
        log.warn(
            "auth ban client={client} seconds={seconds} failures={failures}",
            log_event=logevents.AUTH_BANNED,
            client=key,
            seconds=self.security.ban_seconds,
            failures=failures,
        )

    # -- logins ----------------------------------------------------------------------

    def attemptStarted(self, ip: str) -> bool:
        """
        A password from C{ip} is about to be verified. False when the
        address's recent failures plus the logins it has in progress already
        reach C{ban_after_failures}: the password must then not be tried at
        all, and the session answers it as a failed login (which bans).
        Failures are only known once a verification ends, so without this 19
        guesses sent at once on 19 connections were all tried against a ban
        limit of 10. Every True must be followed by one L{attemptEnded}.
        """
        key = address_key(ip)
        if self.exempt(key):
            return True
        running = self._attempts.get(key, 0)
        elsewhere = self.attemptCounts.elsewhere_of(attempt_key(key)) if self.attemptCounts is not None else 0
        if self._addresses.count(key, self._clock()) + running + elsewhere >= self.security.ban_after_failures:
            return False
        self._attempts[key] = running + 1
        if self.attemptCounts is not None:
            self.attemptCounts.shareBudget(attempt_key(key), 1)
        return True

    def attemptEnded(self, ip: str) -> None:
        """The verification L{attemptStarted} allowed has ended, either way."""
        key = address_key(ip)
        if self.exempt(key):
            return
        running = self._attempts.get(key, 0) - 1
        if running > 0:
            self._attempts[key] = running
        else:
            self._attempts.pop(key, None)
        if self.attemptCounts is not None:
            self.attemptCounts.shareBudget(attempt_key(key), -1)

    def unknownRecipient(self, ip: str) -> float:
        """
        C{ip} asked for a recipient that does not exist: how long to wait
        before saying so. The first L{UNKNOWN_RECIPIENTS_FREE} within
        C{ban_window} are answered at once (typos happen); after that the
        wait doubles from half a second up to C{auth_failure_delay_max},
        across connections, so that reconnecting to dodge the per-session
        error limit cannot list our users at thousands of names a second.
        """
        key = address_key(ip)
        if self.exempt(key):
            return 0.0
        count = self._probes.add(key, self._clock())
        self._tell("probe", client=key)
        over = count - UNKNOWN_RECIPIENTS_FREE
        if over <= 0:
            return 0.0
        return min(float(self.security.auth_failure_delay_max), 0.5 * 2.0 ** min(over - 1, 30))

    def failed(self, protocol: str, ip: str, account: str | bytes) -> AuthFailure:
        """
        Record and log one failed login of C{account} from C{ip} over
        C{protocol} (C{smtp}, C{pop3}, C{imap}, C{webmail}). Returns how long
        to wait before answering, and whether C{ip} is now banned (the
        session then closes after its answer).
        """
        if isinstance(account, bytes):
            account = account.decode("utf-8", "replace")
        key = address_key(ip)
        now = self._clock()
        log.info(
            "auth failed protocol={protocol} client={client} account={quoted_account}",
            log_event=logevents.AUTH_FAILED,
            protocol=protocol,
            # The address itself, not its /64: what fail2ban bans.
            client=key if "/" not in key else ip,
            account=account[:_MAX_ACCOUNT],
            quoted_account=quote_account(account),
        )
        by_address = self._addresses.add(key, now)
        by_account = self._accounts.add(_account_key(account), now) if account else 0
        self._tell("failed", client=key, account=_account_key(account) if account else "")
        failures = max(by_address, by_account)
        security = self.security
        delay = min(float(security.auth_failure_delay_max), security.auth_failure_delay * 2.0 ** min(failures - 1, 30))
        banned = self.banned(key)
        if not banned and by_address >= security.ban_after_failures and not self.exempt(ip):
            self._ban(key, now, by_address)
            banned = True
        return AuthFailure(delay, banned)

    def succeeded(self, ip: str, account: str) -> None:
        """
        A good login: the account's own failures are forgiven (its owner got
        in), the address's are not (a valid account must not let an address
        reset its count between guesses at others).
        """
        self._accounts.forget(_account_key(account))
        self._tell("succeeded", account=_account_key(account))

    # -- sending rate ----------------------------------------------------------------------

    def mayAcceptMessage(self, account: str) -> bool:
        """Whether C{account} may send one more message this hour."""
        return self.sending.allowed(account)

    def messageAccepted(self, account: str) -> None:
        """Count one message accepted from C{account} (after it was stored or queued)."""
        self.sending.accepted(account)
        self._tell("sent", account=account)

    def shareForwardingRate(self, rate: Any) -> None:
        """Share C{rate}'s forwards (L{mailapp.forwarding.ForwardingRate}) with the other processes, as facts."""
        self.forwarding = rate
        rate.tell = lambda alias: self._tell("forwarded", alias=alias)

    @property
    def max_messages_per_hour(self) -> int:
        return self.sending.per_hour

    def tracked(self) -> dict[str, int]:
        """How many keys each table holds (for tests and metrics)."""
        return {
            "addresses": len(self._addresses),
            "accounts": len(self._accounts),
            "bans": len(self._bans),
            "senders": len(self.sending),
            "mx_clients": len(self.mx),
        }


def networks(values: Iterable[str]) -> tuple[Any, ...]:
    """Parse CIDR strings (for tests and callers outside the config)."""
    return tuple(ipaddress.ip_network(value) for value in values)
