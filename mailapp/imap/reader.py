"""
The IMAP command reader: the client's lines and literals in, whole commands
out.

A command is one line, or several lines joined by literals (RFC 3501 4.3).
The session's line base (L{mailapp.linesession.LineSession}) cuts the
stream into lines and hands them to L{CommandReader.lineReceived}; after a
line that announces a literal, it hands the literal's bytes to
L{CommandReader.literalReceived} instead (through the session's
C{consumeRaw}), until the literal is read. The reader reads each literal (a
synchronizing ``{n}`` after our ``+`` continuation, a non-synchronizing
``{n+}`` at once, RFC 7888), keeps every line, literal and whole command
within the limits it is given, and streams an APPEND's message into a spool
writer instead of memory, refusing it before a byte is read when it is too
big.

It holds no session state: whether the client has logged in comes with the
limits (L{ReadLimits}), and what it reads or refuses goes to its owner (the
session, through L{ReaderOwner}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from twisted.internet import defer

from mailapp.imap.policy import MAX_LINE_PREAUTH, MAX_LITERAL_PREAUTH
from mailapp.imap.wire import BadCommand, Literal8, ParsedLiteral, String, parse_arguments
from mailapp.sessions import SessionDeadlines

__all__ = ["LINE_TOO_LONG", "CommandReader", "Piece", "ReadLimits", "ReaderOwner", "TAG"]

#: One piece of a command as read: a line (without its literal marker), a literal in memory, or a spooled one.
Piece = bytes | String | ParsedLiteral

#: The characters of a tag (RFC 3501 9, ``tag``; ``+`` is refused where the tag is checked).
TAG = re.compile(rb"^[\x21-\x7e]+$")
_LITERAL = re.compile(rb"(~?)\{([0-9]{1,10})(\+?)\}$")
#: A CATENATE text part's literal follows (RFC 4469 5: ``TEXT SP literal``).
_TEXT_PART = re.compile(rb"(?:^|[ (])TEXT ?$", re.I)
_LITERAL_NEGATIVE = re.compile(rb"\{-[0-9]*\+?\}$")
#: What a line over the limit is answered with, untagged, before the session closes.
LINE_TOO_LONG = b"BAD Line too long; closing connection"


@dataclass(frozen=True)
class ReadLimits:
    """The bounds the reader keeps, as they stand now (they grow at login)."""

    authenticated: bool
    max_line: int
    max_command: int
    max_literal: int
    max_message_size: int

    @classmethod
    def before_login(cls, max_message_size: int, max_line: int = MAX_LINE_PREAUTH) -> ReadLimits:
        """Before login: L{MAX_LINE_PREAUTH}, or the listener's own line limit when that is smaller."""
        line = min(MAX_LINE_PREAUTH, max_line)
        return cls(False, line, line, MAX_LITERAL_PREAUTH, max_message_size)


class ReaderOwner(Protocol):
    """What the reader needs from its session."""

    def readLimits(self) -> ReadLimits:
        """The limits for the next line or literal."""

    def commandReceived(self, pieces: list[Piece]) -> None:
        """A whole command: its first line (tag, name, arguments) and whatever literals and lines followed."""

    def write(self, data: bytes) -> None:
        """Send C{data} (the ``+`` continuation of a synchronizing literal)."""

    def tagged(self, tag: bytes, status: bytes, text: bytes) -> None: ...

    def untagged(self, text: bytes) -> None: ...

    def bad(self, tag: bytes, text: bytes) -> None:
        """Answer ``BAD``, counted against the session's error budget."""

    def close(self) -> None:
        """Hang up (after what was written)."""

    def holdReading(self, until: defer.Deferred[Any]) -> None:
        """Stop reading until C{until} fires: the spool is slower than the client."""


@dataclass
class _Literal:
    """A literal being read: into memory, or (an APPEND message) into a spool writer."""

    remaining: int
    data: bytearray | None
    writer: Any = None
    size: int = 0
    #: A literal8 (``~{n}``): kept as a L{Literal8}.
    binary: bool = False


