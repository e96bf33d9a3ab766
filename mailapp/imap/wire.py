"""
The IMAP4rev1 wire syntax (RFC 3501 section 9): parsing command arguments
into tokens, formatting responses, sequence sets, dates, and mailbox names.

Twisted's own helpers are reused where they are right (the modified UTF-7
codec registered by L{twisted.mail.imap4} as ``imap4-utf-7``); its argument
parsers (C{parseNestedParens}, C{splitQuoted}, C{parseIdList}) are not: they
recurse without a depth limit, accept unbalanced parentheses, and expand a
sequence set into a list before it is clamped, so ``1:4294967295`` would
allocate four billion numbers. Everything here is pure and bounded.
"""

from __future__ import annotations

import calendar
import re
import time
import unicodedata
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, Union

import twisted.mail.imap4  # noqa: F401  (registers the imap4-utf-7 codec)

__all__ = [
    "Atom",
    "BadCommand",
    "BadMailboxName",
    "DELIMITER",
    "Literal8",
    "ParsedLiteral",
    "String",
    "as_mailbox",
    "decode_mailbox",
    "encode_mailbox",
    "expect_count",
    "format_datetime",
    "format_mailbox",
    "format_response",
    "mailbox_pattern",
    "parse_arguments",
    "parse_datetime",
    "parse_date",
    "parse_sequence_set",
]

DELIMITER = "/"
MAX_NESTING = 32
MAX_NUMBER = 4294967295


class BadCommand(Exception):
    """The client sent something that does not parse: the reply is ``BAD`` with this text."""


class BadMailboxName(Exception):
    """A mailbox name we refuse before it reaches the store (``NO``)."""


class Atom(bytes):
    """An atom (or a bracketed fetch attribute) as sent; never quoted on output."""


class String(bytes):
    """A quoted string or a literal: its content, unescaped."""


class Literal8(String):
    """A ``literal8`` (``~{n}``, RFC 3516 4.4), which may hold any octet, NUL included: only APPEND takes one."""


@dataclass
class ParsedLiteral:
    """A literal that was not kept in memory (an APPEND message streamed to the spool)."""

    writer: Any
    size: int


Token = Union[Atom, String, ParsedLiteral, list[Any]]  # list: a parenthesized list of tokens


# -- parsing ---------------------------------------------------------------------

