"""
The 8BITMIME downgrade (RFC 6152 3): a message with 8-bit content must not
go as it is to a next hop that does not offer 8BITMIME. Its 8-bit parts
are converted to quoted-printable, which any SMTP server takes, and the
message keeps its meaning: every reader decodes it back to the same text.

Or the message is bounced (5.6.3, "conversion required but not
supported") when a conversion would do harm:

- it carries a DKIM signature (ours or its author's): the signature covers
  the body as it is, and a converted body fails it, which a receiver
  judging by DMARC may take for a forgery. (Re-signing our own after the
  conversion is a possible refinement; it is not done.)
- its header fields are 8-bit (raw UTF-8 without SMTPUTF8): there is no
  conversion of them that keeps every field as it was.

Everything here is blocking (the whole message is parsed): run it off the
reactor.
"""

from __future__ import annotations

import email.generator
import email.parser
import io
import quopri
from email.message import Message
from email.policy import compat32
from typing import Final

__all__ = ["CannotDowngrade", "downgrade", "is_8bit"]

_POLICY: Final = compat32.clone(linesep="\r\n", max_line_length=0)


class CannotDowngrade(Exception):
    """Why an 8-bit message cannot be converted for a peer without 8BITMIME."""


def is_8bit(data: bytes) -> bool:
    return not data.isascii()


def _header_block(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data[: end + 2] if end >= 0 else data


def downgrade(data: bytes) -> bytes:
    """C{data} (CRLF) with every 8-bit part quoted-printable; raises L{CannotDowngrade}."""
    if not is_8bit(data):
        return data
    head = _header_block(data)
    if is_8bit(head):
        raise CannotDowngrade("its header fields are 8-bit")
    if b"\ndkim-signature:" in b"\n" + head.lower():
        raise CannotDowngrade("it is DKIM-signed, and converting its body would break the signature")
    message = email.parser.BytesParser(policy=_POLICY).parsebytes(data)
    _convert(message)
    output = io.BytesIO()
    email.generator.BytesGenerator(output, mangle_from_=False, policy=_POLICY).flatten(message)
    converted = output.getvalue()
    if is_8bit(converted):
        raise CannotDowngrade("part of it could not be converted to 7 bits")
    return converted


def _convert(part: Message) -> None:
    if part.is_multipart():
        for child in part.get_payload():
            if isinstance(child, Message):
                _convert(child)
        if part.get_content_maintype() == "message" and part.get("Content-Transfer-Encoding", "").lower() in ("8bit", "binary"):
            # RFC 2046 5.2.1: an embedded message is never encoded itself; its insides now are 7-bit.
            part.replace_header("Content-Transfer-Encoding", "7bit")
        return
    encoding = part.get("Content-Transfer-Encoding", "").strip().lower()
    if encoding in ("quoted-printable", "base64"):
        return  # 7-bit on the wire already, whatever it decodes to
    # For any other encoding the email package gives back the body's bytes as received.
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes) or not is_8bit(raw):
        return
    body = raw
    encoded = quopri.encodestring(body).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.set_payload(encoded.decode("ascii"))
