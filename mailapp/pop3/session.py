"""
The POP3 session (RFC 1939), with CAPA and response codes (RFC 2449,
3206), STLS (RFC 2595) and AUTH PLAIN (RFC 5034), over the store's INBOX,
on the shared L{LineSession} (admission, the command loop that holds the
next command until the reply is sent, including a whole RETR, so that
pipelined replies come back in order (RFC 2449 PIPELINING); the STARTTLS
buffer drop, timing, deadlines, shutdown).

None of Twisted's POP3 server is used: it reports sizes of the message with
LF line endings while the octets on the wire are CRLF (RFC 1939 wants the
exact count; we report the stored size, exactly what RETR sends before
dot-stuffing); its mailbox API is synchronous, where here every store call
returns a Deferred and a message is streamed from disk a chunk at a time;
and it splits PASS at spaces, has no line length limit and no STLS.

Session semantics (RFC 1939): the maildrop is a snapshot of INBOX taken at
login, so mail arriving during a session is listed in the next one. DELE only
marks; QUIT in the TRANSACTION state enters UPDATE, which marks the messages
retrieved with RETR as C{\\Seen} (for IMAP) and expunges the deleted ones, in
that order. A dropped connection, a timeout or a server shutdown changes
nothing. UIDL is C{"<uidvalidity>.<uid>"}: unique, stable across sessions and
restarts, never reused, and the same message identity IMAP sees.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Iterable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import logevents, sasl
from mailapp.dotstuffing import DotStuffer
from mailapp.errors import NoSuchMessage
from mailapp.linesession import LineSession
from mailapp.pop3.maildrop import _Maildrop, _MessageSender, _number
from mailapp.pop3.policy import CHUNK_SIZE, COMMANDS, KNOWN, MAX_LINE, POP3Policy, SessionState
from mailapp.pop3.output import SessionOutput
from mailapp.pop3.readahead import ReadAhead
from mailapp.sessions import BANNED, AuthOutcome, Overrun
from mailapp.records import MessageInfo

if TYPE_CHECKING:
    from mailapp.pop3.factory import POP3Factory

__all__ = ["POP3Server"]

_log = Logger()

_INBOX = "INBOX"
_SEEN = "\\Seen"

#: What each SASL failure is answered with.
_SASL_REPLIES: dict[type[sasl.SASLError], bytes] = {
    sasl.Cancelled: b"Authentication cancelled",
    sasl.BadBase64: b"Malformed base64 in AUTH response",
    sasl.MalformedPlain: b"Malformed PLAIN response",
}


#: The control characters a command line may not hold (TAB may).
_CONTROLS = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _has_controls(line: bytes) -> bool:
    return _CONTROLS.search(line) is not None


class POP3Server(LineSession):
    """One POP3 session; see the module docstring."""

    protocolName = "pop3"
    maxUnterminated = MAX_LINE
    maxLine = MAX_LINE

    factory: POP3Factory
    policy: POP3Policy

    def __init__(self, factory: POP3Factory) -> None:
        super().__init__(factory)
        self.portal = factory.portal
        self.maxAuthFailures = self.policy.max_auth_failures
        self.sessionState = SessionState.AUTHORIZATION
        self.account: str | None = None
        self._user: bytes | None = None
        self._maildrop: _Maildrop | None = None
        self._locked: str | None = None
        self._logout: Callable[[], None] | None = None
        self._sender: _MessageSender | None = None
        #: Small messages read ahead of their RETR (set at login).
        self._ahead: ReadAhead | None = None
        #: The back-pressure on what we write (set at the greeting).
        self._output: SessionOutput | None = None

    # -- replies ----------------------------------------------------------------

    def _ok(self, text: bytes = b"") -> None:
        self._write(b"+OK " + text + b"\r\n" if text else b"+OK\r\n")

    def _err(self, text: bytes) -> None:
        self._write(b"-ERR " + text + b"\r\n")

    def _multi(self, first: bytes, lines: Iterable[bytes]) -> None:
        """A multi-line response; its lines never start with a dot, so need no stuffing."""
        self._write(b"".join([b"+OK ", first, b"\r\n", *(line + b"\r\n" for line in lines), b".\r\n"]))

    # -- the line session's hooks ---------------------------------------------------

    def greet(self) -> None:
        assert self.transport is not None
        self._output = SessionOutput(self.transport, self._outputResumed)
        self._output.register()
        self._ok(self.policy.hostname.encode("ascii") + b" POP3 mailapp ready")
        self.setTimeout(self.policy.login_timeout)

    def outputPaused(self) -> bool:
        return self._output is not None and self._output.paused

    def releaseOutput(self) -> None:
        if self._output is not None:
            self._output.release()

    def _outputResumed(self) -> None:
        """The client reads again: take the commands it pipelined meanwhile."""
        if self._connected and not self._closing and not self._busy and self.transport is not None:
            self.transport.resumeProducing()
            self._process()

    def refuse(self, text: bytes, banned: bool) -> None:
        self._err(b"[SYS/TEMP] " + text)

    def sessionEnded(self) -> None:
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
        self._closeOrCut()

    def deadlineExpired(self, overrun: Overrun) -> None:
        """A bound of L{SessionDeadlines} is overrun: close as at a timeout, deleting nothing."""
        self.setTimeout(None)
        self._err(overrun.value + b", nothing deleted")
        self._closeOrCut()

    def _closeOrCut(self) -> None:
        if self._sender is not None:
            # Mid-message: the client stopped reading, and its buffer would
            # never drain to reach the reply: cut.
            self._abort()
        else:
            self._close()

    def goodbye(self) -> None:
        self._err(b"[SYS/TEMP] Server shutting down; nothing deleted")

    def lineTooLong(self) -> None:
        self._err(b"Line too long; closing connection")
        self._close()

    def tooManyCommands(self) -> None:
        self._err(b"Too many commands before login; closing connection")

    def commandFailed(self, reason: Failure) -> bool:
        _log.failure("pop3 internal error client={client}", reason, log_event=logevents.POP3_INTERNAL_ERROR, client=self._peerIP)
        if self._sender is not None:
            # A multi-line response is half sent: it cannot end with -ERR.
            self._sender = None
            self._abort()
            return False
        self._err(b"[SYS/TEMP] Internal error; try again later")
        return True

    def lineReceived(self, line: bytes) -> None:
        if self.sessionState is SessionState.AUTHORIZATION:
            if not self._commandBeforeLogin(self.policy.max_commands_before_auth):
                return
        if _has_controls(line):
            self._err(b"Invalid characters in command")
            return
        verb, _, argument = line.partition(b" ")
        name = verb.upper().decode("ascii") if verb.isalnum() and verb.isascii() and len(verb) <= 8 else ""
        if name not in KNOWN:
            self._err(b"Unknown command")
            return
        if name not in COMMANDS[self.sessionState]:
            self._err(name.encode("ascii") + b" is not valid in the " + self.sessionState.name.encode("ascii") + b" state")
            return
        handler: Callable[[bytes], None] = getattr(self, "pop3_" + name)
        self._command(name, lambda: handler(argument))

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
        if self.sessionState is SessionState.AUTHORIZATION:
            # RFC 6856: UTF-8 user names and passwords in USER/PASS (and SASL) always; messages as stored.
            lines.append(b"UTF8 USER")
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
        self._user = None
        self._startTLS(b"+OK Begin TLS negotiation\r\n", self.factory.tls)

    def pop3_UTF8(self, argument: bytes) -> None:
        """
        RFC 6856 2: the client takes UTF-8. Messages are always sent as
        stored (a UTF-8 one as it arrived with SMTPUTF8); user names and
        passwords are UTF-8 whether or not this was said.
        """
        if argument:
            self._err(b"Syntax: UTF8")
            return
        self._ok(b"UTF8 enabled")

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
            self._continuation = self._authPlain

    def _authPlain(self, response: bytes) -> None:
        try:
            credentials = sasl.decode_plain(response)
        except sasl.SASLError as error:
            self._err(_SASL_REPLIES[type(error)])
            return
        self._loginPlain(credentials)

    def loginSucceeded(self, avatar: Any, logout: Callable[[], None]) -> defer.Deferred[None]:
        self.factory.guard.succeeded(self._peerIP, avatar.account)
        return defer.Deferred.fromCoroutine(self._startTransaction(avatar, logout))

    def loginsBusy(self) -> None:
        self._err(b"[SYS/TEMP] Too many logins at once; try again later")

    def answerAuthFailure(self, outcome: AuthOutcome) -> None:
        if outcome is AuthOutcome.RETRY:
            self._err(b"[AUTH] Authentication failed")
        elif outcome is AuthOutcome.BANNED:
            self._err(b"[SYS/TEMP] " + BANNED)
        else:
            _log.info(
                "pop3 closing after {failures} failed logins client={client}",
                log_event=logevents.POP3_AUTH_FAILURES_EXCEEDED,
                failures=self._authFailures,
                client=self._peerIP,
            )
            self._err(b"[AUTH] Too many authentication failures; closing connection")

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
        self._maildrop = drop = _Maildrop(folder, status.uidvalidity, messages)
        self._ahead = ReadAhead(folder, messages, drop.deleted.__contains__)
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
        if found is None:
            return
        number, info = found
        data = self._readahead.take(number) if info.size <= CHUNK_SIZE else None
        if data is not None:
            # Read ahead: answered now, with no Deferred and no wait (a
            # pipelining client's next RETR runs straight after).
            self._sendWhole(number, data)
        else:
            self._wait(defer.Deferred.fromCoroutine(self._send(number, info, None)))

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

    @property
    def _readahead(self) -> ReadAhead:
        assert self._ahead is not None
        return self._ahead

    def _sendWhole(self, number: int, data: bytes) -> None:
        """A small message's RETR response, in one write: status line, stuffed message, terminator."""
        stuffer = DotStuffer()
        body = stuffer.stuff(data)
        # The idle timer was reset when the command came (dataReceived).
        self._write(b"".join((b"+OK %d octets\r\n" % len(data), body, stuffer.end())))
        self._drop.retrieved.add(number)
        self._readahead.topUp(number)

    async def _send(self, number: int, info: MessageInfo, lines: int | None) -> None:
        """RETR (C{lines} None) or TOP: the message whole if it is small, else open the file and stream it."""
        if lines is None and info.size <= CHUNK_SIZE:
            # One trip to a worker thread for it and the next ones (L{ReadAhead}).
            await self._readahead.load(number)
            data = self._readahead.take(number)
            if data is None:
                # Not in the batch (gone, or the read failed): read it alone, to say which.
                try:
                    data = await self._drop.folder.readMessage(info.uid, CHUNK_SIZE)
                except NoSuchMessage:
                    self._err(b"Message %d was removed from the mailbox by another client" % number)
                    return
            if data is not None:
                if self._connected:
                    self._sendWhole(number, data)
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
        assert self._output is not None
        self._sender = _MessageSender(self._output.consumer(), file, self.factory.readChunk, lines, self.resetTimeout)
        # If the stream fails, _sender stays set: _wait must know a response was half sent.
        completed = await self._sender.start()
        self._sender = None
        if completed and lines is None:
            self._drop.retrieved.add(number)

    def pop3_DELE(self, argument: bytes) -> None:
        words = argument.split()
        if len(words) != 1:
            self._err(b"Syntax: DELE message")
            return
        found = self._find(words[0])
        if found is not None:
            self._drop.deleted.add(found[0])
            self._readahead.forget(found[0])
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