_ATOM_END = b" ()\"{\r\n"
#: The fetch attributes whose ``[section]`` may hold spaces and parentheses
#: (``BODY[HEADER.FIELDS (FROM TO)]``). Anywhere else ``[`` is an ATOM-CHAR
#: and ``]`` an ASTRING-CHAR (RFC 3501 9: resp-specials), so a mailbox name
#: such as ``a[b`` or ``x]`` is an ordinary atom, not unbalanced brackets.
_SECTION_ATTRIBUTES = frozenset({b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"})


def parse_arguments(pieces: Sequence[bytes | String | ParsedLiteral]) -> list[Token]:
    """
    Tokenize a command's arguments. C{pieces} alternates text (the parts of
    the command line between literals) and literal contents, as the reader
    collected them; each text piece that precedes a literal ended with its
    ``{N}`` marker, already removed by the reader.

    Raises L{BadCommand} for unbalanced parentheses, nesting deeper than
    L{MAX_NESTING}, an unterminated quoted string, or stray characters.
    """
    stack: list[list[Token]] = [[]]
    for piece in pieces:
        if isinstance(piece, (String, ParsedLiteral)):
            stack[-1].append(piece)
            continue
        _tokenize(piece, stack)
    if len(stack) != 1:
        raise BadCommand("Unbalanced parentheses")
    return stack[0]


def _tokenize(text: bytes, stack: list[list[Token]]) -> None:
    i = 0
    n = len(text)
    while i < n:
        c = text[i : i + 1]
        if c == b" ":
            i += 1
        elif c == b"(":
            if len(stack) > MAX_NESTING:
                raise BadCommand("Too deeply nested")
            new: list[Token] = []
            stack[-1].append(new)
            stack.append(new)
            i += 1
        elif c == b")":
            if len(stack) == 1:
                raise BadCommand("Unbalanced parentheses")
            stack.pop()
            i += 1
        elif c == b'"':
            out = bytearray()
            i += 1
            while True:
                if i >= n:
                    raise BadCommand("Unterminated quoted string")
                ch = text[i]
                if ch == 0x5C:  # backslash
                    if i + 1 >= n or text[i + 1] not in b'"\\':
                        raise BadCommand("Bad escape in quoted string")
                    out.append(text[i + 1])
                    i += 2
                elif ch == 0x22:
                    i += 1
                    break
                elif ch in (0x0D, 0x0A, 0x00):
                    raise BadCommand("Bad character in quoted string")
                else:
                    out.append(ch)
                    i += 1
            stack[-1].append(String(bytes(out)))
        else:
            start = i
            depth = 0
            while i < n:
                c = text[i : i + 1]
                if c == b"[" and (depth > 0 or text[start:i].upper() in _SECTION_ATTRIBUTES):
                    depth += 1
                elif c == b"]" and depth > 0:
                    depth -= 1
                    if depth < 0:
                        raise BadCommand("Unbalanced brackets")
                elif depth == 0 and c in (b" ", b"(", b")", b'"'):
                    if c == b"(" or c == b'"':
                        raise BadCommand("Unexpected character in atom")
                    break
                elif depth > 0 and c == b'"':
                    # a quoted header name inside HEADER.FIELDS: skip to its end
                    end = text.find(b'"', i + 1)
                    if end < 0:
                        raise BadCommand("Unterminated quoted string")
                    i = end
                i += 1
            if depth != 0:
                raise BadCommand("Unbalanced brackets")
            atom = text[start:i]
            if any(b < 0x20 or b == 0x7F for b in atom):
                raise BadCommand("Control character in atom")
            stack[-1].append(Atom(atom))


def as_string(token: Token, what: str = "argument") -> bytes:
    """An astring (atom, quoted string or literal) as bytes; L{BadCommand} otherwise."""
    if isinstance(token, (Atom, String)):
        return bytes(token)
    raise BadCommand(f"Expected a string for {what}")


def as_atom(token: Token, what: str = "argument") -> str:
    if isinstance(token, Atom):
        return token.decode("ascii", "replace").upper()
    raise BadCommand(f"Expected an atom for {what}")


def as_list(token: Token, what: str = "argument") -> list[Token]:
    if isinstance(token, list):
        return token
    raise BadCommand(f"Expected a parenthesized list for {what}")


def expect_count(arguments: Sequence[Token], count: int, name: str) -> None:
    """L{BadCommand} unless the command C{name} has exactly C{count} arguments."""
    if len(arguments) != count:
        raise BadCommand(f"{name} takes {count} argument{'s' if count != 1 else ''}")


def as_number(token: Token, what: str = "number") -> int:
    if isinstance(token, (Atom, String)) and token.isdigit() and len(token) <= 10:
        value = int(token)
        if value <= MAX_NUMBER:
            return value
    raise BadCommand(f"Expected a number for {what}")


# -- formatting ------------------------------------------------------------------

_QUOTABLE = re.compile(rb'^[\x01-\x09\x0b\x0c\x0e-\x7f]*$')


def format_value(value: Any) -> bytes:
    """
    One response value: C{None} is NIL, numbers are digits, an L{Atom} goes
    as is, text is a quoted string when it can be and a literal otherwise,
    lists are parenthesized.
    """
    if value is None:
        return b"NIL"
    if isinstance(value, Atom):
        return bytes(value)
    if isinstance(value, bool):
        raise TypeError("no booleans in IMAP")
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray)):
        if len(value) < 1024 and _QUOTABLE.match(value):
            return b'"' + bytes(value).replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        return b"{%d}\r\n" % len(value) + bytes(value)
    if isinstance(value, (list, tuple)):
        return b"(" + b" ".join(format_value(v) for v in value) + b")"
    raise TypeError(f"cannot format {type(value).__name__} for IMAP")


def format_response(*values: Any) -> bytes:
    return b" ".join(format_value(v) for v in values)


def format_flags(flags: Iterable[str]) -> bytes:
    return b"(" + b" ".join(f.encode("ascii", "replace") for f in sorted(flags)) + b")"


# -- sequence sets -----------------------------------------------------------------

_SEQ_NUMBER = rb"(?:[1-9][0-9]{0,9}|\*)"
_SEQ_SET = re.compile(rb"^" + _SEQ_NUMBER + rb"(?::" + _SEQ_NUMBER + rb")?(?:," + _SEQ_NUMBER + rb"(?::" + _SEQ_NUMBER + rb")?)*$")


def parse_sequence_set(text: bytes) -> list[tuple[int | None, int | None]]:
    """
    Parse a sequence set into ranges, C{None} standing for ``*``. Raises
    L{BadCommand} when it is malformed or a number is out of range. Nothing
    is expanded: L{select_positions} clamps the ranges to the messages that
    exist.
    """
    if not text or len(text) > 1_000_000 or not _SEQ_SET.match(text):
        raise BadCommand("Invalid sequence set")
    ranges: list[tuple[int | None, int | None]] = []
    for part in text.split(b","):
        low_text, _, high_text = part.partition(b":")
        low = None if low_text == b"*" else int(low_text)
        high = low if not high_text else (None if high_text == b"*" else int(high_text))
        for value in (low, high):
            if value is not None and value > MAX_NUMBER:
                raise BadCommand("Sequence number out of range")
        ranges.append((low, high))
    return ranges


