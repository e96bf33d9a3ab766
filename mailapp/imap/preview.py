"""
PREVIEW (RFC 8970) and THREADID (RFC 8474) as the structure cache keeps
them: computed once per message from its file and its MIME structure, on
a worker thread, never again at FETCH.

The preview is the text a reader would see first (RFC 8970 4): the first
part of type text/plain, or failing one before it text/html (reduced to its
text), that is not an attachment, outside any embedded message; its
transfer encoding and charset undone, white space collapsed to single
spaces, and cut to L{MAX_PREVIEW} characters (characters, not octets: a
multi-octet character is never split). A message with no such part has
the empty preview. Only the first L{_READ} octets of the part are read.

The thread identifier is that of the thread's first message as References
(RFC 5322 3.6.4) names it: the first message identifier in References,
else in In-Reply-To, else the message's own Message-ID, hashed to an
objectid. Every reply of a conversation names the same first message, so
its messages share one THREADID in every folder, with nothing stored
beyond the cache; a message with none of the three fields has none (NIL,
which RFC 8474 allows). It is the root that THREAD=REFERENCES finds when
References are complete; unlike THREAD it does not merge threads by
subject.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from typing import IO

from mailapp.imap import binary, mime
from mailapp.store.textextract import html_to_text

__all__ = ["MAX_PREVIEW", "preview", "thread_id"]

#: RFC 8970 3.1: at most 256 characters.
MAX_PREVIEW = 256
#: Octets of the chosen part read (before decoding): plenty for 256 characters of text behind markup.
_READ = 64 * 1024
_MESSAGE_ID = re.compile(rb"<[^<>\s]+>")


def preview(handle: IO[bytes], root: mime.Part) -> str:
    """The preview of the message in C{handle}, whose structure is C{root} (worker thread)."""
    part = _first_text(root)
    if part is None:
        return ""
    handle.seek(part.body_start)
    raw = handle.read(min(part.end - part.body_start, _READ))
    try:
        data = binary.decode(raw, binary.encoding_of(part))
    except binary.UnknownEncoding:
        return ""
    text = data.decode(_charset(part), "replace")
    if part.content_type[1] == "html":
        text = html_to_text(text)
    return " ".join(text.split())[:MAX_PREVIEW]


def _first_text(root: mime.Part) -> mime.Part | None:
    """The part the preview is made of: depth first, text/plain first met, else the first text/html."""
    html: mime.Part | None = None
    stack = [root]
    while stack:
        part = stack.pop()
        if part.children:
            stack.extend(reversed(part.children))
            continue
        main, sub, _ = part.content_type
        if main != "text" or sub not in ("plain", "html") or _is_attachment(part):
            continue
        if sub == "plain":
            return part
        if html is None:
            html = part
    return html


def _is_attachment(part: mime.Part) -> bool:
    disposition = part.header_value("content-disposition") or b""
    return disposition.split(b";", 1)[0].strip().lower() == b"attachment"


def _charset(part: mime.Part) -> str:
    for name, value in part.content_type[2]:
        if name.lower() == "charset":
            try:
                found = codecs.lookup(value.strip()).name
            except LookupError:
                break
            # US-ASCII is also the default a part without a charset is given (RFC 2045 5.2), and 8-bit
            # text under it is UTF-8 in practice (a superset: true ASCII decodes the same).
            return "utf-8" if found == "ascii" else found
    return "utf-8"


def thread_id(root: mime.Part) -> str | None:
    """The THREADID of the message whose top-level structure is C{root} (see the module docstring), or None."""
    for field in ("references", "in-reply-to", "message-id"):
        value = root.header_value(field)
        found = _MESSAGE_ID.search(value) if value else None
        if found is not None:
            return "T" + hashlib.blake2b(found.group(0), digest_size=12).hexdigest()
    return None
