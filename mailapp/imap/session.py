"""
One IMAP4rev1 session (RFC 3501): what IMAP adds to the shared
L{mailapp.linesession.LineSession}; the commands themselves are in
L{mailapp.imap.commands}.

The base owns what every line protocol does alike: admission (ban check,
budgets), the loop that holds the next command until the previous one's
reply is sent, the STARTTLS buffer drop, the commands-before-login budget,
command timing, deadlines, logins with their failure delays, shutdown and
close. This module writes IMAP's hooks and what only IMAP has:

  - B{literals}: the base splits lines and hands the bytes of a literal to
    L{IMAPServer.consumeRaw}; the L{mailapp.imap.reader} joins lines and
    literals into whole commands, within the limits of the state;
  - B{dispatch}: from the one command table, by name and state; the errors
    a command may fail with are answered with their RFC 5530 codes and the
    command's tag (L{IMAPServer.hold});
  - B{output back-pressure}: L{OutputFlow}, the session's producer, which
    the base asks through L{IMAPServer.outputPaused};
  - B{one write per burst}: what a command writes (each line, each batch)
    is gathered and given to the transport in one write (L{IMAPServer.flushOutput}):
    when the command is done, when the command loop has run what it could, once
    L{CHUNK_SIZE} is gathered (so the transport's buffer, and with it the
    back-pressure, sees it at once: a client that stops reading holds up at
    most that much here), at once for a continuation request, and at the
    latest one reactor turn later. Writes outside a command (IDLE's pushes,
    a timeout's BYE) go out at once;
  - B{the selected folder} and its updates.

None of Twisted's IMAP4Server is used: its mailbox API is synchronous (it
would open message files on the reactor thread), and its parsers expand
sequence sets before clamping them, recurse without limit and read literals
of any size.

The store's adapters are thin: the avatar is the store's L{IMailbox}
(through the service's Portal), a selected folder is a
L{mailapp.imap.selected.SelectedFolder} over an L{IFolder}, and a message is
its index entry (L{MessageInfo}) plus, when a FETCH or SEARCH needs it, its
file, read on the store's worker pool (L{IMAPFactory.offThread}). Untagged
EXISTS/FETCH/EXPUNGE for changes made by other sessions (and by SMTP
delivery) are sent before the tagged reply of the next command and during
IDLE (and between commands under NOTIFY: L{mailapp.imap.notify}); EXPUNGE is held back during FETCH, STORE and SEARCH (RFC 3501 7.4.1).
The store's event bus is a hint: a session re-reads the folder when told, on
NOOP/CHECK, and during IDLE also on a slow timer (so changes made by another
process show up too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailapp import logevents
from mailapp.errors import KeywordLimit, MailboxGone, NoSuchFolder, OverQuota, StorageFull
from mailapp.imap.commands import COMMANDS, Command, capabilities, context
from mailapp.imap.policy import CHUNK_SIZE, MAX_ERRORS, MAX_LINE_PREAUTH, IMAPPolicy
from mailapp.imap.reader import LINE_TOO_LONG, TAG, CommandReader, Piece, ReadLimits, discard
from mailapp.imap.selected import SelectedFolder
from mailapp.imap.state import State
from mailapp.imap.wire import BadCommand, Token, parse_arguments
from mailapp.linesession import LineSession
from mailapp.sasl import PlainCredentials
from mailapp.sessions import BANNED, AuthOutcome, Overrun

if TYPE_CHECKING:
    from mailapp.imap.commands.idle import Idle
    from mailapp.imap.factory import IMAPFactory
    from mailapp.imap.notify import Notifier

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


class IMAPServer(LineSession):
    """One IMAP session; see the module docstring."""

    factory: IMAPFactory
    policy: IMAPPolicy
    protocolName = "imap"
    #: Lines stay small before login; L{loginSucceeded} raises it to the policy's C{max_line}.
    maxUnterminated = MAX_LINE_PREAUTH
    #: Input a busy session (or one whose output is paused) buffers before it stops reading.
    maxBacklog = CHUNK_SIZE

    def __init__(self, factory: IMAPFactory) -> None:
        super().__init__(factory)
        self.reader = CommandReader(self, self.deadlines, lambda: self.store.newMessage())
        self._flow = OutputFlow(self._outputResumed)
        #: What the session has written and not yet given to the transport (L{flushOutput}).
        self._output: list[bytes] = []
        self._outputSize = 0
        self._flushCall: Any = None
        #: Inside the base's command loop (writes there are gathered until it returns).
        self._gathering = 0
        self._flowRegistered = False
        self.store = factory.store
        self.state = State.NOT_AUTHENTICATED
        self.maxAuthFailures = self.policy.max_auth_failures
        #: The logged-in account, and the store's L{mailapp.interfaces.IMailbox} for it.
        self.account: str | None = None
        self.mailbox: Any = None
        #: The selected folder's view (None: none selected).
        self.selected: SelectedFolder | None = None
        #: RFC 7162: CONDSTORE is on (untagged FETCH carry MODSEQ); QRESYNC is on (expunges are VANISHED).
        self.condstore = False
        self.qresync = False
        #: The IDLE in progress, if any.
        self.idling: Idle | None = None
        #: The NOTIFY SET in effect (RFC 5465), if any: it tells of changes between commands (L{holdFor}).
        self.notify: Notifier | None = None
        #: ENABLE UTF8=ACCEPT (RFC 6855): mailbox names are UTF-8 both ways, quoted strings may carry it.
        self.utf8 = False
        #: ENABLE IMAP4rev2 (RFC 9051): its semantics where they differ from rev1 (no \\Recent, SEARCH as ESEARCH, ...).
        self.rev2 = False
        self._logout: Callable[[], None] | None = None
        self._errors = 0
        #: The tag of the command whose reply a pending Deferred sends (L{hold}, the logins).
        self._tag = b"*"
        self._limitsBeforeLogin = ReadLimits.before_login(self.policy.max_message_size, self.policy.max_line)
        self.maxUnterminated = self._limitsBeforeLogin.max_line
        self._limits = ReadLimits(True, self.policy.max_line, self.policy.max_command, self.policy.max_literal, self.policy.max_message_size)

    # -- the line session's hooks ----------------------------------------------------------

    def greet(self) -> None:
        assert self.transport is not None
        self.transport.registerProducer(self._flow, True)
        self._flowRegistered = True
        hostname = self.policy.hostname.encode("ascii", "replace")
        self.write(b"* OK [CAPABILITY " + self.capabilityText() + b"] " + hostname + b" IMAP4rev1 mailapp ready\r\n")
        self.setTimeout(self.policy.login_timeout)

    def refuse(self, text: bytes, banned: bool) -> None:
        self.untagged(b"BYE [UNAVAILABLE] " + text if banned else b"BYE " + text)

    def sessionEnded(self) -> None:
        self._output = []
        self._outputSize = 0
        if self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self._flushCall = None
        self._flow.stopProducing()
        if self.idling is not None:
            self.idling.stop()
        self.setNotifier(None)
        self.unselect()
        self.state = State.LOGOUT
        self.reader.connectionLost()
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    def releaseOutput(self) -> None:
        self.flushOutput()
        if self._flowRegistered and self.transport is not None:
            # While a producer is registered, Twisted's TLS never starts its
            # shutdown: every IMAPS or STARTTLS connection stayed open after
            # LOGOUT (mbsync hung there).
            self._flowRegistered = False
            self.transport.unregisterProducer()

    def outputPaused(self) -> bool:
        return self._flow.paused

    def timeoutConnection(self) -> None:
        _log.info("imap timeout client={client}", log_event=logevents.IMAP_TIMEOUT, client=self._peerIP)
        self.untagged(b"BYE Autologout; idle for too long")
        self._close()

    def deadlineExpired(self, overrun: Overrun) -> None:
        """A bound of L{SessionDeadlines} is overrun (before login, or a trickled line or literal): BYE and close."""
        self.setTimeout(None)
        self.reader.discardPieces()
        self.untagged(b"BYE " + overrun.value)
        self._close()

    def goodbye(self) -> None:
        self.untagged(b"BYE Server shutting down")

    def lineTooLong(self) -> None:
        self.reader.discardPieces()
        self.untagged(LINE_TOO_LONG)
        self._close()

    def tooManyCommands(self) -> None:
        self.untagged(b"BYE Too many commands before login; closing connection")

    def commandFailed(self, reason: Failure) -> bool:
        if reason.check(_Gone):
            return False
        if reason.check(MailboxGone):
            # The account was deleted under this session: nothing it
            # could do next may reach a new account at the address.
            self.untagged(b"BYE [UNAVAILABLE] This account was deleted")
            self.close()
            return False
        self._failed(self._tag, reason)
        return True

    def consumeRaw(self) -> bool | None:
        """A literal's bytes go to the reader (which may spool them); lines are the base's to split."""
        if not self.reader.readingLiteral:
            return None
        taken = self.reader.literalReceived(self._buffer)
        self._buffer = self._buffer[taken:]
        return True

    def lineReceived(self, line: bytes) -> None:
        self.reader.lineReceived(line)

    # -- what the commands and the reader call ---------------------------------------------------

    def close(self) -> None:
        """Read nothing more, and close once the output is written (L{LineSession._close})."""
        self._close()

    def _close(self, grace: float | None = None) -> None:
        self.flushOutput()
        if grace is None:
            super()._close()
        else:
            super()._close(grace)

    def isConnected(self) -> bool:
        """Whether the connection is still there (Protocol's own C{connected} is never reset)."""
        return self._connected

    @property
    def flow(self) -> OutputFlow:
        """The output's back-pressure: a command that writes much waits on C{flow.wait()} while it is paused."""
        return self._flow

    def write(self, data: bytes) -> None:
        self._write(data)

    def _write(self, data: bytes) -> None:
        if not self._connected or self.transport is None:
            return
        self._output.append(data)
        self._outputSize += len(data)
        if self._outputSize >= CHUNK_SIZE or data[:1] == b"+" or not (self._busy or self._gathering):
            # A continuation request is waited for; outside a command nothing else will flush.
            self.flushOutput()
        elif self._flushCall is None:
            self._flushCall = self.callLater(0, self._flushLater)

    def flushOutput(self) -> None:
        """Give what the session has gathered to the transport, in one write, and send it."""
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None
        if not self._output:
            return
        data = b"".join(self._output)
        self._output = []
        self._outputSize = 0
        if self._connected and self.transport is not None:
            self.transport.write(data)
            self._flush()  # and to the socket, now (L{LineSession._flush})

    def _flushLater(self) -> None:
        self._flushCall = None
        self.flushOutput()

    def _process(self) -> None:
        # Every reply to the commands run here (pipelined ones too) goes out in one write.
        self._gathering += 1
        try:
            super()._process()
        finally:
            self._gathering -= 1
            if not self._gathering:
                self.flushOutput()
                if self.notify is not None:
                    self.notify.resume()  # what it gathered while commands ran

    def tagged(self, tag: bytes, status: bytes, text: bytes) -> None:
        self._write(tag + b" " + status + b" " + text + b"\r\n")

    def untagged(self, text: bytes) -> None:
        self._write(b"* " + text + b"\r\n")

    def readLimits(self) -> ReadLimits:
        return self._limits if self.state in (State.AUTHENTICATED, State.SELECTED) else self._limitsBeforeLogin

    def holdReading(self, until: defer.Deferred[Any]) -> None:
        """
        Read nothing more until C{until} fires: a client sends an APPEND
        faster than the disk takes it (a failed write is the writer's to
        report, when APPEND finishes the message).
        """
        self._pauseReadingUntil(until)
        self._wait(until.addErrback(lambda _: None))

    def _outputResumed(self) -> None:
        if self._connected and not self._closing and not self._busy and self.transport is not None:
            self.transport.resumeProducing()
            self._process()

    # -- capabilities ------------------------------------------------------------------------------

    def capabilityText(self) -> bytes:
        """The CAPABILITY list as it stands in this state: the command table's, the reader's and LIST's, and the login options."""
        caps = [b"IMAP4rev1", b"IMAP4rev2", b"LITERAL+", b"SASL-IR", *capabilities(self.state), b"CHILDREN", b"SPECIAL-USE",
                b"APPENDLIMIT=%d" % self.policy.max_message_size, b"CONDSTORE", b"QRESYNC"]
        if self.state is State.NOT_AUTHENTICATED:
            if self.factory.tls is not None and not self.secure:
                caps.append(b"STARTTLS")
            if self.loginAllowed():
                caps.append(b"AUTH=PLAIN")
            else:
                caps.append(b"LOGINDISABLED")
        return b" ".join(caps)

    # -- replies held until a Deferred fires, and what they fail with -----------------------------

    def hold(self, d: defer.Deferred[Any], tag: bytes) -> None:
        """Hold further commands until C{d} has sent its reply; answer what it fails with, under C{tag}."""
        self._tag = tag
        self._wait(d)
        # After the base's own callback (which may run the commands pipelined behind this one).
        d.addBoth(self._flushed)

    def _flushed(self, result: Any) -> None:
        if not self._gathering:  # else the command loop flushes as it returns
            self.flushOutput()
            if self.notify is not None:
                self.notify.resume()

    # -- NOTIFY (mailapp.imap.notify) ----------------------------------------------------------------

    def setNotifier(self, notifier: Notifier | None) -> None:
        """Put C{notifier} in effect in place of the one before (None: NOTIFY NONE, or the session's end)."""
        if self.notify is not None:
            self.notify.stop()
        self.notify = notifier
        if notifier is not None:
            notifier.start()

    def mayNotify(self) -> bool:
        """Whether unsolicited responses may go out now: between commands, never inside one's responses."""
        if self._gathering or self._busy or self._closing or not self._connected:
            return False  # in the command loop (it calls again as it returns), or a command's reply is pending
        return self.state in (State.AUTHENTICATED, State.SELECTED)

    def holdFor(self, d: defer.Deferred[None]) -> None:
        """Hold further commands while C{d} (which never fails) sends unsolicited responses; its writes go out as one."""
        self._wait(d)
        d.addBoth(self._flushed)

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
        if self.state is State.NOT_AUTHENTICATED and not self._commandBeforeLogin(self.policy.max_commands_before_auth):
            discard(pieces)
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
        if command.timed:
            self._command(name, lambda: self._run(command, tag, arguments, pieces))
        else:
            self._run(command, tag, arguments, pieces)

    def _run(self, command: Command, tag: bytes, arguments: list[Token], pieces: list[Piece]) -> None:
        try:
            result = command.handler(self, tag, arguments)
        except BadCommand as e:
            discard(pieces)
            self.bad(tag, str(e).encode("utf-8", "replace"))
            return
        if result is not None:
            d = result if isinstance(result, defer.Deferred) else defer.Deferred.fromCoroutine(result)  # type: ignore[arg-type]
            self.hold(d, tag)

    # -- STARTTLS and login ---------------------------------------------------------------------------

    def startTLS(self, tag: bytes) -> None:
        """Answer OK and start TLS (the base drops whatever the client pipelined in the clear)."""
        self.reader.discardPieces()
        self.flushOutput()
        self._startTLS(tag + b" OK Begin TLS negotiation now\r\n", self.factory.tls)

    def startCompression(self) -> None:
        """COMPRESS DEFLATE: its OK goes out uncompressed, then both directions are compressed (the line base's)."""
        self.flushOutput()
        self._startCompression()

    def compressedDataCorrupt(self) -> None:
        self.reader.discardPieces()
        self.untagged(b"BYE Compressed data is corrupt; closing connection")

    def loginAllowed(self) -> bool:
        return self.secure or self.policy.allow_plaintext_auth

    def login(self, tag: bytes, username: bytes, password: bytes) -> None:
        """LOGIN: check the credentials (the base's login, through the portal and the abuse guard) and answer under C{tag}."""
        self._tag = tag
        self._login(username, password)

    def loginPlain(self, tag: bytes, credentials: PlainCredentials) -> None:
        """AUTHENTICATE PLAIN, its response decoded: as L{login}."""
        self._tag = tag
        self._loginPlain(credentials)

    def loginSucceeded(self, avatar: Any, logout: Callable[[], None]) -> None:
        if not self._connected or self.state is not State.NOT_AUTHENTICATED:
            logout()
            return
        self.mailbox = avatar
        self.account = avatar.account
        self.factory.guard.succeeded(self._peerIP, avatar.account)
        self._logout = logout
        self.state = State.AUTHENTICATED
        self.maxUnterminated = self.policy.max_line
        self.factory.loggedIn(self)
        self.setTimeout(self.policy.timeout)
        _log.info("imap login {account} client={client}", log_event=logevents.IMAP_LOGIN, account=self.account, client=self._peerIP, secure=self.secure)
        self.tagged(self._tag, b"OK", b"[CAPABILITY " + self.capabilityText() + b"] Logged in")

    def loginsBusy(self) -> None:
        self.tagged(self._tag, b"NO", b"[UNAVAILABLE] Too many logins at once; try again later")

    def answerAuthFailure(self, outcome: AuthOutcome) -> None:
        self.tagged(self._tag, b"NO", b"[AUTHENTICATIONFAILED] Authentication failed")
        if outcome is AuthOutcome.BANNED:
            self.untagged(b"BYE [UNAVAILABLE] " + BANNED)
        elif outcome is AuthOutcome.TOO_MANY:
            event = logevents.IMAP_AUTH_FAILURES_EXCEEDED
            _log.info("imap closing after {failures} failed logins client={client}", log_event=event, failures=self._authFailures, client=self._peerIP)
            self.untagged(b"BYE Too many authentication failures")

    # -- the selected folder -------------------------------------------------------------------------

    def select(self, view: SelectedFolder) -> None:
        """Make C{view} the selected folder's, and follow the store's events for it."""
        view.unsubscribe = self.store.events.subscribe(self.account, view.folder.name, lambda event: self._hint(view, event))
        view.modseqs = self.condstore
        view.vanished = self.qresync
        if self.rev2:
            view.shows_recent = False
            view.recent.clear()
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
            await context.changed(self)

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
