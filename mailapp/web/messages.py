"""
Reading stored messages for the webmail, and building the ones it sends.

Everything here is plain, blocking code over bytes and files: the web
resources call it on worker threads (``store.run`` or ``deferToThread``) so
that parsing a large message never blocks the reactor.
"""

from __future__ import annotations

import base64
import email.header
import email.policy
import email.utils
import io
import re
import time
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from typing import IO, Iterable

from mailapp.accounts import check_address
from mailapp.errors import AccountError
from mailapp.imap import mime

#: Headers read for a list row: enough for From, Subject, Date and the top-level type.
MAX_HEADER_BYTES = 256 * 1024
#: An inline ``cid:`` image larger than this is not embedded in the page.
MAX_INLINE_IMAGE = 4 * 1024 * 1024

_TOKEN = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}$")


@dataclass(frozen=True)
class Summary:
    """One row of the message list, from the headers alone."""

    uid: int
    sender: str
    subject: str
    date: float
    size: int
    flags: frozenset[str]
    has_attachments: bool


@dataclass(frozen=True)
class Attachment:
    """A downloadable part: C{number} is its position in a depth-first walk of the message."""

    number: int
    filename: str
    content_type: str
    size: int


@dataclass
class MessageView:
    """What the reading page shows of one message."""

    subject: str
    sender: str
    to: str
    cc: str
    bcc: str
    reply_to: str
    date: str
    message_id: str
    references: str
    text: str | None
    html: str | None
    attachments: list[Attachment] = field(default_factory=list)
    #: Content-ID (without <>) -> walk number, for inline images.
    inline: dict[str, int] = field(default_factory=dict)


# -- reading -----------------------------------------------------------------------


def _read_header_block(handle: IO[bytes]) -> bytes:
    lines = []
    total = 0
    for line in handle:
        if line in (b"\r\n", b"\n"):
            break
        lines.append(line)
        total += len(line)
        if total > MAX_HEADER_BYTES:
            break
    return b"".join(lines) + b"\r\n"


#: Header fields longer than this are shown cut, decoded without the parser.
DISPLAY_HEADER_LIMIT = 8 * 1024


def _header(message: Message, name: str) -> str:
    """
    A header as text, RFC 2047 decoded; a malformed one as its raw text,
    never an exception. A field longer than L{DISPLAY_HEADER_LIMIT} is shown
    cut at that length, decoded word by word without the structured-header
    parser, whose time grows with the square of an address list's length
    (a megabyte To: took 103 s to show).
    """
    raw = next((value for key, value in message.raw_items() if key.lower() == name.lower()), None)
    if raw is None:
        return ""
    if len(raw) > DISPLAY_HEADER_LIMIT:
        cut = str(raw)[:DISPLAY_HEADER_LIMIT]
        try:
            text = str(email.header.make_header(email.header.decode_header(cut)))
        except Exception:
            text = cut
        return " ".join(text.split()) + f" … ({len(raw) - DISPLAY_HEADER_LIMIT:,} more characters)"
    try:
        value = message.get(name)
    except Exception:
        value = None
    if value is None:
        return ""
    try:
        text = str(value)
    except Exception:
        text = repr(value)
    return " ".join(text.split())


def display_sender(value: str) -> str:
    """``Name`` if the From header has a display name, else the address."""
    pairs = email.utils.getaddresses([value])
    if pairs:
        name, address = pairs[0]
        return name or address or value
    return value


def _date(message: Message, fallback: float) -> float:
    raw = _header(message, "Date")
    if raw:
        try:
            parsed = email.utils.parsedate_to_datetime(raw)
            if parsed is not None:
                return parsed.timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return fallback


def read_summary(handle: IO[bytes], uid: int, flags: frozenset[str], size: int, internaldate: float) -> Summary:
    """Worker thread: a list row from the header block of the open message C{handle} (closed here)."""
    with handle:
        block = _read_header_block(handle)
    headers = BytesHeaderParser(policy=email.policy.default).parsebytes(block)
    content_type = headers.get_content_type()
    has_attachments = content_type in ("multipart/mixed", "multipart/signed") or (
        not content_type.startswith(("multipart/", "text/")) and content_type != "message/rfc822"
    )
    return Summary(
        uid=uid,
        sender=display_sender(_header(headers, "From")) or "(no sender)",
        subject=_header(headers, "Subject"),
        date=_date(headers, internaldate),
        size=size,
        flags=flags,
        has_attachments=has_attachments,
    )


def parse(handle: IO[bytes]) -> EmailMessage:
    """Worker thread: the whole message (the handle is closed here), as L{parse_bytes} builds it."""
    with handle:
        raw = handle.read()
    return parse_bytes(raw)


