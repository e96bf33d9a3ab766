"""
SEARCH (RFC 3501 6.4.4): every search key, parsed into a small tree and
evaluated against the index first; a message's file is read (on a worker
thread) only when a key needs its headers or body, and only for messages
the index keys have not already ruled out.

Headers are parsed with the stdlib C{email} package, from the header block
alone; FROM, TO, CC and BCC match the addresses L{addresses} parses out of
their fields (names decoded, the address itself, group names), as Dovecot
does, not the raw text. Bodies never are: BODY and TEXT stream each text part of the
structure L{mime.scan} finds (bounded in depth and parts), undoing its
transfer encoding and charset a chunk at a time, so a search holds a few
chunks of a message, never the message. Each message is searched in its
first L{MAX_CONTENT} bytes only.

FUZZY (RFC 6203) may precede any key: within it, every string of a text
key (BODY, TEXT, SUBJECT, FROM, TO, CC, BCC, HEADER) becomes a L{Fuzzy},
matched word by word with L{mailapp.store.fuzzy}'s rule (one typo allowed
in longer words, words in any order) wherever the exact string is matched
now, by the index or by reading; FUZZY before any other key changes
nothing. A string without a word of three letters stays exact.

Twisted's C{Query} builds search strings for the client side; the server side
has nothing reusable, so this is our own. Nesting is bounded (L{MAX_DEPTH}),
so a deeply nested SEARCH gets BAD instead of a recursion error.
"""

from __future__ import annotations

import binascii
import codecs
import email.header
import email.parser
import email.policy
import email.utils
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Collection, Iterator

from mailapp.imap import addresses, mime
from mailapp.store import fuzzy
from mailapp.store.fuzzy import Approximate
from mailapp.imap.wire import Atom, BadCommand, String, Token, as_number, as_string, parse_date, parse_sequence_set

__all__ = [
    "Content",
    "Fuzzy",
    "MAX_CONTENT",
    "MAX_DEPTH",
    "Message",
    "NeedContent",
    "SAVED",
    "body_needles",
    "key_needles",
    "header_content",
    "load_content",
    "matches",
    "object_keys",
    "parse_search",
    "parse_search_fuzzy",
    "read_header_block",
    "uses_modseq",
]

