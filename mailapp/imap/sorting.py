"""
SORT (RFC 5256 section 3, RFC 5957's DISPLAYFROM and DISPLAYTO): the sort
criteria, what each message is sorted by, and the base subject of section
2.1 that SUBJECT sorts and both THREAD algorithms group by.

A message's sort keys come from its header block alone (L{SortFields},
made on a worker thread by L{sort_fields}); ARRIVAL and SIZE come from the
index. Strings are compared in L{comparable} form: decomposed and upper-cased,
the stdlib's nearest to i;unicode-casemap (RFC 5051's titlecase), so that
``[`` and ``_`` sort after letters, as Dovecot sorts them. Messages that compare equal on every
criterion stay in sequence order (section 3: REVERSE does not reverse that
last tie-break).
"""

from __future__ import annotations

import email.header
import email.utils
import re
import unicodedata
from dataclasses import dataclass, field
from typing import IO, Any, Sequence

from mailapp.imap import addresses, mime
from mailapp.imap.wire import Atom, BadCommand, Token

__all__ = [
    "SORT_KEYS",
    "SortFields",
    "base_subject",
    "parse_sort_criteria",
    "read_header_block",
    "sort_fields",
    "sort_order",
]

#: RELEVANCY is RFC 6203's (section 4): the search's FUZZY score, highest first.
SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO", "RELEVANCY"})

#: How much of a message is read for its header block: what SEARCH reads for its header keys too.
HEADER_READ = 64 * 1024


@dataclass
class SortFields:
    """What SORT and THREAD need of one message, from its header block and its index entry."""

    internaldate: float
    size: int
    #: The Date field in seconds since the epoch (UTC), or None when it is missing or does not parse.
    sent: float | None = None
    #: The base subject (section 2.1) in L{comparable} form, and whether what was removed marked a reply or forward.
    subject: str = ""
    is_reply: bool = False
    #: The first address's addr-mailbox of From, To, Cc, in L{comparable} form ("" without one).
    from_: str = ""
    to: str = ""
    cc: str = ""
    #: RFC 5957: the first address's display name, or its addr-spec without one, L{comparable}.
    display_from: str = ""
    display_to: str = ""
    message_id: str | None = None
    #: The message IDs of References (or the first of In-Reply-To without it), oldest first.
    references: list[str] = field(default_factory=list)
    #: RFC 6203's score of the message for the search's FUZZY keys (1-100), set by SORT once the search has ranked it.
    relevancy: int = 0

    @property
    def date(self) -> float:
        """The sent date, or the internal date when there is none (section 3, DATE)."""
        return self.internaldate if self.sent is None else self.sent


def parse_sort_criteria(token: Token) -> list[tuple[str, bool]]:
    """The parenthesized sort criteria as (key, reversed) pairs; L{BadCommand} when malformed."""
    if not isinstance(token, list) or not token:
        raise BadCommand("SORT criteria must be a parenthesized list")
    criteria: list[tuple[str, bool]] = []
    reverse = False
    for item in token:
        if not isinstance(item, Atom):
            raise BadCommand("Bad sort criterion")
        name = item.upper().decode("ascii", "replace")
        if name == "REVERSE":
            if reverse:
                raise BadCommand("REVERSE twice")
            reverse = True
            continue
        if name not in SORT_KEYS:
            raise BadCommand(f"Unknown sort criterion {name}")
        criteria.append((name, reverse))
        reverse = False
    if reverse or not criteria:
        raise BadCommand("REVERSE must be followed by a sort key")
    return criteria


def _key(name: str, fields: SortFields) -> Any:
    if name == "ARRIVAL":
        return fields.internaldate
    if name == "DATE":
        return fields.date
    if name == "SIZE":
        return fields.size
    if name == "SUBJECT":
        return fields.subject
    if name == "FROM":
        return fields.from_
    if name == "TO":
        return fields.to
    if name == "CC":
        return fields.cc
    if name == "DISPLAYFROM":
        return fields.display_from
    if name == "RELEVANCY":
        return -fields.relevancy  # the most relevant first (RFC 6203 section 4's example), REVERSE the least
    return fields.display_to


def sort_order(criteria: Sequence[tuple[str, bool]], items: Sequence[tuple[int, SortFields]]) -> list[int]:
    """
    The numbers of C{items} ((number, fields), in sequence order) in the
    order C{criteria} sort them: stable sorts from the last criterion to the
    first, so that ties keep sequence order whatever is reversed.
    """
    ordered = list(items)
    for name, reverse in reversed(criteria):
        # sort(reverse=True) is stable too: equal items keep sequence order.
        ordered.sort(key=lambda item: _key(name, item[1]), reverse=reverse)
    return [number for number, _ in ordered]


# -- base subject (section 2.1) ------------------------------------------------------------------

