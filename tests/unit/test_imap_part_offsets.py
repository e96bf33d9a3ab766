"""
The part offsets kept in the cached structure (L{mailapp.imap.partoffsets}):
every section a FETCH can name is cut from the message by the cached tree
exactly as a fresh scan cuts it (L{mime.resolve}), nested message/rfc822
and broken messages included, and the tree is small.
"""

from __future__ import annotations

import io
import itertools
from typing import Any

import pytest

from mailapp.imap import binary, mime, partoffsets, structurecache
from mailapp.imap.commands import fetch
from tests.hostile_messages import nested_messages, nested_multiparts, sibling_parts
from tests.unit.test_imap_parsing import _rfc3501_example

#: A message/rfc822 inside a message/rfc822, the inner one a multipart.
NESTED = (
    b"From: outer@remote.test\r\nSubject: outer\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n"
    b"--o\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =\r\nsoft\r\n"
    b"--o\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: middle@remote.test\r\nSubject: middle\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: inner@remote.test\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n"
    b"--i\r\nContent-Type: text/plain\r\n\r\ninner text\r\n"
    b"--i\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybGQ=\r\n"
    b"--i--\r\n"
    b"--o\r\nContent-Type: application/x-thing\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
    b"--o--\r\nepilogue\r\n"
)
#: A multipart whose last part never ends: no final boundary, the file simply stops.
UNTERMINATED = (
    b"Subject: cut short\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\npreamble\r\n"
    b"--z\r\nContent-Type: text/plain\r\n\r\none\r\n"
    b"--z\r\nContent-Type: message/rfc822\r\n\r\nSubject: inside\r\nContent-Type: multipart/mixed; boundary=y\r\n\r\n"
    b"--y\r\nContent-Type: text/plain\r\n\r\ndangling"
)
#: One text part, no MIME at all, a header block with a continuation line.
PLAIN = b"From: a@remote.test\r\nSubject: a long\r\n subject\r\nX-Other: 1\r\n\r\nbody line\r\n"
#: A header only: no blank line, no body.
HEADER_ONLY = b"Subject: nothing else\r\nFrom: a@remote.test\r\n"
#: Bare LF line ends, as an IMAP APPEND may store them.
BARE_LF = b"Subject: lf\nContent-Type: multipart/mixed; boundary=l\n\n--l\nContent-Type: text/plain\n\nlf text\n--l--\n"
#: A part whose header a boundary interrupts (no blank line before it).
HEADER_CUT_BY_BOUNDARY = (
    b"Subject: x\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\nContent-Type: text/plain\r\n--q\r\n\r\nsecond\r\n--q--\r\n"
)

MESSAGES = {
    "rfc3501": _rfc3501_example(),
    "nested": NESTED,
    "unterminated": UNTERMINATED,
    "plain": PLAIN,
    "header-only": HEADER_ONLY,
    "bare-lf": BARE_LF,
    "header-cut-by-boundary": HEADER_CUT_BY_BOUNDARY,
    "nested-multiparts": nested_multiparts(8),
    "nested-messages": nested_messages(8),
    "siblings": sibling_parts(30),
}

_SPECIFIERS = ["", "HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT"]
_FIELDS = (b"subject", b"from", b"content-type")


def cached_tree(raw: bytes) -> partoffsets.PartOffsets:
    """The part tree as FETCH gets it: from the blob the structure cache keeps, decoded."""
    blob = structurecache.compute(io.BytesIO(raw))
    assert blob is not None
    decoded = structurecache.decode(blob, structurecache.PARTS)
    assert decoded is not None
    tree = structurecache.parts(decoded)
    assert tree is not None
    return tree


def every_section(depth: int = 4, width: int = 4) -> list[mime.Section]:
    """Every part number up to C{depth} levels of C{width} parts, with every specifier a FETCH may give it."""
    sections = [mime.Section((), spec, _FIELDS if spec.startswith("HEADER.FIELDS") else ()) for spec in _SPECIFIERS if spec != "MIME"]
    for length in range(1, depth + 1):
        for numbers in itertools.product(range(1, width + 1), repeat=length):
            for spec in _SPECIFIERS:
                sections.append(mime.Section(numbers, spec, _FIELDS if spec.startswith("HEADER.FIELDS") else ()))
    return sections


def cut(raw: bytes, tree: Any, section: mime.Section) -> bytes | None:
    """The section's bytes as FETCH sends them from a tree, scanned or cached."""
    found = mime.where(tree, section)
    if found is None:
        return None
    if isinstance(found, tuple):
        return raw[found[0] : found[1]]
    negate = section.specifier.endswith(".NOT")
    if isinstance(found, mime.Part):
        return mime.header_fields(found.header, section.fields, negate)
    return mime.header_fields(raw[found.start : found.header_end], section.fields, negate)


def scanned_section(raw: bytes, section: mime.Section) -> bytes | None:
    where = mime.resolve(mime.scan(io.BytesIO(raw)), section)
    return raw[where[0] : where[1]] if isinstance(where, tuple) else where


