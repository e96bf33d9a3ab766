"""
APPEND (RFC 3501 6.3.11, with RFC 4315's APPENDUID and RFC 7889's
APPENDLIMIT): a message from the client into a folder.

The message never sits in memory: the reader streams its literal into the
store's spool writer as it arrives (refusing it unread when it is too big),
so here it is made durable, checked against the quota, and added to the
folder in one store change. A spool file is removed on every path that does
not add it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Coroutine

from mailapp.errors import KeywordLimit
from mailapp.imap.commands.mailboxes import open_folder
from mailapp.imap.flags import RECENT, parse_flag_list
from mailapp.imap.reader import discard
from mailapp.imap.wire import BadCommand, ParsedLiteral, String, Token, parse_datetime

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["append", "room_for"]


def append(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None] | None:
    literal = arguments[-1] if arguments else None
    if not isinstance(literal, ParsedLiteral) or not 2 <= len(arguments) <= 4:
        discard(arguments)
        raise BadCommand("APPEND mailbox [(flags)] [date-time] literal")
    flags: list[str] = []
    date: float | None = None
    try:
        for extra in arguments[1:-1]:
            if isinstance(extra, list):
                flags = parse_flag_list(extra)
            elif isinstance(extra, String):
                date = parse_datetime(bytes(extra))
            else:
                raise BadCommand("APPEND mailbox [(flags)] [date-time] literal")
    except BadCommand:
        literal.writer.discard()
        raise
    except KeywordLimit as e:
        literal.writer.discard()
        session.tagged(tag, b"NO", b"[LIMIT] " + str(e).capitalize().encode("ascii", "replace"))
        return None

    async def append() -> None:
        writer = literal.writer
        try:
            folder = await open_folder(session, tag, arguments[0], missing=b"[TRYCREATE] No such mailbox")
            if folder is None:
                return
            await writer.finish()
            await room_for(session, writer.size, 1)
            uid = await folder.appendMessage(writer, [f for f in flags if f != RECENT], date)
            writer = None
            status = await folder.status()
        finally:
            if writer is not None:
                writer.discard()
        await session.complete(tag, b"[APPENDUID %d %d] APPEND completed" % (status.uidvalidity, uid))

    return append()


async def room_for(session: IMAPServer, size: int, messages: int) -> None:
    """Raise L{OverQuota} (answered C{NO [OVERQUOTA]}) unless the mailbox has room for C{messages} of C{size} bytes."""
    quotas = session.factory.quotas
    if quotas is None:
        return
    refused = await quotas.check(session.mailbox.account, size, messages)
    if refused is not None:
        raise refused
