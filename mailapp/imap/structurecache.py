"""
What FETCH and SEARCH need of a message's structure, computed once and
kept in the index (issue 19): the rendered ENVELOPE, BODYSTRUCTURE and
BODY, and the header fields SEARCH SUBJECT/FROM/TO/CC/BCC and SENT* read.
A second ``FETCH 1:* (ENVELOPE)`` then reads blobs from the index and opens
no message file.

The store keeps the blob opaque (L{mailapp.store.structures}): this module
is the only one that makes or reads it, through
L{mailapp.interfaces.IFolder.cachedStructures} and C{saveStructures}. It is
filled at first use and by the index rebuild (L{CODEC}, registered by the
composition root). A blob whose checksum fails, or that does not decode, is
treated as missing: recomputed and replaced.

Messages whose structure a bound cut (L{mime.MAX_DEPTH}, L{mime.MAX_PARTS})
get no blob, nor do those whose blob would pass the store's size bound:
they are parsed from the file each time, as before.
"""

from __future__ import annotations

import marshal
import struct
import zlib
from typing import IO, Any

from mailapp.imap import mime
from mailapp.imap import search as keys
from mailapp.imap.wire import format_value

__all__ = ["CODEC", "STRUCTURE_VERSION", "CachedStructure", "compute", "content", "decode", "header_keys_only", "search_fields"]

#: The version of what L{compute} renders. Bump it whenever the bytes it
#: returns would change for the same message: a change to
#: L{mime.envelope}, L{mime.body_structure}, L{mime.scan}, L{format_value}
#: or to how L{search.header_content} decodes fields. Every kept blob of
#: another version is then ignored and recomputed at first use; no
#: migration is needed.
STRUCTURE_VERSION = 4  # 4: header fields decoded as UTF-8 (RFC 6532)

#: The header fields kept for SEARCH (HEADER on them; SUBJECT), besides the addresses FROM, TO, CC and BCC match.
CACHED_FIELDS = frozenset({"subject", "from", "to", "cc", "bcc"})

#: Each section's length, then each one's CRC-32: a section is checked only when it is used.
_HEAD = struct.Struct(">IIIIIIII")

#: The sections of a blob, for L{decode}'s C{wanted}.
ENVELOPE, BODYSTRUCTURE, BODY, SEARCH_FIELDS = 1, 2, 4, 8
ALL_SECTIONS = ENVELOPE | BODYSTRUCTURE | BODY | SEARCH_FIELDS


#: One message's blob, decoded (L{decode}): the three FETCH items as sent (name
#: and value), in the order of L{ENVELOPE}, L{BODYSTRUCTURE}, L{BODY}, and the
#: search fields (L{content}); a section L{decode} was not asked for is empty.
#: A plain tuple: one is made for every message of a FETCH.
CachedStructure = tuple[bytes, bytes, bytes, bytes]


def content(fields: bytes) -> keys.Content | None:
    """
    A L{keys.Content} of the search fields, with only L{CACHED_FIELDS},
    the addresses and the Date (no text, no body: see L{header_keys_only});
    None if they do not load.
    """
    try:
        headers, sent, written = marshal.loads(fields)  # noqa: S302 - our own checksummed bytes
    except (ValueError, EOFError, TypeError):
        return None
    return keys.Content(headers, "", frozenset(), sent, addresses=written)


def compute(handle: IO[bytes]) -> bytes | None:
    """The blob of the message in C{handle} (wire form, read from its start), or None when its structure was cut. Blocking."""
    handle.seek(0)
    scanned = mime.scan_structure(handle)
    if scanned.cut:
        return None
    root = scanned.root
    handle.seek(0)
    content = keys.header_content(keys.read_header_block(handle))
    # marshal: loaded at C speed for every message a SEARCH matches (JSON was a quarter of its time).
    fields = ({name: values for name, values in content.headers.items() if name in CACHED_FIELDS}, content.sent, content.addresses)
    sections = (
        b"ENVELOPE " + format_value(mime.envelope(root)),
        b"BODYSTRUCTURE " + format_value(mime.body_structure(root, True)),
        b"BODY " + format_value(mime.body_structure(root, False)),
        marshal.dumps(fields, 4),
    )
    return _HEAD.pack(*(len(x) for x in sections), *(zlib.crc32(x) for x in sections)) + b"".join(sections)


def decode(blob: bytes, wanted: int = ALL_SECTIONS) -> CachedStructure | None:
    """
    The blob's C{wanted} sections (L{ENVELOPE} | L{BODY} ...), or None when
    it is damaged: its lengths do not add up, or a wanted section fails its
    checksum.
    """
    if len(blob) < _HEAD.size:
        return None
    head = _HEAD.unpack_from(blob)
    a, b, c, d = head[:4]
    if 32 + a + b + c + d != len(blob):
        return None
    envelope = body_structure = body = fields = b""
    if wanted & ENVELOPE:
        envelope = blob[32 : 32 + a]
        if zlib.crc32(envelope) != head[4]:
            return None
    b += a
    if wanted & BODYSTRUCTURE:
        body_structure = blob[32 + a : 32 + b]
        if zlib.crc32(body_structure) != head[5]:
            return None
    c += b
    if wanted & BODY:
        body = blob[32 + b : 32 + c]
        if zlib.crc32(body) != head[6]:
            return None
    if wanted & SEARCH_FIELDS:
        fields = blob[32 + c :]
        if zlib.crc32(fields) != head[7]:
            return None
    return (envelope, body_structure, body, fields)


def search_fields(blob: bytes) -> bytes | None:
    """
    The blob's search fields as kept (marshal of the case-folded values),
    checked, or None when it is damaged: a case-folded string absent from
    them is in none of the fields (marshal keeps each string's UTF-8 whole).
    """
    if len(blob) < _HEAD.size:
        return None
    head = _HEAD.unpack_from(blob)
    start = 32 + head[0] + head[1] + head[2]
    if start + head[3] != len(blob):
        return None
    fields = blob[start:]
    return fields if zlib.crc32(fields) == head[7] else None


def header_keys_only(key: Any) -> bool:
    """
    Whether every key of C{key} that needs the message is answered by a
    blob: HEADER on L{CACHED_FIELDS} (SUBJECT), FROM, TO, CC, BCC and SENT*, besides
    the keys the index answers. BODY, TEXT and HEADER on other fields read
    the file.
    """
    kind = key[0]
    if kind == "AND":
        return all(header_keys_only(sub) for sub in key[1])
    if kind == "NOT":
        return header_keys_only(key[1])
    if kind == "OR":
        return header_keys_only(key[1]) and header_keys_only(key[2])
    if kind == "HEADER":
        return bool(key[1] in CACHED_FIELDS)
    # ADDRESS (FROM, TO, CC, BCC): the addresses written out are kept too.
    return kind not in ("BODY", "TEXT")


class _Codec:
    """What the store's rebuild computes blobs with (L{mailapp.store.structures.StructureCodec})."""

    version = STRUCTURE_VERSION

    def compute(self, handle: IO[bytes]) -> bytes | None:
        return compute(handle)


CODEC = _Codec()
