"""
BINARY (RFC 3516): a MIME part's content with its content-transfer-encoding
undone, for ``FETCH BINARY[section]`` and ``BINARY.SIZE``, and the other
way round for an APPEND whose message came as a ``literal8``: its parts
sent with ``Content-Transfer-Encoding: binary`` are stored base64-encoded,
as Dovecot stores them, so that ``BODY[...]`` never sends a NUL or a bare
line end to a client that did not ask for BINARY, while ``BINARY[...]``
gives the bytes back exactly.

Pure functions on bytes, for worker threads (a part is decoded in memory,
so a FETCH of it holds at most the message's size).
"""

from __future__ import annotations

import base64
import binascii
import io
import re

from mailapp.imap import mime

__all__ = ["UnknownEncoding", "decode", "encode_binary_parts", "encoding_of"]


class UnknownEncoding(Exception):
    """A content-transfer-encoding we cannot undo: answered ``NO [UNKNOWN-CTE]`` (RFC 3516 4.3)."""


_IDENTITY = {"", "7bit", "8bit", "binary"}
_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")


def encoding_of(part: mime.PartTree) -> str:
    """A part's content-transfer-encoding in lower case, scanned or cached alike (L{mime.Part.encoding})."""
    return part.encoding


def decode(body: bytes, encoding: str) -> bytes:
    """C{body} with C{encoding} (lower case, as in the header) undone; L{UnknownEncoding} if we do not know it."""
    if encoding in _IDENTITY:
        return body
    if encoding == "base64":
        return _decode_base64(body)
    if encoding == "quoted-printable":
        return _decode_quoted_printable(body)
    raise UnknownEncoding(encoding)


def _decode_base64(body: bytes) -> bytes:
    # Characters outside the alphabet (line ends, stray spaces) are ignored
    # (RFC 2045 6.8); an incomplete final group is dropped rather than refused.
    data = re.sub(rb"[^A-Za-z0-9+/]", b"", body)
    data = data[: len(data) - len(data) % 4] if len(data) % 4 == 1 else data + b"=" * (-len(data) % 4)
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        return b""


def _decode_quoted_printable(body: bytes) -> bytes:
    """RFC 2045 6.7: trailing blanks dropped, ``=`` at a line's end joins it to the next, ``=XX`` an octet."""
    out = bytearray()
    lines = body.split(b"\n")
    for index, line in enumerate(lines):
        last = index == len(lines) - 1
        if line.endswith(b"\r"):
            line = line[:-1]
        elif last and not line:
            break
        line = line.rstrip(b" \t")
        soft = line.endswith(b"=")
        if soft:
            line = line[:-1]
        out += _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), line)
        if not soft and not last:
            out += b"\r\n"
    return bytes(out)


def encode_binary_parts(message: bytes) -> bytes:
    """
    C{message} with the body of every leaf part whose encoding is
    ``binary`` re-encoded as base64 and its header saying so; everything
    else byte for byte as it came.
    """
    root = mime.scan(io.BytesIO(message))
    leaves: list[mime.Part] = []
    _leaves(root, leaves)
    out = bytearray()
    position = 0
    for part in sorted(leaves, key=lambda p: p.start):
        if encoding_of(part) != "binary":
            continue
        header = message[part.start : part.body_start]
        body = message[part.body_start : part.end]
        out += message[position : part.start]
        out += re.sub(
            rb"(?im)^(content-transfer-encoding[ \t]*:)[ \t]*binary[ \t]*(\r?\n)", rb"\1 base64\2", header, count=1
        )
        out += base64.encodebytes(body).replace(b"\n", b"\r\n")
        position = part.end
    out += message[position:]
    return bytes(out)


def _leaves(part: mime.Part, into: list[mime.Part]) -> None:
    if part.children:
        for child in part.children:
            _leaves(child, into)
    elif part.message is not None:
        _leaves(part.message, into)
    else:
        into.append(part)
