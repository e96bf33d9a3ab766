"""
The POP3 server (RFC 1939) over the store's INBOX, with CAPA and response
codes (RFC 2449, 3206), STLS (RFC 2595) and AUTH PLAIN (RFC 5034), on the
110 (STLS) and 995 (implicit TLS) listeners.

It is built on L{twisted.mail.pop3.POP3} (the timeout mixin, the line
sender) but owns the byte stream and the command dispatch, because the stock
server falls short where it matters here:

  - it reports sizes of the message with LF line endings, while the octets
    on the wire are CRLF (RFC 1939 wants the exact count); we report the
    stored size, which is exactly what RETR sends before dot-stuffing;
  - its mailbox API is synchronous (C{listMessages}, C{getMessage}); here
    every store call returns a Deferred and a message is streamed from disk a
    chunk at a time (read on a worker thread, paced by the transport), so
    memory stays bounded whatever the message size;
  - it splits PASS at spaces, has no line length limit, no STLS, and would
    run commands pipelined after a TLS upgrade.

Commands are read one at a time and the next one is not looked at until the
reply to the previous one is sent (including a whole RETR), so pipelined
replies come back in order (RFC 2449 PIPELINING).

Session semantics (RFC 1939): the maildrop is a snapshot of INBOX taken at
login, so mail arriving during a session is listed in the next one. DELE only
marks; QUIT in the TRANSACTION state enters UPDATE, which marks the messages
retrieved with RETR as C{\\Seen} (for IMAP) and expunges the deleted ones, in
that order. A dropped connection, a timeout or a server shutdown changes
nothing. UIDL is C{"<uidvalidity>.<uid>"}: unique, stable across sessions and
restarts, never reused, and the same message identity IMAP sees.

One session per maildrop: L{MaildropLocks} refuses a second concurrent login
with C{-ERR [IN-USE]}. The lock lives in this process's memory; a deployment
with several nodes over one store needs a shared lock (a lease with an expiry
in the shared database) behind the same C{acquire}/C{release}.
"""

from __future__ import annotations

import base64
import binascii
import enum
import time
import weakref
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterable

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.mail import pop3 as twisted_pop3
from twisted.python.failure import Failure
from zope.interface import implementer

from mailapp import logevents
from mailapp.config import DEFAULT_LIMITS, DEFAULT_SECURITY
from mailapp.errors import LoginsBusy, NoSuchMessage
from mailapp.sessions import BANNED, AuthOutcome, Overrun, SessionFactory, SessionLimits, session_limits
from mailapp.store.records import MessageInfo

__all__ = [
    "IDLE_TIMEOUT",
    "MaildropLocks",
    "POP3Factory",
    "POP3Policy",
    "POP3Server",
    "SessionState",
    "buildFactory",
]

_log = Logger()

#: RFC 1939 3: the autologout timer must be at least 10 minutes.
IDLE_TIMEOUT = 600.0
#: RFC 2449 4 allows 255 octets per command line; a SASL initial response
#: with a long name and password needs more. A longer line closes the session.
MAX_LINE = 1024
#: Bytes read from a message file per worker-thread call.
CHUNK_SIZE = 64 * 1024
READ_AHEAD = 4  # small messages read before their RETR, at most
MAX_AUTH_FAILURES = 3
AUTH_FAILURE_DELAY = 1.0

_INBOX = "INBOX"
_SEEN = "\\Seen"


class SessionState(enum.Enum):
    """RFC 1939 states; a command is only looked up in its state's table."""

    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"