def binary_of(raw: bytes, tree: Any, numbers: tuple[int, ...]) -> bytes | str:
    try:
        return fetch._decoded(io.BytesIO(raw), tree, numbers)
    except binary.UnknownEncoding:
        return "UNKNOWN-CTE"


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_section_from_the_cached_offsets_is_the_scanned_sections_bytes(name):
    raw = MESSAGES[name]
    tree = cached_tree(raw)
    for section in every_section():
        assert cut(raw, tree, section) == scanned_section(raw, section), (name, section)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_binary_section_from_the_cached_offsets_decodes_as_from_a_scan(name):
    raw = MESSAGES[name]
    root = mime.scan(io.BytesIO(raw))
    tree = cached_tree(raw)
    for length in range(0, 4):
        for numbers in itertools.product(range(1, 4), repeat=length):
            assert binary_of(raw, tree, numbers) == binary_of(raw, root, numbers), (name, numbers)


def test_sections_inside_nested_message_rfc822_are_numbered_from_the_embedded_message():
    tree = cached_tree(NESTED)

    def section(text: bytes, fields: list[bytes] | None = None) -> bytes | None:
        return cut(NESTED, tree, mime.parse_section(text, fields or []))

    assert section(b"1") == b"caf=C3=A9 =\r\nsoft"
    assert section(b"1.MIME") == b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    assert section(b"2.HEADER").startswith(b"From: middle@remote.test\r\n")
    assert section(b"2.HEADER.FIELDS", [b"SUBJECT"]) == b"Subject: middle\r\n\r\n"
    # 2.1 of a message/rfc822 whose message is itself a message/rfc822 is that whole inner message...
    assert section(b"2.1").startswith(b"From: inner@remote.test\r\n")
    assert section(b"2.1.HEADER.FIELDS", [b"SUBJECT"]) == b"Subject: inner\r\n\r\n"
    # ... and the multipart inside it is numbered from there (the defect of issue 19 was one level off).
    assert section(b"2.1.1") == b"inner text"
    assert section(b"2.1.2") == b"aGVsbG8gd29ybGQ="
    assert section(b"2.1.2.MIME") == b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    assert section(b"2.1.3") is None
    assert binary_of(NESTED, tree, (2, 1, 2)) == b"hello world"
    assert binary_of(NESTED, tree, (1,)) == "café soft".encode()
    assert binary_of(NESTED, tree, (3,)) == "UNKNOWN-CTE"


def test_a_multipart_without_its_final_boundary_ends_where_the_file_ends():
    tree = cached_tree(UNTERMINATED)
    section = mime.parse_section(b"2.1", [])
    assert cut(UNTERMINATED, tree, section) == b"dangling"
    assert cut(UNTERMINATED, tree, mime.parse_section(b"2.1.MIME", [])) == b"Content-Type: text/plain\r\n\r\n"
    assert cut(UNTERMINATED, tree, mime.parse_section(b"TEXT", [])).endswith(b"dangling")  # type: ignore[union-attr]


def test_the_part_tree_of_a_seven_part_message_takes_under_a_hundred_bytes():
    raw = NESTED
    blob = structurecache.compute(io.BytesIO(raw))
    assert blob is not None
    decoded = structurecache.decode(blob)
    assert decoded is not None
    # outer, 1, 2 (message), middle (message), inner (multipart), 2 leaves, 3: eight parts at 12 bytes, and a head
    assert len(decoded[6]) <= 5 + 8 * 12 + len(b"x-uuencode")
    assert len(decoded[6]) < len(blob) // 5


def test_a_cut_structure_keeps_no_blob_so_no_offsets():
    assert structurecache.compute(io.BytesIO(nested_multiparts(mime.MAX_DEPTH + 5))) is None


def test_a_header_too_big_to_keep_whole_keeps_no_offsets_and_the_rest_of_the_blob_still_serves():
    raw = b"Subject: big\r\n" + b"X-Filler: " + b"y" * 80 + b"\r\n" * 1 + (b"X-More: " + b"z" * 90 + b"\r\n") * 3000 + b"\r\nbody\r\n"
    root = mime.scan(io.BytesIO(raw))
    assert partoffsets.encode(root) is None
    blob = structurecache.compute(io.BytesIO(raw))
    assert blob is not None
    decoded = structurecache.decode(blob)
    assert decoded is not None and decoded[6] == b"" and structurecache.parts(decoded) is None
    assert decoded[0].startswith(b"ENVELOPE (NIL \"big\"")


@pytest.mark.parametrize(
    "damage",
    [b"", b"H", b"X\x00\x00\x00\x06" + b"\x00" * 12, b"H\x00\x00\x00\x07" + b"\x00" * 14, b"H\x00\x00\x00\x0c" + b"\x00" * 8 + b"\x00\x05" + b"\x00" * 14],
)
def test_a_part_tree_that_does_not_decode_is_none(damage):
    assert partoffsets.decode(damage) is None


def test_a_part_tree_claiming_more_parts_than_it_holds_is_none():
    good = partoffsets.encode(mime.scan(io.BytesIO(NESTED)))
    assert good is not None and partoffsets.decode(good) is not None
    assert partoffsets.decode(good[:-12]) is None  # the last part cut off: its parent still waits for it