MAX_DEPTH = 32
#: The ranges of ``$`` (RFC 5182's saved result), as a key alone or after UID: what C{in_set} is asked of them.
SAVED = "$"
#: BODY and TEXT look at this many bytes of a message at most (its first 32 MiB, as
#: sent): more than C{limits.max_message_size} allows by default, and a bound on the
#: time one message can take whatever a client APPENDed.
MAX_CONTENT = 32 * 1024 * 1024
#: Bytes of a part read per step: with the decoded text and the carried-over tail,
#: what one message search holds at a time.
CHUNK_SIZE = 64 * 1024

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
_HEADER_KEYS = {"SUBJECT"}
#: Matched against the header's parsed addresses, not its raw text (L{addresses.search_text}).
_ADDRESS_KEYS = {"BCC", "CC", "FROM", "TO"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
_STRING_KEYS = {"BODY", "TEXT"}
#: RFC 8514 4.2: the save date's keys.
_SAVED_KEYS = {"SAVEDBEFORE": "BEFORE", "SAVEDON": "ON", "SAVEDSINCE": "SINCE"}


#: What a text is searched for: an exact case-folded string, or a word found with one edit.
Needle = str | Approximate


@dataclass(frozen=True)
class Fuzzy:
    """
    The string of a text key under FUZZY: C{text} as given (case-folded),
    and the needles a text must contain, every one, for the key to match
    (L{mailapp.store.fuzzy.needles}).
    """

    text: str
    needles: tuple[Needle, ...]

    def found_in(self, values: Collection[str]) -> bool:
        """Whether every needle occurs in one of C{values} (case-folded texts)."""
        return all(any(fuzzy.find(needle, value) is not None for value in values) for needle in self.needles)


def _text_of(text: str, approximate: bool) -> str | Fuzzy:
    """A key's case-folded string, as a L{Fuzzy} under FUZZY when it has a word to match approximately."""
    folded = text.casefold()
    if approximate:
        needles = fuzzy.needles(folded)
        if needles:
            return Fuzzy(folded, needles)
    return folded


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
    #: RFC 7162's SEARCH MODSEQ.
    modseq: int = 0
    #: RFC 8474's EMAILID and THREADID, RFC 8514's save date: loaded only for a search that has
    #: their keys (L{object_keys}); the save date None when the store does not know it.
    emailid: str | None = None
    threadid: str | None = None
    savedate: float | None = None


@dataclass
class Content:
    """
    What the string and SENT* keys need of a message: its decoded headers,
    and which of the search's BODY/TEXT strings its text contains (the text
    itself is never kept). C{cut} says a structure bound was reached.
    """

    headers: dict[str, list[str]]
    header_text: str
    found_in_body: frozenset[Needle]
    sent: tuple[int, int, int] | None
    cut: bool = False
    #: FROM, TO, CC, BCC: each such field's addresses written out normalized, case-folded.
    addresses: dict[str, list[str]] = field(default_factory=dict)
    #: The raw header block the rest was read from (SORT and THREAD take their fields from it too).
    header_block: bytes = b""


def parse_search(tokens: list[Token], max_seq: int) -> tuple[str | None, list[Any]]:
    """
    Parse SEARCH arguments into (charset, keys); the keys are ANDed.
    Raises L{BadCommand} for anything malformed.
    """
    charset, parsed, _ = parse_search_fuzzy(tokens, max_seq)
    return charset, parsed


def parse_search_fuzzy(tokens: list[Token], max_seq: int) -> tuple[str | None, list[Any], bool]:
    """L{parse_search}, and whether a FUZZY key was among them (RFC 6203: RELEVANCY needs one)."""
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
    return charset, keys, parser.fuzzy


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.position = 0
        #: Whether a FUZZY key was parsed (nested parsers report to the outermost).
        self.fuzzy = False

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

    def key(self, depth: int, approximate: bool = False) -> Any:
        """One search key; its strings L{Fuzzy} when C{approximate} (it is within FUZZY)."""
        if depth > MAX_DEPTH:
            raise BadCommand("Search too deeply nested")
        token = self.next("search key")
        if isinstance(token, list):
            inner = _Parser(token)
            keys = []
            while not inner.done():
                keys.append(inner.key(depth + 1, approximate))
            self.fuzzy = self.fuzzy or inner.fuzzy
            if not keys:
                raise BadCommand("Empty search list")
            return ("AND", keys)
        if not isinstance(token, Atom):
            raise BadCommand("Bad search key")
        name = token.upper().decode("ascii", "replace")
        if name == "FUZZY":
            self.fuzzy = True
            return self.key(depth + 1, approximate=True)
        if name == "$":
            return ("UID", SAVED)
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
            uid_set = as_string(self.next("UID set"), "UID set")
            return ("UID", SAVED if uid_set == b"$" else parse_sequence_set(uid_set))
        if name == "MODSEQ":
            # RFC 7162 3.1.5: MODSEQ [entry-name entry-type-req] n; flags' entries all share the message's modseq.
            value = self.next("mod-sequence")
            if isinstance(value, String):
                self.next("entry type")
                value = self.next("mod-sequence")
            if not isinstance(value, (Atom, String)) or not value.isdigit() or len(value) > 20 or int(value) >= 2**63:
                raise BadCommand("Expected a mod-sequence")
            return ("MODSEQ", int(value))
        if name in _DATE_KEYS:
            return (name, parse_date(as_string(self.next("date"), "date")))
        if name in _SAVED_KEYS:
            return ("SAVED", _SAVED_KEYS[name], parse_date(as_string(self.next("date"), "date")))
        if name == "SAVEDATESUPPORTED":
            return ("ALL",)  # RFC 8514 4.2: every folder here keeps save dates
        if name in ("EMAILID", "THREADID"):
            # RFC 8474 6: an objectid; one that cannot be ours matches nothing, it is not an error.
            return (name, as_string(self.next("objectid"), "objectid").decode("ascii", "replace"))
        if name in _HEADER_KEYS:
            return ("HEADER", name.lower(), _text_of(self.text("string"), approximate))
        if name in _ADDRESS_KEYS:
            return ("ADDRESS", name.lower(), _text_of(self.text("string"), approximate))
        if name == "HEADER":
            field = self.text("header name").lower()
            return ("HEADER", field, _text_of(self.text("string"), approximate))
        if name in _STRING_KEYS:
            return (name, _text_of(self.text("string"), approximate))
        if name == "NOT":
            return ("NOT", self.key(depth + 1, approximate))
        if name == "OR":
            return ("OR", self.key(depth + 1, approximate), self.key(depth + 1, approximate))
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
        return bool((key[1] in message.flags) == key[2])
    if kind == "NEW":
        return message.recent and "\\Seen" not in message.flags
    if kind == "OLD":
        return not message.recent
    if kind == "RECENT":
        return message.recent
    if kind == "LARGER":
        return bool(message.size > key[1])
    if kind == "SMALLER":
        return bool(message.size < key[1])
    if kind == "SEQ":
        return in_set(key[1], message, False)
    if kind == "MODSEQ":
        return bool(message.modseq >= key[1])
    if kind == "UID":
        return in_set(key[1], message, True)
    if kind in ("BEFORE", "ON", "SINCE"):
        return _compare_date(kind, _date_of(message.internaldate), key[1])
    if kind == "SAVED":
        # A message whose save date is not known (indexed before there were any, or rebuilt) is
        # searched by its internal date, the best the store knows of when it arrived.
        saved = message.savedate if message.savedate is not None else message.internaldate
        return _compare_date(key[1], _date_of(saved), key[2])
    if kind == "EMAILID":
        return bool(message.emailid == key[1])
    if kind == "THREADID":
        return bool(message.threadid is not None and message.threadid == key[1])
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
    if kind in ("HEADER", "ADDRESS"):
        values = content.headers.get(key[1], []) if kind == "HEADER" else content.addresses.get(key[1], [])
        if isinstance(key[2], Fuzzy):
            return key[2].found_in(values)
        if not key[2]:
            return bool(values)
        return any(key[2] in value for value in values)
    if kind == "BODY":
        if isinstance(key[1], Fuzzy):
            return all(needle in content.found_in_body for needle in key[1].needles)
        return key[1] in content.found_in_body
    if kind == "TEXT":
        if isinstance(key[1], Fuzzy):
            return all(
                needle in content.found_in_body or fuzzy.find(needle, content.header_text) is not None for needle in key[1].needles
            )
        return key[1] in content.header_text or key[1] in content.found_in_body
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


def object_keys(key: Any) -> frozenset[str]:
    """Which of EMAILID, THREADID and SAVED (the SAVED* keys) are anywhere in C{key}: what the search must load."""
    if key[0] in ("EMAILID", "THREADID", "SAVED"):
        return frozenset({key[0]})
    if key[0] == "AND":
        return frozenset().union(*(object_keys(sub) for sub in key[1]))
    if key[0] in ("NOT", "OR"):
        return frozenset().union(*(object_keys(sub) for sub in key[1:]))
    return frozenset()


def uses_modseq(key: Any) -> bool:
    """Whether a MODSEQ key is anywhere in C{key} (the answer then ends with the highest mod-sequence found)."""
    if key[0] == "MODSEQ":
        return True
    if key[0] == "AND":
        return any(uses_modseq(sub) for sub in key[1])
    if key[0] in ("NOT", "OR"):
        return any(uses_modseq(sub) for sub in key[1:])
    return False


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


def key_needles(string: str | Fuzzy) -> tuple[Needle, ...]:
    """What a text must contain for a BODY or TEXT key of C{string} to match: the string, or a L{Fuzzy}'s needles."""
    return string.needles if isinstance(string, Fuzzy) else (string,)


def body_needles(key: Any) -> frozenset[Needle]:
    """The (case-folded) needles of every BODY and TEXT key in C{key}: what a body is searched for."""
    kind = key[0]
    if kind in ("BODY", "TEXT"):
        return frozenset(key_needles(key[1]))
    if kind == "AND":
        return frozenset().union(*(body_needles(sub) for sub in key[1]))
    if kind == "NOT":
        return body_needles(key[1])
    if kind == "OR":
        return body_needles(key[1]) | body_needles(key[2])
    return frozenset()


_HEADER_READ = 64 * 1024


def load_contents(handles: list[IO[bytes] | None], needles: Collection[Needle]) -> list[Content | None]:
    """L{load_content} for many messages in one trip to a worker thread."""
    return [None if handle is None else load_content(handle, needles) for handle in handles]


def load_content(handle: IO[bytes], needles: Collection[Needle] = ()) -> Content:
    """
    Read one message's headers and search its text for C{needles} (worker
    thread); closes C{handle}. Without needles only the header block is
    read: what the header and SENT* keys need, at a fraction of the cost.
    """
    with handle:
        cut = False
        found: frozenset[Needle] = frozenset()
        if needles:
            structure = mime.scan_structure(handle, MAX_CONTENT)
            cut = structure.cut
            block = structure.root.header
            found = _search_text(handle, structure.root, needles)
        else:
            block = read_header_block(handle)
    return header_content(block, found, cut)


def read_header_block(handle: IO[bytes]) -> bytes:
    """The header block a header-only search reads: to the blank line, within the first L{_HEADER_READ} bytes."""
    raw = handle.read(_HEADER_READ)
    end = raw.find(b"\r\n\r\n")
    return raw[: end + 4] if end >= 0 else raw


def header_content(block: bytes, found: frozenset[Needle] = frozenset(), cut: bool = False) -> Content:
    """The L{Content} of a message with header block C{block}: its fields decoded and case-folded, its Date."""
    # As UTF-8 (RFC 6532 header fields, SMTPUTF8 mail): the bytes parser reads
    # 8-bit values as unknown bytes, and SUBJECT "Grüße" never matched them.
    message = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(block.decode("utf-8", "surrogateescape"))
    headers: dict[str, list[str]] = {}
    header_lines = []
    for name, value in message.items():
        decoded = _decode_header(str(value)).replace("\r\n", "").replace("\n", "")
        headers.setdefault(name.lower(), []).append(decoded.casefold())
        header_lines.append(f"{name}: {decoded}")
    sent = None
    date = message.get("date")
    if date:
        try:
            parsed = email.utils.parsedate_tz(str(date))
            if parsed:
                sent = (parsed[0], parsed[1], parsed[2])
        except (TypeError, ValueError):
            sent = None
    fields: dict[str, list[str]] = {}
    for name, raw in mime.parse_header_block(block):
        if name in ("from", "to", "cc", "bcc"):
            fields.setdefault(name, []).append(addresses.search_text(raw).casefold())
    return Content(headers, "\n".join(header_lines).casefold(), found, sent, cut, fields, block)


# -- streaming the text of a message ----------------------------------------------------------


def _text_ranges(root: mime.Part) -> Iterator[tuple[mime.Part, int, int]]:
    """
    (part, start, end) of each stretch of text to search, in order: every
    leaf part of type text/* or message/* (what RFC 3501 calls the body
    text), and, treated as text, a part the structure bounds left unopened
    and the rest of a multipart after its last part when L{mime.MAX_PARTS}
    stopped its split.
    """
    stack = [root]
    while stack:
        part = stack.pop()
        if part.children:
            if part.cut and part.end > part.children[-1].end:
                stack.append(mime.Part(start=part.children[-1].end, body_start=part.children[-1].end, end=part.end))
            stack.extend(reversed(part.children))
        elif part.message is not None:
            stack.append(part.message)
        elif part.content_type[0] in ("text", "message") or part.opaque:
            yield part, part.body_start, part.end


def _search_text(handle: IO[bytes], root: mime.Part, needles: Collection[Needle]) -> frozenset[Needle]:
    """Which C{needles} (case-folded) occur in the text of the message in C{handle}, read a chunk at a time."""
    found: set[Needle] = {needle for needle in needles if not needle}
    wanted = [needle for needle in needles if needle]
    for part, start, end in _text_ranges(root):
        if len(found) == len(needles):
            break
        _search_range(handle, part, start, min(end, MAX_CONTENT), [n for n in wanted if n not in found], found)
    return frozenset(found)


def _search_range(handle: IO[bytes], part: mime.Part, start: int, end: int, wanted: list[Needle], found: set[Needle]) -> None:
    """
    Search bytes C{start} to C{end} of the file, decoded as C{part} says,
    for C{wanted}, adding what is found to C{found}. Case is folded with
    C{str.casefold} (a character at a time, so a chunk folds as the whole
    would); the last C{n - 1} folded characters are carried over to the next
    chunk, so a needle of length C{n} is found across a chunk boundary
    (an L{Approximate} one of C{n} letters matches at most C{n + 1}: one
    more is carried for it).
    """
    if start >= end or not wanted:
        return
    transfer = _transfer_decoder(part.header_value("content-transfer-encoding"))
    # The charset a part declares; none (not the US-ASCII a missing Content-Type
    # implies) reads as UTF-8, as 8-bit mail without MIME headers mostly is.
    declared = part.header_value("content-type") is not None
    text = _text_decoder(dict(part.content_type[2]).get("charset", "") if declared else "")
    overlap = max(len(needle) + (1 if isinstance(needle, Approximate) else 0) for needle in wanted) - 1
    carry = ""
    handle.seek(start)
    remaining = end - start
    while wanted:
        data = handle.read(min(CHUNK_SIZE, remaining)) if remaining > 0 else b""
        remaining -= len(data)
        last = not data
        window = carry + text.decode(transfer.flush() if last else transfer.feed(data), final=last).casefold()
        for needle in [n for n in wanted if fuzzy.find(n, window) is not None]:
            found.add(needle)
            wanted.remove(needle)
        if last:
            return
        carry = window[-overlap:] if overlap else ""


class _Identity:
    """7bit, 8bit, binary, and encodings we do not undo: the bytes as they are."""

    def feed(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


_NOT_BASE64 = bytes(b for b in range(256) if not (chr(b).isascii() and (chr(b).isalnum() or chr(b) in "+/")))


class _Base64:
    """
    Base64 a chunk at a time: characters outside the alphabet are skipped
    (as the stdlib's lenient decoder does), whole quanta decoded, the rest carried.
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        data = self._pending + data.translate(None, _NOT_BASE64)
        usable = len(data) - len(data) % 4
        self._pending = data[usable:]
        return binascii.a2b_base64(data[:usable])

    def flush(self) -> bytes:
        pending, self._pending = self._pending, b""
        if len(pending) < 2:
            return b""
        return binascii.a2b_base64(pending + b"=" * (4 - len(pending)))


class _QuotedPrintable:
    """Quoted-printable a chunk at a time: an ``=`` in the last two bytes (an escape or soft break cut short) waits for the next chunk."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        data = self._pending + data
        cut = data.find(b"=", max(len(data) - 2, 0))
        cut = len(data) if cut < 0 else cut
        self._pending = data[cut:]
        return binascii.a2b_qp(data[:cut])

    def flush(self) -> bytes:
        pending, self._pending = self._pending, b""
        return binascii.a2b_qp(pending)


def _transfer_decoder(encoding: bytes | None) -> _Identity | _Base64 | _QuotedPrintable:
    name = (encoding or b"").strip().lower()
    if name == b"base64":
        return _Base64()
    if name == b"quoted-printable":
        return _QuotedPrintable()
    return _Identity()


def _text_decoder(charset: str) -> codecs.IncrementalDecoder:
    """An incremental decoder for C{charset}, UTF-8 when it is missing, unknown or not a text encoding."""
    name = charset.strip().lower() or "utf-8"
    try:
        b"".decode(name)  # LookupError for an unknown name, or a bytes-to-bytes codec such as base64
        return codecs.getincrementaldecoder(name)("replace")
    except (LookupError, ValueError, TypeError):
        return codecs.getincrementaldecoder("utf-8")("replace")
