"""
The ESMTP server, in its two roles: the inbound MX (port 25) and
authenticated submission (587 with STARTTLS, 465 with implicit TLS).

It is built on L{twisted.mail.smtp.ESMTP} (reply formatting, command lookup,
timeouts) but owns the byte stream itself, because the stock server's line
handling is where the classic attacks live:

  - commands are read one at a time and the next one is not looked at until
    the reply to the previous one is sent, so pipelined replies come back in
    order even when a check waits on the disk or a password hash;
  - bytes pipelined after STARTTLS are thrown away, never run after the
    handshake (CVE-2011-0411);
  - the end of DATA is only ``<CRLF>.<CRLF>``; bare LF and bare CR inside the
    data are stored as CRLF and never end it (SMTP smuggling);
  - data is streamed to the spool as it comes, lines of any length included,
    so neither a long line nor a large message can grow memory or drop the
    session out of DATA mode; an unterminated command line is cut off.

Every message goes to the L{mailapp.delivery.Router}; the 250 after DATA is
sent only when the Router says every copy is durable.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.mail import smtp as twisted_smtp
from twisted.python.failure import Failure

from mailapp import logevents
from mailapp.config import DEFAULT_LIMITS, DEFAULT_SECURITY
from mailapp.delivery import Router, Transaction
from mailapp.errors import (
    HeaderSenderNotOwned,
    LoginsBusy,
    MailError,
    MessageHasNul,
    MessageTooBig,
    NoSuchUser,
    RelayDenied,
    TooMuchMail,
)
from mailapp.headercheck import HeaderCheck, header_addresses
from mailapp.sessions import BANNED, CLOSE_GRACE, AuthOutcome, Overrun, SessionFactory, SessionLimits, session_limits
from mailapp.store.freespace import FreeSpace

_log = Logger()

MAX_COMMAND_LINE = 2048  # RFC 5321 4.5.3.1.4 asks for 512; extensions need more
MAX_UNTERMINATED = 16 * 1024  # no CRLF after this many bytes: not SMTP, hang up
MAX_HEADER_BLOCK = 64 * 1024  # header bytes kept to check Message-ID/Date on submission
MAX_ERRORS = 10
MAX_AUTH_FAILURES = 3
GREETING_TIMEOUT = 60
SHUTDOWN_GRACE = 2.0  # seconds a stopping server gives a client to take its 421 and close
DATA_FLUSH = 64 * 1024

_ADDRESS = re.compile(r"^[^\s@<>()\[\]\\,;:\"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?$")
_PATH = re.compile(rb"^(FROM|TO):\s*<([^<>]*)>(?:\s+(.*))?$", re.I)
_BARE = re.compile(rb"\r|\n")
#: What HELO/EHLO may name (RFC 5321 4.1.1.1: a domain or an address literal),
#: with the underscore many hosts' names have.
_HELO_NAME = re.compile(rb"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?|\[(?:IPv6:)?[0-9A-Fa-f:.]+\])$")


_CONTROLS = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f-\xff]")


def _has_controls(data: bytes) -> bool:
    """NUL, CR, LF, other controls or 8-bit bytes (tab is allowed)."""
    return _CONTROLS.search(data) is not None


@dataclass(frozen=True)
class SMTPPolicy(SessionLimits):
    """
    What one listener allows. C{submission} listeners require AUTH before
    MAIL and let the authenticated user relay; the MX listener never offers
    AUTH. Plaintext AUTH only where the config allows it (loopback).
    """

    hostname: str
    submission: bool
    max_message_size: int
    timeout: float
    allow_plaintext_auth: bool = False
    trusted_networks: tuple[Any, ...] = ()
    #: Base delay of the factory's own guard when none is given (tests).
    auth_failure_delay: float = DEFAULT_SECURITY.auth_failure_delay
    #: Commands before AUTH succeeds, on submission (the MX never authenticates).
    max_commands_before_auth: int = DEFAULT_LIMITS.max_commands_before_auth
    #: What RCPT TO:<postmaster> (no domain) means: postmaster at the first local domain.
    postmaster: str = ""
    #: On the MX, refuse a sender in a local domain from outside the trusted networks.
    refuse_local_senders: bool = DEFAULT_SECURITY.mx_refuse_local_senders
    #: MAIL FROM gets 452 4.3.1 while the store's disk has fewer free bytes than this plus SIZE=.
    min_free_disk: int = DEFAULT_LIMITS.min_free_disk


class ESMTPServer(twisted_smtp.ESMTP):
    """One SMTP session; see the module docstring."""

    def __init__(self, factory: "SMTPFactory") -> None:
        super().__init__()
        self.factory = factory
        self.policy: SMTPPolicy = factory.policy
        self.router: Router = factory.router
        self.host = self.policy.hostname.encode("ascii")
        self.timeout = GREETING_TIMEOUT
        self._buffer = b""
        self._busy = False
        self._closing = False
        self._errors = 0
        self._authFailures = 0
        self._commandsBeforeAuth = 0
        self._ehlo: str | None = None
        self._esmtp = False
        self._peerIP = ""
        self.authenticated: str | None = None
        self._txn: Transaction | None = None
        self._data: _DataReceiver | None = None
        #: On submission: the From: header addresses of the message being received.
        self._headerFrom: list[str] = []
        self._pendingAuth: Callable[[bytes], None] | None = None
        #: The command whose reply a pending Deferred will send, and when it came (for latency metrics).
        self._timing: tuple[str, float] | None = None
        self._shuttingDown = False
        self._whenClosed: list[defer.Deferred[None]] = []
        self.callLater = factory.reactor.callLater
        self.deadlines = factory.deadlinesFor(self)

    # -- connection -----------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self._peerIP = getattr(peer, "host", "") or str(peer)
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:
            pass
        if self.factory.banned(self._peerIP, "smtp"):
            self.sendCode(421, b"4.7.0 " + self.host + b" " + BANNED)
            self._close()
            return
        refusal = self.factory.admit(self._peerIP)
        if refusal:
            self.sendCode(421, b"4.3.2 " + self.host + b" " + refusal)
            self._close()
            return
        self.factory.connected(self)
        self.sendCode(220, self.host + b" ESMTP mailapp")
        self.setTimeout(self.policy.login_timeout if self.policy.submission else GREETING_TIMEOUT)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # Nothing the client pipelined runs after it has gone: a check or a
        # commit finishing later must not start the next command.
        self._closing = True
        self._buffer = b""
        self.setTimeout(None)
        self.factory.disconnected(self)
        self._resetTransaction()
        waiters, self._whenClosed = self._whenClosed, []
        for waiter in waiters:
            waiter.callback(None)

    def timeoutConnection(self) -> None:
        self.sendCode(421, b"4.4.2 " + self.host + b" Error: timeout exceeded")
        self._close()

    def deadlineExpired(self, overrun: Overrun) -> None:
        """A bound of L{SessionDeadlines} is overrun: a message being received is dropped, as at a timeout."""
        self.setTimeout(None)
        self.sendCode(421, b"4.4.2 " + self.host + b" " + overrun.value)
        self._close()

    @property
    def secure(self) -> bool:
        return ISSLTransport.providedBy(self.transport)

    def _close(self, grace: float = CLOSE_GRACE) -> None:
        """Run nothing more the client sent; close once the reply is written (L{SessionFactory.close})."""
        self._closing = True
        self.factory.close(self, grace)

    def shutdown(self) -> defer.Deferred[None] | None:
        """
        The server is stopping: tell an idle client, and let a busy one finish.
        Returns a Deferred that fires once an idle client's connection is
        closed (the 421 is only buffered until then), or C{None}. A TLS close
        waits for the client's close_notify, so after L{SHUTDOWN_GRACE} the
        connection is aborted.
        """
        self._shuttingDown = True
        if not self._busy and self._data is None:
            return self._closeForShutdown()
        # Busy: the message in progress finishes first; _process says 421 after its reply.
        closed: defer.Deferred[None] = defer.Deferred()
        self._whenClosed.append(closed)
        return closed

    def _closeForShutdown(self) -> defer.Deferred[None]:
        closed: defer.Deferred[None] = defer.Deferred()
        self._whenClosed.append(closed)
        self.sendCode(421, b"4.3.2 " + self.host + b" Service shutting down")
        self._close(SHUTDOWN_GRACE)
        return closed

    # -- the byte stream --------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        self._buffer += data
        self._process()

    def _process(self) -> None:
        if self._shuttingDown and not self._busy and self._data is None and not self._closing:
            self._closeForShutdown()
            return
        while self._buffer and not self._busy and not self._closing:
            if self._data is not None:
                receiver = self._data
                before = len(self._buffer)
                self._buffer = receiver.feed(self._buffer)
                self.deadlines.dataReceived(before - len(self._buffer))
                if receiver.done:
                    self.deadlines.dataEnded()
                    # The end of the data, timed as "EOM": the commit and its 250.
                    self._timing = ("EOM", time.perf_counter())
                    self._endData()
                    self._timed()
                    continue
                self._throttle(receiver.lastWrite)
                return
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_UNTERMINATED:
                    self.sendCode(500, b"5.5.2 Line too long; closing connection")
                    self._buffer = b""
                    self._close()
                else:
                    self.deadlines.lineStarted()
                return
            self.deadlines.lineEnded()
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._pendingAuth is not None:
                continuation, self._pendingAuth = self._pendingAuth, None
                continuation(line)
            elif len(line) > MAX_COMMAND_LINE:
                self._error(500, b"5.5.2 Line too long")
            else:
                self._command(line)
        if self.transport is not None and not self._closing:
            # Back-pressure: stop reading while a reply is pending and the client keeps pipelining.
            if self._busy and len(self._buffer) > MAX_UNTERMINATED:
                self.transport.pauseProducing()

    def _throttle(self, write: defer.Deferred[None] | None) -> None:
        """Stop reading from a client that sends faster than the disk takes it."""
        if write is not None and not write.called and self.transport is not None:
            self.transport.pauseProducing()
            self.deadlines.hold(write)

            def resume(_: object) -> None:
                if self.transport is not None and not self._busy:
                    self.transport.resumeProducing()

            write.addCallback(resume)

    def _wait(self, d: defer.Deferred[Any]) -> None:
        """Hold further commands until C{d} has sent its reply."""
        self._busy = True
        # A Deferred that has already fired calls done() right here, inside the
        # command's handler: then the loop in _process carries on by itself;
        # calling _process again would nest one level per pipelined command.
        inline = True

        def done(result: object) -> None:
            self._busy = False
            self._timed(waited=True)
            if isinstance(result, Failure):
                _log.failure("internal error", result, log_event=logevents.SMTP_INTERNAL_ERROR)
                self.sendCode(451, b"4.3.0 Local error in processing")
            if inline:
                return
            if self.transport is not None and not self._closing:
                self.transport.resumeProducing()
                self._process()

        d.addBoth(done)
        inline = False

    def _error(self, code: int, text: bytes) -> None:
        self._errors += 1
        if self._errors > MAX_ERRORS:
            self.sendCode(421, b"4.7.0 " + self.host + b" Too many errors; closing connection")
            self._close()
            return
        self.sendCode(code, text)

    def _command(self, line: bytes) -> None:
        if _has_controls(line):
            # CR, NUL or 8-bit bytes: never let them reach a header or a log line.
            if line[:4].upper() in (b"HELO", b"EHLO", b"MAIL", b"RCPT"):
                self._error(501, b"5.5.4 Invalid characters in argument")
            else:
                self._error(500, b"5.5.2 Invalid characters in command")
            return
        parts = line.strip().split(None, 1)
        if not parts:
            self._error(500, b"5.5.2 Error: bad syntax")
            return
        verb = parts[0].upper().decode("ascii")
        argument = parts[1] if len(parts) > 1 else b""
        if self.policy.submission and not self.authenticated:
            self._commandsBeforeAuth += 1
            if self._commandsBeforeAuth > self.policy.max_commands_before_auth:
                _log.info(
                    "too many commands before auth protocol=smtp client={client}",
                    log_event=logevents.COMMANDS_BEFORE_AUTH_EXCEEDED,
                    client=self._peerIP,
                )
                self.sendCode(421, b"4.7.0 " + self.host + b" Too many commands before authentication; closing connection")
                self._close()
                return
        handler = getattr(self, "smtp_" + verb, None) if verb.isalpha() else None
        if handler is None:
            self._error(500, b"5.5.1 Error: command not recognized")
            return
        self._timing = (verb, time.perf_counter())
        handler(argument)
        self._timed()

    def _timed(self, waited: bool = False) -> None:
        """
        The command in C{_timing} has been answered, unless it waits for a
        Deferred (then L{_wait} calls this when it fires): its latency goes to
        the factory. Not a wrapper around the handler: pipelined commands
        recurse through L{_process}, and every frame counts there.
        """
        if self._timing is not None and (waited or not self._busy):
            (command, started), self._timing = self._timing, None
            self.factory.command_done(command, started)

    # -- commands -------------------------------------------------------------

    def _greet(self, argument: bytes, esmtp: bool) -> bool:
        name = argument.strip()
        if not name or b" " in name or len(name) > 255:
            self._error(501, b"5.5.4 Syntax: " + (b"EHLO" if esmtp else b"HELO") + b" hostname")
            return False
        if not _HELO_NAME.match(name):
            # The name goes into our Received: header: a tab, "(", ")" or ";"
            # there would let the client shape the trace fields we add.
            self._error(501, b"5.5.2 Invalid hostname: a domain name or an address literal such as [192.0.2.1]")
            return False
        self._resetTransaction()
        self._ehlo = name.decode("ascii")
        self._esmtp = esmtp
        self._idleTimeout()
        return True

    def _idleTimeout(self) -> None:
        """After the greeting: the session timeout, but the login timeout on submission until AUTH succeeds."""
        waiting_for_login = self.policy.submission and not self.authenticated
        self.setTimeout(self.policy.login_timeout if waiting_for_login else self.policy.timeout)

    def smtp_HELO(self, argument: bytes) -> None:
        if self._greet(argument, esmtp=False):
            self.sendCode(250, self.host)

    def smtp_EHLO(self, argument: bytes) -> None:
        if not self._greet(argument, esmtp=True):
            return
        lines = [self.host, b"PIPELINING", b"SIZE %d" % self.policy.max_message_size, b"8BITMIME", b"ENHANCEDSTATUSCODES"]
        if self.factory.tls is not None and not self.secure:
            lines.append(b"STARTTLS")
        if self._authAvailable():
            lines.append(b"AUTH PLAIN LOGIN")
        lines.append(b"HELP")
        self.sendCode(250, b"\n".join(lines))

    def smtp_STARTTLS(self, argument: bytes) -> None:
        if self.factory.tls is None or self.secure:
            self._error(502 if self.factory.tls is None else 503, b"5.5.1 STARTTLS not available")
            return
        if argument:
            self._error(501, b"5.5.4 Syntax: STARTTLS")
            return
        # Whatever the client pipelined after STARTTLS was sent in the clear:
        # it must never run inside the TLS session (CVE-2011-0411).
        self._buffer = b""
        self.sendCode(220, b"2.0.0 Ready to start TLS")
        self.transport.startTLS(self.factory.tls)
        self._resetTransaction()
        self._ehlo = None
        if self.authenticated:
            self.authenticated = None
            self.factory.loggedIn(self, False)

    def _authAvailable(self) -> bool:
        if not self.policy.submission or self.authenticated:
            return False
        return self.secure or self.policy.allow_plaintext_auth

    def smtp_AUTH(self, argument: bytes) -> None:
        if not self.policy.submission:
            self._error(502, b"5.5.1 AUTH not available on this port")
            return
        if self.authenticated:
            self._error(503, b"5.5.1 Already authenticated")
            return
        if not self._authAvailable():
            self._error(538, b"5.7.11 Encryption required: use STARTTLS first")
            return
        if self._txn is not None:
            self._error(503, b"5.5.1 AUTH not allowed during a mail transaction")
            return
        parts = argument.split()
        if not parts:
            self._error(501, b"5.5.4 Syntax: AUTH mechanism")
            return
        mechanism = parts[0].upper()
        initial = parts[1] if len(parts) > 1 else None
        if mechanism == b"PLAIN":
            if initial is None:
                self.sendCode(334, b"")
                self._pendingAuth = self._authPlain
            else:
                self._authPlain(initial)
        elif mechanism == b"LOGIN":
            if initial is None:
                self.sendCode(334, base64.b64encode(b"Username:"))
                self._pendingAuth = self._authLoginUser
            else:
                self._authLoginUser(initial)
        else:
            self._error(504, b"5.5.4 Unrecognized authentication mechanism")

    def _decode(self, line: bytes) -> bytes | None:
        if line.strip() == b"*":
            self._error(501, b"5.7.0 Authentication cancelled")
            return None
        try:
            return base64.b64decode(line.strip(), validate=True)
        except (binascii.Error, ValueError):
            self._error(501, b"5.5.2 Cannot decode response")
            return None

    def _authPlain(self, line: bytes) -> None:
        decoded = self._decode(line)
        if decoded is None:
            return
        parts = decoded.split(b"\x00")
        if len(parts) != 3:
            self._error(501, b"5.5.2 Malformed PLAIN response")
            return
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            self._wait(self._authFailed())
            return
        self._login(authcid, password)

    def _authLoginUser(self, line: bytes) -> None:
        username = self._decode(line)
        if username is None:
            return
        self.sendCode(334, base64.b64encode(b"Password:"))

        def password(line: bytes) -> None:
            secret = self._decode(line)
            if secret is not None:
                self._login(username, secret)

        self._pendingAuth = password

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

        def ok(result: tuple[Any, Any, Callable[[], None]]) -> None:
            _, avatar, logout = result
            self.authenticated = avatar.account
            logout()
            self.factory.loggedIn(self)
            self._idleTimeout()
            self.factory.guard.succeeded(self._peerIP, avatar.account)
            _log.info(
                "auth ok {account} from {peer}", log_event=logevents.SMTP_AUTH_OK, account=self.authenticated, peer=self._peerIP
            )
            self.sendCode(235, b"2.7.0 Authentication successful")

        def failed(reason: Failure) -> defer.Deferred[None] | None:
            if reason.check(LoginsBusy):
                self.sendCode(454, LoginsBusy().reply()[4:])
                return None
            reason.trap(UnauthorizedLogin)
            return self._authFailed(name)

        self._wait(d.addCallbacks(ok, failed))

    def _authFailed(self, account: str = "") -> defer.Deferred[None]:
        """
        Count the failure with the server's guard, answer after the delay it
        gives, and hang up after repeated failures or when the address is
        now banned.
        """

        def answer(outcome: AuthOutcome) -> None:
            if self.transport is None or self._closing:
                return
            if outcome is AuthOutcome.RETRY:
                self.sendCode(535, b"5.7.8 Authentication credentials invalid")
                return
            if outcome is AuthOutcome.BANNED:
                self.sendCode(421, b"4.7.0 " + self.host + b" " + BANNED)
            else:
                self.sendCode(421, b"4.7.0 " + self.host + b" Too many authentication failures")
            self._close()

        return self.factory.authFailed(self, "smtp", account, MAX_AUTH_FAILURES).addCallback(answer)

    def _parsePath(self, argument: bytes, keyword: bytes) -> tuple[str, dict[str, str]] | None:
        match = _PATH.match(argument.strip())
        if not match or match.group(1).upper() != keyword:
            self._error(501, b"5.5.4 Syntax: " + (b"MAIL FROM:<address>" if keyword == b"FROM" else b"RCPT TO:<address>"))
            return None
        address = match.group(2).decode("ascii")
        if ":" in address and address.startswith("@"):
            address = address.split(":", 1)[1]  # source route (RFC 5321 4.1.2): ignore it
        params: dict[str, str] = {}
        for item in (match.group(3) or b"").split():
            key, _, value = item.decode("ascii").partition("=")
            params[key.upper()] = value
        if keyword == b"TO" and address.lower() == "postmaster" and self.policy.postmaster:
            # RFC 5321 4.5.1: <Postmaster> without a domain must be accepted.
            address = self.policy.postmaster
        if address and not _ADDRESS.match(address):
            self._error(501, b"5.1.3 Bad address syntax")
            return None
        return address, params

    def _storageLow(self, declared: int) -> bool:
        """
        Refuse the transaction before its data when the disk is (nearly)
        full, as Postfix does (RFC 3463 4.3.1): the client keeps the message
        and tries again later, instead of sending it all for a 452 after DATA.
        """
        free = self.factory.freeSpace.available() if self.factory.freeSpace is not None else None
        if free is None or free - declared >= self.policy.min_free_disk:
            return False
        _log.warn(
            "insufficient storage free={free} client={client}",
            log_event=logevents.SMTP_INSUFFICIENT_STORAGE,
            free=free,
            client=self._peerIP,
        )
        self.sendCode(452, b"4.3.1 Insufficient system storage")
        return True

    def _rateLimited(self, relay: bool) -> bool:
        """
        Whether this session's mail counts against the MX rate per client
        address: the MX only, and not from C{relay.trusted_networks}
        (submission has its own limit per authenticated sender).
        """
        return not self.policy.submission and not self.authenticated and not relay

    def _mxMessageAllowed(self, declared: int) -> bool:
        """Count this MAIL FROM against the client's rate, or refuse it with 451 4.7.1."""
        over = self.factory.guard.mx.messageStarted(self._peerIP, declared)
        if over is None:
            return True
        self._mxRefused(over)
        return False

    def _mxRefused(self, over: str) -> None:
        _log.info(
            "mx rate limited client={client} over={over}",
            log_event=logevents.SMTP_MX_RATE_LIMITED,
            client=self._peerIP,
            over=over,
        )
        refusal = TooMuchMail()
        self.sendCode(refusal.code, f"{refusal.enhanced} {refusal.text}".encode("ascii"))

    def smtp_MAIL(self, argument: bytes) -> None:
        if self._ehlo is None:
            self._error(503, b"5.5.1 Error: send HELO/EHLO first")
            return
        if self._txn is not None:
            self._error(503, b"5.5.1 Error: nested MAIL command")
            return
        if self.policy.submission and not self.authenticated:
            self._error(530, b"5.7.0 Authentication required")
            return
        if self.authenticated and not self.factory.guard.mayAcceptMessage(self.authenticated):
            _log.info(
                "sending rate limited account={account} client={client}",
                log_event=logevents.SEND_RATE_LIMITED,
                account=self.authenticated,
                client=self._peerIP,
            )
            self.sendCode(
                450,
                b"4.7.1 Too many messages: the limit is %d per hour; try again later" % self.factory.guard.max_messages_per_hour,
            )
            return
        parsed = self._parsePath(argument, b"FROM")
        if parsed is None:
            return
        sender, params = parsed
        for key, value in params.items():
            if key == "SIZE":
                if not value.isdigit():
                    self._error(501, b"5.5.4 Bad SIZE parameter")
                    return
                if int(value) > self.policy.max_message_size:
                    self.sendCode(552, b"5.3.4 Message size exceeds fixed maximum message size")
                    return
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    self._error(501, b"5.5.4 Bad BODY parameter")
                    return
            elif key == "AUTH":
                pass  # RFC 4954 5: accepted and not trusted
            else:
                self._error(555, b"5.5.4 Unsupported MAIL parameter")
                return
        declared = int(params.get("SIZE", "0"))
        if self._storageLow(declared):
            return
        relay = bool(self.authenticated) or self.factory.trusted(self._peerIP)
        if self._rateLimited(relay) and not self._mxMessageAllowed(declared):
            return

        def accept() -> None:
            self._txn = self.router.start(sender, relay, self.authenticated, declared)
            self.sendCode(250, b"2.1.0 Ok")

        if self.policy.submission:
            d = self.router.accounts.ownsAddress(self.authenticated, sender) if sender else defer.succeed(False)

            def owned(yes: bool) -> None:
                if not yes:
                    self.sendCode(553, b"5.7.1 Sender address not owned by you")
                    return
                accept()

            self._wait(d.addCallback(owned))
            return
        if sender and not relay and self.policy.refuse_local_senders:
            d = self.router.accounts.isLocalDomain(sender.rpartition("@")[2])

            def foreign(local: bool) -> None:
                if local:
                    _log.info(
                        "local sender refused on the mx from=<{sender}> client={client}",
                        log_event=logevents.SMTP_LOCAL_SENDER_REFUSED,
                        sender=sender,
                        client=self._peerIP,
                    )
                    self._error(553, b"5.7.1 Sender address in a local domain: log in on the submission port to send as it")
                    return
                accept()

            self._wait(d.addCallback(foreign))
            return
        accept()

    def smtp_RCPT(self, argument: bytes) -> None:
        if self._txn is None:
            self._error(503, b"5.5.1 Error: need MAIL command")
            return
        parsed = self._parsePath(argument, b"TO")
        if parsed is None:
            return
        recipient, params = parsed
        if not recipient:
            self._error(501, b"5.1.3 Bad recipient address syntax")
            return
        if params:
            self._error(555, b"5.5.4 Unsupported RCPT parameter")
            return
        txn = self._txn
        d = txn.addRecipient(recipient)

        def ok(_: object) -> None:
            self.sendCode(250, b"2.1.5 Ok")

        def refused(reason: Failure) -> defer.Deferred[None] | None:
            reason.trap(MailError)
            error: MailError = reason.value
            _log.info(
                "rcpt rejected {recipient} {code} from {client}",
                log_event=logevents.SMTP_RCPT_REJECTED,
                recipient=recipient,
                code=error.code,
                client=self._peerIP,
            )
            reply = f"{error.enhanced} {error.text}".encode("ascii", "replace")
            if isinstance(error, NoSuchUser):
                # Slower after a few, across connections: nobody lists our users by reconnecting.
                delay = self.factory.guard.unknownRecipient(self._peerIP)
                if delay > 0:
                    answered: defer.Deferred[None] = defer.Deferred()
                    self.callLater(delay, answered.callback, None)
                    return answered.addCallback(lambda _: self._error(error.code, reply))
            if isinstance(error, (NoSuchUser, RelayDenied)):
                # Counted like any other error: probing for users or relays ends with 421.
                self._error(error.code, reply)
            else:
                self.sendCode(error.code, reply)
            return None

        self._wait(d.addCallbacks(ok, refused))

    def smtp_DATA(self, argument: bytes) -> None:
        if self._txn is None:
            self._error(503, b"5.5.1 Error: need MAIL command")
            return
        if not self._txn.recipients:
            self._error(554, b"5.5.1 Error: no valid recipients")
            return
        if argument:
            self._error(501, b"5.5.4 Syntax: DATA")
            return
        txn = self._txn
        message = txn.open()
        self._headerFrom = []
        received = self._receivedHeader(txn)
        self._data = _DataReceiver(
            message,
            self.policy.max_message_size,
            prefix=received,
            addMissing=self._missingHeaders if self.policy.submission else None,
        )
        self.sendCode(354, b"End data with <CR><LF>.<CR><LF>")
        self.deadlines.dataStarted()

    def _receivedHeader(self, txn: Transaction) -> bytes:
        protocol = "ESMTP" if self._esmtp else "SMTP"
        if self.secure:
            protocol += "S"
        if self.authenticated:
            protocol += "A"
        target = f"\r\n\tfor <{txn.recipients[0]}>" if len(txn.recipients) == 1 else ""
        return (
            f"Received: from {self._ehlo} ({address_literal(self._peerIP)})\r\n"
            f"\tby {self.policy.hostname} (mailapp) with {protocol} id {txn.queue_id}{target};\r\n"
            f"\t{email.utils.formatdate(time.time(), localtime=False)}\r\n"
        ).encode("utf-8")

    def _missingHeaders(self, headers: bytes) -> bytes:
        """
        On submission, add ``Message-ID:`` and ``Date:`` when the client left
        them out, and note the ``From:`` addresses (checked at the end of data).
        """
        self._headerFrom = header_addresses(headers, b"from")
        names = {line.split(b":", 1)[0].strip().lower() for line in headers.split(b"\r\n") if b":" in line and line[:1] not in b" \t"}
        added = b""
        if b"date" not in names:
            added += b"Date: " + email.utils.formatdate(time.time(), localtime=False).encode() + b"\r\n"
        if b"message-id" not in names:
            added += b"Message-ID: " + email.utils.make_msgid(domain=self.policy.hostname).encode() + b"\r\n"
        return added

    def _endData(self) -> None:
        receiver, self._data = self._data, None
        txn, self._txn = self._txn, None
        assert receiver is not None and txn is not None
        refusal = MessageTooBig() if receiver.tooBig else MessageHasNul() if receiver.hasNul else receiver.headers.verdict()
        if self._rateLimited(txn.relay_allowed) and not self.factory.guard.mx.dataReceived(self._peerIP, receiver.size):
            # Counted whether stored or not: the bytes were sent; nothing of this one is stored.
            refusal = TooMuchMail()
        checked: defer.Deferred[MailError | None] = defer.succeed(refusal)
        if refusal is None and self.policy.submission and txn.authenticated and self._headerFrom:
            # The From: a reader sees must be the user's too, not only the envelope sender.
            owners = [self.router.accounts.ownsAddress(txn.authenticated, address) for address in self._headerFrom]
            checked = defer.gatherResults(owners, consumeErrors=True).addCallback(
                lambda answers: None if all(answers) else HeaderSenderNotOwned()
            )

        def decide(refusal: MailError | None) -> Any:
            if refusal is None:
                return self.factory.inflight(txn.commit()).addCallbacks(stored, failed)
            txn.abort()
            _log.info(
                "refused at end of data from=<{sender}> client={client}: {reply}",
                log_event=logevents.SMTP_DATA_REFUSED,
                sender=txn.sender,
                client=self._peerIP,
                reply=refusal.reply().decode("ascii"),
            )
            self.sendCode(refusal.code, f"{refusal.enhanced} {refusal.text}".encode())
            return None

        def stored(queue_id: str) -> None:
            if txn.authenticated:
                self.factory.guard.messageAccepted(txn.authenticated)
            _log.info(
                "accepted {queue_id} from=<{sender}> rcpts={count} size={size} client={client}",
                log_event=logevents.SMTP_ACCEPTED,
                queue_id=queue_id,
                sender=txn.sender,
                count=len(txn.recipients),
                size=receiver.size,
                client=self._peerIP,
            )
            self.sendCode(250, f"2.0.0 Ok: queued as {queue_id}".encode())

        def failed(reason: Failure) -> None:
            txn.abort()
            error = reason.value if isinstance(reason.value, MailError) else MailError()
            if not isinstance(reason.value, MailError):
                _log.failure("smtp.commit_failed", reason)
            self.sendCode(error.code, f"{error.enhanced} {error.text}".encode("ascii", "replace"))

        self._wait(checked.addCallbacks(decide, failed))

    def smtp_RSET(self, argument: bytes) -> None:
        self._resetTransaction()
        self.sendCode(250, b"2.0.0 Ok")

    def smtp_NOOP(self, argument: bytes) -> None:
        self.sendCode(250, b"2.0.0 Ok")

    def smtp_VRFY(self, argument: bytes) -> None:
        # Never reveal whether a user exists (RFC 5321 7.3).
        self.sendCode(252, b"2.5.2 Cannot VRFY user, but will accept message and attempt delivery")

    def smtp_EXPN(self, argument: bytes) -> None:
        self.sendCode(502, b"5.5.1 EXPN not available")

    def smtp_HELP(self, argument: bytes) -> None:
        self.sendCode(214, b"2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT STARTTLS AUTH")

    def smtp_QUIT(self, argument: bytes) -> None:
        self.sendCode(221, b"2.0.0 " + self.host + b" closing connection")
        self._close()

    def _resetTransaction(self) -> None:
        self._pendingAuth = None
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        if self._data is not None:
            self.deadlines.dataEnded()
        self._data = None