_COMMANDS: dict[SessionState, frozenset[str]] = {
    SessionState.AUTHORIZATION: frozenset({"CAPA", "USER", "PASS", "AUTH", "STLS", "QUIT"}),
    SessionState.TRANSACTION: frozenset({"CAPA", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP", "QUIT"}),
    SessionState.UPDATE: frozenset(),
}
_KNOWN = frozenset().union(*_COMMANDS.values())


@dataclass(frozen=True)
class POP3Policy(SessionLimits):
    """
    What one listener allows. Plaintext login only where the config allows
    it (loopback). C{timeout} is the idle timeout after login; before it,
    C{login_timeout}.
    """

    hostname: str
    timeout: float = float(DEFAULT_LIMITS.pop3_timeout_seconds)
    allow_plaintext_auth: bool = False
    #: Base delay of the factory's own guard when none is given (tests).
    auth_failure_delay: float = DEFAULT_SECURITY.auth_failure_delay
    max_auth_failures: int = MAX_AUTH_FAILURES
    #: Commands in the AUTHORIZATION state (AUTH continuation lines not counted).
    max_commands_before_auth: int = DEFAULT_LIMITS.max_commands_before_auth


class MaildropLocks:
    """
    The accounts that have a POP3 session past login, in this process (RFC
    1939 4: the server acquires an exclusive-access lock on the maildrop).

    In memory, so it holds within one process only: a multi-node backend must
    put a shared lock (a lease with an expiry, so that a dead node's lock
    lapses) behind the same two methods.
    """

    def __init__(self) -> None:
        self._held: set[str] = set()

    def acquire(self, account: str) -> bool:
        """Take the lock for C{account}; C{False} if a session holds it."""
        key = account.lower()
        if key in self._held:
            return False
        self._held.add(key)
        return True

    def release(self, account: str) -> None:
        self._held.discard(account.lower())


#: One lock table per store, shared by every POP3 listener over it (110 and 995).
_LOCKS: "weakref.WeakKeyDictionary[Any, MaildropLocks]" = weakref.WeakKeyDictionary()


def _locksFor(store: Any) -> MaildropLocks:
    try:
        return _LOCKS.setdefault(store, MaildropLocks())
    except TypeError:  # a store that cannot be weakly referenced: one table per factory
        return MaildropLocks()


@dataclass
class _Maildrop:
    """INBOX as it was at login; message N is C{messages[N - 1]}."""

    folder: Any
    uidvalidity: int
    messages: list[MessageInfo]
    deleted: set[int] = field(default_factory=set)
    retrieved: set[int] = field(default_factory=set)

    def live(self) -> Iterable[tuple[int, MessageInfo]]:
        return ((n, info) for n, info in enumerate(self.messages, 1) if n not in self.deleted)

    def totals(self) -> tuple[int, int]:
        count = size = 0
        for _, info in self.live():
            count += 1
            size += info.size
        return count, size

    def uidl(self, info: MessageInfo) -> bytes:
        return b"%d.%d" % (self.uidvalidity, info.uid)


def _number(argument: bytes) -> int | None:
    """A message number or line count: ASCII digits only, no sign (the line limit bounds its length)."""
    if not argument.isdigit():
        return None
    return int(argument)


def _has_controls(line: bytes) -> bool:
    return any(b < 0x20 and b != 0x09 or b == 0x7F for b in line)


class _DotStuffer:
    """RFC 1939 3 byte-stuffing of a multi-line response, across chunk boundaries."""

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
        """The terminator, after a CRLF if the message did not end with one."""
        return b".\r\n" if self._atLineStart else b"\r\n.\r\n"


class _TopFilter:
    """
    TOP's cut (RFC 1939 7): the header, the blank line after it, then C{lines}
    lines of the body, found in a stream of chunks.
    """

    def __init__(self, lines: int) -> None:
        self._remaining = lines
        self._inHeader = True
        self._lineStart = b""  # the first two bytes of the current line, to spot the blank line

    def feed(self, chunk: bytes) -> tuple[bytes, bool]:
        """The part of C{chunk} to send, and whether the cut is complete."""
        position = 0
        while self._inHeader or self._remaining > 0:
            end = chunk.find(b"\n", position)
            if end < 0:
                self._lineStart = (self._lineStart + chunk[position : position + 2])[:2]
                return chunk, False
            line = (self._lineStart + chunk[position : min(end, position + 2)])[:2]
            if self._inHeader:
                if line in (b"", b"\r"):
                    self._inHeader = False
            else:
                self._remaining -= 1
            self._lineStart = b""
            position = end + 1
        return chunk[:position], True


@implementer(IPushProducer)
class _MessageSender:
    """
    Streams one open message file to the transport, dot-stuffed. The next
    chunk is read (on a worker thread) only once the previous one is written
    and the transport has not asked us to pause, so a session holds about one
    chunk plus the transport's buffer, whatever the message size.

    C{done} fires with C{True} when the terminating line is written, or with
    C{False} when the connection went away first.
    """

    def __init__(
        self,
        transport: Any,
        file: IO[bytes],
        read: Callable[[IO[bytes], int], defer.Deferred[bytes]],
        lines: int | None,
        progress: Callable[[], None],
    ) -> None:
        self.done: defer.Deferred[bool] = defer.Deferred()
        self._transport = transport
        self._file = file
        self._read = read
        self._progress = progress
        self._stuffer = _DotStuffer()
        self._top = _TopFilter(lines) if lines is not None else None
        self._paused = False
        self._reading = False
        self._stopped = False

    def start(self) -> defer.Deferred[bool]:
        self._transport.registerProducer(self, True)
        self._next()
        return self.done

    def _next(self) -> None:
        if self._paused or self._reading or self._stopped:
            return
        self._reading = True
        self._read(self._file, CHUNK_SIZE).addCallbacks(self._got, self._failed)

    def _got(self, data: bytes) -> None:
        self._reading = False
        if self._stopped:
            self._file.close()
            return
        # A regular file returns a short read only at its end.
        finished = len(data) < CHUNK_SIZE
        if self._top is not None:
            data, cut = self._top.feed(data)
            finished = finished or cut
        if data:
            self._transport.write(self._stuffer.stuff(data))
            self._progress()
        if finished:
            self._transport.unregisterProducer()
            self._file.close()
            self._transport.write(self._stuffer.end())
            self.done.callback(True)
        else:
            self._next()

    def _failed(self, reason: Failure) -> None:
        self._reading = False
        self._file.close()
        if not self._stopped:
            self._stopped = True
            self._transport.unregisterProducer()
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


class POP3Server(twisted_pop3.POP3):
    """One POP3 session; see the module docstring."""

    def __init__(self, factory: "POP3Factory") -> None:
        self.factory = factory
        self.policy: POP3Policy = factory.policy
        self.portal = factory.portal
        self.callLater = factory.reactor.callLater
        self.timeOut = self.policy.login_timeout
        self.sessionState = SessionState.AUTHORIZATION
        self.account: str | None = None
        self._buffer = b""
        self._busy = False
        self._closing = False
        self._connected = False
        self._closeWhenIdle = False
        self._user: bytes | None = None
        self._authFailures = 0
        self._commandsBeforeAuth = 0
        self._pendingAuth: Callable[[bytes], None] | None = None
        self._maildrop: _Maildrop | None = None
        self._locked: str | None = None
        self._logout: Callable[[], None] | None = None
        self._sender: _MessageSender | None = None
        #: The command a pending Deferred will answer, and when it came (for latency metrics).
        self._timing: tuple[str, float] | None = None
        #: Small messages read ahead of their RETR: message number -> Deferred of its bytes.
        self._ahead: dict[int, defer.Deferred[bytes | None]] = {}
        self._peerIP = ""
        self.deadlines = factory.deadlinesFor(self)

    # -- connection -----------------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        peer = self.transport.getPeer()
        self._peerIP = getattr(peer, "host", "") or str(peer)
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:
            pass  # not TCP (a unix socket, a test transport)
        if self.factory.banned(self._peerIP, "pop3"):
            self._err(b"[SYS/TEMP] " + BANNED)
            self._close()
            return
        refusal = self.factory.admit(self._peerIP)
        if refusal:
            self._err(b"[SYS/TEMP] " + refusal)
            self._close()
            return
        self.factory.connected(self)
        self._ok(self.policy.hostname.encode("ascii") + b" POP3 mailapp ready")
        self.setTimeout(self.policy.login_timeout)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._connected = False
        self.setTimeout(None)
        self.factory.disconnected(self)
        if self._sender is not None:
            self._sender.stopProducing()
        if self.sessionState is not SessionState.UPDATE:
            # Nothing marked is committed: deletions happen only in UPDATE.
            self._release()

    def _release(self) -> None:
        if self._locked is not None:
            self.factory.locks.release(self._locked)
            self._locked = None
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    def timeoutConnection(self) -> None:
        _log.info(
            "pop3 idle timeout client={client} account={account}",
            log_event=logevents.POP3_TIMEOUT,
            client=self._peerIP,
            account=self.account,
        )
        self._err(b"Idle timeout; closing connection, nothing deleted")
        if self._sender is not None:
            # The client stopped reading mid-message: its buffer would never drain.
            self._closing = True
            self.transport.abortConnection()
        else:
            self._close()

    def deadlineExpired(self, overrun: Overrun) -> None:
        """A bound of L{SessionDeadlines} is overrun: close as at a timeout, deleting nothing."""
        self.setTimeout(None)
        self._err(overrun.value + b", nothing deleted")
        if self._sender is not None:
            # Mid-message: the reply cannot be read until the message is, so cut.
            self._closing = True
            self.transport.abortConnection()
        else:
            self._close()

    @property
    def secure(self) -> bool:
        return ISSLTransport.providedBy(self.transport)

    def shutdown(self) -> None:
        """The server is stopping: end idle sessions now and busy ones after their reply. Nothing is deleted."""
        if self._busy:
            self._closeWhenIdle = True
            return
        self._err(b"[SYS/TEMP] Server shutting down; nothing deleted")
        self._close()

    def _close(self) -> None:
        self._closing = True
        self._buffer = b""
        self.factory.close(self)

    # -- replies ----------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._connected:
            self.transport.write(data)

    def _ok(self, text: bytes = b"") -> None:
        self._write(b"+OK " + text + b"\r\n" if text else b"+OK\r\n")

    def _err(self, text: bytes) -> None:
        self._write(b"-ERR " + text + b"\r\n")

    def _multi(self, first: bytes, lines: Iterable[bytes]) -> None:
        """A multi-line response; its lines never start with a dot, so need no stuffing."""
        self._write(b"".join([b"+OK ", first, b"\r\n", *(line + b"\r\n" for line in lines), b".\r\n"]))

    # -- the byte stream --------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        self._buffer += data
        self._process()

    def _process(self) -> None:
        while self._buffer and not self._busy and not self._closing:
            end = self._buffer.find(b"\n")
            if end < 0 and len(self._buffer) <= MAX_LINE:
                self.deadlines.lineStarted()
                return
            if end < 0 or end > MAX_LINE:
                self._err(b"Line too long; closing connection")
                self._close()
                return
            self.deadlines.lineEnded()
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._pendingAuth is not None:
                continuation, self._pendingAuth = self._pendingAuth, None
                continuation(line)
            else:
                self._command(line)
        if self._busy and len(self._buffer) > MAX_LINE and not self._closing:
            # Back-pressure: stop reading while a reply is pending and the client keeps pipelining.
            self.transport.pauseProducing()

    def _wait(self, d: defer.Deferred[Any]) -> None:
        """Hold further commands until C{d} has sent its reply."""
        self._busy = True
        # A Deferred that has already fired (a RETR served from the read-ahead)
        # calls done() inside the command's handler: the loop in _process then
        # carries on by itself; calling _process again would nest one level
        # per pipelined command.
        inline = True

        def done(result: object) -> None:
            self._busy = False
            if self._timing is not None:
                (command, started), self._timing = self._timing, None
                self.factory.command_done(command, started)
            if isinstance(result, Failure):
                _log.failure(
                    "pop3 internal error client={client}",
                    result,
                    log_event=logevents.POP3_INTERNAL_ERROR,
                    client=self._peerIP,
                )
                if self._sender is not None:
                    # A multi-line response is half sent: it cannot end with -ERR.
                    self._sender = None
                    self._closing = True
                    self.transport.abortConnection()
                    return
                self._err(b"[SYS/TEMP] Internal error; try again later")
            if not self._connected or self._closing:
                return
            if self._closeWhenIdle:
                self.shutdown()
                return
            if inline:
                return
            self.transport.resumeProducing()
            self._process()

        d.addBoth(done)
        inline = False

    def _command(self, line: bytes) -> None:
        if self.sessionState is SessionState.AUTHORIZATION:
            self._commandsBeforeAuth += 1
            if self._commandsBeforeAuth > self.policy.max_commands_before_auth:
                _log.info(
                    "too many commands before auth protocol=pop3 client={client}",
                    log_event=logevents.COMMANDS_BEFORE_AUTH_EXCEEDED,
                    client=self._peerIP,
                )
                self._err(b"Too many commands before login; closing connection")
                self._close()
                return
        if _has_controls(line):
            self._err(b"Invalid characters in command")
            return
        verb, _, argument = line.partition(b" ")
        name = verb.upper().decode("ascii") if verb.isalpha() and len(verb) <= 8 else ""
        if name not in _KNOWN:
            self._err(b"Unknown command")
            return
        if name not in _COMMANDS[self.sessionState]:
            self._err(name.encode("ascii") + b" is not valid in the " + self.sessionState.name.encode("ascii") + b" state")
            return
        started = time.perf_counter()
        getattr(self, "pop3_" + name)(argument)
        if self._busy:
            self._timing = (name, started)  # answered later: _wait reports it
        else:
            self.factory.command_done(name, started)

    # -- AUTHORIZATION ------------------------------------------------------------

    def _loginAllowed(self) -> bool:
        return self.secure or self.policy.allow_plaintext_auth

    def _refusePlaintext(self) -> None:
        how = b"use STLS first" if self.factory.tls is not None else b"connect to the POP3S port (995)"
        self._err(b"[AUTH] Plaintext authentication is not allowed without TLS; " + how)

    def pop3_CAPA(self, argument: bytes) -> None:
        lines = [b"TOP", b"UIDL"]
        if self.sessionState is SessionState.AUTHORIZATION and self._loginAllowed():
            lines += [b"USER", b"SASL PLAIN"]
        lines += [b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.sessionState is SessionState.AUTHORIZATION and self.factory.tls is not None and not self.secure:
            lines.append(b"STLS")
        lines.append(b"IMPLEMENTATION mailapp")
        self._multi(b"Capability list follows", lines)

    def pop3_STLS(self, argument: bytes) -> None:
        if self.factory.tls is None or self.secure:
            self._err(b"Already using TLS" if self.secure else b"STLS not available on this port")
            return
        if argument:
            self._err(b"Syntax: STLS")
            return
        # Whatever the client pipelined after STLS came in the clear: it must
        # never run inside the TLS session (the STARTTLS injection, CVE-2011-0411).
        self._buffer = b""
        self._user = None
        self._ok(b"Begin TLS negotiation")
        self.transport.startTLS(self.factory.tls)

    def pop3_USER(self, argument: bytes) -> None:
        if not self._loginAllowed():
            self._refusePlaintext()
            return
        if not argument.strip():
            self._err(b"Syntax: USER name")
            return
        self._user = argument.strip()
        # Never say whether the user exists (RFC 1939 13).
        self._ok(b"Send your password")

    def pop3_PASS(self, argument: bytes) -> None:
        if not self._loginAllowed():
            self._user = None
            self._refusePlaintext()
            return
        if self._user is None:
            self._err(b"Send USER first")
            return
        user, self._user = self._user, None
        # RFC 1939 7: the password is the rest of the line, spaces included.
        self._login(user, argument)

    def pop3_AUTH(self, argument: bytes) -> None:
        parts = argument.split()
        if not parts:
            # Not in RFC 5034, but widely sent by clients to list the mechanisms.
            self._multi(b"SASL mechanisms follow", [b"PLAIN"] if self._loginAllowed() else [])
            return
        if not self._loginAllowed():
            self._refusePlaintext()
            return
        if parts[0].upper() != b"PLAIN":
            self._err(b"Unsupported authentication mechanism")
            return
        if len(parts) > 2:
            self._err(b"Syntax: AUTH PLAIN [initial-response]")
            return
        if len(parts) == 2:
            self._authPlain(parts[1])
        else:
            self._write(b"+ \r\n")
            self._pendingAuth = self._authPlain

    def _authPlain(self, response: bytes) -> None:
        response = response.strip()
        if response == b"*":
            self._err(b"Authentication cancelled")
            return
        try:
            # RFC 5034 4: "=" is an empty initial response.
            decoded = b"" if response == b"=" else base64.b64decode(response, validate=True)
        except (binascii.Error, ValueError):
            self._err(b"Malformed base64 in AUTH response")
            return
        parts = decoded.split(b"\x00")
        if len(parts) != 3:
            self._err(b"Malformed PLAIN response")
            return
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            self._wait(self._authFailed(authcid.decode("utf-8", "replace")))
            return
        self._login(authcid, password)

    def _login(self, username: bytes, password: bytes) -> None:
        try:
            name = username.decode("utf-8")
        except UnicodeDecodeError:
            self._wait(self._authFailed())
            return
        if self.factory.guard.banned(self._peerIP):
            # Banned since this session began: no password check, the ban's answer.
            self._wait(self._authFailed(name))
            return
        d = self.factory.login(self, name, password)

        def authenticated(result: tuple[Any, Any, Callable[[], None]]) -> defer.Deferred[None]:
            _, mailbox, logout = result
            self.factory.guard.succeeded(self._peerIP, mailbox.account)
            return defer.Deferred.fromCoroutine(self._startTransaction(mailbox, logout))

        def refused(reason: Failure) -> defer.Deferred[None] | None:
            if reason.check(LoginsBusy):
                self._err(b"[SYS/TEMP] Too many logins at once; try again later")
                return None
            reason.trap(UnauthorizedLogin)
            return self._authFailed(name)

        self._wait(d.addCallbacks(authenticated, refused))

    def _authFailed(self, account: str = "") -> defer.Deferred[None]:
        """
        Count the failure with the server's guard, answer after the delay it
        gives, and hang up after repeated failures or when the address is
        now banned.
        """

        def answer(outcome: AuthOutcome) -> None:
            if not self._connected or self._closing:
                return
            if outcome is AuthOutcome.RETRY:
                self._err(b"[AUTH] Authentication failed")
                return
            if outcome is AuthOutcome.BANNED:
                self._err(b"[SYS/TEMP] " + BANNED)
            else:
                _log.info(
                    "pop3 closing after {failures} failed logins client={client}",
                    log_event=logevents.POP3_AUTH_FAILURES_EXCEEDED,
                    failures=self._authFailures,
                    client=self._peerIP,
                )
                self._err(b"[AUTH] Too many authentication failures; closing connection")
            self._close()

        return self.factory.authFailed(self, "pop3", account, self.policy.max_auth_failures).addCallback(answer)

    async def _startTransaction(self, mailbox: Any, logout: Callable[[], None]) -> None:
        """Lock the maildrop, take the INBOX snapshot, enter TRANSACTION."""
        account: str = mailbox.account
        if not self.factory.locks.acquire(account):
            logout()
            _log.info(
                "pop3 maildrop in use account={account} client={client}",
                log_event=logevents.POP3_IN_USE,
                account=account,
                client=self._peerIP,
            )
            self._err(b"[IN-USE] Your maildrop is open in another POP3 session; try again later")
            return
        if not self._connected:
            self.factory.locks.release(account)
            logout()
            return
        self._locked, self._logout = account, logout
        try:
            folder = await mailbox.folder(_INBOX)
            status = await folder.status()
            messages = await folder.messages()
        except BaseException:
            self._release()
            raise
        if not self._connected:
            return  # connectionLost has released the lock
        self.account = account
        self._maildrop = _Maildrop(folder, status.uidvalidity, messages)
        self.sessionState = SessionState.TRANSACTION
        self.factory.loggedIn(self)
        self.setTimeout(self.policy.timeout)
        count, size = self._maildrop.totals()
        _log.info(
            "pop3 login {account} client={client} messages={count} size={size}",
            log_event=logevents.POP3_LOGIN,
            account=account,
            client=self._peerIP,
            count=count,
            size=size,
            secure=self.secure,
        )
        self._ok(b"Logged in; maildrop has %d messages (%d octets)" % (count, size))

    # -- TRANSACTION ----------------------------------------------------------------

    @property
    def _drop(self) -> _Maildrop:
        assert self._maildrop is not None
        return self._maildrop

    def _find(self, argument: bytes) -> tuple[int, MessageInfo] | None:
        """The live message C{argument} names, or None after saying why not."""
        number = _number(argument)
        if number is None:
            self._err(b"Invalid message number")
            return None
        if not 1 <= number <= len(self._drop.messages):
            self._err(b"No such message")
            return None
        if number in self._drop.deleted:
            self._err(b"Message %d is deleted" % number)
            return None
        return number, self._drop.messages[number - 1]

    def _oneOptionalNumber(self, argument: bytes, command: bytes) -> tuple[bool, tuple[int, MessageInfo] | None]:
        """(syntax ok, the message named or None for all)."""
        words = argument.split()
        if len(words) > 1:
            self._err(b"Syntax: " + command + b" [message]")
            return False, None
        if not words:
            return True, None
        found = self._find(words[0])
        return found is not None, found

    def pop3_STAT(self, argument: bytes) -> None:
        self._ok(b"%d %d" % self._drop.totals())

    def pop3_LIST(self, argument: bytes) -> None:
        ok, found = self._oneOptionalNumber(argument, b"LIST")
        if not ok:
            return
        if found is not None:
            self._ok(b"%d %d" % (found[0], found[1].size))
            return
        count, size = self._drop.totals()
        self._multi(b"%d messages (%d octets)" % (count, size), (b"%d %d" % (n, info.size) for n, info in self._drop.live()))

    def pop3_UIDL(self, argument: bytes) -> None:
        ok, found = self._oneOptionalNumber(argument, b"UIDL")
        if not ok:
            return
        if found is not None:
            self._ok(b"%d %s" % (found[0], self._drop.uidl(found[1])))
            return
        self._multi(b"Unique-ID listing follows", (b"%d %s" % (n, self._drop.uidl(info)) for n, info in self._drop.live()))

    def pop3_RETR(self, argument: bytes) -> None:
        words = argument.split()
        if len(words) != 1:
            self._err(b"Syntax: RETR message")
            return
        found = self._find(words[0])
        if found is not None:
            self._wait(defer.Deferred.fromCoroutine(self._send(found[0], found[1], None)))

    def pop3_TOP(self, argument: bytes) -> None:
        words = argument.split()
        if len(words) != 2:
            self._err(b"Syntax: TOP message lines")
            return
        lines = _number(words[1])
        if lines is None:
            self._err(b"Invalid line count")
            return
        found = self._find(words[0])
        if found is not None:
            self._wait(defer.Deferred.fromCoroutine(self._send(found[0], found[1], lines)))

    async def _send(self, number: int, info: MessageInfo, lines: int | None) -> None:
        """RETR (C{lines} None) or TOP: open the file, then stream it."""
        if lines is None and info.size <= CHUNK_SIZE:
            # A small message travels whole: one trip to a worker thread, or
            # none when it was read ahead while the client took the previous one.
            try:
                data = await self._readSmall(number, info)
            except NoSuchMessage:
                self._err(b"Message %d was removed from the mailbox by another client" % number)
                return
            if data is not None:
                if not self._connected:
                    return
                stuffer = _DotStuffer()
                self._ok(b"%d octets" % info.size)
                self.transport.write(stuffer.stuff(data) + stuffer.end())
                self.resetTimeout()
                self._drop.retrieved.add(number)
                self._readAhead(number + 1)
                return
        try:
            file = await self._drop.folder.openMessage(info.uid)
        except NoSuchMessage:
            self._err(b"Message %d was removed from the mailbox by another client" % number)
            return
        if not self._connected:
            file.close()
            return
        self._ok(b"%d octets" % info.size if lines is None else b"Top of message follows")
        self._sender = _MessageSender(self.transport, file, self.factory.readChunk, lines, self.resetTimeout)
        # If the stream fails, _sender stays set: _wait must know a response was half sent.
        completed = await self._sender.start()
        self._sender = None
        if completed and lines is None:
            self._drop.retrieved.add(number)

    def _readSmall(self, number: int, info: MessageInfo) -> defer.Deferred[bytes | None]:
        ahead = self._ahead.pop(number, None)
        if ahead is not None:
            return ahead
        return self._drop.folder.readMessage(info.uid, CHUNK_SIZE)

    def _readAhead(self, number: int) -> None:
        """
        Clients fetch messages in order: read the next few small ones now, so
        their RETRs are answered from memory. Holds at most L{READ_AHEAD}
        messages of at most L{CHUNK_SIZE}; a failure (one was removed
        meanwhile) just means no read-ahead, and its RETR reports it.
        """
        window = range(number, number + READ_AHEAD)
        for stale in [n for n in self._ahead if n not in window]:
            # A client that fetches out of order: drop what it skipped.
            del self._ahead[stale]
        for number in window:
            if number > len(self._drop.messages) or number in self._ahead:
                continue
            info = self._drop.messages[number - 1]
            if number in self._drop.deleted or info.size > CHUNK_SIZE:
                continue
            d = self._drop.folder.readMessage(info.uid, CHUNK_SIZE)
            d.addErrback(lambda reason: None)
            self._ahead[number] = d

    def pop3_DELE(self, argument: bytes) -> None:
        words = argument.split()
        if len(words) != 1:
            self._err(b"Syntax: DELE message")
            return
        found = self._find(words[0])
        if found is not None:
            self._drop.deleted.add(found[0])
            self._ok(b"Message %d marked for deletion" % found[0])

    def pop3_RSET(self, argument: bytes) -> None:
        self._drop.deleted.clear()
        self._ok(b"Maildrop has %d messages (%d octets)" % self._drop.totals())

    def pop3_NOOP(self, argument: bytes) -> None:
        self._ok()

    def pop3_QUIT(self, argument: bytes) -> None:
        if self.sessionState is SessionState.AUTHORIZATION:
            self._ok(b"Bye")
            self._close()
            return
        self.sessionState = SessionState.UPDATE
        self._wait(self.factory.inflight(defer.Deferred.fromCoroutine(self._update())))

    # -- UPDATE ---------------------------------------------------------------------

    async def _update(self) -> None:
        """Commit the session (RFC 1939 6): \\Seen for what RETR sent, then the deletions."""
        drop = self._drop
        deleted = sorted(drop.messages[n - 1].uid for n in drop.deleted)
        seen = sorted(
            drop.messages[n - 1].uid
            for n in drop.retrieved - drop.deleted
            if _SEEN not in drop.messages[n - 1].flags
        )
        try:
            if seen:
                try:
                    await drop.folder.setFlags(seen, [_SEEN], "add")
                except Exception:
                    _log.failure("pop3 could not mark retrieved messages seen", log_event=logevents.POP3_INTERNAL_ERROR)
            try:
                removed = await drop.folder.expunge(deleted) if deleted else []
                status = await drop.folder.status()
            except Exception:
                _log.failure(
                    "pop3 update failed account={account}", log_event=logevents.POP3_UPDATE_FAILED, account=self.account
                )
                self._err(b"[SYS/TEMP] Some deleted messages not removed")
                self._close()
                return
        finally:
            self._release()
        _log.info(
            "pop3 update {account} deleted={deleted} seen={seen} left={left}",
            log_event=logevents.POP3_UPDATE,
            account=self.account,
            deleted=len(removed),
            seen=len(seen),
            left=status.messages,
        )
        self._ok(b"%s signing off (%d messages left)" % (self.policy.hostname.encode("ascii"), status.messages))
        if self._connected:
            self._close()


class POP3Factory(SessionFactory):
    """
    Builds sessions for one listener and keeps its connection counts (total
    and per client address), so a flood gets C{-ERR [SYS/TEMP]} instead of
    our memory.
    """

    def __init__(
        self,
        portal: Any,
        policy: POP3Policy,
        reactor: Any,
        tls: Any = None,
        inflight: Any = None,
        locks: MaildropLocks | None = None,
        readChunk: Callable[[IO[bytes], int], defer.Deferred[bytes]] | None = None,
        guard: Any = None,
    ) -> None:
        super().__init__(inflight, guard)
        self.portal = portal
        self.policy = policy
        self.reactor = reactor
        self.tls = tls
        self.locks = locks if locks is not None else MaildropLocks()
        #: Reads from a message file off the reactor thread.
        self.readChunk = readChunk or (lambda file, size: deferToThread(file.read, size))

    def buildProtocol(self, addr: Any) -> POP3Server:
        return POP3Server(self)


def buildFactory(context: Any, listener: Any) -> POP3Factory:
    """The builder the service registers for the ``pop3`` protocol (110 with STLS, 995 implicit)."""
    config = context.config
    limits = config.limits
    policy = POP3Policy(
        hostname=config.hostname,
        timeout=limits.pop3_timeout_seconds,
        allow_plaintext_auth=listener.allow_plaintext_auth,
        **session_limits(config, listener),
        max_commands_before_auth=limits.max_commands_before_auth,
    )
    store = context.store
    run = getattr(store, "run", None)
    readChunk = (lambda file, size: run(file.read, size)) if run is not None else None
    return POP3Factory(
        context.portal,
        policy,
        context.reactor,
        tls=context.tls if listener.tls == "starttls" else None,
        inflight=context.inflight,
        locks=_locksFor(store),
        readChunk=readChunk,
        guard=getattr(context, "guard", None),
    )
