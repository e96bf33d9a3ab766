"""
The searchable text of a stored message, for the full-text index
(L{mailapp.store.fulltext}): protocol-neutral, stdlib and nh3 only, so
that the store never imports a protocol to fill it.

What is kept mirrors what IMAP's SEARCH scan reads (RFC 3501 6.4.4), so
that the index can answer BODY and TEXT exactly, not only narrow them:

- C{header}: every header field of the message, RFC 2047 decoded, one
  ``Name: value`` line each (what SEARCH TEXT looks at besides the body);
- C{subject}, C{sender}, C{recipients}: Subject, From, To and Cc decoded
  (what people search in the webmail);
- C{plain}: every leaf part of type text/* (HTML excepted) or message/*,
  its transfer encoding (base64, quoted-printable) and charset undone;
- C{markup}: each text/html part decoded the same way, tags and all (what
  the IMAP scan searches);
- C{html_text}: the same parts reduced to their text with nh3 (tags,
  scripts and styles dropped, entities decoded): what a reader sees.

Attachments count only when they are text/* (a .txt, a .csv, a patch);
the text of PDFs or office files is not extracted (no small, well-kept
extractor for them). Everything is case-folded (C{str.casefold}), as SEARCH
folds both sides, and parts are joined by U+001F (unit separator), which no search string
contains (not NUL: FTS5 ends a text there), so a match never spans two parts.

C{exact} is False when the message is beyond the bounds the IMAP scan
keeps (its size, its nesting, its number of parts) or could not be parsed:
such a message is searched by reading its file, as before.
"""

from __future__ import annotations

import binascii
import email.header
import email.message
import email.parser
import email.policy
import html
from dataclasses import dataclass
from typing import IO

import nh3

__all__ = ["MAX_TEXT_BYTES", "MessageText", "extract", "html_to_text"]

#: A message larger than this (as sent) is not indexed: it is searched by reading
#: its file. Most mail is far smaller; the bound keeps one message's indexing short.
MAX_TEXT_BYTES = 8 * 1024 * 1024
#: The IMAP scan's structure bounds (L{mailapp.imap.mime}: MAX_PARTS, MAX_DEPTH):
#: a message beyond them is not indexed exactly.
MAX_PARTS = 1000
MAX_DEPTH = 20
#: What the header-only read takes, as the IMAP scan's header block does.
_HEADER_READ = 64 * 1024
_SEPARATOR = "\x1f"

_NOT_BASE64 = bytes(b for b in range(256) if not (chr(b).isascii() and (chr(b).isalnum() or chr(b) in "+/")))


@dataclass(frozen=True)
class MessageText:
    """One message's searchable text, every field case-folded (see the module docstring)."""

    header: str = ""
    subject: str = ""
    sender: str = ""
    recipients: str = ""
    plain: str = ""
    markup: str = ""
    html_text: str = ""
    exact: bool = False


def html_to_text(markup: str) -> str:
    """The text of an HTML part: every tag dropped, with what script, style, head and title hold, entities decoded."""
    return html.unescape(nh3.clean(markup, tags=set(), clean_content_tags={"script", "style", "head", "title"}))


def extract(handle: IO[bytes]) -> MessageText:
    """
    The text of the message read from C{handle} (wire form, at its start).
    Never raises for a malformed message: what cannot be read is left out
    and the result marked inexact.
    """
    data = handle.read(MAX_TEXT_BYTES + 1)
    if len(data) > MAX_TEXT_BYTES or (len(data) > _HEADER_READ and data.find(b"\r\n\r\n", 0, _HEADER_READ) < 0):
        # Too large, or a header block longer than the part of it read here.
        return MessageText(*_headers(data), exact=False)
    try:
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(data)
        plain: list[str] = []
        markup: list[str] = []
        shown: list[str] = []
        exact = _walk(message, 0, [0], plain, markup, shown)
    except Exception:  # noqa: BLE001 - a message another tool broke is searched by reading it
        return MessageText(*_headers(data), exact=False)
    return MessageText(
        *_headers(data),
        plain=_SEPARATOR.join(plain).casefold(),
        markup=_SEPARATOR.join(markup).casefold(),
        html_text=_SEPARATOR.join(shown).casefold(),
        exact=exact,
    )


