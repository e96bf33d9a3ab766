"""
The MIME structure of a stored message, as FETCH needs it: byte offsets of
every part's header and body, so that ``BODY[1.2]`` or ``BODY[TEXT]<0.100>``
is sent straight from the file, and ENVELOPE and BODYSTRUCTURE.

The scanner reads the file once, a line at a time, on a worker thread, and
keeps only header blocks (each capped) and offsets: memory stays bounded
whatever the body size. Structure is bounded too, since a sender controls
it: a part nested deeper than L{MAX_DEPTH} (multiparts and embedded
messages together) is not opened but kept whole as text, and after
L{MAX_PARTS} parts the rest of the message is not split (it is the rest of
the enclosing part's body). Every reader of message structure (FETCH,
SEARCH, the webmail) goes through L{scan}, so none of them meets a message
the stdlib parser would recurse on without bound.

It works on the raw bytes, so every size and line
count is the exact octet count on the wire (RFC 3501 7.4.2), which the
stdlib parser (it re-folds and decodes) and Twisted's C{getBodyStructure}
(it lower-cases parameter values and splits parameters on ``;`` inside quotes)
do not give.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, Sequence, TypeVar, cast

from mailapp.imap.addresses import parse_addresses

__all__ = [
    "Part",
    "PartTree",
    "Section",
    "body_structure",
    "envelope",
    "header_fields",
    "locate",
    "parse_section",
    "resolve",
    "scan",
    "where",
]

MAX_HEADER_BLOCK = 256 * 1024
MAX_PARTS = 1000
MAX_DEPTH = 20
_READ_LINE = 64 * 1024


@dataclass
class Part:
    """
    One MIME entity: C{start} is where its header begins, C{body_start}
    where its body begins, C{end} where it ends (the CRLF before a boundary
    belongs to the boundary). A C{message/rfc822} part has the embedded
    message in C{message}; a multipart its C{children}.
    """

    start: int
    header: bytes = b""
    body_start: int = -1
    end: int = -1
    lines: int = 0
    children: list["Part"] = field(default_factory=list)
    message: "Part | None" = None
    boundary: bytes | None = None
    content_type: tuple[str, str, list[tuple[str, str]]] = ("text", "plain", [])
    #: A multipart or embedded message whose inside was not followed (too deep, or
    #: past L{MAX_PARTS}): its body, or the rest of it after its last child, is text.
    cut: bool = False
    _last_line_blank: bool = False
    _header_full: bool = False

    @property
    def body_size(self) -> int:
        return self.end - self.body_start

    @property
    def opaque(self) -> bool:
        """A multipart or embedded message shown as one text part: no parts were found inside it."""
        main, sub, _ = self.content_type
        return not self.children and self.message is None and (
            main == "multipart" or (main, sub) in (("message", "rfc822"), ("message", "global"))
        )

    @property
    def encoding(self) -> str:
        """Its content-transfer-encoding, lower case ("" when it names none): what BINARY undoes."""
        value = self.header_value("content-transfer-encoding") or b""
        return value.decode("ascii", "replace").strip().lower()

    def headers(self) -> list[tuple[str, bytes]]:
        # Parsed once per header block: BODYSTRUCTURE asks each part for several fields.
        cached = self.__dict__.get("_parsed")
        if cached is None or cached[0] is not self.header:
            cached = (self.header, parse_header_block(self.header))
            self.__dict__["_parsed"] = cached
        return cached[1]

    def header_value(self, name: str) -> bytes | None:
        name = name.lower()
        for key, value in self.headers():
            if key == name:
                return value
        return None


def parse_header_block(block: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, unfolded value) for each field, in order."""
    fields: list[tuple[str, bytes]] = []
    for line in re.split(rb"\r?\n", block):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            last_name, last_value = fields[-1]
            fields[-1] = (last_name, last_value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name.strip() or b" " in name.strip():
            continue
        fields.append((name.strip().decode("ascii", "replace").lower(), value.strip()))
    return fields


_TOKEN = rb'[^\s()<>@,;:\\"/\[\]?=]+'
_PARAM = re.compile(rb'\s*;\s*(' + _TOKEN + rb')\s*=\s*(?:"((?:[^"\\]|\\.)*)"|(' + _TOKEN + rb'))', re.S)
_TYPE = re.compile(rb"\s*(" + _TOKEN + rb")\s*/\s*(" + _TOKEN + rb")", re.S)


def parse_content_type(value: bytes | None, default: tuple[str, str]) -> tuple[str, str, list[tuple[str, str]]]:
    if not value:
        return default[0], default[1], ([("charset", "US-ASCII")] if default == ("text", "plain") else [])
    match = _TYPE.match(value)
    if not match:
        return "text", "plain", [("charset", "US-ASCII")]
    main, sub = match.group(1).decode("ascii", "replace").lower(), match.group(2).decode("ascii", "replace").lower()
    params = _parameters(value[match.end() :])
    return main, sub, params


def _parameters(rest: bytes) -> list[tuple[str, str]]:
    params = []
    position = 0
    while True:
        match = _PARAM.match(rest, position)
        if not match:
            break
        position = match.end()
        raw = match.group(2) if match.group(2) is not None else match.group(3)
        if match.group(2) is not None:
            raw = re.sub(rb"\\(.)", rb"\1", raw)
        params.append((match.group(1).decode("ascii", "replace").lower(), raw.decode("utf-8", "surrogateescape")))
    return params


class _Scanner:
    def __init__(self) -> None:
        self.parts = 0
        self.cut = False

    def scan(self, handle: IO[bytes], limit: int | None) -> Part:
        root = Part(start=0)
        stack: list[Part] = [root]
        in_header: dict[int, bool] = {id(root): True}
        offset = 0
        previous_ending = 0  # length of the previous line's ending (CRLF 2, LF 1)
        while limit is None or offset < limit:
            line = handle.readline(_READ_LINE)
            if not line:
                break
            here = offset
            offset += len(line)
            ending = 2 if line.endswith(b"\r\n") else (1 if line.endswith(b"\n") else 0)
            blank = line in (b"\r\n", b"\n")
            if not (line.startswith(b"--") and self._boundary(line, here, previous_ending, stack, in_header)):
                current = stack[-1]
                if in_header.get(id(current)):
                    if blank:
                        self._end_header(current, offset, stack, in_header)
                    elif len(current.header) + len(line) <= MAX_HEADER_BLOCK:
                        current.header += line
            for part in stack:
                if not in_header.get(id(part)) and 0 <= part.body_start <= here:
                    part.lines += 1
                    part._last_line_blank = blank
            previous_ending = ending
        for part in stack:
            if part.body_start < 0:
                part.body_start = offset
            if part.end < 0:
                part.end = offset
        self._finish(root)
        return root

    def _end_header(self, part: Part, offset: int, stack: list[Part], in_header: dict[int, bool]) -> None:
        in_header[id(part)] = False
        part.body_start = offset
        parent = stack[-2] if len(stack) > 1 else None
        default = ("message", "rfc822") if parent is not None and parent.content_type[:2] == ("multipart", "digest") else ("text", "plain")
        part.content_type = parse_content_type(part.header_value("content-type"), default)
        main, sub, params = part.content_type
        container = main == "multipart" or (main, sub) in (("message", "rfc822"), ("message", "global"))
        if container and (len(stack) >= MAX_DEPTH or self.parts >= MAX_PARTS):
            part.cut = self.cut = True
            return
        if main == "multipart":
            boundary = dict(params).get("boundary")
            if boundary:
                part.boundary = boundary.encode("utf-8", "surrogateescape")
        elif (main, sub) == ("message", "rfc822") or (main, sub) == ("message", "global"):
            self.parts += 1
            inner = Part(start=offset)
            part.message = inner
            stack.append(inner)
            in_header[id(inner)] = True

    def _boundary(self, line: bytes, here: int, previous_end: int, stack: list[Part], in_header: dict[int, bool]) -> bool:
        stripped = line.rstrip(b"\r\n").rstrip(b" \t")
        for depth in range(len(stack) - 1, -1, -1):
            owner = stack[depth]
            if owner.boundary is None or in_header.get(id(owner)):
                continue
            if stripped == b"--" + owner.boundary or stripped == b"--" + owner.boundary + b"--":
                # Close everything opened inside the owner.
                end = here - previous_end if here - previous_end >= 0 else here
                for inner in stack[depth + 1 :]:
                    if inner.body_start < 0:
                        inner.body_start = max(inner.start, min(end, here))
                    inner.end = max(inner.body_start, end)
                    if inner._last_line_blank and inner.lines:
                        inner.lines -= 1
                del stack[depth + 1 :]
                if stripped.endswith(owner.boundary + b"--") and not stripped == b"--" + owner.boundary:
                    owner.boundary = None  # the epilogue follows: no more parts
                    return True
                if self.parts >= MAX_PARTS:
                    owner.boundary = None
                    owner.cut = self.cut = True
                    return True
                self.parts += 1
                child = Part(start=here + len(line))
                owner.children.append(child)
                stack.append(child)
                in_header[id(child)] = True
                return True
        return False

    def _finish(self, part: Part) -> None:
        if part.body_start < 0:
            part.body_start = part.end
        if part.content_type == ("text", "plain", []) and not part.header:
            part.content_type = parse_content_type(None, ("text", "plain"))
        for child in part.children:
            self._finish(child)
        if part.message is not None:
            if part.message.end < 0 or part.message.end > part.end:
                part.message.end = part.end
            self._finish(part.message)


@dataclass
class Structure:
    """What L{scan} found: the message's root part, and whether a bound cut its structure."""

    root: Part
    cut: bool


def scan(handle: IO[bytes], limit: int | None = None) -> Part:
    """Read the message in C{handle} once and return its structure (worker thread)."""
    return scan_structure(handle, limit).root


def scan_structure(handle: IO[bytes], limit: int | None = None) -> Structure:
    """
    L{scan}, saying also whether L{MAX_DEPTH} or L{MAX_PARTS} cut the
    structure (for one warning line: it is a hostile or broken message).
    With C{limit} only about the first C{limit} bytes are read (to the end of
    the line that crosses it), and every part ends by then.
    """
    scanner = _Scanner()
    root = scanner.scan(handle, limit)
    return Structure(root, scanner.cut)


# -- ENVELOPE and BODYSTRUCTURE ------------------------------------------------------------


def _nstring(value: bytes | None) -> bytes | None:
    return value if value else None


def _addresses(value: bytes | None) -> list[list[Any]] | None:
    """An ENVELOPE address list: groups, routes and missing parts as Dovecot writes them (L{addresses})."""
    return [address.envelope() for address in parse_addresses(value)] or None


def envelope(part: Part) -> list[Any]:
    """The ENVELOPE of a message part (RFC 3501 7.4.2): raw header values, addresses parsed."""
    fields: dict[str, bytes] = {}
    for name, value in part.headers():
        fields.setdefault(name, value)
    sender_from = _addresses(fields.get("from"))
    return [
        _nstring(fields.get("date")),
        _nstring(fields.get("subject")),
        sender_from,
        _addresses(fields.get("sender")) or sender_from,
        _addresses(fields.get("reply-to")) or sender_from,
        _addresses(fields.get("to")),
        _addresses(fields.get("cc")),
        _addresses(fields.get("bcc")),
        _nstring(fields.get("in-reply-to")),
        _nstring(fields.get("message-id")),
    ]


def _param_list(params: list[tuple[str, str]]) -> list[str] | None:
    if not params:
        return None
    return [item for name, value in params for item in (name.upper(), value)]


def _disposition(part: Part) -> list[Any] | None:
    value = part.header_value("content-disposition")
    if not value:
        return None
    match = re.match(rb"\s*(" + _TOKEN + rb")", value)
    if not match:
        return None
    params = _parameters(value[match.end() :])
    return [match.group(1).decode("ascii", "replace").upper(), _param_list(params)]


def body_structure(part: Part, extended: bool) -> list[Any]:
    """BODYSTRUCTURE (C{extended}) or BODY of a part (RFC 3501 7.4.2)."""
    main, sub, params = part.content_type
    if part.children:
        result: list[Any] = [body_structure(child, extended) for child in part.children]
        result.append(sub.upper())
        if extended:
            result.extend(
                [
                    _param_list([(k, v) for k, v in params]),
                    _disposition(part),
                    _nstring(part.header_value("content-language")),
                    _nstring(part.header_value("content-location")),
                ]
            )
        return result
    if part.opaque:
        # A multipart without parts (no boundary found, or nested too deep) or an
        # embedded message not opened (too deep): a MESSAGE/RFC822 entry needs the
        # inner ENVELOPE and BODYSTRUCTURE (RFC 3501 body-type-msg), so either is
        # described as a text part holding its raw body.
        main, sub, params = "text", "plain", [("charset", "US-ASCII")]
    encoding = part.header_value("content-transfer-encoding")
    result = [
        main.upper(),
        sub.upper(),
        _param_list(params),
        _nstring(part.header_value("content-id")),
        _nstring(part.header_value("content-description")),
        (encoding or b"7BIT").upper(),
        part.body_size,
    ]
    if part.message is not None:
        result.extend([envelope(part.message), body_structure(part.message, extended), part.lines])
    elif main == "text":
        result.append(part.lines)
    if extended:
        result.extend(
            [
                _nstring(part.header_value("content-md5")),
                _disposition(part),
                _nstring(part.header_value("content-language")),
                _nstring(part.header_value("content-location")),
            ]
        )
    return result


# -- sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A parsed ``BODY[...]`` section: part numbers, then an optional text specifier."""

    parts: tuple[int, ...] = ()
    specifier: str = ""  # "", HEADER, TEXT, MIME, HEADER.FIELDS, HEADER.FIELDS.NOT
    fields: tuple[bytes, ...] = ()

    def needs_structure(self) -> bool:
        return bool(self.parts or self.specifier)


def parse_section(text: bytes, field_names: list[bytes]) -> Section:
    """
    C{text} is what is between the brackets up to any field list; raises
    ValueError when it is not a valid section.
    """
    text = text.strip()
    if not text:
        if field_names:
            raise ValueError("field list without HEADER.FIELDS")
        return Section()
    pieces = text.split(b".")
    numbers: list[int] = []
    while pieces and pieces[0].isdigit():
        value = int(pieces.pop(0))
        if value < 1 or len(numbers) >= MAX_DEPTH * 2:
            raise ValueError("bad part number")
        numbers.append(value)
    specifier = ".".join(p.decode("ascii", "replace").upper() for p in pieces)
    if specifier not in ("", "HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        raise ValueError("bad section text")
    if specifier == "MIME" and not numbers:
        raise ValueError("MIME needs a part number")
    if specifier.startswith("HEADER.FIELDS") != bool(field_names):
        raise ValueError("HEADER.FIELDS needs a field list")
    return Section(tuple(numbers), specifier, tuple(f.lower() for f in field_names))


class PartTree(Protocol):
    """
    What numbering a section needs of a part: where its header and body
    are, its transfer encoding and what it holds. A L{Part} just scanned is
    one, and so is the tree a cached structure keeps
    (L{mailapp.imap.partoffsets.PartOffsets}), so that both are numbered by
    the same code (L{locate}, L{where}).
    """

    @property
    def start(self) -> int: ...

    @property
    def body_start(self) -> int: ...

    @property
    def end(self) -> int: ...

    @property
    def encoding(self) -> str: ...

    @property
    def children(self) -> Sequence[PartTree]: ...

    @property
    def message(self) -> PartTree | None: ...


_Tree = TypeVar("_Tree", bound=PartTree)


def _message_part(message: PartTree, number: int) -> PartTree | None:
    """
    Part C{number} of a message (the root, or one embedded in a
    message/rfc822 part): its body's parts if it is a multipart, else the
    message itself as its only part, whose content is its body (RFC 3501
    6.4.5: "non-multipart messages ... only have a part 1").
    """
    if message.children:
        return message.children[number - 1] if number <= len(message.children) else None
    return message if number == 1 else None


def _subpart(node: PartTree, number: int) -> PartTree | None:
    """
    Part C{number} inside part C{node}: a multipart's child, or for a
    message/rfc822 part the embedded message's part (not one level further
    down: ``3.1`` of a message/rfc822 part 3 whose message is itself a
    message/rfc822 is that whole inner message). As Dovecot does, ``.1``
    of a single part is the part itself.
    """
    if node.children:
        return node.children[number - 1] if number <= len(node.children) else None
    if node.message is not None:
        return _message_part(node.message, number)
    return node if number == 1 else None


def locate(root: _Tree, numbers: tuple[int, ...]) -> _Tree | None:
    """The part the section's part C{numbers} name (C{()}: the message itself), or None when there is none."""
    node: PartTree = root
    for depth, number in enumerate(numbers):
        found = _message_part(root, number) if depth == 0 else _subpart(node, number)
        if found is None:
            return None
        node = found
    return cast(_Tree, node)  # a tree's parts are of the tree's own kind


def where(root: _Tree, section: Section) -> tuple[int, int] | _Tree | None:
    """
    Where a section's bytes are: a C{(start, end)} range of the message, or
    for HEADER.FIELDS (.NOT) the part whose header block the fields are
    picked from, or C{None} when the part does not exist.
    """
    node = locate(root, section.parts)
    if node is None:
        return None
    spec = section.specifier
    if spec == "":
        if not section.parts:
            return (0, root.end)
        return (node.body_start, node.end)
    if spec == "MIME":
        return (node.start, node.body_start)
    target = cast(_Tree, node.message) if (section.parts and node.message is not None) else node
    if spec == "HEADER":
        return (target.start, target.body_start)
    if spec == "TEXT":
        return (target.body_start, target.end)
    return target


def resolve(root: Part, section: Section) -> tuple[int, int] | bytes | None:
    """
    Where a section's bytes are in a scanned message: a C{(start, end)}
    range of the file, or the bytes themselves (HEADER.FIELDS), or C{None}
    when the part does not exist.
    """
    found = where(root, section)
    if found is None or isinstance(found, tuple):
        return found
    return header_fields(found.header, section.fields, section.specifier.endswith(".NOT"))


def header_fields(block: bytes, names: tuple[bytes, ...], negate: bool) -> bytes:
    """The fields of a header block named in C{names} (or not, with C{negate}), then a blank line."""
    wanted = {n.lower() for n in names}
    out: list[bytes] = []
    keep = False
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        keep = (name in wanted) != negate
        if keep:
            out.append(line if line.endswith(b"\n") else line + b"\r\n")
    return b"".join(out) + b"\r\n"