def select_positions(
    ranges: list[tuple[int | None, int | None]], uids: Sequence[int], by_uid: bool
) -> list[int]:
    """
    The 0-based positions in C{uids} (sorted ascending) that C{ranges} name,
    ascending and without duplicates. Sequence numbers beyond the mailbox are
    dropped; ``*`` is the last message (its UID for UID commands). Costs
    O(ranges * log n + result), however wide a range is.
    """
    count = len(uids)
    if not count:
        return []
    last = uids[-1] if by_uid else count
    chosen: set[int] = set()
    spans: list[tuple[int, int]] = []
    for low, high in ranges:
        a = last if low is None else low
        b = last if high is None else high
        if a > b:
            a, b = b, a
        if by_uid:
            start, stop = bisect_left(uids, a), bisect_right(uids, b)
        else:
            start, stop = max(a, 1) - 1, min(b, count)
        if start < stop:
            spans.append((start, stop))
    if len(spans) == 1:
        return list(range(*spans[0]))
    for start, stop in spans:
        chosen.update(range(start, stop))
    return sorted(chosen)


def format_uid_set(uids: Iterable[int]) -> bytes:
    """``1:3,7`` from C{[1, 2, 3, 7]} (in the order given, runs collapsed)."""
    out: list[str] = []
    run: list[int] = []
    for uid in uids:
        if run and uid == run[-1] + 1:
            run.append(uid)
            continue
        if run:
            out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [uid]
    if run:
        out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out).encode("ascii")


# -- dates ---------------------------------------------------------------------------

_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_DATE_TIME = re.compile(
    rb"^ ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})$"
)
_DATE = re.compile(rb'^([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})$')


def _month(name: bytes) -> int:
    try:
        return _MONTHS.index(name.decode("ascii").title()) + 1
    except ValueError:
        raise BadCommand("Bad month name") from None


def parse_datetime(text: bytes) -> float:
    """An RFC 3501 ``date-time`` (``17-Jul-1996 02:44:25 -0700``) as a POSIX timestamp."""
    match = _DATE_TIME.match(text)
    if not match:
        raise BadCommand("Bad date-time")
    day, month, year, hh, mm, ss, sign, zh, zm = match.groups()
    try:
        stamp = calendar.timegm((int(year), _month(month), int(day), int(hh), int(mm), int(ss), 0, 0, 0))
        time.gmtime(stamp)
    except (ValueError, OverflowError):
        raise BadCommand("Bad date-time") from None
    offset = (int(zh) * 60 + int(zm)) * 60
    return float(stamp - offset if sign == b"+" else stamp + offset)


def parse_date(text: bytes) -> tuple[int, int, int]:
    """An RFC 3501 ``date`` (``1-Feb-1994``) as (year, month, day)."""
    match = _DATE.match(text)
    if not match:
        raise BadCommand("Bad date")
    day, month, year = match.groups()
    result = (int(year), _month(month), int(day))
    if not 1 <= result[2] <= 31:
        raise BadCommand("Bad date")
    return result


def format_datetime(timestamp: float) -> bytes:
    """The INTERNALDATE form, in UTC: ``"17-Jul-1996 09:44:25 +0000"``."""
    t = time.gmtime(timestamp)
    return b'"%2d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec
    )


# -- mailbox names ---------------------------------------------------------------------