def parse_bytes(raw: bytes) -> EmailMessage:
    """
    The message in C{raw} as an C{EmailMessage} tree with the structure
    L{mime.scan} finds, bounded in depth (L{mime.MAX_DEPTH}) and parts
    (L{mime.MAX_PARTS}). The stdlib parser recurses once per nesting level
    and its walk again, so a message of 10,000 nested multiparts raised
    RecursionError on every page that showed it, and 50,000 parts took 25 s.
    Here the stdlib parses only header blocks and single parts (each with
    C{headersonly}, so it never splits anything itself); a part nested too
    deep is shown as the text/plain it holds, and after the last part
    counted the rest of the message is not shown.
    """
    structure = mime.scan(io.BytesIO(raw))
    parser = BytesParser(policy=email.policy.default)
    return _build(parser, raw, structure)  # type: ignore[return-value]


def _build(parser: BytesParser, raw: bytes, part: mime.Part) -> Message:
    if part.children or part.message is not None:
        node = parser.parse(io.BytesIO(raw[part.start : part.body_start]), headersonly=True)
        inner = part.children if part.children else [part.message]
        node.set_payload([_build(parser, raw, child) for child in inner if child is not None])
        return node
    # parse(), not parsebytes(): its text stream reads line ends as LF, as
    # the page and the compose form have always had them.
    node = parser.parse(io.BytesIO(raw[part.start : part.end]), headersonly=True)
    if part.opaque:
        # Left unopened by a bound: what it holds is text, not parts to show.
        del node["Content-Type"]
        node["Content-Type"] = "text/plain"
    return node


def _text_of(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except Exception:
        pass
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload.decode("utf-8", "replace")
    return str(payload or "")


def _bytes_of(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8", "replace")
    return b""


def _body_parts(message: EmailMessage) -> tuple[Message | None, Message | None]:
    def body(kind: str) -> Message | None:
        try:
            part = message.get_body(preferencelist=(kind,))
        except Exception:
            return None
        return part

    plain = body("plain")
    html = body("html")
    if plain is not None and plain.get_content_disposition() == "attachment":
        plain = None
    if html is not None and html.get_content_disposition() == "attachment":
        html = None
    return plain, html


def safe_content_type(part: Message) -> str:
    """The part's type when it is a well-formed C{type/subtype}, else C{application/octet-stream}."""
    value = part.get_content_type()
    return value if _TOKEN.match(value) else "application/octet-stream"


def attachment_name(part: Message, number: int) -> str:
    """A file name safe to show and to offer for saving: no path, no control characters."""
    try:
        name = part.get_filename() or ""
    except Exception:
        name = ""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in '"<>:|?*').strip(" .")
    return name[:200] or f"attachment-{number}"


def view(message: EmailMessage) -> MessageView:
    """Worker thread: headers, the chosen text and HTML bodies, attachments and inline images."""
    plain, html = _body_parts(message)
    result = MessageView(
        subject=_header(message, "Subject"),
        sender=_header(message, "From"),
        to=_header(message, "To"),
        cc=_header(message, "Cc"),
        bcc=_header(message, "Bcc"),
        reply_to=_header(message, "Reply-To"),
        date=_header(message, "Date"),
        message_id=_header(message, "Message-ID"),
        references=_header(message, "References"),
        text=_text_of(plain) if plain is not None else None,
        html=_text_of(html) if html is not None else None,
    )
    for number, part in enumerate(message.walk()):
        if part.is_multipart() or part is plain or part is html:
            continue
        disposition = part.get_content_disposition()
        content_id = (part.get("Content-ID") or "").strip().strip("<>")
        if content_id and disposition != "attachment":
            result.inline[content_id] = number
            continue
        if number == 0 and part.get_content_maintype() == "text" and disposition != "attachment":
            continue
        result.attachments.append(
            Attachment(number, attachment_name(part, number), safe_content_type(part), len(_bytes_of(part)))
        )
    return result


def find_part(message: EmailMessage, number: int) -> Message | None:
    for position, part in enumerate(message.walk()):
        if position == number:
            return None if part.is_multipart() else part
    return None


def inline_images(message: EmailMessage, inline: dict[str, int]) -> dict[str, str]:
    """Content-ID -> ``data:`` URI of each inline image part, so the sandboxed frame loads nothing."""
    result = {}
    for content_id, number in inline.items():
        part = find_part(message, number)
        if part is None or part.get_content_maintype() != "image":
            continue
        data = _bytes_of(part)
        if len(data) > MAX_INLINE_IMAGE:
            continue
        result[content_id] = f"data:{safe_content_type(part)};base64,{base64.b64encode(data).decode('ascii')}"
    return result


def attachments_of(message: EmailMessage) -> list[tuple[str, str, bytes]]:
    """(file name, content type, bytes) of every attachment: what a forward carries along."""
    found = view(message).attachments
    result = []
    for attachment in found:
        part = find_part(message, attachment.number)
        if part is not None:
            result.append((attachment.filename, attachment.content_type, _bytes_of(part)))
    return result


# -- addresses -----------------------------------------------------------------------


class ComposeError(ValueError):
    """Something the user typed cannot be sent; the text says what, for the page."""


def has_line_break(text: str) -> bool:
    return any(ch in text for ch in "\r\n\x00\u2028\u2029\x85")


def parse_addresses(label: str, value: str) -> list[tuple[str, str]]:
    """
    (display name, address) pairs from one field, separated by commas or
    semicolons; raise L{ComposeError} naming the field and the bad address.
    """
    if has_line_break(value):
        raise ComposeError(f"{label}: line breaks are not allowed")
    value = value.replace(";", ",").strip()
    if not value:
        return []
    result = []
    for chunk in _split_list(value):
        pairs = email.utils.getaddresses([chunk])
        if len(pairs) != 1 or not pairs[0][1]:
            raise ComposeError(f"{label}: {chunk.strip()!r} is not an address")
        name, address = pairs[0]
        if address.count("@") != 1:
            raise ComposeError(f"{label}: {address!r} is not a valid address (it needs exactly one @)")
        try:
            address = check_address(address)
        except AccountError as error:
            raise ComposeError(f"{label}: {error}") from None
        result.append((name, address))
    return result


def _split_list(value: str) -> list[str]:
    """Split on commas outside quotes and angle brackets."""
    chunks, current, quoted, angle = [], [], False, False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            angle = True
        elif ch == ">" and not quoted:
            angle = False
        if ch == "," and not quoted and not angle:
            chunks.append("".join(current))
            current = []
        else:
            current.append(ch)
    chunks.append("".join(current))
    return [c for c in chunks if c.strip()]


def format_addresses(pairs: Iterable[tuple[str, str]]) -> str:
    return ", ".join(_format_address(name, address) for name, address in pairs)


def _format_address(name: str, address: str) -> str:
    """One address for a header field; a UTF-8 one (RFC 6532) as it is, which only L{build}'s SMTPUTF8 policy writes."""
    if address.isascii():
        return email.utils.formataddr((name, address))
    try:
        return str(Address(display_name=name, addr_spec=address))
    except (ValueError, IndexError, HeaderParseError):
        return address


# -- composing ------------------------------------------------------------------------


@dataclass
class Draft:
    """A message as typed into the compose form."""

    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    bcc: list[tuple[str, str]]
    subject: str
    body: str
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)
    in_reply_to: str = ""
    references: str = ""

    def recipients(self) -> list[str]:
        seen: list[str] = []
        for _, address in self.to + self.cc + self.bcc:
            if address.lower() not in (s.lower() for s in seen):
                seen.append(address)
        return seen