class CommandReader:
    """
    One session's input, a line (L{lineReceived}) or a literal's bytes
    (L{literalReceived}, while L{readingLiteral}) at a time; it calls the
    owner's C{commandReceived} once per whole command, and hands a line to a
    one-shot taker instead where the session expects a bare line (an
    AUTHENTICATE response, IDLE's ``DONE``: L{takeNextLine}).
    """

    def __init__(self, owner: ReaderOwner, deadlines: SessionDeadlines, spool: Callable[[], Any]) -> None:
        self._owner = owner
        self._deadlines = deadlines
        #: Makes the store's writer for an APPEND's message (L{mailapp.interfaces.IMessageWriter}).
        self._spool = spool
        self._pieces: list[Piece] = []
        self._commandSize = 0
        self._literal: _Literal | None = None
        self._lineTaker: Callable[[bytes], None] | None = None

    @property
    def readingLiteral(self) -> bool:
        """Whether the next bytes are a literal's (L{literalReceived}), not a line."""
        return self._literal is not None

    def connectionLost(self) -> None:
        """Remove every spool file the reader still holds."""
        if self._literal is not None and self._literal.writer is not None:
            self._literal.writer.discard()
        self.discardPieces()
        self._literal = None

    def takeNextLine(self, taker: Callable[[bytes], None]) -> None:
        """Hand the next whole line to C{taker} instead of reading it as a command."""
        self._lineTaker = taker

    def discardPieces(self) -> None:
        """
        Drop the command being read, with the spool file of any APPEND
        message in it (the session closes, or STARTTLS: whatever came in the
        clear must never run inside TLS).
        """
        discard(self._pieces)
        self._pieces = []
        self._commandSize = 0

    def lineReceived(self, line: bytes) -> None:
        """One line, its line end taken off: a bare line's taker's, or part of a command."""
        limits = self._owner.readLimits()
        if len(line) > limits.max_line:
            self.discardPieces()
            self._owner.untagged(LINE_TOO_LONG)
            self._owner.close()
            return
        if self._lineTaker is not None:
            taker, self._lineTaker = self._lineTaker, None
            taker(line)
        else:
            self._line(line, limits)

    def literalReceived(self, data: bytes) -> int:
        """Take what belongs to the literal being read from C{data}; return how many bytes that was."""
        literal = self._literal
        assert literal is not None
        take = min(literal.remaining, len(data))
        chunk = data[:take]
        literal.remaining -= take
        self._deadlines.dataReceived(take)
        if literal.writer is not None:
            written = literal.writer.write(chunk)
            if not written.called:
                self._owner.holdReading(written)
        else:
            assert literal.data is not None
            literal.data += chunk
        if literal.remaining == 0:
            self._literal = None
            self._deadlines.dataEnded()
            self._pieces.append(_finished(literal))
        return take

    def _line(self, line: bytes, limits: ReadLimits) -> None:
        owner = self._owner
        self._commandSize += len(line)
        if self._commandSize > limits.max_command:
            self.discardPieces()
            owner.untagged(b"BAD Command too long; closing connection")
            owner.close()
            return
        match = _LITERAL.search(line)
        if match is None:
            if _LITERAL_NEGATIVE.search(line):
                self.discardPieces()
                owner.bad(_tag_of(line), b"Invalid literal size")
                return
            self._pieces.append(line)
            pieces, self._pieces = self._pieces, []
            self._commandSize = 0
            owner.commandReceived(pieces)
            return
        binary = bool(match.group(1))
        size = int(match.group(2))
        synchronizing = not match.group(3)
        self._pieces.append(line[: match.start()])
        first = self._pieces[0] if isinstance(self._pieces[0], bytes) else b""
        tag = _tag_of(first)
        if binary and not self._inAppend():
            self._refuseLiteral(tag, synchronizing, b"BAD", b"literal8 is only for APPEND")
            return
        if self._isAppendMessage():
            if not limits.authenticated:
                self._refuseLiteral(tag, synchronizing, b"BAD", b"Log in first")
                return
            if size > limits.max_message_size:
                self._refuseLiteral(tag, synchronizing, b"NO", b"[TOOBIG] Message exceeds the size limit (APPENDLIMIT)")
                return
            if binary:
                # Kept in memory (at most APPENDLIMIT): its binary parts are
                # re-encoded before it is stored (mailapp.imap.binary).
                self._literal = _Literal(size, bytearray(), size=size, binary=True)
            else:
                self._literal = _Literal(size, None, self._spool(), size)
        else:
            if size > limits.max_literal or self._commandSize + size > limits.max_command:
                self._refuseLiteral(tag, synchronizing, b"BAD", b"Literal too large")
                return
            self._commandSize += size
            self._literal = _Literal(size, bytearray(), binary=binary)
        if synchronizing:
            owner.write(b"+ Ready for literal data\r\n")
        if size > 0:
            self._deadlines.dataStarted()
        if size == 0:
            # Nothing to read: finish the literal now.
            literal, self._literal = self._literal, None
            self._pieces.append(_finished(literal))

    def _refuseLiteral(self, tag: bytes, synchronizing: bool, status: bytes, text: bytes) -> None:
        """
        Refuse a literal before reading a byte of it. A synchronizing client
        waits for our ``+`` and so sends nothing; a non-synchronizing
        (LITERAL+) one has sent it anyway, so we must hang up (RFC 7888 4).
        """
        self.discardPieces()
        self._owner.tagged(tag, status, text)
        if not synchronizing:
            self._owner.untagged(b"BYE Non-synchronizing literal too large")
            self._owner.close()

    def _inAppend(self) -> bool:
        first = self._pieces[0]
        if not isinstance(first, bytes):
            return False
        words = first.split(b" ", 2)
        return len(words) >= 2 and words[1].upper() == b"APPEND"

    def _isAppendMessage(self) -> bool:
        """
        Whether the literal the reader is about to take is an APPEND's
        message (any of MULTIAPPEND's, a UTF8 one), not its mailbox name or
        a CATENATE ``TEXT`` part (RFC 4469), which is kept in memory within
        the literal limit, to be joined with the other parts.
        """
        if not self._inAppend():
            return False
        first = self._pieces[0]
        assert isinstance(first, bytes)
        words = first.split(b" ", 2)
        last = self._pieces[-1]
        if isinstance(last, bytes) and _TEXT_PART.search(last) and _open_parentheses(self._pieces):
            return False
        rest: list[Piece] = [words[2] if len(words) > 2 else b""]
        rest += self._pieces[1:]
        try:
            tokens = parse_arguments(rest)
        except BadCommand:
            # An open flag list and the like: only the message may follow the mailbox.
            return True
        return len(tokens) >= 1


def _finished(literal: _Literal) -> Piece:
    if literal.writer is not None:
        return ParsedLiteral(literal.writer, literal.size)
    data = bytes(literal.data or b"")
    return Literal8(data) if literal.binary else String(data)


def _open_parentheses(pieces: list[Piece]) -> bool:
    """Whether the command so far has a parenthesis open (quoted strings not looked into: a guess for CATENATE)."""
    depth = 0
    for piece in pieces:
        if isinstance(piece, bytes):
            depth += piece.count(b"(") - piece.count(b")")
    return depth > 0


def discard(pieces: list[Any]) -> None:
    """Remove the spool files of the APPEND messages among a command's pieces or arguments."""
    for piece in pieces:
        if isinstance(piece, ParsedLiteral):
            piece.writer.discard()


def _tag_of(first: bytes) -> bytes:
    """The tag to answer a refused line with: its own where it is one, else ``*``."""
    tag = first.split(b" ", 1)[0]
    return tag if tag and TAG.match(tag) and b"+" not in tag and len(tag) < 100 else b"*"