def decode_mailbox(raw: bytes, utf8: bool = False) -> str:
    """
    A mailbox name from the wire (modified UTF-7, RFC 3501 5.1.3; UTF-8
    once the client enabled UTF8=ACCEPT, RFC 6855 3) as the store's folder
    name. Refuses, before anything touches the store, names
    that are not valid modified UTF-7 (or do not round-trip), contain a
    control character or NUL, ``..``, a backslash, or start with ``/`` or
    ``~``, whether written directly or encoded. A trailing delimiter is
    dropped (``CREATE a/`` creates ``a``); ``INBOX`` is case-insensitive.
    """
    if not raw:
        raise BadMailboxName("Empty mailbox name")
    if len(raw) > 1024:
        raise BadMailboxName("Mailbox name too long")
    if utf8:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadMailboxName("Mailbox name is not UTF-8") from None
    else:
        if any(b < 0x20 or b >= 0x7F for b in raw):
            raise BadMailboxName("Mailbox name is not modified UTF-7")
        try:
            name = raw.decode("imap4-utf-7")
        except (UnicodeDecodeError, ValueError):
            raise BadMailboxName("Mailbox name is not modified UTF-7") from None
        if name.encode("imap4-utf-7") != raw:
            raise BadMailboxName("Mailbox name is not in canonical modified UTF-7")
    name = unicodedata.normalize("NFC", name)
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise BadMailboxName("Mailbox name contains a control character")
    if ".." in name or "\\" in name or name.startswith(("/", "~")):
        raise BadMailboxName("Mailbox name contains '..', a backslash, or starts with '/' or '~'")
    if name.endswith(DELIMITER):
        name = name.rstrip(DELIMITER)
        if not name:
            raise BadMailboxName("Empty mailbox name")
    if "//" in name:
        raise BadMailboxName("Mailbox name has an empty level")
    first, sep, rest = name.partition(DELIMITER)
    if first.upper() == "INBOX":
        name = "INBOX" + sep + rest
    return name


def as_mailbox(token: Token, utf8: bool = False) -> str:
    """A mailbox name argument as the store's folder name (L{decode_mailbox})."""
    return decode_mailbox(as_string(token, "mailbox name"), utf8)


def encode_mailbox(name: str, utf8: bool = False) -> bytes:
    """A folder name as the wire has it: modified UTF-7, or UTF-8 after ENABLE UTF8=ACCEPT."""
    return name.encode("utf-8") if utf8 else name.encode("imap4-utf-7")


_QUOTABLE_UTF8 = re.compile(rb'^[^\x00\r\n]*$')


def format_mailbox(name: str, utf8: bool = False) -> bytes:
    """
    A folder name as a response value: a quoted string, which may carry
    UTF-8 only after ENABLE UTF8=ACCEPT (RFC 6855 3); else modified UTF-7.
    """
    if utf8:
        raw = name.encode("utf-8")
        if len(raw) < 1024 and _QUOTABLE_UTF8.match(raw):
            return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return format_value(encode_mailbox(name, utf8))


#: The longest LIST/LSUB reference + pattern accepted, in characters.
MAX_PATTERN = 1024


class MailboxPattern:
    """
    What a LIST reference and pattern select (RFC 3501 6.3.8): ``*``
    matches anything, ``%`` anything but the delimiter.

    Matched by simulating the pattern's automaton with one bit per pattern
    position (bit-parallel, as the shift-and string search does), so one
    name costs a few integer operations per character whatever the pattern:
    a backtracking regular expression took seconds or never finished on
    ``LIST "" "****...x"``, stalling every session of the server.
    """

    def __init__(self, pattern: str) -> None:
        if len(pattern) > MAX_PATTERN:
            raise BadCommand(f"LIST pattern longer than {MAX_PATTERN} characters")
        tokens: list[str] = []
        for char in pattern:
            if char in "*%" and tokens and tokens[-1] in "*%":
                # Adjacent wildcards match what the wider of them matches alone.
                tokens[-1] = "*" if "*" in (char, tokens[-1]) else "%"
            else:
                tokens.append(char)
        self._accept = 1 << len(tokens)
        self._star = self._percent = 0
        self._literal: dict[str, int] = {}
        for position, token in enumerate(tokens):
            bit = 1 << position
            if token == "*":
                self._star |= bit
            elif token == "%":
                self._percent |= bit
            else:
                self._literal[token] = self._literal.get(token, 0) | bit
        self._wild = self._star | self._percent

    def _closure(self, states: int) -> int:
        # A wildcard may match nothing; no two wildcards are adjacent, so one step suffices.
        return states | ((states & self._wild) << 1)

    def match(self, name: str) -> bool:
        states = self._closure(1)
        for char in name:
            stay = self._star if char == DELIMITER else self._wild
            states = self._closure(((states & self._literal.get(char, 0)) << 1) | (states & stay))
            if not states:
                return False
        return bool(states & self._accept)


def mailbox_pattern(reference: str, pattern: str) -> MailboxPattern:
    """
    The matcher for a LIST reference and pattern: the reference is joined to
    the pattern with the delimiter, and a leading ``INBOX`` matches
    case-insensitively.
    """
    if reference and not reference.endswith(DELIMITER) and pattern and not pattern.startswith(DELIMITER):
        reference += DELIMITER
    full = reference + pattern
    if full[:5].upper() == "INBOX" and full[5:6] in ("", DELIMITER):
        full = "INBOX" + full[5:]
    return MailboxPattern(full)