class _DataReceiver:
    """
    The DATA phase: unstuffs dots, finds ``<CRLF>.<CRLF>`` and nothing else,
    turns bare CR and bare LF into CRLF, enforces the size limit without
    buffering, and streams to the spool.
    """

    #: Whole runs of plain lines are handed over at once; tests turn this off
    #: to check it against the line-by-line path.
    fastPath = True

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
                self.done = True
                self._finishHeaders()
                self._flush(final=True)
                return buffer[position:]
            self._content(line, complete=True)
        return buffer[position:]

    def _content(self, piece: bytes, complete: bool) -> None:
        if self._atLineStart and piece.startswith(b"."):
            piece = piece[1:]
        if b"\r" in piece or b"\n" in piece:
            piece = _BARE.sub(b"\r\n", piece)
        if complete:
            piece += b"\r\n"
        self._atLineStart = complete
        self._emit(piece, body=True)

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


class SMTPFactory(SessionFactory):
    """
    Builds sessions for one listener and keeps its connection counts (total
    and per client address) so a flood gets ``421`` instead of our memory.
    """

    def __init__(
        self,
        router: Router,
        portal: Any,
        policy: SMTPPolicy,
        reactor: Any,
        tls: Any = None,
        inflight: Any = None,
        guard: Any = None,
        freeSpace: FreeSpace | None = None,
    ) -> None:
        super().__init__(inflight, guard)
        self.router = router
        self.portal = portal
        self.policy = policy
        self.reactor = reactor
        self.tls = tls
        #: The store's disk, checked at MAIL FROM against policy.min_free_disk (None: never refused).
        self.freeSpace = freeSpace

    def buildProtocol(self, addr: Any) -> ESMTPServer:
        return ESMTPServer(self)

    def trusted(self, ip: str) -> bool:
        import ipaddress

        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 client on a dual-stack listener
        return any(address in network for network in self.policy.trusted_networks)


