"""
Where each MIME part of a message is, kept in its cached structure
(L{mailapp.imap.structurecache}, issue 19), so that a FETCH of a body
section (``BODY[1]``, ``BODY[1.MIME]``, ``BODY[TEXT]``, ``BODY[HEADER.FIELDS
...]``, ``BINARY[...]``) reads the section's bytes from the file and never
scans the message again: under imaptest's stress the scan of each new
message for its sections was a fifth of the server's time.

For each part, what numbering and cutting a section needs and nothing
more: where its header starts and ends, where its body starts and ends,
its content-transfer-encoding (for BINARY), and the part tree, an
embedded message/rfc822 included (L{PartOffsets}, a L{mime.PartTree}, so
that L{mime.where} numbers it exactly as it numbers a scanned message).
Header fields, parameters and line counts stay out: what needs them
(ENVELOPE, BODYSTRUCTURE) is kept rendered beside.

The encoding (L{encode}) is compact, one preorder list of small
non-negative integers packed at two bytes each (four when a value needs
it), so a small multipart's tree takes tens of bytes in a blob of about
a kilobyte; it is unpacked at C speed (C{struct}) for each section FETCH.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from mailapp.imap import mime

__all__ = ["PartOffsets", "decode", "encode"]

#: The content-transfer-encodings given a number; any other is kept by name after the numbers.
_ENCODINGS = ("", "7bit", "8bit", "binary", "base64", "quoted-printable")
#: Numbers per part: start (from the previous part's start), header length,
#: body start (from the part's start: the blank line is between, or a boundary
#: cut the header short and the body starts before the header's last line
#: end), body length, shape, encoding.
_FIELDS = 6
#: Shapes: a leaf, a message/rfc822 whose message follows, or a multipart of (shape - 2) parts that follow.
_LEAF, _MESSAGE, _MULTIPART = 0, 1, 2
#: Width code, count of numbers.
_HEAD = struct.Struct(">cI")
#: Deeper than this the scanner never opens a part (L{mime.MAX_DEPTH}, multiparts and messages alike);
#: a tree that claims more is damaged.
_MAX_NESTING = 2 * mime.MAX_DEPTH + 2


@dataclass(slots=True)
class PartOffsets:
    """
    One part of a cached tree: C{start} where its header begins,
    C{header_end} where the header's fields end (before the blank line),
    C{body_start} and C{end} as in L{mime.Part}, and C{encoding} its
    content-transfer-encoding in lower case (L{mime.Part.encoding}).
    """

    start: int
    header_end: int
    body_start: int
    end: int
    encoding: str = ""
    children: list[PartOffsets] = field(default_factory=list)
    message: PartOffsets | None = None


def encode(root: mime.Part) -> bytes | None:
    """
    The part tree of a scanned message, or None when it cannot be kept
    exactly (a header over L{mime.MAX_HEADER_BLOCK}, whose scanned block
    was capped; offsets out of order, which only a broken scan could give):
    such a message's sections are found by scanning it, as before.
    """
    numbers: list[int] = []
    names: list[str] = []
    previous = 0
    pending = [root]
    while pending:
        part = pending.pop()
        header_length = len(part.header)
        body_offset = part.body_start - part.start
        if body_offset > mime.MAX_HEADER_BLOCK or body_offset < 0 or part.start < previous or part.end < part.body_start:
            return None
        if part.children:
            shape = _MULTIPART + len(part.children)
            pending.extend(reversed(part.children))
        elif part.message is not None:
            shape = _MESSAGE
            pending.append(part.message)
        else:
            shape = _LEAF
        encoding = part.encoding
        if encoding in _ENCODINGS:
            code = _ENCODINGS.index(encoding)
        else:
            code = len(_ENCODINGS) + len(names)
            names.append(encoding)
        numbers += (part.start - previous, header_length, body_offset, part.end - part.body_start, shape, code)
        previous = part.start
    width = b"H" if max(numbers) < 1 << 16 else b"I"
    if max(numbers) >= 1 << 32:
        return None
    packed = _HEAD.pack(width, len(numbers)) + struct.pack(f">{len(numbers)}{width.decode()}", *numbers)
    return packed + "\n".join(names).encode("utf-8", "surrogateescape")


def decode(data: bytes) -> PartOffsets | None:
    """The tree L{encode} made, or None when C{data} is empty (none was kept) or does not decode."""
    if len(data) < _HEAD.size:
        return None
    try:
        width, count = _HEAD.unpack_from(data)
        if width not in (b"H", b"I") or count % _FIELDS or not count:
            return None
        layout = struct.Struct(f">{count}{width.decode()}")
        numbers = layout.unpack_from(data, _HEAD.size)
        tail = data[_HEAD.size + layout.size :]
        names = tail.decode("utf-8", "surrogateescape").split("\n") if tail else []
        return _build(numbers, names)
    except (struct.error, IndexError, ValueError):
        return None


def _build(numbers: tuple[int, ...], names: list[str]) -> PartOffsets | None:
    """The tree from its preorder numbers; None when they do not make exactly one tree."""
    root: PartOffsets | None = None
    #: The parts still taking parts: (part, how many more, whether they are children or its message).
    open_parts: list[tuple[PartOffsets, int, bool]] = []
    previous = 0
    for index in range(0, len(numbers), _FIELDS):
        start_delta, header_length, body_offset, body_length, shape, code = numbers[index : index + _FIELDS]
        start = previous + start_delta
        previous = start
        header_end = start + header_length
        body_start = start + body_offset
        encoding = _ENCODINGS[code] if code < len(_ENCODINGS) else names[code - len(_ENCODINGS)]
        part = PartOffsets(start, header_end, body_start, body_start + body_length, encoding)
        if open_parts:
            parent, wanted, multipart = open_parts.pop()
            if multipart:
                parent.children.append(part)
            else:
                parent.message = part
            if wanted > 1:
                open_parts.append((parent, wanted - 1, multipart))
        elif root is None:
            root = part
        else:
            return None  # a second root
        if shape == _MESSAGE:
            open_parts.append((part, 1, False))
        elif shape > _MULTIPART:
            open_parts.append((part, shape - _MULTIPART, True))
        if len(open_parts) > _MAX_NESTING:
            return None
    return None if open_parts else root