_WHITESPACE = re.compile(r"[ \t\r\n]+")
_BLOB = r"\[[^\[\]]*\][ ]*"
_REFWD = r"(?:re|fwd?)[ ]*(?:" + _BLOB + r")?:"
_LEADER = re.compile(r"(?:" + _BLOB + r")*" + _REFWD + r"|[ ]+", re.IGNORECASE)
_BLOB_PREFIX = re.compile(_BLOB)
_TRAILER = re.compile(r"(?:\(fwd\)|[ ])$", re.IGNORECASE)


def comparable(text: str) -> str:
    """C{text} as sort keys compare it (RFC 5051, near enough): NFKD, then upper case."""
    return unicodedata.normalize("NFKD", text).upper()


def decode_words(raw: bytes | str) -> str:
    """A header value with its RFC 2047 encoded words decoded (raw 8-bit text read as UTF-8)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:
        return text


def base_subject(subject: bytes | str) -> tuple[str, bool]:
    """
    The base subject of RFC 5256 section 2.1, in L{comparable} form, and whether the
    subject was a reply or forward (a ``Re:``, ``Fwd:``, ``(fwd)`` or
    ``[fwd: ...]`` was removed), which both THREAD algorithms ask.
    """
    # (1) encoded words decoded, every run of white space one space.
    text = _WHITESPACE.sub(" ", decode_words(subject))
    reply = False
    while True:
        # (2) trailers: "(fwd)" and white space, as long as there are any.
        while True:
            match = _TRAILER.search(text)
            if not match:
                break
            reply = reply or match.group() != " "
            text = text[: match.start()]
        # (3)-(5) leaders ("Re:", "[blob] Fwd:", white space), and a leading
        # blob when something is left after it, until neither is there.
        while True:
            changed = False
            match = _LEADER.match(text)
            while match and match.end():
                reply = reply or not match.group().isspace()
                text = text[match.end() :]
                changed = True
                match = _LEADER.match(text)
            match = _BLOB_PREFIX.match(text)
            if match and text[match.end() :].strip():
                text = text[match.end() :]
                changed = True
            if not changed:
                break
        # (6) "[fwd: ...]" around the whole: remove it and start again from (2).
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            reply = True
            continue
        break
    return comparable(text), reply


# -- reading the fields (worker thread) ----------------------------------------------------------

_MESSAGE_ID = re.compile(r"<[^<>]*>")


#: The first read of a message for its header block; most blocks fit, and the rest is read only if not.
_FIRST_READ = 8 * 1024


def read_header_block(handle: IO[bytes]) -> bytes:
    """A message's header block (up to L{HEADER_READ}); closes C{handle}."""
    with handle:
        raw = handle.read(_FIRST_READ)
        end = raw.find(b"\r\n\r\n")
        if end < 0 and len(raw) == _FIRST_READ:
            raw += handle.read(HEADER_READ - len(raw))
            end = raw.find(b"\r\n\r\n")
    if end < 0:
        lf = raw.find(b"\n\n")
        return raw if lf < 0 else raw[: lf + 2]
    return raw[: end + 4]


def _first_address(value: bytes | None) -> addresses.Address | None:
    """The field's first address; a group's start, whose mailbox is the group's name, counts (as for Dovecot)."""
    found = addresses.parse_addresses(value)
    return found[0] if found else None


def _mailbox(address: addresses.Address | None) -> str:
    return "" if address is None or address.mailbox is None else comparable(address.mailbox)


def _display(address: addresses.Address | None) -> str:
    """RFC 5957: the display name, else the addr-spec (a group: its name; no domain: the mailbox alone)."""
    if address is None or address.mailbox is None:
        return ""
    if address.name:
        return comparable(decode_words(address.name))
    if address.domain is None or address.domain == addresses.MISSING_DOMAIN:
        return comparable(address.mailbox)
    return comparable(f"{address.mailbox}@{address.domain}")


def _ids(value: bytes | None) -> list[str]:
    if not value:
        return []
    return [m for m in _MESSAGE_ID.findall(value.decode("utf-8", "replace")) if len(m) > 2 and "@" in m]


#: What each sort criterion, and threading, needs of the header (L{sort_fields}'s C{wanted}).
NEEDS = {
    "DATE": frozenset({"date"}),
    "SUBJECT": frozenset({"subject"}),
    "FROM": frozenset({"from"}),
    "TO": frozenset({"to"}),
    "CC": frozenset({"cc"}),
    "DISPLAYFROM": frozenset({"from"}),
    "DISPLAYTO": frozenset({"to"}),
    "ARRIVAL": frozenset(),
    "SIZE": frozenset(),
    "RELEVANCY": frozenset(),
}
THREADING = frozenset({"date", "subject", "message-id", "references"})
EVERYTHING = frozenset({"date", "subject", "from", "to", "cc", "message-id", "references"})


