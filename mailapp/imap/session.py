"""
One IMAP4rev1 session (RFC 3501): the connection's lifecycle and the
command loop; the commands themselves are in L{mailapp.imap.commands}.

What this module owns, each part apart from command logic (the same parts a
line-session base will own for every protocol):

  - B{admission}: ban check, the factory's connection budgets, the
    greeting (L{IMAPServer.connectionMade});
  - B{the hold-until-replied loop}: commands are read one at a time
    (L{mailapp.imap.reader}) and the next is not looked at until the
    previous one's tagged reply is sent (L{IMAPServer.hold}), so replies
    come back in order whatever a command waits on; the errors a command
    may fail with are answered there, with their RFC 5530 codes;
  - B{dispatch}: from the one command table, by name and state, with the
    commands-before-login budget and command timing;
  - B{STARTTLS}: the buffer pipelined in the clear is dropped;
  - B{login}: through the factory's portal and abuse guard;
  - B{output back-pressure}: L{OutputFlow}, the session's producer;
  - B{timeouts, shutdown and close}.

The session subclasses L{twisted.mail.imap4.IMAP4Server} for its lineage,
the timeout mixin and the modified UTF-7 codec it registers, but overrides
its byte stream, command loop and every command: Twisted's mailbox API is
synchronous (it would open message files on the reactor thread), and its
parsers expand sequence sets before clamping them, recurse without limit and
read literals of any size.

The store's adapters are thin: the avatar is the store's L{IMailbox}
(through the service's Portal), a selected folder is a
L{mailapp.imap.selected.SelectedFolder} over an L{IFolder}, and a message is
its index entry (L{MessageInfo}) plus, when a FETCH or SEARCH needs it, its
file. Untagged EXISTS/FETCH/EXPUNGE for changes made by other sessions (and
by SMTP delivery) are sent before the tagged reply of the next command and
during IDLE; EXPUNGE is held back during FETCH, STORE and SEARCH (RFC 3501
7.4.1). The store's event bus is a hint: a session re-reads the folder when
told, on NOOP/CHECK, and during IDLE also on a slow timer (so changes made
by another process show up too).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, ISSLTransport
from twisted.logger import Logger
from twisted.mail import imap4 as twisted_imap4
from twisted.python.failure import Failure
from zope.interface import implementer

from mailapp import logevents
from mailapp.errors import KeywordLimit, LoginsBusy, MailboxGone, NoSuchFolder, OverQuota, StorageFull
from mailapp.imap.commands import CAPABILITIES, COMMANDS
from mailapp.imap.policy import CHUNK_SIZE, MAX_ERRORS, SHUTDOWN_GRACE, IMAPPolicy
from mailapp.imap.reader import TAG, CommandReader, Piece, ReadLimits, discard
from mailapp.imap.selected import SelectedFolder
from mailapp.imap.state import State
from mailapp.imap.wire import BadCommand, parse_arguments
from mailapp.sessions import BANNED, CLOSE_GRACE, AuthOutcome, Overrun

if TYPE_CHECKING:
    from mailapp.imap.commands.idle import Idle
    from mailapp.imap.factory import IMAPFactory

__all__ = ["IMAPServer", "NO_DISK_SPACE", "OutputFlow"]

_log = Logger()

#: The reply to any change (STORE, APPEND, COPY, MOVE, EXPUNGE) the full disk refused.
NO_DISK_SPACE = b"[UNAVAILABLE] Not enough disk space; try again later"


class _Gone(Exception):
    """The connection went away while a command was writing."""


@implementer(IPushProducer)
class OutputFlow:
    """
    The session's output, registered with the transport as a streaming
    producer: when the transport's buffer fills (a client that stops
    reading), writers wait on L{wait} and the session stops reading commands.
    """

    def __init__(self, resumed: Callable[[], None]) -> None:
        self.paused = False
        self.stopped = False
        self._waiters: list[defer.Deferred[None]] = []
        self._resumed = resumed

    def wait(self) -> defer.Deferred[None]:
        """Fires when the client reads again (at once if it does); fails if it has gone."""
        if self.stopped:
            return defer.fail(_Gone())
        if not self.paused:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._resumed()

    def stopProducing(self) -> None:
        self.stopped = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(_Gone())


class IMAPServer(twisted_imap4.IMAP4Server):
    """One IMAP session; see the module docstring."""

    #: A TCP or TLS transport (no-delay, producers, startTLS), not the bare ITransport of Protocol.
    transport: Any
    factory: IMAPFactory
    #: The reactor's (the factory's), so that tests can drive every timer with a fake clock.
    callLater: Callable[..., IDelayedCall]

    def __init__(self, factory: IMAPFactory) -> None:
        super().__init__(contextFactory=factory.tls)
        self.factory = factory
        self.policy: IMAPPolicy = factory.policy
        self.store = factory.store
        self.callLater = factory.reactor.callLater
        # TimeoutMixin's timeOut is declared an int; the policy's seconds are a float.
        self.timeOut = self.policy.login_timeout  # type: ignore[assignment]
        # IMAP4Server's own state is a string it never reads here: every method that reads it is overridden.
        self.state: State = State.NOT_AUTHENTICATED  # type: ignore[assignment]
        self.account: str | None = None
        #: The store's L{mailapp.interfaces.IMailbox}, once logged in.
        self.mailbox: Any = None
        #: The selected folder's view (None: none selected).
        self.selected: SelectedFolder | None = None
        #: The IDLE in progress, if any.
        self.idling: Idle | None = None
        self._logout: Callable[[], None] | None = None
        self._busy = False
        self._closing = False
        self._connected = False
        self._errors = 0
        self._authFailures = 0
        self._commandsBeforeAuth = 0
        self._peerIP = ""
        self._flow = OutputFlow(self._outputResumed)
        self._flowRegistered = False
        self._whenClosed: list[defer.Deferred[None]] = []
        self._limitsBeforeLogin = ReadLimits.before_login(self.policy.max_message_size)
        self._limits = ReadLimits(True, self.policy.max_line, self.policy.max_command, self.policy.max_literal, self.policy.max_message_size)
        self.deadlines = factory.deadlinesFor(self)
        self.reader = CommandReader(self, self.deadlines, lambda: self.store.newMessage())

    # -- admission, timeouts, shutdown, close ---------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        peer = self.transport.getPeer()
        self._peerIP = getattr(peer, "host", "") or str(peer)
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:
            pass
        if self.factory.banned(self._peerIP, "imap"):
            self.write(b"* BYE [UNAVAILABLE] " + BANNED + b"\r\n")
            self.close()
            return
        refusal = self.factory.admit(self._peerIP)
        if refusal:
            self.write(b"* BYE " + refusal + b"\r\n")
            self.close()
            return
        self.factory.connected(self)
        self.transport.registerProducer(self._flow, True)
        self._flowRegistered = True
        hostname = self.policy.hostname.encode("ascii", "replace")
        self.write(b"* OK [CAPABILITY " + self.capabilityText() + b"] " + hostname + b" IMAP4rev1 mailapp ready\r\n")
        self.setTimeout(self.policy.login_timeout)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._connected = False
        self.setTimeout(None)
        self.factory.disconnected(self)
        self._flow.stopProducing()
        if self.idling is not None:
            self.idling.stop()
        self.unselect()
        self.state = State.LOGOUT
        self.reader.connectionLost()
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()
        waiters, self._whenClosed = self._whenClosed, []
        for waiter in waiters:
            waiter.callback(None)

    def timeoutConnection(self) -> None:
        _log.info("imap timeout client={client}", log_event=logevents.IMAP_TIMEOUT, client=self._peerIP)
        self.write(b"* BYE Autologout; idle for too long\r\n")
        self.close()

    def deadlineExpired(self, overrun: Overrun) -> None:
        """A bound of L{SessionDeadlines} is overrun (before login, or a trickled line or literal): BYE and close."""
        self.setTimeout(None)
        self.reader.discardPieces()
        self.write(b"* BYE " + overrun.value + b"\r\n")
        self.close()

    def shutdown(self) -> defer.Deferred[None] | None:
        """The server is stopping: say BYE and close (aborted after L{SHUTDOWN_GRACE})."""
        if not self._connected:
            return None
        closed: defer.Deferred[None] = defer.Deferred()
        self._whenClosed.append(closed)
        self.write(b"* BYE Server shutting down\r\n")
        self.close(SHUTDOWN_GRACE)
        return closed

    def close(self, grace: float = CLOSE_GRACE) -> None:
        """Read nothing more, and close once the output is written (cut after C{grace})."""
        self._closing = True
        self.reader.clear()
        if self.transport is None:
            return
        if self._flowRegistered:
            # While a producer is registered, Twisted's TLS never starts its
            # shutdown: every IMAPS or STARTTLS connection stayed open after
            # LOGOUT (mbsync hung there).
            self._flowRegistered = False
            self.transport.unregisterProducer()
        self.factory.close(self, grace)

    #: The name the session-close tests know it by.
    _close = close

    def isConnected(self) -> bool:
        """Whether the connection is still there (Protocol's own C{connected} is never reset)."""
        return self._connected

    @property
    def secure(self) -> bool:
        return ISSLTransport.providedBy(self.transport)

    # -- output -------------------------------------------------------------------------------

    @property
    def flow(self) -> OutputFlow:
        """The output's back-pressure: a command that writes much waits on C{flow.wait()} while it is paused."""
        return self._flow

    def write(self, data: bytes) -> None:
        if self._connected and self.transport is not None:
            self.transport.write(data)

    def tagged(self, tag: bytes, status: bytes, text: bytes) -> None:
        self.write(tag + b" " + status + b" " + text + b"\r\n")

    def untagged(self, text: bytes) -> None:
        self.write(b"* " + text + b"\r\n")

    def _outputResumed(self) -> None:
        if self._connected and not self._closing and not self._busy:
            self.transport.resumeProducing()
            self._process()

    # -- capabilities ------------------------------------------------------------------------------

    def loginAllowed(self) -> bool:
        return self.secure or self.policy.allow_plaintext_auth

    def capabilityText(self) -> bytes:
        """The CAPABILITY list as it stands in this state: the command table's, the reader's and LIST's, and the login options."""
        caps = [b"IMAP4rev1", b"LITERAL+", b"SASL-IR", *CAPABILITIES, b"CHILDREN", b"SPECIAL-USE",
                b"APPENDLIMIT=%d" % self.policy.max_message_size]
        if self.state is State.NOT_AUTHENTICATED:
            if self.factory.tls is not None and not self.secure:
                caps.append(b"STARTTLS")
            if self.loginAllowed():
                caps.append(b"AUTH=PLAIN")
            else:
                caps.append(b"LOGINDISABLED")
        return b" ".join(caps)

    # -- the byte stream (the reader's owner) ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        self.reader.received(data)
        self._process()

    def readLimits(self) -> ReadLimits:
        return self._limits if self.state in (State.AUTHENTICATED, State.SELECTED) else self._limitsBeforeLogin

    def readable(self) -> bool:
        return not self._busy and not self._closing and not self._flow.paused

    def _process(self) -> None:
        self.reader.process()
        if self.transport is not None and not self._closing and self._connected:
            if (self._busy or self._flow.paused) and self.reader.buffered > CHUNK_SIZE:
                self.transport.pauseProducing()

    def holdReading(self, until: defer.Deferred[Any]) -> None:
        """Stop reading from a client that sends an APPEND faster than the disk takes it."""
        self._busy = True
        self.transport.pauseProducing()
        self.deadlines.hold(until)

        def resume(_: object) -> None:
            self._busy = False
            if self._connected and not self._closing:
                self.transport.resumeProducing()
                self._process()

        until.addBoth(resume)

    # -- the hold-until-replied loop ---------------------------------------------------------------

    def hold(self, d: defer.Deferred[Any], tag: bytes) -> None:
        """Hold further commands until C{d} has sent its reply; answer what it failed with."""
        self._busy = True
        running = [True]

        def done(result: object) -> None:
            self._busy = False
            if isinstance(result, Failure):
                if result.check(_Gone):
                    return
                if result.check(MailboxGone):
                    # The account was deleted under this session: nothing it
                    # could do next may reach a new account at the address.
                    self.untagged(b"BYE [UNAVAILABLE] This account was deleted")
                    self.close()
                    return
                self._failed(tag, result)
            if not running[0] and self._connected and not self._closing:
                if not self._flow.paused:
                    self.transport.resumeProducing()
                self._process()

        d.addBoth(done)
        running[0] = False

    def _failed(self, tag: bytes, reason: Failure) -> None:
        if reason.check(BadCommand):
            self.bad(tag, str(reason.value).encode("utf-8", "replace"))
        elif reason.check(KeywordLimit):
            self.tagged(tag, b"NO", b"[LIMIT] " + str(reason.value).capitalize().encode("ascii", "replace"))
        elif reason.check(OverQuota):
            # RFC 5530: the user's own quota, nothing changed; expunging makes room.
            text = reason.value.text  # type: ignore[union-attr]
            self.tagged(tag, b"NO", b"[OVERQUOTA] " + str(text).encode("ascii", "replace"))
        elif reason.check(StorageFull):
            # Not SERVERBUG: nothing changed, and the same command
            # works once space is freed (RFC 5530 UNAVAILABLE is the
            # temporary failure of a subsystem; OVERQUOTA is a user's quota).
            self.tagged(tag, b"NO", NO_DISK_SPACE)
        else:
            _log.failure("imap internal error", reason, log_event=logevents.IMAP_INTERNAL_ERROR)
            self.tagged(tag, b"NO", b"[SERVERBUG] Internal error")

    def bad(self, tag: bytes, text: bytes) -> None:
        """Answer C{BAD}; a client that earns too many is closed."""
        self._errors += 1
        if self._errors > MAX_ERRORS:
            self.untagged(b"BYE Too many errors; closing connection")
            self.close()
            return
        self.tagged(tag, b"BAD", text)

    # -- dispatch ----------------------------------------------------------------------------------

    def commandReceived(self, pieces: list[Piece]) -> None:
        """Run one whole command: its row in the table, if it is valid in this state."""
        first = pieces[0] if isinstance(pieces[0], bytes) else b""
        tag, _, rest = first.partition(b" ")
        if self.state is State.NOT_AUTHENTICATED:
            self._commandsBeforeAuth += 1
            if self._commandsBeforeAuth > self.policy.max_commands_before_auth:
                _log.info(
                    "too many commands before auth protocol=imap client={client}",
                    log_event=logevents.COMMANDS_BEFORE_AUTH_EXCEEDED,
                    client=self._peerIP,
                )
                discard(pieces)
                self.untagged(b"BYE Too many commands before login; closing connection")
                self.close()
                return
        if not tag or not TAG.match(tag) or b"+" in tag or len(tag) > 100:
            discard(pieces)
            self.bad(b"*", b"Invalid tag")
            return
        word, _, rest = rest.partition(b" ")
        if not word:
            discard(pieces)
            self.bad(tag, b"Missing command")
            return
        name = word.upper().decode("ascii", "replace")
        if name == "UID":
            sub, _, rest = rest.partition(b" ")
            name = "UID " + sub.upper().decode("ascii", "replace")
        try:
            arguments = parse_arguments([rest, *pieces[1:]])
        except BadCommand as e:
            discard(pieces)
            self.bad(tag, str(e).encode())
            return
        command = COMMANDS.get(name)
        if command is None or self.state not in command.states:
            discard(pieces)
            self.bad(tag, b"Unknown command" if command is None else b"Command not valid in this state")
            return
        started = time.perf_counter()
        try:
            result = command.handler(self, tag, arguments)
        except BadCommand as e:
            discard(pieces)
            self.bad(tag, str(e).encode("utf-8", "replace"))
            return
        if result is None:
            self.factory.command_done(name, started)
            return
        d = result if isinstance(result, defer.Deferred) else defer.Deferred.fromCoroutine(result)  # type: ignore[arg-type]
        if command.timed:
            d.addBoth(self._commandDone, name, started)
        self.hold(d, tag)

    def _commandDone(self, result: object, name: str, started: float) -> object:
        self.factory.command_done(name, started)
        return result

    # -- STARTTLS and login ---------------------------------------------------------------------------

    def startTLS(self, tag: bytes) -> None:
        """Answer OK and start TLS, dropping whatever the client pipelined in the clear."""
        # It must never run inside the TLS session (CVE-2011-0411 and kin).
        self.reader.dropBuffered()
        self.tagged(tag, b"OK", b"Begin TLS negotiation now")
        self.transport.startTLS(self.factory.tls)

    def login(self, tag: bytes, username: bytes, password: bytes) -> defer.Deferred[None]:
        """Check the credentials through the factory (its portal and abuse guard) and answer."""
        try:
            name = username.decode("utf-8")
        except UnicodeDecodeError:
            return self.authFailed(tag, username)
        if self.factory.guard.banned(self._peerIP):
            # Banned since this session began: no password check, the ban's answer.
            return self.authFailed(tag, username)
        d = self.factory.login(self, name, password)

        def authenticated(result: tuple[Any, Any, Callable[[], None]]) -> None:
            _, mailbox, logout = result
            if not self._connected or self.state is not State.NOT_AUTHENTICATED:
                logout()
                return
            self.mailbox = mailbox
            self.account = mailbox.account
            self.factory.guard.succeeded(self._peerIP, mailbox.account)
            self._logout = logout
            self.state = State.AUTHENTICATED
            self.factory.loggedIn(self)
            self.setTimeout(self.policy.timeout)
            _log.info(
                "imap login {account} client={client}",
                log_event=logevents.IMAP_LOGIN,
                account=self.account,
                client=self._peerIP,
                secure=self.secure,
            )
            self.tagged(tag, b"OK", b"[CAPABILITY " + self.capabilityText() + b"] Logged in")

        def refused(reason: Failure) -> defer.Deferred[None] | None:
            if reason.check(LoginsBusy):
                self.tagged(tag, b"NO", b"[UNAVAILABLE] Too many logins at once; try again later")
                return None
            reason.trap(UnauthorizedLogin)
            return self.authFailed(tag, username)

        return d.addCallbacks(authenticated, refused)

    def authFailed(self, tag: bytes, username: bytes) -> defer.Deferred[None]:
        """
        Count the failure with the server's guard, answer after the delay it
        gives, and hang up after repeated failures or when the address is
        now banned.
        """

        def answer(outcome: AuthOutcome) -> None:
            if not self._connected or self._closing:
                return
            self.tagged(tag, b"NO", b"[AUTHENTICATIONFAILED] Authentication failed")
            if outcome is AuthOutcome.BANNED:
                self.untagged(b"BYE [UNAVAILABLE] " + BANNED)
                self.close()
            elif outcome is AuthOutcome.TOO_MANY:
                _log.info(
                    "imap closing after {failures} failed logins client={client}",
                    log_event=logevents.IMAP_AUTH_FAILURES_EXCEEDED,
                    failures=self._authFailures,
                    client=self._peerIP,
                )
                self.untagged(b"BYE Too many authentication failures")
                self.close()

        return self.factory.authFailed(self, "imap", username, self.policy.max_auth_failures).addCallback(answer)

    # -- the selected folder -------------------------------------------------------------------------

    def select(self, view: SelectedFolder) -> None:
        """Make C{view} the selected folder's, and follow the store's events for it."""
        view.unsubscribe = self.store.events.subscribe(self.account, view.folder.name, lambda event: self._hint(view, event))
        self.selected = view
        self.state = State.SELECTED

    def unselect(self) -> None:
        if self.selected is not None:
            self.selected.close()
            self.selected = None
            if self.state is State.SELECTED:
                self.state = State.AUTHENTICATED

    def _hint(self, view: SelectedFolder, event: Any = None) -> None:
        """The store says the selected folder changed: re-read it now if idling, else at the next command."""
        view.hint(event)
        if self.idling is not None and self.selected is view:
            self.idling.changed()

    async def update(self, allow_expunge: bool, force: bool = False, with_uid: bool = False) -> None:
        """Bring the selected folder's view up to date, telling the client (L{SelectedFolder.update})."""
        if self.selected is not None:
            await self.selected.update(allow_expunge, force, with_uid)

    async def complete(self, tag: bytes, text: bytes, allow_expunge: bool = True, force: bool = False, with_uid: bool = False) -> None:
        """Report pending changes of the selected folder, then the tagged OK."""
        try:
            await self.update(allow_expunge, force, with_uid)
        except NoSuchFolder:
            self.unselect()
            self.untagged(b"BYE The selected mailbox was deleted")
            self.close()
            return
        self.tagged(tag, b"OK", text)
