"""
The SMTP conversation, in its two roles: the inbound MX (port 25) and
authenticated submission (587 with STARTTLS, 465 with implicit TLS).

L{SMTPSession} is the part of a session that is not a mail transaction:
the greeting, HELO/EHLO, STARTTLS, AUTH and the small commands, on the
shared L{LineSession} (admission, the command loop that holds the next
command until the reply is sent, the STARTTLS buffer drop, timing,
deadlines, shutdown). L{mailapp.smtp.transaction.ESMTPServer} adds MAIL,
RCPT and DATA. The classic attacks on SMTP servers live in their line
handling, which is why none of Twisted's is used:

  - commands are read one at a time and the next one is not looked at until
    the reply to the previous one is sent, so pipelined replies come back in
    order even when a check waits on the disk or a password hash;
  - bytes pipelined after STARTTLS are thrown away, never run after the
    handshake (CVE-2011-0411);
  - an unterminated command line is cut off; DATA is read by
    L{mailapp.smtp.data._DataReceiver} (no smuggling).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.interfaces import IDelayedCall

from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import logevents, sasl
from mailapp.delivery import Router, Transaction
from mailapp.errors import LoginsBusy
from mailapp.linesession import LineSession
from mailapp.postscreen import SessionScreen
from mailapp.sessions import BANNED, AuthOutcome, Overrun
from mailapp.smtp.data import _MessageStream
from mailapp.smtp.policy import (
    GREETING_TIMEOUT,
    HELO_NAME,
    MAX_AUTH_FAILURES,
    MAX_COMMAND_LINE,
    MAX_ERRORS,
    MAX_UNTERMINATED,
    SMTPPolicy,
    has_controls,
    has_controls_or_bad_utf8,
)

if TYPE_CHECKING:
    from mailapp.smtp.factory import SMTPFactory

__all__ = ["SMTPSession"]

_log = Logger()

#: What each SASL failure is answered with (RFC 4954 4: 501 for all three).
_SASL_REPLIES: dict[type[sasl.SASLError], bytes] = {
    sasl.Cancelled: b"5.7.0 Authentication cancelled",
    sasl.BadBase64: b"5.5.2 Cannot decode response",
    sasl.MalformedPlain: b"5.5.2 Malformed PLAIN response",
}


class SMTPSession(LineSession):
    """One SMTP session but its mail transactions; see the module docstring."""

    protocolName = "smtp"
    #: Whether EHLO offers DSN (RFC 3461). LMTP does not: its last hop sends no
    #: "delivered" DSN of its own, and the MTA in front then sends its "relayed" one.
    offersDSN = True
    maxUnterminated = MAX_UNTERMINATED
    maxAuthFailures = MAX_AUTH_FAILURES

    factory: SMTPFactory
    policy: SMTPPolicy

    def __init__(self, factory: SMTPFactory) -> None:
        super().__init__(factory)
        self.router: Router = factory.router
        self.host = self.policy.hostname.encode("ascii")
        self._errors = 0
        self._ehlo: str | None = None
        self._esmtp = False
        self.authenticated: str | None = None
        self._txn: Transaction | None = None
        #: The message being received with DATA, or with BDAT once its last chunk is in.
        self._data: _MessageStream | None = None
        #: On the MX: the checks before DATA (L{mailapp.postscreen}), made at connect.
        self._screen: SessionScreen | None = None
        #: The delayed greeting, while it waits (postscreen.greeting_delay), and when it began.
        self._greeting: IDelayedCall | None = None
        self._greetingSince = 0.0
        #: Whether our last EHLO reply offered PIPELINING (not after HELO, nor after STARTTLS).
        self._pipeliningOffered = False

    # -- replies -------------------------------------------------------------------

    def sendCode(self, code: int, message: bytes = b"") -> None:
        """A reply: C{message}'s lines, each after the code (RFC 5321 4.2.1: ``250-`` but for the last)."""
        lines = message.splitlines()
        last = lines[-1] if lines else b""
        if self.transport is None:
            return
        # Written even after the connection is lost (into the void), as
        # Twisted's SMTP did: only what a reply starts must not run then.
        self.transport.write(b"".join(b"%03d-%s\r\n" % (code, line) for line in lines[:-1]) + b"%03d %s\r\n" % (code, last))

    def _error(self, code: int, text: bytes) -> None:
        self._errors += 1
        if self._errors > MAX_ERRORS:
            self.sendCode(421, b"4.7.0 " + self.host + b" Too many errors; closing connection")
            self._close()
            return
        self.sendCode(code, text)

    # -- the line session's hooks ----------------------------------------------------

    def greet(self) -> None:
        postscreen = self.factory.postscreen
        if postscreen is not None and not self.policy.submission:
            trusted = self.factory.trusted(self._peerIP)
            self._screen = postscreen.session(self.policy.dnsbl, self.policy.postscreen, self._peerIP, trusted)
            if self._screen.greetingDelay:
                # An unknown client waits for the 220; one that talks meanwhile is refused (dataReceived).
                self._greetingSince = self.factory.reactor.seconds()
                self._greeting = self.callLater(self._screen.greetingDelay, self._sendGreeting)
                self.setTimeout(self._screen.greetingDelay + GREETING_TIMEOUT)
                return
        self._sendGreeting()

    def _sendGreeting(self) -> None:
        self._greeting = None
        if self._closing:
            return  # said goodbye during the delay (the server is stopping): no 220 after the 421
        self.sendCode(220, self.host + b" ESMTP mailapp")
        self.setTimeout(self.policy.login_timeout if self.policy.submission else GREETING_TIMEOUT)

    def dataReceived(self, data: bytes) -> None:
        if self._greeting is not None and self._screen is not None and not self._closing:
            self._refuseEarly(self._screen.talkedEarly(self.factory.reactor.seconds() - self._greetingSince))
            return
        super().dataReceived(data)

    def _refuseEarly(self, text: bytes) -> None:
        """A client the early-talker checks refuse: 554 and close (Postfix postscreen's pregreet and pipelining tests)."""
        self._cancelGreeting()
        self.sendCode(554, text)
        self._close()

    def _cancelGreeting(self) -> None:
        greeting, self._greeting = self._greeting, None
        if greeting is not None and greeting.active():
            greeting.cancel()

    def refuse(self, text: bytes, banned: bool) -> None:
        self.sendCode(421, (b"4.7.0 " if banned else b"4.3.2 ") + self.host + b" " + text)

    def sessionEnded(self) -> None:
        self._cancelGreeting()
        self._resetTransaction()

    def timeoutConnection(self) -> None:
        self.sendCode(421, b"4.4.2 " + self.host + b" Error: timeout exceeded")
        self._close()

    def deadlineExpired(self, overrun: Overrun) -> None:
        """A bound of L{SessionDeadlines} is overrun: a message being received is dropped, as at a timeout."""
        self.setTimeout(None)
        self.sendCode(421, b"4.4.2 " + self.host + b" " + overrun.value)
        self._close()

    def goodbye(self) -> None:
        self.sendCode(421, b"4.3.2 " + self.host + b" Service shutting down")

    def busyElsewhere(self) -> bool:
        # A message in DATA finishes first; the goodbye comes after its reply.
        return self._data is not None

    def lineTooLong(self) -> None:
        self.sendCode(500, b"5.5.2 Line too long; closing connection")
        self._close()

    def tooManyCommands(self) -> None:
        self.sendCode(421, b"4.7.0 " + self.host + b" Too many commands before authentication; closing connection")

    def commandFailed(self, reason: Failure) -> bool:
        _log.failure("internal error", reason, log_event=logevents.SMTP_INTERNAL_ERROR)
        self.sendCode(451, b"4.3.0 Local error in processing")
        return True

    def lineReceived(self, line: bytes) -> None:
        if len(line) > MAX_COMMAND_LINE:
            self._error(500, b"5.5.2 Line too long")
            return
        utf8_allowed = line[:4].upper() in (b"MAIL", b"RCPT")
        if has_controls_or_bad_utf8(line) if utf8_allowed else has_controls(line):
            # CR, NUL or 8-bit bytes (but UTF-8 addresses, RFC 6531, whose
            # transaction _parsePath checks): never let them reach a header or a log line.
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
        if self._buffer and not self._pipeliningOffered and self._screen is not None and self._screen.judgePipelining:
            # More bytes came behind this command before we offered PIPELINING (RFC 2920).
            self._refuseEarly(self._screen.pipelined(verb[:16]))
            return
        if self.policy.submission and not self.authenticated:
            if not self._commandBeforeLogin(self.policy.max_commands_before_auth):
                return
        handler: Callable[[bytes], None] | None = getattr(self, "smtp_" + verb, None) if verb.isalpha() else None
        if handler is None:
            self._error(500, b"5.5.1 Error: command not recognized")
            return
        self._command(verb, lambda: handler(argument))

    # -- the conversation ----------------------------------------------------------------

    def _greet(self, argument: bytes, esmtp: bool) -> bool:
        name = argument.strip()
        if not name or b" " in name or len(name) > 255:
            self._error(501, b"5.5.4 Syntax: " + (b"EHLO" if esmtp else b"HELO") + b" hostname")
            return False
        if not HELO_NAME.match(name):
            # The name goes into our Received: header: a tab, "(", ")" or ";"
            # there would let the client shape the trace fields we add.
            self._error(501, b"5.5.2 Invalid hostname: a domain name or an address literal such as [192.0.2.1]")
            return False
        self._resetTransaction()
        self._ehlo = name.decode("ascii")
        self._esmtp = esmtp
        self._pipeliningOffered = esmtp
        if self._screen is not None:
            self._screen.helo(self._ehlo)
        self._idleTimeout()
        return True

    def _idleTimeout(self) -> None:
        """After the greeting: the session timeout, but the login timeout on submission until AUTH succeeds."""
        waiting_for_login = self.policy.submission and not self.authenticated
        self.setTimeout(self.policy.login_timeout if waiting_for_login else self.policy.timeout)

    def smtp_HELO(self, argument: bytes) -> None:
        if self._greet(argument, esmtp=False):
            self.sendCode(250, self.host)

    def _offersRequireTLS(self) -> bool:
        """
        REQUIRETLS (RFC 8689) on submission inside TLS, when this server
        relays (the relay honours it: mailapp.relay.workers); the MX
        delivers locally and has nothing to require of a next hop.
        """
        return self.policy.submission and self.secure and getattr(self.router, "queue", None) is not None

    def smtp_EHLO(self, argument: bytes) -> None:
        if not self._greet(argument, esmtp=True):
            return
        lines = [self.host, b"PIPELINING", b"SIZE %d" % self.policy.max_message_size, b"8BITMIME", b"ENHANCEDSTATUSCODES"]
        if self.offersDSN:
            lines.append(b"DSN")
        lines += [b"SMTPUTF8", b"CHUNKING", b"BINARYMIME"]  # RFC 6531; RFC 3030: BDAT (mailapp.smtp.chunking)
        if self.factory.tls is not None and not self.secure:
            lines.append(b"STARTTLS")
        if self._authAvailable():
            lines.append(b"AUTH PLAIN LOGIN")
        if self._offersRequireTLS():
            lines.append(b"REQUIRETLS")
        lines.append(b"HELP")
        self.sendCode(250, b"\n".join(lines))

    def smtp_STARTTLS(self, argument: bytes) -> None:
        if self.factory.tls is None or self.secure:
            self._error(502 if self.factory.tls is None else 503, b"5.5.1 STARTTLS not available")
            return
        if argument:
            self._error(501, b"5.5.4 Syntax: STARTTLS")
            return
        self._startTLS(b"220 2.0.0 Ready to start TLS\r\n", self.factory.tls)
        self._resetTransaction()
        self._ehlo = None
        self._pipeliningOffered = False
        if self.authenticated:
            self.authenticated = None
            self.factory.loggedIn(self, False)

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
        self.sendCode(214, b"2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT STARTTLS AUTH")

    def smtp_QUIT(self, argument: bytes) -> None:
        self.sendCode(221, b"2.0.0 " + self.host + b" closing connection")
        self._close()

    def _resetTransaction(self) -> None:
        self._continuation = None
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        if self._data is not None:
            self.deadlines.dataEnded()
        self._data = None

    # -- AUTH (RFC 4954) -------------------------------------------------------------------

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
                self._continuation = self._authPlain
            else:
                self._authPlain(initial)
        elif mechanism == b"LOGIN":
            if initial is None:
                self.sendCode(334, sasl.LOGIN_USERNAME)
                self._continuation = self._authLoginUser
            else:
                self._authLoginUser(initial)
        else:
            self._error(504, b"5.5.4 Unrecognized authentication mechanism")

    def _saslFailed(self, error: sasl.SASLError) -> None:
        self._error(501, _SASL_REPLIES[type(error)])

    def _authPlain(self, line: bytes) -> None:
        try:
            credentials = sasl.decode_plain(line)
        except sasl.SASLError as error:
            self._saslFailed(error)
            return
        self._loginPlain(credentials)

    def _authLoginUser(self, line: bytes) -> None:
        try:
            username = sasl.decode_response(line)
        except sasl.SASLError as error:
            self._saslFailed(error)
            return
        self.sendCode(334, sasl.LOGIN_PASSWORD)

        def password(line: bytes) -> None:
            try:
                secret = sasl.decode_response(line)
            except sasl.SASLError as error:
                self._saslFailed(error)
                return
            self._login(username, secret)

        self._continuation = password

    def loginSucceeded(self, avatar: Any, logout: Callable[[], None]) -> None:
        self.authenticated = avatar.account
        logout()
        self.factory.loggedIn(self)
        self._idleTimeout()
        self.factory.guard.succeeded(self._peerIP, avatar.account)
        _log.info("auth ok {account} from {peer}", log_event=logevents.SMTP_AUTH_OK, account=self.authenticated, peer=self._peerIP)
        self.sendCode(235, b"2.7.0 Authentication successful")

    def loginsBusy(self) -> None:
        self.sendCode(454, LoginsBusy().reply()[4:])

    def answerAuthFailure(self, outcome: AuthOutcome) -> None:
        if outcome is AuthOutcome.RETRY:
            self.sendCode(535, b"5.7.8 Authentication credentials invalid")
        elif outcome is AuthOutcome.BANNED:
            self.sendCode(421, b"4.7.0 " + self.host + b" " + BANNED)
        else:
            self.sendCode(421, b"4.7.0 " + self.host + b" Too many authentication failures")