def address_literal(ip: str) -> str:
    """
    A client's address as RFC 5321 (4.1.3) writes it in a trace header:
    ``[192.0.2.1]``, ``[IPv6:2001:db8::1]``; an IPv4 client of a dual-stack
    listener (``::ffff:192.0.2.1``) as IPv4.
    """
    import ipaddress

    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return f"[{ip}]"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:
            return f"[IPv6:{address}]"
        address = address.ipv4_mapped
    return f"[{address}]"


def buildFactory(context: Any, listener: Any) -> SMTPFactory:
    """The builder the service registers for the ``smtp`` and ``submission`` protocols."""
    import ipaddress

    config = context.config
    limits = config.limits
    policy = SMTPPolicy(
        hostname=config.hostname,
        submission=listener.protocol == "submission",
        max_message_size=limits.max_message_size,
        timeout=limits.smtp_timeout_seconds,
        allow_plaintext_auth=listener.allow_plaintext_auth,
        trusted_networks=tuple(ipaddress.ip_network(n) for n in config.relay.trusted_networks),
        **session_limits(config, listener),
        max_commands_before_auth=limits.max_commands_before_auth,
        postmaster=f"postmaster@{config.local_domains[0]}" if config.local_domains else "",
        refuse_local_senders=config.security.mx_refuse_local_senders,
        min_free_disk=limits.min_free_disk,
    )
    router = getattr(context, "router", None) or Router(
        context.accounts, context.store, limits.max_recipients, quotas=getattr(context, "quotas", None)
    )
    tls = context.tls if listener.tls == "starttls" else None
    return SMTPFactory(
        router,
        context.portal,
        policy,
        context.reactor,
        tls=tls,
        inflight=context.inflight,
        guard=getattr(context, "guard", None),
        freeSpace=FreeSpace(config.state_dir, context.reactor),
    )
