"""
The line session: what every line-based protocol session does alike (SMTP,
POP3 and IMAP), once, so that a fix to one is a fix to all.
Its copies once drifted: three SASL PLAIN decoders disagreed, and each
session had its own admission, command loop and shutdown.

It is a plain L{Protocol} with L{TimeoutMixin}, not Twisted's ESMTP, POP3
or IMAP4Server: those servers' line handling is where STARTTLS injection and
SMTP smuggling live, their mailbox APIs are synchronous, and overriding most
of what they do left a subclass that was theirs in name only.

What the base owns
==================

  - B{Admission.} At connect: the client's address (C{_peerIP}), TCP
    no-delay, the ban check and the listener's budgets
    (L{SessionFactory.banned}, L{SessionFactory.admit}), then
    L{SessionFactory.connected} and the protocol's L{greet}.
  - B{The command loop.} Bytes are split into lines at LF (a CR before it
    is dropped) and handed over one at a time: to a pending continuation
    (C{_continuation}: a SASL exchange's next line) or to L{lineReceived}.
    A command whose reply waits on a Deferred calls L{_wait}: no further
    line is looked at until that Deferred has fired (its reply is sent), so
    pipelined replies come back in order; while a reply is pending and the
    client keeps pipelining past C{maxUnterminated} bytes, reading stops
    (back-pressure). A Deferred that has already fired never re-enters the
    loop (that would nest one frame per pipelined command).
  - B{Line limits.} More than C{maxUnterminated} bytes with no line end, or
    a line longer than C{maxLine} (when set), calls L{lineTooLong}, which
    says so and closes.
  - B{Raw data} (SMTP DATA, an IMAP literal): while L{consumeRaw} returns
    something other than C{None}, it is given the buffer instead of the line
    splitter.
  - B{STARTTLS}: L{_startTLS} drops whatever the client pipelined after the
    command (it came in the clear: CVE-2011-0411) and upgrades.
  - B{Compression} (IMAP's COMPRESS=DEFLATE): after L{_startCompression}
    the transport is a L{mailapp.compression.CompressingTransport} and what
    the client sends is inflated a step at a time, only when the loop has
    no whole line (or literal) left: the line limits and the back-pressure
    apply to the inflated bytes, and a decompression bomb never inflates
    ahead of the session. Data that is not DEFLATE calls
    L{compressedDataCorrupt}.
  - B{Commands before login}: L{_commandBeforeLogin} counts them, and past
    the limit logs, lets the protocol say so (L{tooManyCommands}) and closes.
  - B{Sending at the end of a burst}: once the loop has run every command
    the client's bytes held, what their replies wrote is sent at once
    (L{_flush}), not on the reactor's next turn.
  - B{Command timing}: L{_command} runs a command and reports its latency to
    L{SessionFactory.command_done}, when its reply is sent (after a L{_wait}).
  - B{Deadlines}: C{deadlines} is the session's L{SessionDeadlines}; the
    loop reports line starts and ends; L{deadlineExpired} is the protocol's.
  - B{Logins}: L{_login} goes through L{SessionFactory.login} (a ban since
    connect, or a name that is not UTF-8, fails without a password check),
    and L{_authFailed} counts a failure with L{SessionFactory.authFailed}
    and answers after the guard's delay; L{_loginPlain} takes a decoded
    L{mailapp.sasl.PlainCredentials}.
  - B{Closing}: L{_close} runs nothing more the client sent and closes
    through L{SessionFactory.close} (which cuts a client that takes neither
    its last reply nor the close). L{shutdown} (the server is stopping)
    closes an idle session at once with the protocol's L{goodbye}, a busy
    one once its reply is sent, and returns a Deferred that fires when the
    connection is gone.

What a protocol writes
======================

A protocol session subclasses L{LineSession}, sets C{protocolName} (its
name in logs and the abuse guard), C{maxUnterminated} and maybe C{maxLine},
and implements:

  - L{greet}: the greeting, and its timeout (C{setTimeout});
  - L{refuse}: a refusal at connect (banned, or a budget full) in its words;
  - L{lineReceived}: one command line: count it with L{_commandBeforeLogin}
    while not logged in, dispatch it through L{_command}, call L{_wait} with a
    Deferred when the reply comes later;
  - L{lineTooLong}, L{tooManyCommands}, L{goodbye}, L{timeoutConnection},
    L{deadlineExpired}: what it says then (the base closes where it says so);
  - L{commandFailed}: a Deferred given to L{_wait} failed (an internal
    error): answer it, or hang up and return C{False} (a protocol whose
    answer needs the command's context, as IMAP's needs its tag, keeps that
    on the session before it calls L{_wait});
  - for logins: L{loginSucceeded}, L{loginsBusy} and L{answerAuthFailure};
  - L{sessionEnded}: its own clean-up when the connection is lost;
  - optionally L{consumeRaw}, L{busyElsewhere}, L{releaseOutput} and
    L{outputPaused} (a session with an output producer of its own).

Its factory extends L{SessionFactory} and sets C{policy} (a
L{SessionLimits}), C{reactor}, C{portal} and C{tls}.
"""

