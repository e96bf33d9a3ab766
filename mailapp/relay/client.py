"""
The ESMTP client that carries queued mail to the next hop.

Our own small client rather than L{twisted.mail.smtp.ESMTPSender}, because
the relay needs what that one does not give: a reply per recipient (some 250,
some 550) from one transaction, PIPELINING, more than one transaction per
connection, STARTTLS whenever offered, an injected clock for its timeouts,
and a DATA encoder that is correct at every boundary. Stock Twisted's
sender misses a leading ``.`` at the very start of the message and at its
16 KiB chunk boundaries, and passes bare CR and LF through; a next hop that
takes bare LF as a line end would then see a line ``.`` end our DATA early
and read the rest as a second message (SMTP smuggling). L{DataEncoder} turns
every line ending into CRLF and stuffs every line that starts with a dot,
wherever the chunk boundaries fall.

The client's API is a sequence of Deferreds on one connection::

    yield client.greet(hostname, tls=context, require_tls=False, auth=None)
    results = yield client.send(sender, recipients, source, size)   # {recipient: Reply}
    ...                                                              # more sends
    yield client.quit()

A failure of the session itself (greeting, EHLO, STARTTLS, AUTH, a lost
connection, a timeout) fails the Deferred with L{SessionError}, carrying the
reply to record.

Every wait is a deadline, never an idle timer: a reply must be complete
within C{command_timeout} of being due (the command sent, or the reply
before it complete), a chunk of DATA must be taken within C{command_timeout}
of being written, and the whole connection ends C{session_timeout} after it
was made. An idle timer that restarts on every byte lets a tarpit that
sends one byte a second hold the connection for ever (RFC 5321 4.5.3.2 sets
its timeouts per command and per data block for this reason).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from mailapp.tracefields import return_path_length
from zope.interface import implementer

__all__ = ["DataEncoder", "Reply", "SMTPClient", "SessionError", "BytesSource", "FileSource"]

MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100
CHUNK = 64 * 1024
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: its code and text lines (without the code)."""

    code: int
    lines: tuple[str, ...] = ()

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def enhanced(self) -> str:
        """The enhanced status code (RFC 3463) if the reply has one, else one derived from the code."""
        match = _ENHANCED.match(self.lines[0]) if self.lines else None
        if match and match.group(1) == str(self.code)[0]:
            return match.group(0)
        return f"{str(self.code)[0]}.0.0"

    def __str__(self) -> str:
        """One safe line (printable ASCII, bounded) for envelopes, logs and DSNs."""
        text = " ".join(line.strip() for line in self.lines)
        return _UNPRINTABLE.sub("?", f"{self.code} {text}".strip())[:500]

    @classmethod
    def parse(cls, text: str) -> "Reply":
        """The inverse of C{str()}, for replies stored in an envelope."""
        code, _, rest = text.partition(" ")
        return cls(int(code) if code.isdigit() else 451, (rest,) if rest else ())


def local_reply(code: int, text: str) -> Reply:
    """A reply we make up for a condition on our side (connection failed, DNS, expiry)."""
    return Reply(code, (text,))


class SessionError(Exception):
    """The session cannot carry mail (any more); C{reply} says why."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class DataEncoder:
    """
    Encode message bytes for the DATA phase, chunk by chunk: CRLF line ends
    everywhere (bare CR and bare LF become CRLF), a dot doubled at the start
    of every line (RFC 5321 4.5.2), a final CRLF if the message lacks one,
    then the terminating ``.CRLF``.
    """

    def __init__(self) -> None:
        self._at_line_start = True
        self._held_cr = False

    def encode(self, chunk: bytes) -> bytes:
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            # It may be the first half of a CRLF split across chunks.
            chunk = chunk[:-1]
            self._held_cr = True
        if not chunk:
            return b""
        text = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        text = text.replace(b"\r\n.", b"\r\n..")
        if self._at_line_start and text.startswith(b"."):
            text = b"." + text
        self._at_line_start = text.endswith(b"\r\n")
        return text

    def finish(self) -> bytes:
        tail = b""
        if self._held_cr:
            self._held_cr = False
            tail = b"\r\n"
            self._at_line_start = True
        if not self._at_line_start:
            tail += b"\r\n"
        return tail + b".\r\n"


def strip_return_path(head: bytes) -> bytes:
    """
    The stored copy starts with our own ``Return-Path:`` (added on receipt
    for local mailboxes); a relaying server must not send it on (RFC 5321
    4.4: the final delivering server adds it). Removes it from the first
    chunk of the message, folded continuation lines included.
    """
    return head[return_path_length(head) :]


class BytesSource:
    """A message in memory, read in chunks (tests, small messages, a converted copy: L{mailapp.relay.downgrade})."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def read(self, size: int) -> Deferred[bytes]:
        chunk = self._data[self._position : self._position + size]
        self._position += len(chunk)
        return defer.succeed(chunk)

    def close(self) -> None:
        pass


