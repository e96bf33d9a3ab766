"""
COMPRESS (RFC 4978): DEFLATE both ways from the tagged OK on.

Valid after login only (RFC 4978 5: C{command-auth}), so always after
STARTTLS where there is one: compression sits inside TLS. The stream itself
is the line base's (L{mailapp.linesession.LineSession._startCompression},
L{mailapp.compression}): inflated a step at a time under the reader's
limits, each write burst compressed and flushed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailapp.imap.wire import Atom, BadCommand, Token, expect_count

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["compress"]


def compress(session: IMAPServer, tag: bytes, arguments: list[Token]) -> None:
    expect_count(arguments, 1, "COMPRESS")
    if not isinstance(arguments[0], Atom):
        raise BadCommand("COMPRESS mechanism")
    if session.compressing:
        # RFC 4978 3: NO with COMPRESSIONACTIVE, saying which layer compresses.
        session.tagged(tag, b"NO", b"[COMPRESSIONACTIVE] DEFLATE is active already")
        return
    if arguments[0].upper() != b"DEFLATE":
        session.tagged(tag, b"NO", b"Unsupported compression mechanism")
        return
    session.tagged(tag, b"OK", b"DEFLATE active")
    session.startCompression()