from __future__ import annotations

import time
import zlib
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mailapp import logevents
from mailapp.compression import CompressingTransport, Inflater
from mailapp.deadlines import cancel_call
from mailapp.errors import LoginsBusy
from mailapp.sasl import PlainCredentials
from mailapp.sessions import ADMIT_SETTLE_SECONDS, BANNED, CLOSE_GRACE, AuthOutcome, Overrun, SessionFactory, SessionLimits

if TYPE_CHECKING:
    from typing import Protocol as TypingProtocol

    from twisted.internet.interfaces import IAddress

    class SessionTransport(TypingProtocol):
        """What a session needs of its transport: TCP or TLS, with STARTTLS and flow control."""

        disconnecting: bool

        def write(self, data: bytes) -> None: ...
        def loseConnection(self) -> None: ...
        def abortConnection(self) -> None: ...
        def getPeer(self) -> IAddress: ...
        def setTcpNoDelay(self, enabled: bool) -> None: ...
        def pauseProducing(self) -> None: ...
        def resumeProducing(self) -> None: ...
        def startTLS(self, contextFactory: Any) -> None: ...
        def registerProducer(self, producer: Any, streaming: bool) -> None: ...
        def unregisterProducer(self) -> None: ...


__all__ = ["SHUTDOWN_GRACE", "LineSession"]

_log = Logger()

#: Seconds a stopping server gives a client to take its goodbye and close.
SHUTDOWN_GRACE = 2.0


