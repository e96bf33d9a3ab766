"""
The IMAP4rev1 session (RFC 3501), its factory, and the listener builder.

L{IMAPServer} subclasses L{twisted.mail.imap4.IMAP4Server} (for its lineage,
the timeout mixin and the modified UTF-7 codec it registers) but owns the byte
stream, the command loop and every command, because the stock server falls
short where it matters here:

  - its mailbox API (C{IMailboxIMAP.fetch}, C{IMessage.getBodyFile}) is
    synchronous: it would open and read message files on the reactor
    thread. Here every store call returns a Deferred, message files are
    opened and read on worker threads (C{folder.openMessage}, C{store.run}),
    and bodies are streamed a chunk at a time, paced by the transport, so
    memory stays bounded whatever the message size;
  - it expands sequence sets before clamping them, recurses without limit on
    nested SEARCH keys and parentheses, reads literals of any size (and
    spools an APPEND before checking it), and runs commands pipelined after
    STARTTLS once the handshake is done;
  - it has no view of the selected mailbox that stays still between
    commands: here a session keeps its own sequence number <-> UID list and
    changes it only at command boundaries and during IDLE, so a client never
    sees a sequence number go stale in the middle of a FETCH.

The store's adapters are thin: the avatar is the store's L{IMailbox}
(through the service's Portal), a selected folder is L{_Selected} over an
L{IFolder}, and a message is its index entry (L{MessageInfo}) plus, when a
FETCH or SEARCH needs it, its file.

Commands are read one at a time and the next is not looked at until the
previous one's tagged reply is sent, so replies come back in order whatever
a command waits on. Untagged EXISTS/FETCH/EXPUNGE for changes made by other
sessions (and by SMTP delivery) are sent before the tagged reply of the next
command and during IDLE; EXPUNGE is held back during FETCH, STORE and SEARCH
(RFC 3501 7.4.1) and sent in descending sequence order. The store's event bus
is a hint: a session re-reads the folder when told, on NOOP/CHECK, and during
IDLE also on a slow timer (so changes made by another process show up too).

\\Recent is kept in this process's memory (the first session to see a new
message gets it); after a restart every message is \\Recent once more.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import time
from dataclasses import dataclass
from typing import IO, Any, Callable

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.logger import Logger
from twisted.mail import imap4 as twisted_imap4
from twisted.python.failure import Failure
from zope.interface import implementer

from mailapp import logevents
from mailapp.config import DEFAULT_LIMITS, DEFAULT_SECURITY
from mailapp.errors import (
    MAX_KEYWORDS_PER_MESSAGE,
    BadFolderName,
    FolderExists,
    KeywordLimit,
    LoginsBusy,
    MailboxGone,
    NoSuchFolder,
    NoSuchMessage,
    OverQuota,
    StorageFull,
)
from mailapp.imap import mime, search
from mailapp.imap.wire import (
    DELIMITER,
    Atom,
    BadCommand,
    BadMailboxName,
    ParsedLiteral,
    String,
    as_list,
    as_string,
    decode_mailbox,
    encode_mailbox,
    format_datetime,
    format_flags,
    format_uid_set,
    format_value,
    mailbox_pattern,
    parse_arguments,
    parse_datetime,
    parse_sequence_set,
    select_positions,
)
from mailapp.sessions import BANNED, CLOSE_GRACE, LOGIN_TIMEOUT, AuthOutcome, Overrun, SessionFactory, SessionLimits, session_limits
from mailapp.store.events import ADDED
from mailapp.store.records import MessageInfo

__all__ = ["IMAPFactory", "IMAPPolicy", "IMAPServer", "buildFactory"]

_log = Logger()

VERSION = b"0.1.0"
#: The reply to any change (STORE, APPEND, COPY, MOVE, EXPUNGE) the full disk refused.
NO_DISK_SPACE = b"[UNAVAILABLE] Not enough disk space; try again later"
#: RFC 3501 5.4: the autologout timer is at least 30 minutes after login.
AUTOLOGOUT = 30 * 60.0
PREAUTH_TIMEOUT = LOGIN_TIMEOUT
#: Before login, lines and literals stay small: nobody unauthenticated can make us hold much.
MAX_LINE_PREAUTH = 8 * 1024
MAX_LITERAL_PREAUTH = 4 * 1024
#: After login: long UID sets from clients that do not collapse ranges, search strings.
MAX_LINE = 512 * 1024
MAX_LITERAL = 256 * 1024
MAX_COMMAND = 2 * 1024 * 1024
MAX_ERRORS = 20
CHUNK_SIZE = 64 * 1024
#: Index-only FETCH lines written per batch before checking back-pressure.
FETCH_BATCH = 256
IDLE_POLL = 30.0
SHUTDOWN_GRACE = 2.0

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SEEN = "\\Seen"
_DELETED = "\\Deleted"
_RECENT = "\\Recent"
_TAG = re.compile(rb"^[\x21-\x7e]+$")
_LITERAL = re.compile(rb"\{([0-9]{1,10})(\+?)\}$")
_LITERAL_NEGATIVE = re.compile(rb"\{-[0-9]*\+?\}$")
#: The longest keyword accepted (Dovecot's mail_max_keyword_length is 50).
MAX_KEYWORD_LENGTH = 64
_KEYWORD = re.compile(r"^[^\x00-\x20\x7f-\uffff(){%*\"\\\]]+$")
_FETCH_SECTION = re.compile(rb"^(BODY(?:\.PEEK)?)\[(.*)\](?:<([0-9]{1,10})(?:\.([0-9]{1,10}))?>)?$", re.S | re.I)


@dataclass(frozen=True)
class IMAPPolicy(SessionLimits):
    """What one listener allows. Plaintext login before TLS only where the config allows it (loopback)."""

    hostname: str
    allow_plaintext_auth: bool = False
    max_message_size: int = DEFAULT_LIMITS.max_message_size
    #: Base delay of the factory's own guard when none is given (tests).
    auth_failure_delay: float = DEFAULT_SECURITY.auth_failure_delay
    max_auth_failures: int = 3
    idle_poll: float = IDLE_POLL
    #: Idle seconds after login (before it, C{login_timeout}).
    timeout: float = float(DEFAULT_LIMITS.imap_timeout_seconds)
    #: Commands before login (AUTHENTICATE continuation lines not counted).
    max_commands_before_auth: int = DEFAULT_LIMITS.max_commands_before_auth
    #: After login: one literal (APPEND's message excepted) and one line, in bytes.
    max_literal: int = DEFAULT_LIMITS.imap_max_literal
    max_line: int = DEFAULT_LIMITS.imap_max_line

    @property
    def max_command(self) -> int:
        """After login: one whole command, its lines and literals together."""
        return max(MAX_COMMAND, self.max_line, 2 * self.max_literal)


class _Gone(Exception):
    """The connection went away while a command was writing."""


@implementer(IPushProducer)
class _Flow:
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


@dataclass
class _Literal:
    """A literal being read: into memory, or (an APPEND message) into a spool writer."""

    remaining: int
    data: bytearray | None
    writer: Any = None
    size: int = 0


@dataclass
class _Selected:
    """
    The session's view of its selected folder: the sequence number <-> UID
    list (position + 1 is the sequence number) and the index entry of each
    message, as last told to the client.
    """

    folder: Any
    readonly: bool
    uidvalidity: int
    uidnext: int
    uids: list[int]
    info: dict[int, MessageInfo]
    recent: set[int]
    unsubscribe: Callable[[], None] = lambda: None
    dirty: bool = False
    #: Every change hinted since the last full read was new mail: reading the
    #: messages above C{highest} is enough (a 10,000-message folder need not
    #: be read again for each delivery).
    only_added: bool = True
    #: Highest UID this view has announced.
    highest: int = 0
    #: Ask the store, at the next update, whether other tools changed the folder.
    look_outside: bool = False


@dataclass
class _FetchItem:
    kind: str  # FLAGS UID INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY SECTION
    label: bytes = b""
    section: mime.Section | None = None
    start: int | None = None
    length: int | None = None
    seen: bool = False

    @property
    def needs_file(self) -> bool:
        return self.kind in ("ENVELOPE", "BODYSTRUCTURE", "BODY", "SECTION")

    @property
    def needs_structure(self) -> bool:
        return self.kind in ("ENVELOPE", "BODYSTRUCTURE", "BODY") or (
            self.kind == "SECTION" and self.section is not None and self.section.needs_structure()
        )


_COMMANDS_ANY = {"CAPABILITY", "NOOP", "LOGOUT", "ID"}
_COMMANDS_NOT_AUTH = {"STARTTLS", "AUTHENTICATE", "LOGIN"}
_COMMANDS_AUTH = {
    "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB",
    "STATUS", "APPEND", "IDLE", "NAMESPACE", "ENABLE",
}
_COMMANDS_SELECTED = {
    "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE",
    "UID SEARCH", "UID FETCH", "UID STORE", "UID COPY", "UID MOVE", "UID EXPUNGE",
}


class IMAPServer(twisted_imap4.IMAP4Server):
    """One IMAP session; see the module docstring."""

    def __init__(self, factory: "IMAPFactory") -> None:
        super().__init__(contextFactory=factory.tls)
        self.factory = factory
        self.policy: IMAPPolicy = factory.policy
        self.store = factory.store
        self.callLater = factory.reactor.callLater
        self.timeOut = self.policy.login_timeout
        self.state = "unauth"
        self.account: str | None = None
        self.mailbox: Any = None
        self._logout: Callable[[], None] | None = None
        self._selected: _Selected | None = None
        self._buffer = b""
        self._pieces: list[Any] = []
        self._commandSize = 0
        self._literal: _Literal | None = None
        self._continuation: Callable[[bytes], None] | None = None
        self._idleTag: bytes | None = None
        self._idleTimer: Any = None
        self._idleUpdateQueued = False
        self._idleLock = defer.DeferredLock()
        self._busy = False
        self._closing = False
        self._connected = False
        self._errors = 0
        self._authFailures = 0
        self._commandsBeforeAuth = 0
        self._peerIP = ""
        self._flow = _Flow(self._outputResumed)
        self._flowRegistered = False
        self._whenClosed: list[defer.Deferred[None]] = []
        self.deadlines = factory.deadlinesFor(self)

    # -- connection -------------------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        peer = self.transport.getPeer()
        self._peerIP = getattr(peer, "host", "") or str(peer)
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:
            pass
        if self.factory.banned(self._peerIP, "imap"):
            self._write(b"* BYE [UNAVAILABLE] " + BANNED + b"\r\n")
            self._close()
            return
        refusal = self.factory.admit(self._peerIP)
        if refusal:
            self._write(b"* BYE " + refusal + b"\r\n")
            self._close()
            return
        self.factory.connected(self)
        self.transport.registerProducer(self._flow, True)
        self._flowRegistered = True
        self._write(b"* OK [CAPABILITY " + self._capabilities() + b"] " + self.policy.hostname.encode("ascii", "replace") + b" IMAP4rev1 mailapp ready\r\n")
        self.setTimeout(self.policy.login_timeout)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._connected = False
        self.setTimeout(None)
        self.factory.disconnected(self)
        self._flow.stopProducing()
        self._stopIdleTimer()
        self._unselect()
        if self._literal is not None and self._literal.writer is not None:
            self._literal.writer.discard()
        self._discardPieces()
        self._literal = None
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()
        waiters, self._whenClosed = self._whenClosed, []
        for waiter in waiters:
            waiter.callback(None)

    def timeoutConnection(self) -> None:
        _log.info("imap timeout client={client}", log_event=logevents.IMAP_TIMEOUT, client=self._peerIP)
        self._write(b"* BYE Autologout; idle for too long\r\n")
        self._close()

    def deadlineExpired(self, overrun: Overrun) -> None:
        """A bound of L{SessionDeadlines} is overrun (before login, or a trickled line or literal): BYE and close."""
        self.setTimeout(None)
        self._discardPieces()
        self._write(b"* BYE " + overrun.value + b"\r\n")
        self._close()

    def shutdown(self) -> defer.Deferred[None] | None:
        """The server is stopping: say BYE and close (aborted after L{SHUTDOWN_GRACE})."""
        if not self._connected:
            return None
        closed: defer.Deferred[None] = defer.Deferred()
        self._whenClosed.append(closed)
        self._write(b"* BYE Server shutting down\r\n")
        self._close(SHUTDOWN_GRACE)
        return closed

    @property
    def secure(self) -> bool:
        return ISSLTransport.providedBy(self.transport)

    def _close(self, grace: float = CLOSE_GRACE) -> None:
        self._closing = True
        self._buffer = b""
        if self.transport is None:
            return
        if self._flowRegistered:
            # While a producer is registered, Twisted's TLS never starts its
            # shutdown: every IMAPS or STARTTLS connection stayed open after
            # LOGOUT (mbsync hung there).
            self._flowRegistered = False
            self.transport.unregisterProducer()
        self.factory.close(self, grace)

    def _write(self, data: bytes) -> None:
        if self._connected and self.transport is not None:
            self.transport.write(data)

    def _tagged(self, tag: bytes, status: bytes, text: bytes) -> None:
        self._write(tag + b" " + status + b" " + text + b"\r\n")

    def _untagged(self, text: bytes) -> None:
        self._write(b"* " + text + b"\r\n")

    def _outputResumed(self) -> None:
        if self._connected and not self._closing and not self._busy:
            self.transport.resumeProducing()
            self._process()

    # -- capabilities -------------------------------------------------------------

    def _loginAllowed(self) -> bool:
        return self.secure or self.policy.allow_plaintext_auth

    def _capabilities(self) -> bytes:
        caps = [b"IMAP4rev1", b"LITERAL+", b"SASL-IR", b"ID", b"ENABLE", b"IDLE", b"NAMESPACE", b"UIDPLUS",
                b"MOVE", b"UNSELECT", b"CHILDREN", b"SPECIAL-USE", b"APPENDLIMIT=%d" % self.policy.max_message_size]
        if self.state == "unauth":
            if self.factory.tls is not None and not self.secure:
                caps.append(b"STARTTLS")
            if self._loginAllowed():
                caps.append(b"AUTH=PLAIN")
            else:
                caps.append(b"LOGINDISABLED")
        return b" ".join(caps)

    # -- the byte stream ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        self._buffer += data
        self._process()

    def _lineLimit(self) -> int:
        return self.policy.max_line if self.state != "unauth" else MAX_LINE_PREAUTH

    def _commandLimit(self) -> int:
        return self.policy.max_command if self.state != "unauth" else MAX_LINE_PREAUTH

    def _process(self) -> None:
        while self._buffer and not self._busy and not self._closing and not self._flow.paused:
            literal = self._literal
            if literal is not None:
                take = min(literal.remaining, len(self._buffer))
                chunk, self._buffer = self._buffer[:take], self._buffer[take:]
                literal.remaining -= take
                self.deadlines.dataReceived(take)
                if literal.writer is not None:
                    written = literal.writer.write(chunk)
                    if not written.called:
                        self._pauseUntil(written)
                else:
                    assert literal.data is not None
                    literal.data += chunk
                if literal.remaining == 0:
                    self._literal = None
                    self.deadlines.dataEnded()
                    if literal.writer is not None:
                        self._pieces.append(ParsedLiteral(literal.writer, literal.size))
                    else:
                        self._pieces.append(String(bytes(literal.data or b"")))
                continue
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self._lineLimit():
                    self._untagged(b"BAD Line too long; closing connection")
                    self._close()
                else:
                    self.deadlines.lineStarted()
                return
            self.deadlines.lineEnded()
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self._lineLimit():
                self._discardPieces()
                self._untagged(b"BAD Line too long; closing connection")
                self._close()
                return
            if self._continuation is not None:
                continuation, self._continuation = self._continuation, None
                continuation(line)
            elif self._idleTag is not None:
                self._idleLine(line)
            else:
                self._line(line)
        if self.transport is not None and not self._closing and self._connected:
            if (self._busy or self._flow.paused) and len(self._buffer) > CHUNK_SIZE:
                self.transport.pauseProducing()

    def _pauseUntil(self, d: defer.Deferred[Any]) -> None:
        """Stop reading from a client that sends an APPEND faster than the disk takes it."""
        self._busy = True
        self.transport.pauseProducing()
        self.deadlines.hold(d)

        def resume(_: object) -> None:
            self._busy = False
            if self._connected and not self._closing:
                self.transport.resumeProducing()
                self._process()

        d.addBoth(resume)

    def _discardPieces(self) -> None:
        for piece in self._pieces:
            if isinstance(piece, ParsedLiteral):
                piece.writer.discard()
        self._pieces = []
        self._commandSize = 0

    def _line(self, line: bytes) -> None:
        self._commandSize += len(line)
        if self._commandSize > self._commandLimit():
            self._discardPieces()
            self._untagged(b"BAD Command too long; closing connection")
            self._close()
            return
        match = _LITERAL.search(line)
        if match is None:
            if _LITERAL_NEGATIVE.search(line):
                self._discardPieces()
                self._bad(self._tagOf(line), b"Invalid literal size")
                return
            self._pieces.append(line)
            pieces, self._pieces = self._pieces, []
            self._commandSize = 0
            self._dispatch(pieces)
            return
        size = int(match.group(1))
        synchronizing = not match.group(2)
        self._pieces.append(line[: match.start()])
        first = self._pieces[0] if isinstance(self._pieces[0], bytes) else b""
        tag = self._tagOf(first)
        if self._isAppendMessage():
            if self.state == "unauth":
                self._refuseLiteral(tag, synchronizing, b"BAD", b"Log in first")
                return
            if size > self.policy.max_message_size:
                self._refuseLiteral(tag, synchronizing, b"NO", b"[TOOBIG] Message exceeds the size limit (APPENDLIMIT)")
                return
            writer = self.store.newMessage()
            self._literal = _Literal(size, None, writer, size)
        else:
            limit = self.policy.max_literal if self.state != "unauth" else MAX_LITERAL_PREAUTH
            if size > limit or self._commandSize + size > self._commandLimit():
                self._refuseLiteral(tag, synchronizing, b"BAD", b"Literal too large")
                return
            self._commandSize += size
            self._literal = _Literal(size, bytearray())
        if synchronizing:
            self._write(b"+ Ready for literal data\r\n")
        if size > 0:
            self.deadlines.dataStarted()
        if size == 0:
            # Nothing to read: finish the literal now.
            literal, self._literal = self._literal, None
            if literal.writer is not None:
                self._pieces.append(ParsedLiteral(literal.writer, 0))
            else:
                self._pieces.append(String(b""))

    def _refuseLiteral(self, tag: bytes, synchronizing: bool, status: bytes, text: bytes) -> None:
        """
        Refuse a literal before reading a byte of it. A synchronizing client
        waits for our ``+`` and so sends nothing; a non-synchronizing
        (LITERAL+) one has sent it anyway, so we must hang up (RFC 7888 4).
        """
        self._discardPieces()
        self._tagged(tag, status, text)
        if not synchronizing:
            self._untagged(b"BYE Non-synchronizing literal too large")
            self._close()

    def _tagOf(self, first: bytes) -> bytes:
        tag = first.split(b" ", 1)[0]
        return tag if tag and _TAG.match(tag) and b"+" not in tag and len(tag) < 100 else b"*"

    def _isAppendMessage(self) -> bool:
        """Whether the literal the reader is about to take is an APPEND's message."""
        first = self._pieces[0]
        if not isinstance(first, bytes):
            return False
        words = first.split(b" ", 2)
        if len(words) < 2 or words[1].upper() != b"APPEND":
            return False
        rest = [words[2] if len(words) > 2 else b""] + self._pieces[1:]
        try:
            tokens = parse_arguments(rest)
        except BadCommand:
            # An open flag list and the like: only the message may follow the mailbox.
            return True
        return len(tokens) >= 1

    def _wait(self, d: defer.Deferred[Any], tag: bytes) -> None:
        """Hold further commands until C{d} has sent its reply."""
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
                    self._untagged(b"BYE [UNAVAILABLE] This account was deleted")
                    self._close()
                    return
                if result.check(BadCommand):
                    self._bad(tag, str(result.value).encode("utf-8", "replace"))
                elif result.check(KeywordLimit):
                    self._tagged(tag, b"NO", b"[LIMIT] " + str(result.value).capitalize().encode("ascii", "replace"))
                elif result.check(OverQuota):
                    # RFC 5530: the user's own quota, nothing changed; expunging makes room.
                    self._tagged(tag, b"NO", b"[OVERQUOTA] " + str(result.value.text).encode("ascii", "replace"))
                elif result.check(StorageFull):
                    # Not SERVERBUG: nothing changed, and the same command
                    # works once space is freed (RFC 5530 UNAVAILABLE is the
                    # temporary failure of a subsystem; OVERQUOTA is a user's quota).
                    self._tagged(tag, b"NO", NO_DISK_SPACE)
                else:
                    _log.failure("imap internal error", result, log_event=logevents.IMAP_INTERNAL_ERROR)
                    self._tagged(tag, b"NO", b"[SERVERBUG] Internal error")
            if not running[0] and self._connected and not self._closing:
                if not self._flow.paused:
                    self.transport.resumeProducing()
                self._process()

        d.addBoth(done)
        running[0] = False

    def _bad(self, tag: bytes, text: bytes) -> None:
        self._errors += 1
        if self._errors > MAX_ERRORS:
            self._untagged(b"BYE Too many errors; closing connection")
            self._close()
            return
        self._tagged(tag, b"BAD", text)

    # -- dispatch -----------------------------------------------------------------------

    def _dispatch(self, pieces: list[Any]) -> None:
        first = pieces[0] if isinstance(pieces[0], bytes) else b""
        tag, _, rest = first.partition(b" ")
        if self.state == "unauth":
            self._commandsBeforeAuth += 1
            if self._commandsBeforeAuth > self.policy.max_commands_before_auth:
                _log.info(
                    "too many commands before auth protocol=imap client={client}",
                    log_event=logevents.COMMANDS_BEFORE_AUTH_EXCEEDED,
                    client=self._peerIP,
                )
                self._discard(pieces)
                self._untagged(b"BYE Too many commands before login; closing connection")
                self._close()
                return
        if not tag or not _TAG.match(tag) or b"+" in tag or len(tag) > 100:
            self._discard(pieces)
            self._bad(b"*", b"Invalid tag")
            return
        command, _, rest = rest.partition(b" ")
        if not command:
            self._discard(pieces)
            self._bad(tag, b"Missing command")
            return
        name = command.upper().decode("ascii", "replace")
        if name == "UID":
            sub, _, rest = rest.partition(b" ")
            name = "UID " + sub.upper().decode("ascii", "replace")
        try:
            arguments = parse_arguments([rest] + pieces[1:])
        except BadCommand as e:
            self._discard(pieces)
            self._bad(tag, str(e).encode())
            return
        allowed = _COMMANDS_ANY | (
            _COMMANDS_NOT_AUTH if self.state == "unauth" else _COMMANDS_AUTH | (_COMMANDS_SELECTED if self._selected else set())
        )
        if name not in allowed:
            self._discard(pieces)
            known = _COMMANDS_ANY | _COMMANDS_NOT_AUTH | _COMMANDS_AUTH | _COMMANDS_SELECTED
            if name in known:
                self._bad(tag, b"Command not valid in this state")
            else:
                self._bad(tag, b"Unknown command")
            return
        handler = getattr(self, "do_" + name.replace(" ", "_"))
        started = time.perf_counter()
        try:
            result = handler(tag, arguments)
        except BadCommand as e:
            self._discard(pieces)
            self._bad(tag, str(e).encode("utf-8", "replace"))
            return
        if result is not None:
            if hasattr(result, "__await__") and not isinstance(result, defer.Deferred):
                result = defer.Deferred.fromCoroutine(result)
            # Latency to the tagged reply, for the metrics (IDLE is a wait, not a command to time).
            if name != "IDLE":
                result.addBoth(self._commandDone, name, started)
            self._wait(result, tag)
        else:
            self.factory.command_done(name, started)

    def _commandDone(self, result: object, name: str, started: float) -> object:
        self.factory.command_done(name, started)
        return result

    def _discard(self, pieces: list[Any]) -> None:
        for piece in pieces:
            if isinstance(piece, ParsedLiteral):
                piece.writer.discard()

    @staticmethod
    def _arguments(arguments: list[Any], count: int, name: str) -> None:
        if len(arguments) != count:
            raise BadCommand(f"{name} takes {count} argument{'s' if count != 1 else ''}")

    # -- any state --------------------------------------------------------------------------

    def do_CAPABILITY(self, tag: bytes, arguments: list[Any]) -> None:
        self._arguments(arguments, 0, "CAPABILITY")
        self._untagged(b"CAPABILITY " + self._capabilities())
        self._tagged(tag, b"OK", b"CAPABILITY completed")

    def do_NOOP(self, tag: bytes, arguments: list[Any]) -> Any:
        self._arguments(arguments, 0, "NOOP")
        return self._complete(tag, b"NOOP completed", force=True)

    def do_LOGOUT(self, tag: bytes, arguments: list[Any]) -> None:
        self._untagged(b"BYE Logging out")
        self._tagged(tag, b"OK", b"LOGOUT completed")
        self._close()

    def do_ID(self, tag: bytes, arguments: list[Any]) -> None:
        self._arguments(arguments, 1, "ID")
        self._untagged(b'ID ("name" "mailapp" "version" "' + VERSION + b'")')
        self._tagged(tag, b"OK", b"ID completed")

    # -- not authenticated ------------------------------------------------------------------------

    def do_STARTTLS(self, tag: bytes, arguments: list[Any]) -> None:
        self._arguments(arguments, 0, "STARTTLS")
        if self.factory.tls is None or self.secure:
            self._bad(tag, b"STARTTLS not available")
            return
        # Whatever the client pipelined after STARTTLS was sent in the clear:
        # it must never run inside the TLS session (CVE-2011-0411 and kin).
        self._buffer = b""
        self._discardPieces()
        self._tagged(tag, b"OK", b"Begin TLS negotiation now")
        self.transport.startTLS(self.factory.tls)

    def do_LOGIN(self, tag: bytes, arguments: list[Any]) -> Any:
        self._arguments(arguments, 2, "LOGIN")
        if not self._loginAllowed():
            self._tagged(tag, b"NO", b"[PRIVACYREQUIRED] Use STARTTLS first")
            return None
        username = as_string(arguments[0], "user name")
        password = as_string(arguments[1], "password")
        return self._login(tag, username, password)

    def do_AUTHENTICATE(self, tag: bytes, arguments: list[Any]) -> Any:
        if not arguments or len(arguments) > 2 or not isinstance(arguments[0], Atom):
            raise BadCommand("AUTHENTICATE mechanism [initial-response]")
        if arguments[0].upper() != b"PLAIN":
            self._tagged(tag, b"NO", b"Unsupported authentication mechanism")
            return None
        if not self._loginAllowed():
            self._tagged(tag, b"NO", b"[PRIVACYREQUIRED] Use STARTTLS first")
            return None
        def response(line: bytes) -> None:
            line = line.strip()
            if line == b"*":
                self._bad(tag, b"Authentication cancelled")
                return
            try:
                decoded = base64.b64decode(line, validate=True) if line != b"=" else b""
            except (binascii.Error, ValueError):
                self._bad(tag, b"Invalid base64")
                return
            parts = decoded.split(b"\x00")
            if len(parts) != 3:
                self._bad(tag, b"Malformed PLAIN response")
                return
            authzid, authcid, password = parts
            if authzid and authzid != authcid:
                self._wait(self._authFailed(tag, authcid), tag)
                return
            self._wait(self._login(tag, authcid, password), tag)

        if len(arguments) == 2:
            response(as_string(arguments[1], "initial response"))
        else:
            # SASL-IR not used: ask for the response; the loop hands the next line to it.
            self._write(b"+ \r\n")
            self._continuation = response
        return None

    def _login(self, tag: bytes, username: bytes, password: bytes) -> defer.Deferred[None]:
        try:
            name = username.decode("utf-8")
        except UnicodeDecodeError:
            return self._authFailed(tag, username)
        if self.factory.guard.banned(self._peerIP):
            # Banned since this session began: no password check, the ban's answer.
            return self._authFailed(tag, username)
        d = self.factory.login(self, name, password)

        def authenticated(result: tuple[Any, Any, Callable[[], None]]) -> None:
            _, mailbox, logout = result
            if not self._connected or self.state != "unauth":
                logout()
                return
            self.mailbox = mailbox
            self.account = mailbox.account
            self.factory.guard.succeeded(self._peerIP, mailbox.account)
            self._logout = logout
            self.state = "auth"
            self.factory.loggedIn(self)
            self.setTimeout(self.policy.timeout)
            _log.info(
                "imap login {account} client={client}",
                log_event=logevents.IMAP_LOGIN,
                account=self.account,
                client=self._peerIP,
                secure=self.secure,
            )
            self._tagged(tag, b"OK", b"[CAPABILITY " + self._capabilities() + b"] Logged in")

        def refused(reason: Failure) -> defer.Deferred[None] | None:
            if reason.check(LoginsBusy):
                self._tagged(tag, b"NO", b"[UNAVAILABLE] Too many logins at once; try again later")
                return None
            reason.trap(UnauthorizedLogin)
            return self._authFailed(tag, username)

        return d.addCallbacks(authenticated, refused)

    def _authFailed(self, tag: bytes, username: bytes) -> defer.Deferred[None]:
        """
        Count the failure with the server's guard, answer after the delay it
        gives, and hang up after repeated failures or when the address is
        now banned.
        """

        def answer(outcome: AuthOutcome) -> None:
            if not self._connected or self._closing:
                return
            self._tagged(tag, b"NO", b"[AUTHENTICATIONFAILED] Authentication failed")
            if outcome is AuthOutcome.BANNED:
                self._untagged(b"BYE [UNAVAILABLE] " + BANNED)
                self._close()
            elif outcome is AuthOutcome.TOO_MANY:
                _log.info(
                    "imap closing after {failures} failed logins client={client}",
                    log_event=logevents.IMAP_AUTH_FAILURES_EXCEEDED,
                    failures=self._authFailures,
                    client=self._peerIP,
                )
                self._untagged(b"BYE Too many authentication failures")
                self._close()

        return self.factory.authFailed(self, "imap", username, self.policy.max_auth_failures).addCallback(answer)

    # -- authenticated: folders -------------------------------------------------------------------

    def _mailboxName(self, token: Any) -> str:
        raw = as_string(token, "mailbox name")
        return decode_mailbox(raw)

    async def _folderCall(self, tag: bytes, call: Callable[[], Any], ok: bytes) -> None:
        try:
            await call()
        except BadMailboxName as e:
            self._tagged(tag, b"NO", b"[CANNOT] " + str(e).encode("utf-8", "replace"))
            return
        except FolderExists:
            self._tagged(tag, b"NO", b"[ALREADYEXISTS] Mailbox already exists")
            return
        except NoSuchFolder:
            self._tagged(tag, b"NO", b"[NONEXISTENT] No such mailbox")
            return
        except BadFolderName as e:
            self._tagged(tag, b"NO", b"[CANNOT] " + str(e).encode("utf-8", "replace"))
            return
        await self._complete(tag, ok)

    def do_CREATE(self, tag: bytes, arguments: list[Any]) -> Any:
        self._arguments(arguments, 1, "CREATE")

        async def create() -> None:
            name = self._mailboxName(arguments[0])
            if name == "INBOX":
                raise FolderExists()
            await self.mailbox.createFolder(name)

        return self._folderCall(tag, create, b"CREATE completed")

    def do_DELETE(self, tag: bytes, arguments: list[Any]) -> Any:
        self._arguments(arguments, 1, "DELETE")

        async def delete() -> None:
            name = self._mailboxName(arguments[0])
            if name == "INBOX":
                raise BadFolderName("INBOX cannot be deleted")
            if self._selected is not None and self._selected.folder.name == name:
                self._unselect()
            await self.mailbox.deleteFolder(name)

        return self._folderCall(tag, delete, b"DELETE completed")

    def do_RENAME(self, tag: bytes, arguments: list[Any]) -> Any:
        self._arguments(arguments, 2, "RENAME")

        async def rename() -> None:
            old = self._mailboxName(arguments[0])
            new = self._mailboxName(arguments[1])
            if new == "INBOX" or new.startswith("INBOX/"):
                raise FolderExists()
            if old == "INBOX":
                await self._renameInbox(new)
                return
            await self.mailbox.renameFolder(old, new)

        return self._folderCall(tag, rename, b"RENAME completed")

    async def _renameInbox(self, new: str) -> None:
        """RFC 3501 6.3.5: renaming INBOX moves its messages to a new folder and leaves INBOX empty."""
        await self.mailbox.createFolder(new)
        inbox = await self.mailbox.folder("INBOX")
        target = await self.mailbox.folder(new)
        uids = [m.uid for m in await inbox.messages()]
        if uids:
            await inbox.moveTo(uids, target)

    def do_SUBSCRIBE(self, tag: bytes, arguments: list[Any]) -> Any:
        self._arguments(arguments, 1, "SUBSCRIBE")

        async def subscribe() -> None:
            if not await self.mailbox.setSubscribed(self._mailboxName(arguments[0]), True):
                raise NoSuchFolder()

        return self._folderCall(tag, subscribe, b"SUBSCRIBE completed")

    def do_UNSUBSCRIBE(self, tag: bytes, arguments: list[Any]) -> Any:
        self._arguments(arguments, 1, "UNSUBSCRIBE")

        async def unsubscribe() -> None:
            await self.mailbox.setSubscribed(self._mailboxName(arguments[0]), False)

        return self._folderCall(tag, unsubscribe, b"UNSUBSCRIBE completed")

    def do_NAMESPACE(self, tag: bytes, arguments: list[Any]) -> None:
        self._arguments(arguments, 0, "NAMESPACE")
        self._untagged(b'NAMESPACE (("" "/")) NIL NIL')
        self._tagged(tag, b"OK", b"NAMESPACE completed")

    def do_ENABLE(self, tag: bytes, arguments: list[Any]) -> None:
        if not arguments:
            raise BadCommand("ENABLE needs a capability")
        # None of our extensions needs enabling (no CONDSTORE, QRESYNC, UTF8=ACCEPT yet).
        self._untagged(b"ENABLED")
        self._tagged(tag, b"OK", b"ENABLE completed")

    def do_LIST(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._list(tag, arguments, subscribed_only=False)

    def do_LSUB(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._list(tag, arguments, subscribed_only=True)

    async def _list(self, tag: bytes, arguments: list[Any], subscribed_only: bool) -> None:
        special_only = False
        if arguments and isinstance(arguments[0], list) and not subscribed_only:
            options = {bytes(o).upper() for o in arguments[0] if isinstance(o, (Atom, String))}
            special_only = b"SPECIAL-USE" in options
            arguments = arguments[1:]
        if len(arguments) == 4 and isinstance(arguments[2], Atom) and arguments[2].upper() == b"RETURN":
            arguments = arguments[:2]
        self._arguments(arguments, 2, "LIST")
        try:
            reference = as_string(arguments[0], "reference").decode("imap4-utf-7")
            pattern = as_string(arguments[1], "pattern").decode("imap4-utf-7")
        except (UnicodeDecodeError, ValueError):
            raise BadCommand("Bad modified UTF-7 in LIST") from None
        verb = b"LSUB" if subscribed_only else b"LIST"
        if not pattern:
            self._untagged(verb + b' (\\Noselect) "/" ""')
            await self._complete(tag, verb + b" completed")
            return
        folders = await self.mailbox.listFolders()
        names = {f.name: f for f in folders}
        every = set(names)
        for name in list(every):
            parts = name.split(DELIMITER)
            for depth in range(1, len(parts)):
                every.add(DELIMITER.join(parts[:depth]))
        regex = mailbox_pattern(reference, pattern)
        lines = []
        for name in sorted(every, key=lambda n: (n != "INBOX", n)):
            if not regex.match(name):
                continue
            info = names.get(name)
            if subscribed_only and (info is None or not info.subscribed):
                continue
            if special_only and (info is None or not info.special_use):
                continue
            attributes = []
            if info is None:
                attributes.append("\\Noselect")
            prefix = name + DELIMITER
            has_children = any(other.startswith(prefix) for other in every)
            attributes.append("\\HasChildren" if has_children else "\\HasNoChildren")
            if info is not None and info.special_use:
                attributes.append(info.special_use)
            lines.append(
                verb + b" (" + " ".join(attributes).encode("ascii") + b') "/" ' + format_value(encode_mailbox(name))
            )
        for line in lines:
            self._untagged(line)
        await self._complete(tag, verb + b" completed")

    def do_STATUS(self, tag: bytes, arguments: list[Any]) -> Any:
        self._arguments(arguments, 2, "STATUS")
        items = [as_string(i, "status item").upper() for i in as_list(arguments[1], "status items")]
        known = {b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN"}
        if not items or any(i not in known for i in items):
            raise BadCommand("Unknown STATUS item")

        async def status() -> None:
            try:
                name = self._mailboxName(arguments[0])
                folder = await self.mailbox.folder(name)
                await folder.refresh()
                state = await folder.status()
            except (BadMailboxName, BadFolderName) as e:
                self._tagged(tag, b"NO", b"[CANNOT] " + str(e).encode("utf-8", "replace"))
                return
            except NoSuchFolder:
                self._tagged(tag, b"NO", b"[NONEXISTENT] No such mailbox")
                return
            values: dict[bytes, int] = {
                b"MESSAGES": state.messages,
                b"UIDNEXT": state.uidnext,
                b"UIDVALIDITY": state.uidvalidity,
                b"UNSEEN": state.unseen,
            }
            if b"RECENT" in items:
                marker = self.factory.recentMarker(self.account, folder.name, state.uidvalidity)
                values[b"RECENT"] = sum(1 for m in await folder.messages() if m.uid > marker)
            body = b" ".join(b"%s %d" % (item, values[item]) for item in items)
            self._untagged(b"STATUS " + format_value(encode_mailbox(folder.name)) + b" (" + body + b")")
            await self._complete(tag, b"STATUS completed")

        return status()

    # -- authenticated: select ---------------------------------------------------------------------

    def do_SELECT(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._select(tag, arguments, readonly=False)

    def do_EXAMINE(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._select(tag, arguments, readonly=True)

    async def _select(self, tag: bytes, arguments: list[Any], readonly: bool) -> None:
        if len(arguments) == 2 and isinstance(arguments[1], list):
            arguments = arguments[:1]  # select parameters (CONDSTORE...) we do not support: ignored
        self._arguments(arguments, 1, "SELECT")
        self._unselect()
        try:
            name = self._mailboxName(arguments[0])
            folder = await self.mailbox.folder(name)
        except (BadMailboxName, BadFolderName) as e:
            self._tagged(tag, b"NO", b"[CANNOT] " + str(e).encode("utf-8", "replace"))
            return
        except NoSuchFolder:
            self._tagged(tag, b"NO", b"[NONEXISTENT] No such mailbox")
            return
        await folder.refresh()
        status = await folder.status()
        messages = await folder.messages()
        uids = [m.uid for m in messages]
        info = {m.uid: m for m in messages}
        highest = uids[-1] if uids else 0
        marker = self.factory.recentMarker(self.account, folder.name, status.uidvalidity)
        recent = {uid for uid in uids if uid > marker}
        if not readonly:
            self.factory.setRecentMarker(self.account, folder.name, status.uidvalidity, highest)
        selected = _Selected(
            folder, readonly, status.uidvalidity, max(status.uidnext, highest + 1), uids, info, recent, highest=highest
        )
        selected.unsubscribe = self.store.events.subscribe(self.account, folder.name, lambda event: self._hint(selected, event))
        self._selected = selected
        self.state = "selected"
        keywords = set()
        for m in messages:
            keywords.update(f for f in m.flags if not f.startswith("\\"))
        flags = list(SYSTEM_FLAGS) + sorted(keywords)
        self._untagged(b"FLAGS (" + " ".join(flags).encode("utf-8", "replace") + b")")
        self._untagged(b"OK [PERMANENTFLAGS (" + " ".join(flags).encode("utf-8", "replace") + b" \\*)] Flags permitted")
        self._untagged(b"%d EXISTS" % len(uids))
        self._untagged(b"%d RECENT" % len(recent))
        first_unseen = next((i + 1 for i, m in enumerate(messages) if _SEEN not in m.flags), None)
        if first_unseen is not None:
            self._untagged(b"OK [UNSEEN %d] First unseen" % first_unseen)
        self._untagged(b"OK [UIDVALIDITY %d] UIDs valid" % status.uidvalidity)
        self._untagged(b"OK [UIDNEXT %d] Predicted next UID" % selected.uidnext)
        mode = b"[READ-ONLY]" if readonly else b"[READ-WRITE]"
        self._tagged(tag, b"OK", mode + (b" EXAMINE completed" if readonly else b" SELECT completed"))

    def _unselect(self) -> None:
        if self._selected is not None:
            self._selected.unsubscribe()
            self._selected = None
            if self.state == "selected":
                self.state = "auth"

    def _hint(self, selected: _Selected, event: Any = None) -> None:
        """The store says the selected folder changed: re-read it now if idling, else at the next command."""
        if not selected.dirty:
            selected.only_added = True
        selected.dirty = True
        if getattr(event, "kind", None) != ADDED:
            selected.only_added = False
        if self._idleTag is not None and self._selected is selected:
            self._scheduleIdleUpdate()

    # -- keeping the view current -----------------------------------------------------------------

    async def _update(self, allow_expunge: bool, force: bool = False, with_uid: bool = False) -> None:
        """
        Re-read the selected folder if it changed (or C{force}) and tell the
        client: EXPUNGE (descending, only where allowed), FETCH FLAGS for
        changed flags, EXISTS and RECENT for new messages.
        """
        selected = self._selected
        if selected is None:
            return
        if force or selected.look_outside:
            # Other tools' changes come back as store events: they mark the view dirty.
            selected.look_outside = False
            await selected.folder.refresh()
            if self._selected is not selected:
                return
        if not (selected.dirty or force):
            return
        selected.dirty = False
        if selected.only_added and not force:
            # Only new mail was announced: read just what lies above the view.
            messages = await self.factory.messagesAfter(selected.folder, selected.highest)
            if self._selected is not selected:
                return
            self._announceNew(selected, messages)
            return
        messages = await selected.folder.messages()
        if self._selected is not selected:
            return
        current = {m.uid: m for m in messages}
        gone = [i for i, uid in enumerate(selected.uids) if uid not in current]
        if gone:
            if allow_expunge:
                for position in reversed(gone):
                    self._untagged(b"%d EXPUNGE" % (position + 1))
                for position in reversed(gone):
                    uid = selected.uids.pop(position)
                    selected.info.pop(uid, None)
                    selected.recent.discard(uid)
            else:
                selected.dirty = True
                selected.only_added = False  # the expunges are still to tell: read it all again
        out = []
        for position, uid in enumerate(selected.uids):
            now = current.get(uid)
            if now is not None and now.flags != selected.info[uid].flags:
                selected.info[uid] = now
                flags = now.flags | ({_RECENT} if uid in selected.recent else set())
                extra = b" UID %d" % uid if with_uid else b""
                out.append(b"* %d FETCH (FLAGS %s%s)\r\n" % (position + 1, format_flags(flags), extra))
        if out:
            self._write(b"".join(out))
        self._announceNew(selected, messages)

    def _announceNew(self, selected: _Selected, messages: list[MessageInfo]) -> None:
        """EXISTS and RECENT for the messages above what the view has announced."""
        new = [m for m in messages if m.uid > selected.highest]
        if new:
            marker = self.factory.recentMarker(self.account, selected.folder.name, selected.uidvalidity)
            for m in new:
                selected.uids.append(m.uid)
                selected.info[m.uid] = m
                if m.uid > marker:
                    selected.recent.add(m.uid)
            selected.highest = new[-1].uid
            selected.uidnext = max(selected.uidnext, selected.highest + 1)
            if not selected.readonly:
                self.factory.setRecentMarker(self.account, selected.folder.name, selected.uidvalidity, selected.highest)
            self._untagged(b"%d EXISTS" % len(selected.uids))
            self._untagged(b"%d RECENT" % len(selected.recent))

    async def _complete(self, tag: bytes, text: bytes, allow_expunge: bool = True, force: bool = False, with_uid: bool = False) -> None:
        """Report pending changes of the selected folder, then the tagged OK."""
        try:
            await self._update(allow_expunge, force, with_uid)
        except NoSuchFolder:
            self._unselect()
            self._untagged(b"BYE The selected mailbox was deleted")
            self._close()
            return
        self._tagged(tag, b"OK", text)

    # -- IDLE -------------------------------------------------------------------------------------

    def do_IDLE(self, tag: bytes, arguments: list[Any]) -> Any:
        self._arguments(arguments, 0, "IDLE")

        async def start() -> None:
            await self._update(allow_expunge=True, force=True)
            self._write(b"+ idling\r\n")
            self._idleTag = tag
            self._idleTimer = self.callLater(self.policy.idle_poll, self._idlePoll)
            if self._selected is not None and self._selected.dirty:
                self._scheduleIdleUpdate()

        return start()

    def _idlePoll(self) -> None:
        self._idleTimer = None
        if self._idleTag is None:
            return
        if self._selected is not None:
            self._selected.dirty = True
            self._selected.look_outside = True
            self._scheduleIdleUpdate()
        self._idleTimer = self.callLater(self.policy.idle_poll, self._idlePoll)

    def _stopIdleTimer(self) -> None:
        if self._idleTimer is not None and self._idleTimer.active():
            self._idleTimer.cancel()
        self._idleTimer = None

    def _scheduleIdleUpdate(self) -> None:
        if self._idleUpdateQueued:
            return  # one is queued and has not started: it will see this change too
        self._idleUpdateQueued = True

        def run() -> defer.Deferred[None]:
            self._idleUpdateQueued = False
            if self._idleTag is None or not self._connected:
                return defer.succeed(None)
            return defer.Deferred.fromCoroutine(self._update(allow_expunge=True))

        def failed(reason: Failure) -> None:
            if reason.check(MailboxGone):
                self._untagged(b"BYE [UNAVAILABLE] This account was deleted")
                self._close()
                return
            _log.failure("imap idle update failed", reason, log_event=logevents.IMAP_INTERNAL_ERROR)

        d = self._idleLock.run(run)
        d.addErrback(failed)

    def _idleLine(self, line: bytes) -> None:
        tag, self._idleTag = self._idleTag, None
        assert tag is not None
        self._stopIdleTimer()

        def finish() -> None:
            if line.strip().upper() == b"DONE":
                self._tagged(tag, b"OK", b"IDLE terminated")
            else:
                self._bad(tag, b"Expected DONE")

        self._wait(self._idleLock.run(lambda: defer.succeed(finish())), tag)

    # -- APPEND --------------------------------------------------------------------------------

    def do_APPEND(self, tag: bytes, arguments: list[Any]) -> Any:
        literal = arguments[-1] if arguments else None
        if not isinstance(literal, ParsedLiteral) or not 2 <= len(arguments) <= 4:
            self._discard(arguments)
            raise BadCommand("APPEND mailbox [(flags)] [date-time] literal")
        flags: list[str] = []
        date: float | None = None
        try:
            for extra in arguments[1:-1]:
                if isinstance(extra, list):
                    flags = self._flagList(extra)
                elif isinstance(extra, String):
                    date = parse_datetime(bytes(extra))
                else:
                    raise BadCommand("APPEND mailbox [(flags)] [date-time] literal")
        except BadCommand:
            literal.writer.discard()
            raise
        except KeywordLimit as e:
            literal.writer.discard()
            self._tagged(tag, b"NO", b"[LIMIT] " + str(e).capitalize().encode("ascii", "replace"))
            return None

        async def append() -> None:
            writer = literal.writer
            try:
                try:
                    name = self._mailboxName(arguments[0])
                    folder = await self.mailbox.folder(name)
                except (BadMailboxName, BadFolderName) as e:
                    self._tagged(tag, b"NO", b"[CANNOT] " + str(e).encode("utf-8", "replace"))
                    return
                except NoSuchFolder:
                    self._tagged(tag, b"NO", b"[TRYCREATE] No such mailbox")
                    return
                await writer.finish()
                await self._roomFor(writer.size, 1)
                uid = await folder.appendMessage(writer, [f for f in flags if f != _RECENT], date)
                writer = None
                status = await folder.status()
            finally:
                if writer is not None:
                    writer.discard()
            await self._complete(tag, b"[APPENDUID %d %d] APPEND completed" % (status.uidvalidity, uid))

        return append()

    async def _roomFor(self, size: int, messages: int) -> None:
        """Raise L{OverQuota} (answered C{NO [OVERQUOTA]}) unless the mailbox has room for C{messages} of C{size} bytes."""
        quotas = self.factory.quotas
        if quotas is None:
            return
        refused = await quotas.check(self.mailbox.account, size, messages)
        if refused is not None:
            raise refused

    def _flagList(self, tokens: list[Any]) -> list[str]:
        flags = []
        for token in tokens:
            if not isinstance(token, Atom):
                raise BadCommand("Flags are atoms")
            flag = token.decode("utf-8", "replace")
            if flag.startswith("\\"):
                canonical = next((f for f in SYSTEM_FLAGS + (_RECENT,) if f.lower() == flag.lower()), None)
                if canonical is None:
                    raise BadCommand("Unknown system flag")
                flag = canonical
            elif not _KEYWORD.match(flag) or len(flag) > MAX_KEYWORD_LENGTH:
                raise BadCommand("Bad keyword")
            flags.append(flag)
        if len({flag for flag in flags if not flag.startswith("\\")}) > MAX_KEYWORDS_PER_MESSAGE:
            raise KeywordLimit(f"a message may carry at most {MAX_KEYWORDS_PER_MESSAGE} keywords")
        return flags

    # -- selected: simple -------------------------------------------------------------------------

    def do_CHECK(self, tag: bytes, arguments: list[Any]) -> Any:
        self._arguments(arguments, 0, "CHECK")
        return self._complete(tag, b"CHECK completed", force=True)

    def do_UNSELECT(self, tag: bytes, arguments: list[Any]) -> None:
        self._arguments(arguments, 0, "UNSELECT")
        self._unselect()
        self._tagged(tag, b"OK", b"UNSELECT completed")

    def do_CLOSE(self, tag: bytes, arguments: list[Any]) -> Any:
        self._arguments(arguments, 0, "CLOSE")
        selected = self._selected
        assert selected is not None

        async def close() -> None:
            self._unselect()
            if not selected.readonly:
                messages = await selected.folder.messages()
                deleted = [m.uid for m in messages if _DELETED in m.flags]
                if deleted:
                    await selected.folder.expunge(deleted)
            self._tagged(tag, b"OK", b"CLOSE completed")

        return close()

    def do_EXPUNGE(self, tag: bytes, arguments: list[Any]) -> Any:
        self._arguments(arguments, 0, "EXPUNGE")
        return self._expunge(tag, None)

    def do_UID_EXPUNGE(self, tag: bytes, arguments: list[Any]) -> Any:
        self._arguments(arguments, 1, "UID EXPUNGE")
        ranges = parse_sequence_set(as_string(arguments[0], "UID set"))
        return self._expunge(tag, ranges)

    async def _expunge(self, tag: bytes, ranges: Any) -> None:
        selected = self._selected
        assert selected is not None
        if selected.readonly:
            self._tagged(tag, b"NO", b"[READ-ONLY] Mailbox is read-only")
            return
        messages = await selected.folder.messages()
        deleted = [m.uid for m in messages if _DELETED in m.flags]
        if ranges is not None:
            uids = [m.uid for m in messages]
            wanted = {uids[p] for p in select_positions(ranges, uids, by_uid=True)}
            deleted = [uid for uid in deleted if uid in wanted]
        if deleted:
            await selected.folder.expunge(deleted)
        await self._complete(tag, b"EXPUNGE completed", force=True)

    # -- selected: FETCH ---------------------------------------------------------------------------

    def do_FETCH(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._fetch(tag, arguments, by_uid=False)

    def do_UID_FETCH(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._fetch(tag, arguments, by_uid=True)

    def _parseFetchItems(self, tokens: list[Any]) -> list[_FetchItem]:
        if len(tokens) == 1 and isinstance(tokens[0], list):
            tokens = tokens[0]
        elif len(tokens) == 1 and isinstance(tokens[0], Atom):
            macro = tokens[0].upper()
            expansions = {
                b"ALL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"],
                b"FAST": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"],
                b"FULL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"],
            }
            if macro in expansions:
                tokens = [Atom(x) for x in expansions[macro]]
        else:
            raise BadCommand("FETCH items must be one item or a parenthesized list")
        if not tokens:
            raise BadCommand("No FETCH items")
        items = []
        for token in tokens:
            if not isinstance(token, Atom):
                raise BadCommand("Bad FETCH item")
            items.append(self._fetchItem(bytes(token)))
        return items

    def _fetchItem(self, text: bytes) -> _FetchItem:
        upper = text.upper()
        simple = {b"FLAGS", b"UID", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODYSTRUCTURE", b"BODY"}
        if upper in simple:
            return _FetchItem(upper.decode())
        if upper == b"RFC822":
            return _FetchItem("SECTION", b"RFC822", mime.Section(), seen=True)
        if upper == b"RFC822.HEADER":
            return _FetchItem("SECTION", b"RFC822.HEADER", mime.Section((), "HEADER"))
        if upper == b"RFC822.TEXT":
            return _FetchItem("SECTION", b"RFC822.TEXT", mime.Section((), "TEXT"), seen=True)
        match = _FETCH_SECTION.match(text)
        if not match:
            raise BadCommand("Unknown FETCH item")
        inner = match.group(2)
        field_names: list[bytes] = []
        paren = inner.find(b"(")
        section_text = inner
        if paren >= 0:
            section_text = inner[:paren]
            try:
                tokens = parse_arguments([inner[paren:]])
            except BadCommand:
                raise BadCommand("Bad header field list") from None
            if len(tokens) != 1 or not isinstance(tokens[0], list) or not tokens[0]:
                raise BadCommand("Bad header field list")
            field_names = [as_string(t, "header field") for t in tokens[0]]
            if not section_text.endswith(b" "):
                raise BadCommand("Bad section")
        try:
            section = mime.parse_section(section_text, field_names)
        except ValueError as e:
            raise BadCommand(f"Bad section: {e}") from None
        start = int(match.group(3)) if match.group(3) is not None else None
        length = int(match.group(4)) if match.group(4) is not None else None
        if match.group(3) is not None and match.group(4) is None:
            raise BadCommand("Partial needs <start.length>")
        if length == 0 and start is not None:
            pass
        peek = match.group(1).upper() == b"BODY.PEEK"
        label_inner = section_text.strip().upper()
        if field_names:
            label_inner += b" (" + b" ".join(f.upper() for f in field_names) + b")"
        label = b"BODY[" + label_inner + b"]" + (b"<%d>" % start if start is not None else b"")
        return _FetchItem("SECTION", label, section, start, length, seen=not peek)

    async def _fetch(self, tag: bytes, arguments: list[Any], by_uid: bool) -> None:
        if len(arguments) < 2:
            raise BadCommand("FETCH sequence-set items")
        ranges = parse_sequence_set(as_string(arguments[0], "sequence set"))
        items = self._parseFetchItems(arguments[1:])
        if by_uid and not any(i.kind == "UID" for i in items):
            items.insert(0, _FetchItem("UID"))
        selected = self._selected
        assert selected is not None
        positions = select_positions(ranges, selected.uids, by_uid)
        flags_changed: set[int] = set()
        if not selected.readonly and any(i.seen for i in items):
            unseen = [selected.uids[p] for p in positions if _SEEN not in selected.info[selected.uids[p]].flags]
            if unseen:
                changed = await selected.folder.setFlags(unseen, [_SEEN], "add")
                for uid, flags in changed.items():
                    if uid in selected.info:
                        selected.info[uid] = dataclasses.replace(selected.info[uid], flags=flags)
                        flags_changed.add(uid)
        if flags_changed and not any(i.kind == "FLAGS" for i in items):
            items.append(_FetchItem("FLAGS"))
        missing = False
        if not any(i.needs_file for i in items):
            await self._fetchFromIndex(positions, items)
        else:
            for position in positions:
                if position >= len(selected.uids) or self._selected is not selected:
                    break
                if not await self._fetchOne(position, items):
                    missing = True
        if missing:
            # Deleted behind the store's back, maybe: then it is expunged now.
            selected.look_outside = True
            await self._update(allow_expunge=by_uid, with_uid=by_uid)
            self._tagged(tag, b"NO", b"[EXPUNGEISSUED] Some messages were expunged and could not be fetched")
            return
        await self._complete(tag, b"FETCH completed", allow_expunge=by_uid, with_uid=by_uid)

    def _simpleItem(self, item: _FetchItem, uid: int, info: MessageInfo, recent: bool) -> bytes:
        if item.kind == "FLAGS":
            return b"FLAGS " + format_flags(info.flags | {_RECENT} if recent else info.flags)
        if item.kind == "UID":
            return b"UID %d" % uid
        if item.kind == "INTERNALDATE":
            return b"INTERNALDATE " + format_datetime(info.internaldate)
        if item.kind == "RFC822.SIZE":
            return b"RFC822.SIZE %d" % info.size
        raise AssertionError(item.kind)

    async def _fetchFromIndex(self, positions: list[int], items: list[_FetchItem]) -> None:
        """FLAGS, UID, INTERNALDATE, RFC822.SIZE: answered from the view, in batches paced by the transport."""
        selected = self._selected
        assert selected is not None
        uids, info, recent = selected.uids, selected.info, selected.recent
        for start in range(0, len(positions), FETCH_BATCH):
            out = []
            for position in positions[start : start + FETCH_BATCH]:
                uid = uids[position]
                entry = info[uid]
                is_recent = uid in recent
                body = b" ".join(self._simpleItem(item, uid, entry, is_recent) for item in items)
                out.append(b"* %d FETCH (%s)\r\n" % (position + 1, body))
            self._write(b"".join(out))
            if self._flow.paused:
                await self._flow.wait()

    async def _fetchOne(self, position: int, items: list[_FetchItem]) -> bool:
        """One message's FETCH response, its bodies streamed from the file; False if it is gone."""
        selected = self._selected
        assert selected is not None
        uid = selected.uids[position]
        entry = selected.info[uid]
        try:
            handle = await selected.folder.openMessage(uid)
        except NoSuchMessage:
            return False
        try:
            structure = None
            if any(i.needs_structure for i in items):
                scanned = await self.store.run(_scan, handle)
                structure = scanned.root
                if scanned.cut:
                    _structure_cut(uid)
            size = structure.end if structure is not None else None
            out = [b"* %d FETCH (" % (position + 1)]
            first = True
            for item in items:
                if not first:
                    out.append(b" ")
                first = False
                if item.kind in ("FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE"):
                    out.append(self._simpleItem(item, uid, entry, uid in selected.recent))
                elif item.kind == "ENVELOPE":
                    out.append(b"ENVELOPE " + format_value(mime.envelope(structure)))
                elif item.kind == "BODYSTRUCTURE":
                    out.append(b"BODYSTRUCTURE " + format_value(mime.body_structure(structure, True)))
                elif item.kind == "BODY":
                    out.append(b"BODY " + format_value(mime.body_structure(structure, False)))
                else:
                    assert item.section is not None
                    if structure is not None:
                        where = mime.resolve(structure, item.section)
                    else:
                        if size is None:
                            size = await self.store.run(_file_size, handle)
                        where = (0, size)
                    if where is None:
                        where = b""
                    if isinstance(where, bytes):
                        if item.start is not None:
                            where = where[item.start : item.start + (item.length or 0)]
                        out.append(item.label + b" {%d}\r\n" % len(where) + where)
                        continue
                    begin, end = where
                    if item.start is not None:
                        begin = min(begin + item.start, end)
                        end = min(begin + (item.length or 0), end)
                    out.append(item.label + b" {%d}\r\n" % (end - begin))
                    self._write(b"".join(out))
                    out = []
                    await self._stream(handle, begin, end - begin)
            out.append(b")\r\n")
            self._write(b"".join(out))
        finally:
            handle.close()
        if self._flow.paused:
            await self._flow.wait()
        return True

    async def _stream(self, handle: IO[bytes], offset: int, length: int) -> None:
        """Send C{length} bytes of the file from C{offset}, a chunk at a time, paced by the transport."""
        while length > 0:
            data = await self.store.run(_read_at, handle, offset, min(CHUNK_SIZE, length))
            if not data:
                # The file is shorter than its index entry said: keep the literal's promise.
                _log.error("imap message file shorter than expected", log_event=logevents.IMAP_INTERNAL_ERROR)
                data = b" " * min(CHUNK_SIZE, length)
            self._write(data)
            offset += len(data)
            length -= len(data)
            if self._flow.paused or self._flow.stopped:
                await self._flow.wait()

    # -- selected: STORE ---------------------------------------------------------------------------

    def do_STORE(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._store(tag, arguments, by_uid=False)

    def do_UID_STORE(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._store(tag, arguments, by_uid=True)

    async def _store(self, tag: bytes, arguments: list[Any], by_uid: bool) -> None:
        if len(arguments) < 3:
            raise BadCommand("STORE sequence-set item flags")
        ranges = parse_sequence_set(as_string(arguments[0], "sequence set"))
        what = as_string(arguments[1], "store item").upper()
        match = re.match(rb"^([+-]?)FLAGS(\.SILENT)?$", what)
        if not match:
            raise BadCommand("STORE item must be [+-]FLAGS[.SILENT]")
        values = arguments[2:]
        if len(values) == 1 and isinstance(values[0], list):
            values = values[0]
        flags = [f for f in self._flagList(values) if f != _RECENT]
        mode = {b"": "replace", b"+": "add", b"-": "remove"}[match.group(1)]
        silent = match.group(2) is not None
        selected = self._selected
        assert selected is not None
        if selected.readonly:
            self._tagged(tag, b"NO", b"[READ-ONLY] Mailbox is read-only")
            return
        positions = select_positions(ranges, selected.uids, by_uid)
        uids = [selected.uids[p] for p in positions]
        changed = await selected.folder.setFlags(uids, flags, mode) if uids else {}
        out = []
        for position in positions:
            uid = selected.uids[position]
            if uid not in changed:
                continue
            selected.info[uid] = dataclasses.replace(selected.info[uid], flags=changed[uid])
            if not silent:
                shown = changed[uid] | ({_RECENT} if uid in selected.recent else set())
                extra = b" UID %d" % uid if by_uid else b""
                out.append(b"* %d FETCH (FLAGS %s%s)\r\n" % (position + 1, format_flags(shown), extra))
            if len(out) >= FETCH_BATCH:
                self._write(b"".join(out))
                out = []
                if self._flow.paused:
                    await self._flow.wait()
        if out:
            self._write(b"".join(out))
        await self._complete(tag, b"STORE completed", allow_expunge=by_uid, with_uid=by_uid)

    # -- selected: COPY and MOVE ------------------------------------------------------------------

    def do_COPY(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._copy(tag, arguments, by_uid=False, move=False)

    def do_UID_COPY(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._copy(tag, arguments, by_uid=True, move=False)

    def do_MOVE(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._copy(tag, arguments, by_uid=False, move=True)

    def do_UID_MOVE(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._copy(tag, arguments, by_uid=True, move=True)

    async def _copy(self, tag: bytes, arguments: list[Any], by_uid: bool, move: bool) -> None:
        self._arguments(arguments, 2, "COPY")
        ranges = parse_sequence_set(as_string(arguments[0], "sequence set"))
        selected = self._selected
        assert selected is not None
        if move and selected.readonly:
            self._tagged(tag, b"NO", b"[READ-ONLY] Mailbox is read-only")
            return
        try:
            name = self._mailboxName(arguments[1])
            target = await self.mailbox.folder(name)
        except (BadMailboxName, BadFolderName) as e:
            self._tagged(tag, b"NO", b"[CANNOT] " + str(e).encode("utf-8", "replace"))
            return
        except NoSuchFolder:
            self._tagged(tag, b"NO", b"[TRYCREATE] No such mailbox")
            return
        positions = select_positions(ranges, selected.uids, by_uid)
        uids = [selected.uids[p] for p in positions]
        verb = b"MOVE" if move else b"COPY"
        if not uids:
            await self._complete(tag, verb + b" completed (nothing to do)", allow_expunge=by_uid or move)
            return
        # One store change, atomic against other sessions' expunges: what
        # still exists is copied (or moved) and reported in COPYUID, what was
        # expunged meanwhile is left out; NO only when nothing was left.
        if move:
            # Within one mailbox: a move changes no usage, so even a full mailbox may file its mail.
            mapping = await selected.folder.moveTo(uids, target)
        else:
            await self._roomFor(sum(selected.info[uid].size for uid in uids if uid in selected.info), len(uids))
            mapping = await selected.folder.copyTo(uids, target)
        if not mapping:
            self._tagged(tag, b"NO", b"[EXPUNGEISSUED] The messages were expunged")
            return
        status = await target.status()
        sources = sorted(mapping)
        code = b"[COPYUID %d %s %s]" % (
            status.uidvalidity, format_uid_set(sources), format_uid_set(mapping[u] for u in sources)
        )
        if not move:
            await self._complete(tag, code + b" COPY completed", allow_expunge=by_uid, with_uid=by_uid)
            return
        self._untagged(b"OK " + code + b" Moved")
        removed = set(sources)
        gone = [i for i, uid in enumerate(selected.uids) if uid in removed]
        for position in reversed(gone):
            self._untagged(b"%d EXPUNGE" % (position + 1))
            uid = selected.uids.pop(position)
            selected.info.pop(uid, None)
            selected.recent.discard(uid)
        await self._complete(tag, b"MOVE completed", with_uid=by_uid)

    # -- selected: SEARCH ----------------------------------------------------------------------------

    def do_SEARCH(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._search(tag, arguments, by_uid=False)

    def do_UID_SEARCH(self, tag: bytes, arguments: list[Any]) -> Any:
        return self._search(tag, arguments, by_uid=True)

    async def _search(self, tag: bytes, arguments: list[Any], by_uid: bool) -> None:
        selected = self._selected
        assert selected is not None
        charset, keys = search.parse_search(arguments, len(selected.uids))
        if charset not in (None, "UTF-8", "US-ASCII"):
            self._tagged(tag, b"NO", b"[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
            return
        key = ("AND", keys)
        uids = list(selected.uids)
        count = len(uids)
        last_uid = uids[-1] if uids else 0

        def in_set(ranges: Any, message: search.Message, uid_set: bool) -> bool:
            value = message.uid if uid_set else message.seq
            last = last_uid if uid_set else count
            for low, high in ranges:
                a = last if low is None else low
                b = last if high is None else high
                if min(a, b) <= value <= max(a, b):
                    return True
            return False

        hits = []
        needles = search.body_needles(key)
        # Messages the index keys cannot decide are read in batches: the files
        # opened together, then decoded in one trip to a worker thread.
        undecided: list[tuple[int, int, search.Message]] = []

        async def decide(batch: list[tuple[int, int, search.Message]]) -> None:
            opened = await defer.gatherResults(
                [selected.folder.openMessage(uid).addErrback(lambda f: f.trap(NoSuchMessage) and None) for _, uid, _ in batch],
                consumeErrors=True,
            )
            contents = await self.store.run(search.load_contents, opened, needles)
            for (position, uid, message), content in zip(batch, contents):
                if content is not None and content.cut:
                    _structure_cut(uid)
                if content is not None and search.matches(key, message, content, in_set):
                    hits.append(uid if by_uid else position + 1)

        for position, uid in enumerate(uids):
            entry = selected.info[uid]
            message = search.Message(position + 1, uid, entry.flags, entry.size, entry.internaldate, uid in selected.recent)
            try:
                matched = search.matches(key, message, None, in_set)
            except search.NeedContent:
                undecided.append((position, uid, message))
                # Bodies (up to search.MAX_CONTENT each, streamed) come a few at a
                # time, so that one trip to a worker thread stays short.
                if len(undecided) >= (_SEARCH_BATCH if not needles else 4):
                    await decide(undecided)
                    undecided = []
                continue
            if matched:
                hits.append(uid if by_uid else position + 1)
        if undecided:
            await decide(undecided)
        hits.sort()
        self._untagged(b"SEARCH" + b"".join(b" %d" % hit for hit in hits))
        await self._complete(tag, b"SEARCH completed", allow_expunge=by_uid, with_uid=by_uid)


# -- worker-thread helpers -------------------------------------------------------------------------


def _scan(handle: IO[bytes]) -> mime.Structure:
    handle.seek(0)
    return mime.scan_structure(handle)


def _structure_cut(uid: int) -> None:
    """One warning line for a message whose structure a bound cut: hostile or broken, never a traceback."""
    _log.warn(
        "imap message structure cut uid={uid}: deeper than {depth} or more than {parts} parts, the rest is text",
        log_event=logevents.IMAP_STRUCTURE_CUT,
        uid=uid,
        depth=mime.MAX_DEPTH,
        parts=mime.MAX_PARTS,
    )


def _file_size(handle: IO[bytes]) -> int:
    # The message's size as sent, which the store's file object knows
    # without reading (the file on disk is smaller: LF line ends).
    return handle.seek(0, os.SEEK_END)


def _read_at(handle: IO[bytes], offset: int, size: int) -> bytes:
    handle.seek(offset)
    return handle.read(size)


#: Messages a SEARCH reads per trip to a worker thread (with their files open at once).
_SEARCH_BATCH = 64


# -- the factory --------------------------------------------------------------------------------


class IMAPFactory(SessionFactory):
    """
    Builds sessions for one listener, keeps its connection counts (total and
    per client address), and the \\Recent markers of this process.
    """

    def __init__(
        self,
        portal: Any,
        store: Any,
        policy: IMAPPolicy,
        reactor: Any,
        tls: Any = None,
        inflight: Any = None,
        guard: Any = None,
        quotas: Any = None,
    ) -> None:
        super().__init__(inflight, guard)
        #: The server's L{mailapp.quota.Quotas}: APPEND and COPY ask it first (None: no quotas).
        self.quotas = quotas
        #: Reads of "messages above UID n" in flight, shared (see messagesAfter).
        self._sharedReads: dict[tuple[str, str, int], list[defer.Deferred[list[MessageInfo]]]] = {}
        self.portal = portal
        self.store = store
        self.policy = policy
        self.reactor = reactor
        self.tls = tls

    def buildProtocol(self, addr: Any) -> IMAPServer:
        return IMAPServer(self)

    # \Recent is shared by every listener in the process: kept on the store object.
    def _recent(self) -> dict[tuple[str, str, int], int]:
        markers = getattr(self.store, "_imapRecentMarkers", None)
        if markers is None:
            markers = {}
            try:
                self.store._imapRecentMarkers = markers
            except AttributeError:  # pragma: no cover - a store that takes no attributes
                pass
        return markers

    def messagesAfter(self, folder: Any, uid: int) -> defer.Deferred[list[MessageInfo]]:
        """
        The folder's messages above C{uid}, one store read shared by every
        session that asks for the same thing at the same time: a delivery to a
        folder that 100 clients watch wakes them all, and they all want it.
        """
        key = (folder.account.lower(), folder.name, uid)
        mine: defer.Deferred[list[MessageInfo]] = defer.Deferred()
        waiting = self._sharedReads.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        self._sharedReads[key] = [mine]

        def deliver(result: object) -> None:
            for each in self._sharedReads.pop(key, []):
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(list(result))  # type: ignore[call-overload]

        folder.messagesAfter(uid).addBoth(deliver)
        return mine

    def recentMarker(self, account: str | None, folder: str, uidvalidity: int) -> int:
        return self._recent().get(((account or "").lower(), folder, uidvalidity), 0)

    def setRecentMarker(self, account: str | None, folder: str, uidvalidity: int, uid: int) -> None:
        key = ((account or "").lower(), folder, uidvalidity)
        markers = self._recent()
        markers[key] = max(markers.get(key, 0), uid)


def buildFactory(context: Any, listener: Any) -> IMAPFactory:
    """The builder the service registers for the ``imap`` protocol."""
    config = context.config
    limits = config.limits
    policy = IMAPPolicy(
        hostname=config.hostname,
        allow_plaintext_auth=listener.allow_plaintext_auth,
        max_message_size=limits.max_message_size,
        **session_limits(config, listener),
        timeout=limits.imap_timeout_seconds,
        max_commands_before_auth=limits.max_commands_before_auth,
        max_literal=limits.imap_max_literal,
        max_line=limits.imap_max_line,
    )
    tls = context.tls if listener.tls == "starttls" else None
    return IMAPFactory(
        context.portal,
        context.store,
        policy,
        context.reactor,
        tls=tls,
        inflight=context.inflight,
        guard=getattr(context, "guard", None),
        quotas=getattr(context, "quotas", None),
    )