class FileSource:
    """A message file read in chunks on worker threads, so the reactor never waits for the disk."""

    def __init__(self, path: Any, run: Any) -> None:
        self._path = path
        self._run = run
        self._file: Any = None

    def read(self, size: int) -> Deferred[bytes]:
        def read() -> bytes:
            if self._file is None:
                self._file = open(self._path, "rb")
            data: bytes = self._file.read(size)
            return data

        return self._run(read)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@implementer(IPushProducer)
class _Pauser:
    """Back-pressure while writing DATA: the transport pauses us when its buffer is full."""

    def __init__(self) -> None:
        self._waiting: Deferred[None] | None = None
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()

    def wait(self) -> Deferred[None]:
        if not self.paused:
            return defer.succeed(None)
        self._waiting = Deferred()
        return self._waiting


class SMTPClient(Protocol):
    """
    One outbound SMTP connection; see the module docstring.

    @param clock: provides C{callLater}, for the command and session timeouts.
    @param command_timeout: seconds any one reply may take from when it is
        due to its last line, and any chunk of DATA to be taken by the peer.
    @param session_timeout: seconds the whole connection may last, however
        busy it is.
    """

    def __init__(self, clock: Any, command_timeout: float = 300, session_timeout: float = 1800) -> None:
        self.callLater = clock.callLater
        self.command_timeout = command_timeout
        self.session_timeout = session_timeout
        self.extensions: dict[str, str] = {}
        self.secure = False
        #: Whether the session ended in its STARTTLS upgrade (see L{greet}).
        self.tls_failed = False
        self.usable = True
        self._buffer = b""
        self._lines: list[str] = []
        self._waiting: list[Deferred[Reply]] = []
        self._greeting: Deferred[Reply] = Deferred()
        self._waiting.append(self._greeting)
        self._lost: Failure | None = None
        self._session_timer: Any = None
        self._reply_timer: Any = None
        self._pauser: _Pauser | None = None
        self.connected_to = ""

    # -- the byte stream -----------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.connected_to = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        self._session_timer = self.callLater(self.session_timeout, self._sessionExpired)
        self._startReplyDeadline()

    def _sessionExpired(self) -> None:
        self._session_timer = None
        self._fail(local_reply(451, "4.4.2 session time limit reached"))

    def _startReplyDeadline(self) -> None:
        """The reply at the head of the queue is due now: it has C{command_timeout} to be complete."""
        self._stopReplyDeadline()
        self._reply_timer = self.callLater(self.command_timeout, self._replyExpired)

    def _stopReplyDeadline(self) -> None:
        if self._reply_timer is not None and self._reply_timer.active():
            self._reply_timer.cancel()
        self._reply_timer = None

    def _replyExpired(self) -> None:
        self._reply_timer = None
        self._fail(local_reply(451, "4.4.2 timed out waiting for a reply"))

    def _fail(self, reply: Reply) -> None:
        self.usable = False
        if self._lost is None:
            self._lost = Failure(SessionError(reply))
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._stopReplyDeadline()
        self.usable = False
        if self._pauser is not None:
            self._pauser.stopProducing()  # a DATA loop waiting for the window wakes to see the loss
        if self._session_timer is not None and self._session_timer.active():
            self._session_timer.cancel()
        self._session_timer = None
        if self._lost is None:
            self._lost = Failure(SessionError(local_reply(451, "4.4.2 connection lost")))
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(self._lost)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    self._fail(local_reply(451, "4.5.0 reply line too long"))
                return
            raw, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            self._line(raw.rstrip(b"\r").decode("utf-8", "replace"))
            if self._lost is not None:
                return

    def _line(self, line: str) -> None:
        if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
            self._fail(local_reply(451, "4.5.0 malformed reply from the server"))
            return
        self._lines.append(line[4:])
        if len(self._lines) > MAX_REPLY_LINES:
            self._fail(local_reply(451, "4.5.0 reply too long"))
            return
        if len(line) > 3 and line[3] == "-":
            return
        reply = Reply(int(line[:3]), tuple(self._lines))
        self._lines = []
        if not self._waiting:
            # Unasked for (a 421 before closing, say): the session is over.
            self._fail(reply)
            return
        waiter = self._waiting.pop(0)
        if self._waiting:
            self._startReplyDeadline()  # the next pipelined reply is due now
        else:
            self._stopReplyDeadline()
        waiter.callback(reply)

    def command(self, line: bytes) -> Deferred[Reply]:
        """Send one command; fire with its reply (in order, so pipelining needs no more)."""
        if self._lost is not None:
            return defer.fail(self._lost)
        d: Deferred[Reply] = Deferred()
        if not self._waiting:
            self._startReplyDeadline()
        self._waiting.append(d)
        self.transport.write(line + b"\r\n")
        return d

    def _expect(self) -> Deferred[Reply]:
        """Wait for a reply to something already sent (the end of DATA)."""
        if self._lost is not None:
            return defer.fail(self._lost)
        d: Deferred[Reply] = Deferred()
        if not self._waiting:
            self._startReplyDeadline()
        self._waiting.append(d)
        return d

    # -- the session --------------------------------------------------------------------

    @defer.inlineCallbacks
    def greet(
        self,
        hostname: str,
        tls: Any = None,
        require_tls: bool = False,
        auth: tuple[str, str] | None = None,
        verify: Callable[["SMTPClient"], Reply | None] | None = None,
    ) -> Any:
        """
        Read the greeting, say EHLO (HELO if refused), upgrade with STARTTLS
        when offered and C{tls} is given, and log in when C{auth} is given
        (only inside TLS). C{verify}, given the client once the TLS phase is
        over (upgraded or not), returns None to go on or the reply that ends
        the session: it runs before AUTH and before any mail, so that no
        password and no message goes to a peer the TLS policy refuses.
        """
        reply = yield self._greeting
        if reply.code != 220:
            raise SessionError(reply)
        yield self._hello(hostname)
        if "STARTTLS" in self.extensions and tls is not None:
            reply = yield self.command(b"STARTTLS")
            if reply.code == 220:
                self.transport.startTLS(tls)
                self.secure = True
                try:
                    yield self._hello(hostname)
                except SessionError:
                    # The handshake (or the first reply inside TLS) failed:
                    # an opportunistic sender may try again without TLS.
                    self.tls_failed = True
                    raise
            elif require_tls:
                raise SessionError(reply)
        if require_tls and not self.secure:
            raise SessionError(local_reply(451, "4.7.4 the server does not offer STARTTLS, which is required"))
        if verify is not None:
            refused = verify(self)
            if refused is not None:
                raise SessionError(refused)
        if auth is not None:
            if not self.secure:
                raise SessionError(local_reply(451, "4.7.4 refusing to send a password without TLS"))
            if "PLAIN" not in self.extensions.get("AUTH", "").upper().split():
                raise SessionError(local_reply(451, "4.7.4 the server does not offer AUTH PLAIN"))
            token = base64.b64encode(b"\0" + auth[0].encode("utf-8") + b"\0" + auth[1].encode("utf-8"))
            reply = yield self.command(b"AUTH PLAIN " + token)
            if reply.code != 235:
                raise SessionError(reply)
        return None

    @defer.inlineCallbacks
    def _hello(self, hostname: str) -> Any:
        reply = yield self.command(b"EHLO " + hostname.encode("ascii"))
        if reply.code == 250:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, value = line.partition(" ")
                self.extensions[keyword.upper()] = value
            return None
        if reply.code in (421,) or self._lost is not None:
            raise SessionError(reply)
        reply = yield self.command(b"HELO " + hostname.encode("ascii"))
        if reply.code != 250:
            raise SessionError(reply)
        self.extensions = {}
        return None

    @defer.inlineCallbacks
    def send(
        self,
        sender: str,
        recipients: list[str],
        source: Any,
        size: int,
        requiretls: bool = False,
        mail_parameters: bytes = b"",
        rcpt_parameters: dict[str, bytes] | None = None,
    ) -> Any:
        """
        One mail transaction. Fires with a dict recipient -> L{Reply}: the
        reply to DATA's end for recipients the server took, else the reply
        that refused the recipient (or the whole transaction). Fails with
        L{SessionError} only if the connection broke before any outcome.
        C{mail_parameters} (each with its leading space) go on MAIL FROM,
        C{rcpt_parameters} by recipient on its RCPT TO (DSN's, RFC 3461).
        """
        mail = b"MAIL FROM:<" + sender.encode("utf-8") + b">"
        if "SIZE" in self.extensions:
            mail += b" SIZE=%d" % size
        if "8BITMIME" in self.extensions:
            mail += b" BODY=8BITMIME"
        if requiretls:
            mail += b" REQUIRETLS"  # RFC 8689 4.1: the next hop must keep the requirement
        mail += mail_parameters
        extra = rcpt_parameters or {}
        rcpts = [b"RCPT TO:<" + r.encode("utf-8") + b">" + extra.get(r, b"") for r in recipients]
        results: dict[str, Reply] = {}
        # RFC 3030: to a peer that offers CHUNKING the message goes in BDAT
        # chunks, as it is on disk (no dot-stuffing), each chunk answered.
        chunking = "CHUNKING" in self.extensions
        if "PIPELINING" in self.extensions:
            # RFC 2920: MAIL, every RCPT and DATA in one write; replies come back in order.
            sent = [self.command(mail)] + [self.command(rcpt) for rcpt in rcpts]
            if not chunking:
                sent.append(self.command(b"DATA"))
            replies = []
            for d in sent:
                reply = yield d
                replies.append(reply)
            mail_reply, rcpt_replies = replies[0], replies[1 : 1 + len(rcpts)]
            data_reply = None if chunking else replies[-1]
        else:
            mail_reply = yield self.command(mail)
            rcpt_replies = []
            data_reply = None
            if mail_reply.code == 250:
                for rcpt in rcpts:
                    reply = yield self.command(rcpt)
                    rcpt_replies.append(reply)
        if mail_reply.code != 250:
            if data_reply is not None and data_reply.code == 354:
                yield self._endData(b".\r\n")
            yield self._reset()
            return {r: mail_reply for r in recipients}
        accepted = [r for r, reply in zip(recipients, rcpt_replies) if reply.code in (250, 251)]
        for r, reply in zip(recipients, rcpt_replies):
            if r not in accepted:
                results[r] = reply
        if not accepted:
            if data_reply is not None and data_reply.code == 354:
                # RFC 2920 3.1: a server that took DATA with no recipient gets an empty message.
                yield self._endData(b".\r\n")
            yield self._reset()
            return results
        if chunking:
            final = yield self._sendChunks(source)
            results.update({r: final for r in accepted})
            if final.code != 250:
                yield self._reset()
            return results
        if data_reply is None:
            data_reply = yield self.command(b"DATA")
        if data_reply.code != 354:
            yield self._reset()
            results.update({r: data_reply for r in accepted})
            return results
        final = yield self._sendData(source)
        results.update({r: final for r in accepted})
        if final.code != 250:
            yield self._reset()
        return results

    @defer.inlineCallbacks
    def _sendData(self, source: Any) -> Any:
        encoder = DataEncoder()
        pauser = self._pauser = _Pauser()
        self.transport.registerProducer(pauser, True)
        first = True
        try:
            while True:
                chunk = yield source.read(CHUNK)
                if self._lost is not None:
                    raise self._lost.value
                if not chunk:
                    break
                if first:
                    chunk = strip_return_path(chunk)
                    first = False
                self.transport.write(encoder.encode(chunk))
                if pauser.paused:
                    # The peer must take each chunk within the deadline (RFC 5321 4.5.3.2.5).
                    timer = self.callLater(
                        self.command_timeout, self._fail, local_reply(451, "4.4.2 timed out sending the message")
                    )
                    try:
                        yield pauser.wait()
                    finally:
                        if timer.active():
                            timer.cancel()
        finally:
            self._pauser = None
            if self.transport is not None and self._lost is None:
                self.transport.unregisterProducer()
        reply = yield self._endData(encoder.finish())
        return reply

    @defer.inlineCallbacks
    def _sendChunks(self, source: Any) -> Any:
        """
        The message in BDAT chunks (RFC 3030 2), one per chunk read, then
        ``BDAT 0 LAST``; each chunk's reply is waited for before the next is
        sent, which is the back-pressure. A chunk refused ends the message
        with that reply (the peer discards what it had).
        """
        first = True
        while True:
            chunk = yield source.read(CHUNK)
            if self._lost is not None:
                raise self._lost.value
            if first:
                chunk = strip_return_path(chunk)
                first = False
            waiting = self._expect()
            if not chunk:
                self.transport.write(b"BDAT 0 LAST\r\n")
                reply: Reply = yield waiting
                return reply
            self.transport.write(b"BDAT %d\r\n" % len(chunk) + chunk)
            reply = yield waiting
            if reply.code != 250:
                return reply

    def _endData(self, tail: bytes) -> Deferred[Reply]:
        waiting = self._expect()
        self.transport.write(tail)
        return waiting

    @defer.inlineCallbacks
    def _reset(self) -> Any:
        """After a failed transaction: RSET, or mark the connection unusable for another."""
        try:
            reply = yield self.command(b"RSET")
        except SessionError:
            self.usable = False
            return None
        if reply.code != 250:
            self.usable = False
        return None

    @defer.inlineCallbacks
    def quit(self) -> Any:
        """Say QUIT and close, whatever the answer; never fails."""
        if self._lost is None and self.transport is not None:
            try:
                yield self.command(b"QUIT")
            except Exception:
                pass
        self.usable = False
        if self.transport is not None:
            self.transport.loseConnection()
        return None

    def abort(self) -> None:
        self._fail(local_reply(451, "4.3.2 the relay is shutting down"))