class LineSession(Protocol, TimeoutMixin):
    """One session of a line-based protocol; see the module docstring."""

    #: The protocol's name in log events and the abuse guard ("smtp", "pop3").
    protocolName: ClassVar[str] = "unknown"
    #: Bytes with no line end after which the session calls L{lineTooLong}.
    maxUnterminated: int = 16 * 1024
    #: A line longer than this (counted up to its LF, a CR included) calls
    #: L{lineTooLong}; None: the protocol checks lengths itself.
    maxLine: int | None = None
    #: Bytes pipelined behind a pending reply before reading stops; None:
    #: C{maxUnterminated}. (A protocol whose limits change with its state,
    #: as IMAP's do at login, sets these attributes when the state changes.)
    maxBacklog: int | None = None
    #: Failed logins in one session before the session is closed.
    maxAuthFailures: int = 3

    transport: SessionTransport | None  # type: ignore[assignment]
    callLater: Callable[..., IDelayedCall]

    def __init__(self, factory: SessionFactory) -> None:
        self.factory = factory
        self.policy: SessionLimits = factory.policy
        # Tests replace it with a fake clock's; the deadlines and delays use it too.
        self.callLater = factory.reactor.callLater
        self._buffer = b""
        self._busy = False
        self._closing = False
        self._connected = False
        self._shuttingDown = False
        self._peerIP = ""
        self._authFailures = 0
        self._commandsBeforeAuth = 0
        #: Where the next line goes instead of L{lineReceived} (a SASL exchange's response).
        self._continuation: Callable[[bytes], None] | None = None
        #: The command whose reply a pending Deferred will send, and when it came.
        self._timing: tuple[str, float] | None = None
        self._whenClosed: list[defer.Deferred[None]] = []
        #: The wait before admission near a limit (L{SessionFactory.admitSoon}).
        self._settling: IDelayedCall | None = None
        self.deadlines = factory.deadlinesFor(self)
        #: The client's compressed input, once the session compresses (L{_startCompression}).
        self._inflater: Inflater | None = None

    # -- what a protocol writes ---------------------------------------------------

    def greet(self) -> None:
        """Admitted: send the greeting and set the timeout."""
        raise NotImplementedError

    def refuse(self, text: bytes, banned: bool) -> None:
        """Say C{text} (L{BANNED}, or a budget's refusal) at connect; the base closes."""
        raise NotImplementedError

    def lineReceived(self, line: bytes) -> None:
        """One command line, its line end taken off."""
        raise NotImplementedError

    def lineTooLong(self) -> None:
        """Say that a line is too long, and close (L{_close})."""
        raise NotImplementedError

    def tooManyCommands(self) -> None:
        """Say that there were too many commands before login; the base closes."""
        raise NotImplementedError

    def goodbye(self) -> None:
        """The server is stopping: say so; the base closes."""
        raise NotImplementedError

    def deadlineExpired(self, overrun: Overrun) -> None:
        """A bound of L{SessionDeadlines} is overrun: say so in the protocol's words and close."""
        raise NotImplementedError

    def commandFailed(self, reason: Failure) -> bool:
        """
        A Deferred given to L{_wait} failed: answer the command; return
        C{False} if the session has hung up instead.
        """
        raise NotImplementedError

    def loginSucceeded(self, avatar: Any, logout: Callable[[], None]) -> defer.Deferred[None] | None:
        """The portal accepted a login (L{_login}): take the avatar and answer."""
        raise NotImplementedError

    def loginsBusy(self) -> None:
        """The server has too many logins in progress (L{LoginsBusy}): say try later."""
        raise NotImplementedError

    def answerAuthFailure(self, outcome: AuthOutcome) -> None:
        """Say a login failed, once the delay is over; for anything but RETRY the base then closes."""
        raise NotImplementedError

    def sessionEnded(self) -> None:
        """The connection is lost: release what the session holds."""

    def compressedDataCorrupt(self) -> None:
        """What the client sent after compression began is not DEFLATE: say so if the protocol can; the base closes."""

    def consumeRaw(self) -> bool | None:
        """
        In a raw-data phase (SMTP DATA, an IMAP literal): take what it can of
        C{_buffer} and return whether the loop goes on (C{True}) or waits for
        more bytes (C{False}). C{None} (the default): not in one, split lines.
        """
        return None

    def busyElsewhere(self) -> bool:
        """Work in progress besides a pending reply (SMTP: a message being received): a shutdown waits for it."""
        return False

    def releaseOutput(self) -> None:
        """Unregister any producer the session gave its transport (Twisted's TLS does not close while one is)."""

    def outputPaused(self) -> bool:
        """
        Whether the transport has asked the session's own output producer to
        pause (IMAP's, while a FETCH streams): no command is read meanwhile.
        A session that registers none keeps the default, C{False}.
        """
        return False

    # -- connection -----------------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        self._connected = True
        peer = self.transport.getPeer()
        self._peerIP = getattr(peer, "host", "") or str(peer)
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:
            pass  # not TCP (a unix socket, a test transport)
        if self.factory.banned(self._peerIP, self.protocolName):
            self.refuse(BANNED, banned=True)
            self._close()
            return
        if self.factory.admitSoon(self._peerIP):
            # Near a limit with other workers serving: their latest counts first.
            self.transport.pauseProducing()
            self._settling = self.callLater(ADMIT_SETTLE_SECONDS, self._settled)
            return
        self._admit()

    def _settled(self) -> None:
        self._settling = None
        if not self._connected or self.transport is None:
            return
        self.transport.resumeProducing()
        self._admit()

    def _admit(self) -> None:
        refusal = self.factory.admit(self._peerIP)
        if refusal:
            self.refuse(refusal, banned=False)
            self._close()
            return
        self.factory.connected(self)
        self.greet()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Nothing the client pipelined runs after it has gone: a check or a
        # commit finishing later must not start the next command.
        self._connected = False
        self._closing = True
        self._settling = cancel_call(self._settling)
        self._buffer = b""
        self._inflater = None
        self.setTimeout(None)
        self.factory.disconnected(self)
        self.sessionEnded()
        waiters, self._whenClosed = self._whenClosed, []
        for waiter in waiters:
            waiter.callback(None)

    def setTimeout(self, period: float | None) -> None:
        """L{TimeoutMixin.setTimeout}, typed (seconds, or None for none)."""
        TimeoutMixin.setTimeout(self, period)

    def resetTimeout(self) -> None:
        TimeoutMixin.resetTimeout(self)

    @property
    def secure(self) -> bool:
        """Whether the connection is encrypted (implicit TLS, or after STARTTLS)."""
        return ISSLTransport.providedBy(self.transport)

    def _write(self, data: bytes) -> None:
        if self._connected and self.transport is not None:
            self.transport.write(data)

    def _close(self, grace: float = CLOSE_GRACE) -> None:
        """Run nothing more the client sent; close once the reply is written (L{SessionFactory.close})."""
        self._closing = True
        self._buffer = b""
        if self.transport is None:
            return
        self.releaseOutput()
        self.factory.close(self, grace)

    def _abort(self) -> None:
        """Cut the connection now: a half-sent multi-line response cannot end with an error line."""
        self._closing = True
        if self.transport is not None:
            self.transport.abortConnection()

    def shutdown(self) -> defer.Deferred[None] | None:
        """
        The server is stopping: an idle session says its L{goodbye} and
        closes now, a busy one once its reply is sent. The Deferred fires
        when the connection is gone (a goodbye is only buffered until then);
        the close is cut after L{SHUTDOWN_GRACE}. None if already gone.
        """
        if not self._connected:
            return None
        self._shuttingDown = True
        closed: defer.Deferred[None] = defer.Deferred()
        self._whenClosed.append(closed)
        if self._closing:
            # Already saying goodbye on its own: only cut it sooner.
            self.factory.close(self, SHUTDOWN_GRACE)
        elif self._idle():
            self._closeForShutdown()
        return closed

    def _idle(self) -> bool:
        return not self._busy and not self.busyElsewhere()

    def _closeForShutdown(self) -> None:
        self.goodbye()
        self._close(SHUTDOWN_GRACE)

    def _startTLS(self, reply: bytes, tls: Any) -> None:
        """
        Answer a STARTTLS/STLS with C{reply} and upgrade. Whatever the client
        pipelined after the command came in the clear: it must never run
        inside the TLS session (CVE-2011-0411), so it is dropped.
        """
        assert self.transport is not None
        self._buffer = b""
        self._continuation = None
        self.transport.write(reply)
        self.transport.startTLS(tls)

    @property
    def compressing(self) -> bool:
        """Whether both directions are compressed (L{_startCompression})."""
        return self._inflater is not None

    def _startCompression(self) -> None:
        """
        Compress both directions from here on: call it once the reply that
        agrees to compress has been written, uncompressed. What the client
        sent after its command was compressed already (RFC 4978 3: it starts
        with the first command after COMPRESS).
        """
        assert self.transport is not None and self._inflater is None
        self._inflater = Inflater()
        self._inflater.feed(self._buffer)
        self._buffer = b""
        self.transport = CompressingTransport(self.transport)  # type: ignore[assignment]

    def _inflateMore(self) -> bool:
        """Inflate one more step of the client's input into C{_buffer}; whether there was any."""
        if self._inflater is None or not self._inflater.pending:
            return False
        try:
            data = self._inflater.inflate()
        except zlib.error:
            _log.info(
                "compressed input is corrupt protocol={protocol} client={client}",
                log_event=logevents.COMPRESSED_INPUT_CORRUPT,
                protocol=self.protocolName,
                client=self._peerIP,
            )
            self._buffer = b""
            self._inflater = Inflater()  # nothing more of it is read
            self.compressedDataCorrupt()
            self._close()
            return False
        self._buffer += data
        return bool(data)

    # -- the byte stream --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        if self._inflater is not None:
            self._inflater.feed(data)
        else:
            self._buffer += data
        self._process()

    def _process(self) -> None:
        self._runCommands()
        self._flush()

    def _runCommands(self) -> None:
        while not self._closing:
            # Asked before every command, not once per call: what ends a
            # session's work may happen inside this loop (a reply that has
            # already fired, a raw phase that ends), and nothing the client
            # pipelined after it may run once the server is stopping.
            if self._shuttingDown and self._idle():
                self._closeForShutdown()
                return
            if self._busy or self.outputPaused():
                break
            if not self._buffer and not self._inflateMore():
                break
            raw = self.consumeRaw()
            if raw is not None:
                if raw or self._inflateMore():
                    continue
                return
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.maxUnterminated:
                    self._buffer = b""
                    self.lineTooLong()
                elif self._inflateMore():
                    continue
                else:
                    self.deadlines.lineStarted()
                return
            if self.maxLine is not None and end > self.maxLine:
                self.lineTooLong()
                return
            self.deadlines.lineEnded()
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._continuation is not None:
                continuation, self._continuation = self._continuation, None
                continuation(line)
            else:
                self.lineReceived(line)
        if self.transport is not None and not self._closing:
            # Back-pressure: stop reading while a reply is pending and the client keeps pipelining.
            backlog = self.maxBacklog if self.maxBacklog is not None else self.maxUnterminated
            # Compressed input not yet inflated counts too (at its compressed size).
            held = len(self._buffer) + (self._inflater.pending if self._inflater is not None else 0)
            if (self._busy or self.outputPaused()) and held > backlog:
                self.transport.pauseProducing()

    def _flush(self) -> None:
        """
        Send what the replies of this burst wrote now. Twisted's TCP
        transport only buffers a write and sends it when the reactor next
        polls the socket as writable: one more turn of the loop (a poll, the
        writer's registration and removal) between every reply and the
        client that waits for it, which a one-command-at-a-time client (a
        POP3 RETR after RETR, an SMTP transaction) pays on every command.
        Called once per burst, so pipelined replies still leave in one send.

        Only on a plain TCP connection (STARTTLS's too: its records are
        buffered there), with no producer but a push producer the transport
        has not paused (a completed send resumes a paused or a pull
        producer, whose next writes and replies would then re-enter the loop
        from here), and which is not closing (a completed send would then
        close it, here rather than in the reactor). A send that fails leaves
        the data and the writer in place: the reactor's own next attempt
        fails the same way and ends the connection as it always does.
        """
        transport = self.transport
        if (
            isinstance(transport, Connection)
            and transport.connected
            and not transport.disconnecting
            and (transport.producer is None or (transport.streamingProducer and not transport.producerPaused))
            and (transport.dataBuffer or transport._tempDataBuffer)
        ):
            transport.doWrite()

    def _pauseReadingUntil(self, write: defer.Deferred[Any] | None) -> None:
        """
        Stop reading from a client that sends data faster than the disk
        takes it, until C{write} fires; that wait does not count against the
        client's minimum data rate (L{SessionDeadlines.hold}).
        """
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
            if isinstance(result, Failure) and not self.commandFailed(result):
                return
            if not self._connected or self._closing:
                return
            if self._shuttingDown and self._idle():
                self._closeForShutdown()
                return
            if inline:
                return
            assert self.transport is not None
            if not self.outputPaused():
                self.transport.resumeProducing()
            self._process()

        d.addBoth(done)
        inline = False

    def _command(self, name: str, handler: Callable[[], None]) -> None:
        """Run C{handler}, the command C{name}, and time it to its reply (L{_timed})."""
        self._timing = (name, time.perf_counter())
        handler()
        self._timed()

    def _timed(self, waited: bool = False) -> None:
        """
        The command in C{_timing} has been answered, unless it waits for a
        Deferred (then L{_wait} calls this when it fires): its latency goes
        to the factory. Not a wrapper around the handler: pipelined commands
        recurse through L{_process}, and every frame counts there.
        """
        if self._timing is not None and (waited or not self._busy):
            (command, started), self._timing = self._timing, None
            self.factory.command_done(command, started)

    def _commandBeforeLogin(self, limit: int) -> bool:
        """
        Count a command before login: C{False} (logged, said, closed) once
        there have been more than C{limit}.
        """
        self._commandsBeforeAuth += 1
        if self._commandsBeforeAuth <= limit:
            return True
        _log.info(
            "too many commands before auth protocol={protocol} client={client}",
            log_event=logevents.COMMANDS_BEFORE_AUTH_EXCEEDED,
            protocol=self.protocolName,
            client=self._peerIP,
        )
        self.tooManyCommands()
        self._close()
        return False

    # -- logins ---------------------------------------------------------------------------

    def _loginPlain(self, credentials: PlainCredentials) -> None:
        """Log in with a decoded PLAIN response (holding further commands until it is answered)."""
        if credentials.actsForAnother:
            self._wait(self._authFailed(credentials.authcid.decode("utf-8", "replace")))
            return
        self._login(credentials.authcid, credentials.password)

    def _login(self, username: bytes, password: bytes) -> None:
        """Verify C{username} and C{password} (holding further commands); L{loginSucceeded} on success."""
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

        def succeeded(result: tuple[Any, Any, Callable[[], None]]) -> defer.Deferred[None] | None:
            _, avatar, logout = result
            return self.loginSucceeded(avatar, logout)

        def refused(reason: Failure) -> defer.Deferred[None] | None:
            if reason.check(LoginsBusy):
                self.loginsBusy()
                return None
            reason.trap(UnauthorizedLogin)
            return self._authFailed(name)

        self._wait(d.addCallbacks(succeeded, refused))

    def _authFailed(self, account: str = "") -> defer.Deferred[None]:
        """
        Count the failure with the server's guard, answer after the delay it
        gives, and hang up after repeated failures or when the address is
        now banned.
        """

        def answer(outcome: AuthOutcome) -> None:
            if not self._connected or self._closing:
                return
            self.answerAuthFailure(outcome)
            if outcome is not AuthOutcome.RETRY:
                self._close()

        answered: defer.Deferred[None] = self.factory.authFailed(self, self.protocolName, account, self.maxAuthFailures).addCallback(answer)
        return answered
