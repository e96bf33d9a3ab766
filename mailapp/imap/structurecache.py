"""
What FETCH and SEARCH need of a message's structure, computed once and
kept in the index (issue 19): the rendered ENVELOPE, BODYSTRUCTURE and
BODY, the header fields SEARCH SUBJECT/FROM/TO/CC/BCC and SENT* read,
the rendered PREVIEW (RFC 8970) and THREADID (RFC 8474: L{preview}), and
where each MIME part is (L{partoffsets}). A second ``FETCH 1:* (ENVELOPE)``
then reads blobs from the index and opens no message file, and a FETCH of
a body section reads the section's bytes without scanning the message.

The store keeps the blob opaque (L{mailapp.store.structures}): this module
is the only one that makes or reads it, through
L{mailapp.interfaces.IFolder.cachedStructures} and C{saveStructures}. It is
filled at first use and by the index rebuild (L{CODEC}, registered by the
composition root), and by an IMAP APPEND, which has the message's bytes
in memory (L{mailapp.imap.commands.append}). A blob whose checksum fails,
or that does not decode, is treated as missing: recomputed and replaced.

Messages whose structure a bound cut (L{mime.MAX_DEPTH}, L{mime.MAX_PARTS})
get no blob, nor do those whose blob would pass the store's size bound:
they are parsed from the file each time, as before.
"""

from __future__ import annotations

import marshal
import struct
import zlib
from typing import IO, Any

from mailapp.imap import mime, partoffsets, preview
from mailapp.imap import search as keys
from mailapp.imap.wire import format_value

__all__ = [
    "CODEC",
    "PARTS",
    "STRUCTURE_VERSION",
    "CachedStructure",
    "compute",
    "content",
    "decode",
    "header_keys_only",
    "parts",
    "preview_item",
    "search_fields",
    "thread_item",
]

#: The version of what L{compute} renders. Bump it whenever the bytes it
#: returns would change for the same message: a change to
#: L{mime.envelope}, L{mime.body_structure}, L{mime.scan}, L{format_value}
#: or to how L{search.header_content} decodes fields. Every kept blob of
#: another version is then ignored and recomputed at first use; no
#: migration is needed.
STRUCTURE_VERSION = 6  # 4: header fields decoded as UTF-8 (RFC 6532); 5: PREVIEW and THREADID; 6: part offsets

#: The header fields kept for SEARCH (HEADER on them; SUBJECT), besides the addresses FROM, TO, CC and BCC match.
CACHED_FIELDS = frozenset({"subject", "from", "to", "cc", "bcc"})

#: The sections of a blob, for L{decode}'s C{wanted}, in the blob's order.
ENVELOPE, BODYSTRUCTURE, BODY, SEARCH_FIELDS, PREVIEW, THREADID, PARTS = 1, 2, 4, 8, 16, 32, 64
_SECTION_COUNT = 7
ALL_SECTIONS = (1 << _SECTION_COUNT) - 1

#: Each section's length, then each one's CRC-32: a section is checked only when it is used.
_HEAD = struct.Struct(">" + "I" * 2 * _SECTION_COUNT)


#: One message's blob, decoded (L{decode}): the three FETCH items as sent (name
#: and value), in the order of L{ENVELOPE}, L{BODYSTRUCTURE}, L{BODY}, the
#: search fields (L{content}), then the PREVIEW and THREADID items as sent,
#: then the part tree (L{partoffsets.encode}; empty when it could not be
#: kept); a section L{decode} was not asked for is empty.
#: A plain tuple: one is made for every message of a FETCH.
CachedStructure = tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes]


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


def compute(handle: IO[bytes], scanned: mime.Structure | None = None) -> bytes | None:
    """
    The blob of the message in C{handle} (wire form, read from its start),
    or None when its structure was cut; C{scanned}: its structure, when
    already scanned. Blocking.
    """
    if scanned is None:
        handle.seek(0)
        scanned = mime.scan_structure(handle)
    if scanned.cut:
        return None
    root = scanned.root
    handle.seek(0)
    content = keys.header_content(keys.read_header_block(handle))
    # marshal: loaded at C speed for every message a SEARCH matches (JSON was a quarter of its time).
    fields = ({name: values for name, values in content.headers.items() if name in CACHED_FIELDS}, content.sent, content.addresses)
    thread = preview.thread_id(root)
    sections = (
        b"ENVELOPE " + format_value(mime.envelope(root)),
        b"BODYSTRUCTURE " + format_value(mime.body_structure(root, True)),
        b"BODY " + format_value(mime.body_structure(root, False)),
        marshal.dumps(fields, 4),
        preview_item(preview.preview(handle, root)),
        thread_item(thread),
        partoffsets.encode(root) or b"",
    )
    return _HEAD.pack(*(len(x) for x in sections), *(zlib.crc32(x) for x in sections)) + b"".join(sections)


def preview_item(text: str) -> bytes:
    """The PREVIEW item as sent (RFC 8970 3.1: a string, a literal when it is not plain ASCII)."""
    return b"PREVIEW " + format_value(text)


def thread_item(thread: str | None) -> bytes:
    """The THREADID item as sent (RFC 8474 5.2: parenthesized, or NIL)."""
    return b"THREADID " + (b"(" + thread.encode("ascii") + b")" if thread is not None else b"NIL")


def parts(cached: CachedStructure) -> partoffsets.PartOffsets | None:
    """The part tree of a structure decoded with L{PARTS}, or None when none was kept (scan the message)."""
    return partoffsets.decode(cached[6])


def decode(blob: bytes, wanted: int = ALL_SECTIONS) -> CachedStructure | None:
    """
    The blob's C{wanted} sections (L{ENVELOPE} | L{BODY} ...), or None when
    it is damaged: its lengths do not add up, or a wanted section fails its
    checksum.
    """
    if len(blob) < _HEAD.size:
        return None
    head = _HEAD.unpack_from(blob)
    if _HEAD.size + sum(head[:_SECTION_COUNT]) != len(blob):
        return None
    sections = []
    start = _HEAD.size
    for number in range(_SECTION_COUNT):
        end = start + head[number]
        if wanted & (1 << number):
            section = blob[start:end]
            if zlib.crc32(section) != head[_SECTION_COUNT + number]:
                return None
            sections.append(section)
        else:
            sections.append(b"")
        start = end
    return (sections[0], sections[1], sections[2], sections[3], sections[4], sections[5], sections[6])


def search_fields(blob: bytes) -> bytes | None:
    """
    The blob's search fields as kept (marshal of the case-folded values),
    checked, or None when it is damaged: a case-folded string absent from
    them is in none of the fields (marshal keeps each string's UTF-8 whole).
    """
    if len(blob) < _HEAD.size:
        return None
    head = _HEAD.unpack_from(blob)
    if _HEAD.size + sum(head[:_SECTION_COUNT]) != len(blob):
        return None
    start = _HEAD.size + head[0] + head[1] + head[2]
    fields = blob[start : start + head[3]]
    return fields if zlib.crc32(fields) == head[_SECTION_COUNT + 3] else None


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