def _walk(part: email.message.Message, depth: int, count: list[int], plain: list[str], markup: list[str], shown: list[str]) -> bool:
    """Collect the text of C{part}'s leaves; False when a bound was reached (the rest is not collected)."""
    count[0] += 1
    if count[0] > MAX_PARTS or depth > MAX_DEPTH:
        return False
    payload = part.get_payload()
    if isinstance(payload, list):
        if part.get_content_maintype() == "message" and part.get_content_type() != "message/rfc822":
            # message/delivery-status and the like: the scan reads them as text, the parser splits them.
            return False
        return all(_walk(child, depth + 1, count, plain, markup, shown) for child in payload if isinstance(child, email.message.Message))
    maintype = part.get_content_maintype()
    if maintype not in ("text", "message"):
        return True
    # The bytes as received: get_payload() would decode 8-bit text as ASCII with
    # replacement characters, and its base64 is stricter than the scan's.
    kept = getattr(part, "_payload", payload)
    raw = kept.encode("ascii", "surrogateescape") if isinstance(kept, str) else b""
    text = _decode_charset(_decode_transfer(raw, part.get("content-transfer-encoding")), part)
    if part.get_content_type() == "text/html":
        markup.append(text)
        shown.append(html_to_text(text))
    else:
        plain.append(text)
    return True


def _decode_transfer(raw: bytes, encoding: str | None) -> bytes:
    """Undo base64 or quoted-printable as the IMAP scan does (lenient: stray characters skipped); anything else as it is."""
    name = str(encoding or "").strip().lower()
    if name == "base64":
        cleaned = raw.translate(None, _NOT_BASE64)
        whole = len(cleaned) - len(cleaned) % 4
        decoded = binascii.a2b_base64(cleaned[:whole])
        rest = cleaned[whole:]
        if len(rest) >= 2:
            decoded += binascii.a2b_base64(rest + b"=" * (4 - len(rest)))
        return decoded
    if name == "quoted-printable":
        return binascii.a2b_qp(raw)
    return raw


def _decode_charset(data: bytes, part: email.message.Message) -> str:
    """The part's declared charset (UTF-8 when none, unknown or not a text encoding), bad bytes replaced."""
    charset = str(part.get_param("charset", "") or "").strip().lower() if part.get("content-type") is not None else ""
    name = charset or "utf-8"
    try:
        return data.decode(name, "replace")
    except (LookupError, ValueError, TypeError):
        return data.decode("utf-8", "replace")


def _header_block(data: bytes) -> bytes:
    raw = data[:_HEADER_READ]
    end = raw.find(b"\r\n\r\n")
    return raw[: end + 4] if end >= 0 else raw


def _decode_header(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # noqa: BLE001 - a malformed encoded word is searched as written
        return value


def _headers(data: bytes) -> tuple[str, str, str, str]:
    """(every field as ``Name: value`` lines, Subject, From, To and Cc), decoded and case-folded, as SEARCH reads them."""
    message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(_header_block(data))
    lines = []
    fields: dict[str, list[str]] = {"subject": [], "from": [], "to": [], "cc": []}
    for name, value in message.items():
        decoded = _decode_header(str(value)).replace("\r\n", "").replace("\n", "")
        lines.append(f"{name}: {decoded}")
        if name.lower() in fields:
            fields[name.lower()].append(decoded)
    return (
        "\n".join(lines).casefold(),
        "\n".join(fields["subject"]).casefold(),
        "\n".join(fields["from"]).casefold(),
        "\n".join(fields["to"] + fields["cc"]).casefold(),
    )
