"""
SEARCH (RFC 3501 6.4.4): every search key, parsed into a small tree and
evaluated against the index first; a message's file is read (on a worker
thread, parsed with the stdlib C{email} package) only when a key needs its
headers or body, and only for messages the index keys have not already
ruled out.

Twisted's C{Query} builds search strings for the client side; the server side
has nothing reusable, so this is our own. Nesting is bounded (L{MAX_DEPTH}),
so a deeply nested SEARCH gets BAD instead of a recursion error.
"""

from __future__ import annotations

import email
import email.header
import email.parser
import email.policy
import email.utils
import time
from dataclasses import dataclass
from typing import IO, Any, Callable

from mailapp.imap.wire import Atom, BadCommand, Token, as_number, as_string, parse_date, parse_sequence_set

__all__ = ["Content", "MAX_DEPTH", "Message", "NeedContent", "load_content", "matches", "parse_search"]

MAX_DEPTH = 32
MAX_CONTENT = 32 * 1024 * 1024

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS = {"BCC", "CC", "FROM", "SUBJECT", "TO"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
_STRING_KEYS = {"BODY", "TEXT"}


class NeedContent(Exception):
    """A key needs the message's headers or body, which were not loaded."""


@dataclass
class Message:
    """What the index knows about one message, as a search sees it."""

    seq: int
    uid: int
    flags: frozenset[str]
    size: int
    internaldate: float
    recent: bool


@dataclass
class Content:
    """A message's decoded headers and text, for the string and SENT* keys."""

    headers: dict[str, list[str]]
    header_text: str
    body_text: str
    sent: tuple[int, int, int] | None


def parse_search(tokens: list[Token], max_seq: int) -> tuple[str | None, list[Any]]:
    """
    Parse SEARCH arguments into (charset, keys); the keys are ANDed.
    Raises L{BadCommand} for anything malformed.
    """
    position = 0
    charset = None
    if len(tokens) >= 2 and isinstance(tokens[0], Atom) and tokens[0].upper() == b"CHARSET":
        charset = as_string(tokens[1], "charset").decode("ascii", "replace").upper()
        position = 2
    parser = _Parser(tokens[position:])
    keys = []
    while not parser.done():
        keys.append(parser.key(0))
    if not keys:
        raise BadCommand("Missing search key")
    return charset, keys


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.position = 0

    def done(self) -> bool:
        return self.position >= len(self.tokens)

    def next(self, what: str) -> Token:
        if self.done():
            raise BadCommand(f"Missing {what}")
        token = self.tokens[self.position]
        self.position += 1
        return token

    def text(self, what: str) -> str:
        return as_string(self.next(what), what).decode("utf-8", "replace")

    def key(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise BadCommand("Search too deeply nested")
        token = self.next("search key")
        if isinstance(token, list):
            inner = _Parser(token)
            keys = []
            while not inner.done():
                keys.append(inner.key(depth + 1))
            if not keys:
                raise BadCommand("Empty search list")
            return ("AND", keys)
        if not isinstance(token, Atom):
            raise BadCommand("Bad search key")
        name = token.upper().decode("ascii", "replace")
        if name[:1].isdigit() or name[:1] == "*":
            return ("SEQ", parse_sequence_set(bytes(token)))
        if name == "ALL":
            return ("ALL",)
        if name in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[name]
            return ("FLAG", flag, present)
        if name in ("NEW", "OLD", "RECENT"):
            return (name,)
        if name in ("KEYWORD", "UNKEYWORD"):
            flag = as_string(self.next("keyword"), "keyword").decode("ascii", "replace")
            return ("FLAG", flag, name == "KEYWORD")
        if name in ("LARGER", "SMALLER"):
            return (name, as_number(self.next("size"), "size"))
        if name == "UID":
            return ("UID", parse_sequence_set(as_string(self.next("UID set"), "UID set")))
        if name in _DATE_KEYS:
            return (name, parse_date(as_string(self.next("date"), "date")))
        if name in _HEADER_KEYS:
            return ("HEADER", name.lower(), self.text("string").casefold())
        if name == "HEADER":
            field = self.text("header name").lower()
            return ("HEADER", field, self.text("string").casefold())
        if name in _STRING_KEYS:
            return (name, self.text("string").casefold())
        if name == "NOT":
            return ("NOT", self.key(depth + 1))
        if name == "OR":
            return ("OR", self.key(depth + 1), self.key(depth + 1))
        raise BadCommand(f"Unknown search key {name}")


def _date_of(timestamp: float) -> tuple[int, int, int]:
    t = time.gmtime(timestamp)
    return (t.tm_year, t.tm_mon, t.tm_mday)


def matches(
    key: Any,
    message: Message,
    content: Content | None,
    in_set: Callable[[Any, Message, bool], bool],
) -> bool:
    """
    Whether C{message} satisfies C{key}. Raises L{NeedContent} when C{content}
    is C{None} and the key needs it; C{in_set(ranges, message, by_uid)} answers
    sequence-set keys.
    """
    kind = key[0]
    if kind == "AND":
        # Index keys first, so a message they rule out is never read.
        deferred = []
        for sub in key[1]:
            try:
                if not matches(sub, message, content, in_set):
                    return False
            except NeedContent:
                deferred.append(sub)
        return all(matches(sub, message, content, in_set) for sub in deferred)
    if kind == "ALL":
        return True
    if kind == "FLAG":
        return (key[1] in message.flags) == key[2]
    if kind == "NEW":
        return message.recent and "\\Seen" not in message.flags
    if kind == "OLD":
        return not message.recent
    if kind == "RECENT":
        return message.recent
    if kind == "LARGER":
        return message.size > key[1]
    if kind == "SMALLER":
        return message.size < key[1]
    if kind == "SEQ":
        return in_set(key[1], message, False)
    if kind == "UID":
        return in_set(key[1], message, True)
    if kind in ("BEFORE", "ON", "SINCE"):
        return _compare_date(kind, _date_of(message.internaldate), key[1])
    if kind == "NOT":
        return not matches(key[1], message, content, in_set)
    if kind == "OR":
        try:
            if matches(key[1], message, content, in_set):
                return True
        except NeedContent:
            if matches(key[2], message, content, in_set):
                return True
            raise
        return matches(key[2], message, content, in_set)
    if content is None:
        raise NeedContent()
    if kind in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        if content.sent is None:
            return False
        return _compare_date(kind[4:], content.sent, key[1])
    if kind == "HEADER":
        values = content.headers.get(key[1], [])
        if not key[2]:
            return bool(values)
        return any(key[2] in value for value in values)
    if kind == "BODY":
        return key[1] in content.body_text
    if kind == "TEXT":
        return key[1] in content.header_text or key[1] in content.body_text
    raise AssertionError(f"unknown search key {kind}")


def _compare_date(kind: str, have: tuple[int, int, int], want: tuple[int, int, int]) -> bool:
    if kind == "BEFORE":
        return have < want
    if kind == "ON":
        return have == want
    return have >= want


def _decode_header(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:
        return value


def needs_body(key: Any) -> bool:
    """Whether C{key} looks at message text (BODY, TEXT), not only at headers."""
    kind = key[0]
    if kind in ("BODY", "TEXT"):
        return True
    if kind == "AND":
        return any(needs_body(sub) for sub in key[1])
    if kind == "NOT":
        return needs_body(key[1])
    if kind == "OR":
        return needs_body(key[1]) or needs_body(key[2])
    return False


_HEADER_READ = 64 * 1024


def load_contents(handles: list[IO[bytes] | None], with_body: bool) -> list[Content | None]:
    """L{load_content} for many messages in one trip to a worker thread."""
    return [None if handle is None else load_content(handle, with_body) for handle in handles]


def load_content(handle: IO[bytes], with_body: bool = True) -> Content:
    """
    Read and decode one message (worker thread); closes C{handle}. Without
    C{with_body} only the header block is read and parsed: what the header
    and SENT* keys need, at a fraction of the cost.
    """
    with handle:
        if with_body:
            raw = handle.read(MAX_CONTENT)
        else:
            raw = handle.read(_HEADER_READ)
            end = raw.find(b"\r\n\r\n")
            raw = raw[: end + 4] if end >= 0 else raw
    if not with_body:
        message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    else:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
    headers: dict[str, list[str]] = {}
    header_lines = []
    for name, value in message.items():
        decoded = _decode_header(str(value)).replace("\r\n", "").replace("\n", "")
        headers.setdefault(name.lower(), []).append(decoded.casefold())
        header_lines.append(f"{name}: {decoded}")
    bodies = []
    for part in message.walk() if with_body else ():
        if part.is_multipart():
            continue
        if part.get_content_maintype() not in ("text", "message"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            bodies.append(payload.decode(charset, "replace"))
        except LookupError:
            bodies.append(payload.decode("utf-8", "replace"))
    sent = None
    date = message.get("date")
    if date:
        try:
            parsed = email.utils.parsedate_tz(str(date))
            if parsed:
                sent = (parsed[0], parsed[1], parsed[2])
        except (TypeError, ValueError):
            sent = None
    return Content(headers, "\n".join(header_lines).casefold(), "\n".join(bodies).casefold(), sent)