def sort_fields(block: bytes, internaldate: float, size: int, wanted: frozenset[str] = EVERYTHING) -> SortFields:
    """
    What SORT and THREAD need of a message whose header block is C{block}:
    only the C{wanted} fields are parsed (an address list is the costly part).
    """
    first: dict[str, bytes] = {}
    for name, value in mime.parse_header_block(block):
        first.setdefault(name, value)
    fields = SortFields(internaldate, size)
    _fill(
        fields,
        wanted,
        first.get("date"),
        first.get("subject"),
        _first_address(first.get("from")) if "from" in wanted else None,
        _first_address(first.get("to")) if "to" in wanted else None,
        _first_address(first.get("cc")) if "cc" in wanted else None,
    )
    if "message-id" in wanted:
        own = _ids(first.get("message-id"))
        fields.message_id = own[0] if own else None
    if "references" in wanted:
        fields.references = _ids(first.get("references")) or _ids(first.get("in-reply-to"))[:1]
    return fields


def _fill(
    fields: SortFields,
    wanted: frozenset[str],
    date: bytes | None,
    subject: bytes | None,
    sender: addresses.Address | None,
    recipient: addresses.Address | None,
    copy: addresses.Address | None,
) -> None:
    if date and "date" in wanted:
        try:
            parsed = email.utils.parsedate_tz(date.decode("ascii", "replace"))
            if parsed:
                fields.sent = float(email.utils.mktime_tz(parsed))
        except (TypeError, ValueError, OverflowError):
            fields.sent = None
    if "subject" in wanted:
        fields.subject, fields.is_reply = base_subject(subject or b"")
    if "from" in wanted:
        fields.from_, fields.display_from = _mailbox(sender), _display(sender)
    if "to" in wanted:
        fields.to, fields.display_to = _mailbox(recipient), _display(recipient)
    if "cc" in wanted:
        fields.cc = _mailbox(copy)


# -- from a cached ENVELOPE (mailapp.imap.structurecache) -------------------------------------------

#: The fields an ENVELOPE holds as they are in the header (References is not among them).
ENVELOPE_FIELDS = frozenset({"date", "subject", "from", "to", "cc"})
#: Where each is in an ENVELOPE (RFC 3501 7.4.2).
_ENVELOPE_INDEX = {"date": 0, "subject": 1, "from": 2, "to": 5, "cc": 6}


_TOKEN = re.compile(rb' *(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|\{([0-9]{1,10})\}\r\n|([^ ()]+))', re.S)
_UNESCAPE = re.compile(rb"\\(.)", re.S)


def parse_value(data: bytes, first: int | None = None) -> Any:
    """
    One IMAP response value as L{wire.format_value} writes it (NIL, quoted
    strings, literals, atoms, parenthesized lists): bytes, None and lists.
    Raises ValueError when it does not parse. With C{first}, a list is read
    only as far as its first C{first} elements (what a sort key needs of an
    ENVELOPE).
    """
    stack: list[list[Any]] = [[]]
    position, end = 0, len(data)
    match = _TOKEN.match
    while position < end:
        if first is not None and len(stack) == 2 and len(stack[1]) >= first:
            return stack[1]
        token = match(data, position)
        if token is None:
            if not data[position:].strip(b" "):
                break
            raise ValueError("bad token")
        position = token.end()
        opening, closing, quoted, literal, atom = token.groups()
        if opening is not None:
            stack.append([])
        elif closing is not None:
            if len(stack) < 2:
                raise ValueError("unbalanced")
            done = stack.pop()
            stack[-1].append(done)
        elif quoted is not None:
            stack[-1].append(_UNESCAPE.sub(rb"\1", quoted) if b"\\" in quoted else quoted)
        elif literal is not None:
            length = int(literal)
            stack[-1].append(data[position : position + length])
            position += length
        else:
            stack[-1].append(None if atom.upper() == b"NIL" else atom)
    if len(stack) != 1 or len(stack[0]) != 1:
        raise ValueError("not one value")
    return stack[0][0]


def _envelope_address(value: Any) -> addresses.Address | None:
    if not isinstance(value, list) or not value or not isinstance(value[0], list) or len(value[0]) != 4:
        return None
    name, route, mailbox, host = (None if v is None else bytes(v).decode("utf-8", "surrogateescape") for v in value[0])
    return addresses.Address(name, route, mailbox, host)


def envelope_fields(envelope: bytes, internaldate: float, size: int, wanted: frozenset[str]) -> SortFields | None:
    """
    The C{wanted} fields (of L{ENVELOPE_FIELDS}) from a cached ``ENVELOPE
    (...)`` as FETCH sends it: its date and subject are the raw header
    values and its addresses parsed as L{sort_fields} parses them, so both
    give the same keys. None when it does not parse.
    """
    needed = max((_ENVELOPE_INDEX[name] for name in wanted), default=0) + 1
    try:
        value = parse_value(envelope[len(b"ENVELOPE ") :] if envelope.startswith(b"ENVELOPE ") else envelope, needed)
    except (ValueError, IndexError):
        return None
    if not isinstance(value, list) or len(value) < needed:
        return None
    value = value + [None] * (10 - len(value))
    fields = SortFields(internaldate, size)
    date, subject = value[0], value[1]
    _fill(
        fields,
        wanted,
        date if isinstance(date, bytes) else None,
        subject if isinstance(subject, bytes) else None,
        _envelope_address(value[2]),
        _envelope_address(value[5]),
        _envelope_address(value[6]),
    )
    return fields