def _message_id_ok(value: str) -> bool:
    return not has_line_break(value) and len(value) < 2000 and all(ch.isprintable() for ch in value)


def from_header(sender: str, display_name: str = "") -> str:
    """C{sender} with the user's display name (quoted or RFC 2047-encoded as it needs), or bare without one."""
    if not display_name or has_line_break(display_name):
        return sender
    try:
        return str(Address(display_name=display_name, addr_spec=sender))
    except (ValueError, IndexError, HeaderParseError):
        return sender


def build(draft: Draft, sender: str, hostname: str, with_bcc: bool, now: float | None = None, display_name: str = "") -> bytes:
    """
    The message bytes (CRLF line ends). C{with_bcc} only for the sender's own
    copies (Sent, Drafts): the copy handed to the Router never has a Bcc header.
    C{display_name}: the user's, for From (L{from_header}).
    """
    if has_line_break(draft.subject):
        raise ComposeError("Subject: line breaks are not allowed")
    # A UTF-8 address in a header field is written as it is (RFC 6532), and
    # the message then goes out with SMTPUTF8 (the Router flags it).
    addresses = [sender] + [address for _, address in (*draft.to, *draft.cc, *draft.bcc)]
    policy = email.policy.SMTP if all(address.isascii() for address in addresses) else email.policy.SMTPUTF8
    message = EmailMessage(policy=policy)
    message["From"] = from_header(sender, display_name)
    if draft.to:
        message["To"] = format_addresses(draft.to)
    if draft.cc:
        message["Cc"] = format_addresses(draft.cc)
    if with_bcc and draft.bcc:
        message["Bcc"] = format_addresses(draft.bcc)
    message["Subject"] = draft.subject
    message["Date"] = email.utils.formatdate(time.time() if now is None else now, localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain=hostname)
    if draft.in_reply_to and _message_id_ok(draft.in_reply_to):
        message["In-Reply-To"] = draft.in_reply_to
    if draft.references and _message_id_ok(draft.references):
        message["References"] = draft.references
    message["User-Agent"] = "mailapp webmail"
    message.set_content(draft.body.replace("\r\n", "\n"))
    for filename, content_type, data in draft.attachments:
        maintype, _, subtype = content_type.partition("/")
        if not _TOKEN.match(content_type):
            maintype, subtype = "application", "octet-stream"
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes(policy=policy)


def quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.splitlines())


def subject_with(prefix: str, subject: str) -> str:
    return subject if subject.lower().startswith(prefix.lower()) else f"{prefix} {subject}".strip()
