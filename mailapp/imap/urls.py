"""
IMAP URLs (RFC 5092) as CATENATE (RFC 4469) takes them: a part of a
message in one of the session's own folders,
``/INBOX;UIDVALIDITY=5/;UID=7/;SECTION=1.2/;PARTIAL=0.100``.

Only the logged-in user's own mailbox is ever read: a URL is resolved
through the session's L{mailapp.interfaces.IMailbox}, and an absolute URL
(``imap://user@host/...``) is refused unless it names that same user on
this server, with no URLAUTH. Whatever is wrong with a URL (syntax, another
user, a folder or message that does not exist, a UIDVALIDITY that changed)
is the same L{BadURL}, answered ``NO [BADURL]``, so that it tells nothing
about anybody else's mail.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from mailapp.errors import BadFolderName, NoSuchFolder, NoSuchMessage
from mailapp.imap import mime
from mailapp.imap.wire import BadMailboxName, decode_mailbox

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["BadURL", "MessageURL", "fetch_url", "parse_url"]


class BadURL(Exception):
    """A URL that does not name a message part of the user's own (RFC 4469 6: ``NO [BADURL url]``)."""

    def __init__(self, url: str, reason: str = "Bad or unknown URL") -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class MessageURL:
    mailbox: bytes
    uidvalidity: int | None
    uid: int
    section: bytes
    partial: tuple[int, int | None] | None


_PATH = re.compile(
    r"^/(?P<mailbox>[^;/?#][^;?#]*?)(?:;UIDVALIDITY=(?P<uidvalidity>[1-9][0-9]{0,9}))?"
    r"/;UID=(?P<uid>[1-9][0-9]{0,9})"
    r"(?:/;SECTION=(?P<section>[^/?#;]+))?"
    r"(?:/;PARTIAL=(?P<start>[0-9]{1,10})(?:\.(?P<length>[1-9][0-9]{0,9}))?)?/?$",
    re.I,
)
_ABSOLUTE = re.compile(r"^imap://(?P<user>[^@/;]+)@(?P<host>[^/]+)(?P<path>/.*)$", re.I)


def parse_url(url: str, account: str, hostname: str) -> MessageURL:
    """A URL of the session's own; L{BadURL} for any other."""
    path = url
    absolute = _ABSOLUTE.match(url)
    if absolute is not None:
        user = unquote_to_bytes(absolute.group("user")).decode("utf-8", "replace")
        host = absolute.group("host").split(":", 1)[0]
        if user.lower() != account.lower() or host.lower() != hostname.lower():
            raise BadURL(url)
        path = absolute.group("path")
    elif url.lower().startswith("imap:"):
        raise BadURL(url)
    match = _PATH.match(path)
    if match is None:
        raise BadURL(url)
    start = match.group("start")
    length = match.group("length")
    return MessageURL(
        unquote_to_bytes(match.group("mailbox")),
        int(match.group("uidvalidity")) if match.group("uidvalidity") else None,
        int(match.group("uid")),
        unquote_to_bytes(match.group("section") or "").upper(),
        (int(start), int(length) if length else None) if start is not None else None,
    )


async def fetch_url(session: IMAPServer, url: str) -> bytes:
    """The bytes a URL names, read from the session's own mailbox; L{BadURL} if there are none."""
    assert session.account is not None
    target = parse_url(url, session.account, session.policy.hostname)
    try:
        name = decode_mailbox(target.mailbox, session.utf8)
    except BadMailboxName:
        try:
            name = decode_mailbox(target.mailbox, True)
        except BadMailboxName:
            raise BadURL(url) from None
    try:
        folder = await session.mailbox.folder(name)
        status = await folder.status()
        if target.uidvalidity is not None and target.uidvalidity != status.uidvalidity:
            raise BadURL(url, "UIDVALIDITY has changed")
        if target.uid not in {m.uid for m in await folder.messages()}:
            raise BadURL(url)
        handle = await folder.openMessage(target.uid)
    except (NoSuchFolder, BadFolderName, NoSuchMessage):
        raise BadURL(url) from None
    try:
        section = _parse_section(target.section)
    except ValueError:
        handle.close()
        raise BadURL(url) from None
    try:
        data: bytes = await session.factory.offThread(_section, handle, section)
    finally:
        handle.close()
    if target.partial is not None:
        start, length = target.partial
        data = data[start : None if length is None else start + length]
    return data


def _parse_section(text: bytes) -> mime.Section:
    """``1.HEADER.FIELDS (FROM TO)`` and the like; ValueError when it is not a section."""
    names: list[bytes] = []
    if b"(" in text:
        text, _, rest = text.partition(b"(")
        names = rest.rstrip(b")").split()
        if not names or not text.endswith(b" "):
            raise ValueError("bad field list")
    return mime.parse_section(text, names)


def _section(handle: IO[bytes], section: mime.Section) -> bytes:
    handle.seek(0)
    message = handle.read()
    where = mime.resolve(mime.scan(io.BytesIO(message)), section)
    if where is None:
        return b""
    if isinstance(where, bytes):
        return where
    return message[where[0] : where[1]]
