"""
APPEND (RFC 3501 6.3.11, with RFC 4315's APPENDUID and RFC 7889's
APPENDLIMIT), and what extends it: several messages in one command
(MULTIAPPEND, RFC 3502), a message given as a ``literal8`` (BINARY, RFC
3516), a message built from text and parts of stored messages (CATENATE,
RFC 4469, through L{mailapp.imap.urls}), and a message marked as UTF-8
(``UTF8 (~{n})``, RFC 6855).

A plain message never sits in memory: the reader streams its literal into
the store's spool writer as it arrives (refusing it unread when it is too
big). A literal8 message is held in memory (at most APPENDLIMIT), since its
``binary`` parts are re-encoded as base64 before it is stored
(L{mailapp.imap.binary}); a CATENATE message is written into a spool writer
part by part. Every message is then checked against the quota together and
added to the folder: all of them or none, the ones already added expunged
again when a later one fails (RFC 3502 6). A spool file is removed on every
path that does not add it.

Each message's cached structure (L{mailapp.imap.structurecache}, with its
part offsets) is computed from the bytes the writer holds in memory, on
the store's worker pool while the store commits the message; before the
tagged OK it is in this process's memory, and the store's writer keeps it
in the index right after (its next batch, not waited for: waiting made an
APPEND wait for a whole batch, fsync included, whenever the writer was
busy). The FETCHes a client sends after its APPEND (imaptest's do, and so
do clients that show what they saved) then never scan the message; with
several worker processes, another process's FETCH in the moment before
that save commits computes the structure once itself, as it did before. A
message larger than the writer keeps in memory is on disk already:
reading it back for a FETCH that may never come is left to that FETCH,
which fills the cache once.

SMTP delivery does not do this, deliberately: a delivered message may be
read by no IMAP client at all (POP3, the webmail), and computing the
structure there would cost every delivery CPU that ingest cannot spare
(issue 21); IMAP fills it at the first FETCH instead.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Coroutine

from twisted.internet import defer
from twisted.logger import Logger

from mailapp import logevents
from mailapp.errors import KeywordLimit
from mailapp.imap import binary, structurecache, urls
from mailapp.imap.commands.fetch import keep_structures
from mailapp.imap.commands.mailboxes import open_folder
from mailapp.imap.flags import RECENT, parse_flag_list
from mailapp.imap.reader import discard
from mailapp.imap.wire import Atom, BadCommand, Literal8, ParsedLiteral, String, Token, format_uid_set, parse_datetime
from mailapp.store.messagefile import held_bytes

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["append", "room_for"]

_log = Logger()

_SYNTAX = "APPEND mailbox [(flags)] [date-time] message [[(flags)] [date-time] message ...]"


@dataclass
class _Message:
    """One message of an APPEND: its flags and date, and its content in one of four forms."""

    flags: list[str] = field(default_factory=list)
    date: float | None = None
    #: Streamed to the spool already.
    spooled: ParsedLiteral | None = None
    #: A literal8 (or RFC 6855 UTF8 data): in memory, binary parts to encode.
    data: bytes | None = None
    #: CATENATE: text (bytes) and URL (str) parts, in order.
    parts: list[bytes | str] | None = None


def _parse(session: IMAPServer, arguments: list[Token]) -> list[_Message]:
    """The messages of an APPEND, after its mailbox name; L{BadCommand} if they do not parse."""
    messages: list[_Message] = []
    i, n = 1, len(arguments)
    while i < n:
        message = _Message()
        if isinstance(arguments[i], list):
            message.flags = parse_flag_list(arguments[i])  # type: ignore[arg-type]
            i += 1
        if i < n and isinstance(arguments[i], String) and not isinstance(arguments[i], Literal8) and i + 1 < n:
            message.date = parse_datetime(bytes(arguments[i]))  # type: ignore[arg-type]
            i += 1
        if i >= n:
            raise BadCommand(_SYNTAX)
        data = arguments[i]
        i += 1
        if isinstance(data, ParsedLiteral):
            message.spooled = data
        elif isinstance(data, Literal8):
            message.data = bytes(data)
        elif isinstance(data, Atom) and data.upper() == b"UTF8" and i < n:
            # RFC 6855 4: UTF8 (literal8), once UTF8=ACCEPT is enabled.
            inner = arguments[i]
            i += 1
            if not session.utf8:
                raise BadCommand("UTF8 APPEND needs ENABLE UTF8=ACCEPT")
            if not isinstance(inner, list) or len(inner) != 1 or not isinstance(inner[0], Literal8):
                raise BadCommand("UTF8 (~{n} message)")
            message.data = bytes(inner[0])
        elif isinstance(data, Atom) and data.upper() == b"CATENATE" and i < n:
            message.parts = _catenate_parts(arguments[i])
            i += 1
        else:
            raise BadCommand(_SYNTAX)
        messages.append(message)
    if not messages:
        raise BadCommand(_SYNTAX)
    return messages


def _catenate_parts(token: Token) -> list[bytes | str]:
    """RFC 4469 5: ``(TEXT literal / URL "url" ...)``."""
    if not isinstance(token, list) or not token or len(token) % 2:
        raise BadCommand("CATENATE (TEXT literal / URL url ...)")
    parts: list[bytes | str] = []
    for kind, value in zip(token[0::2], token[1::2]):
        if not isinstance(kind, Atom):
            raise BadCommand("CATENATE parts are TEXT or URL")
        if kind.upper() == b"TEXT" and isinstance(value, String):
            parts.append(bytes(value))
        elif kind.upper() == b"URL" and isinstance(value, (Atom, String)) and not isinstance(value, Literal8):
            parts.append(bytes(value).decode("utf-8", "replace"))
        else:
            raise BadCommand("CATENATE parts are TEXT literal or URL string")
    return parts


def _all_spooled(arguments: list[Token]) -> list[Any]:
    return [a for a in arguments if isinstance(a, ParsedLiteral)]


def append(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None] | None:
    if len(arguments) < 2:
        discard(arguments)
        raise BadCommand(_SYNTAX)
    try:
        messages = _parse(session, arguments)
    except BadCommand:
        discard(arguments)
        raise
    except KeywordLimit as e:
        discard(arguments)
        session.tagged(tag, b"NO", b"[LIMIT] " + str(e).capitalize().encode("ascii", "replace"))
        return None

    async def append() -> None:
        # Every writer not yet handed to the store, removed on the way out.
        writers: list[Any] = [a.writer for a in _all_spooled(arguments)]
        try:
            folder = await open_folder(session, tag, arguments[0], missing=b"[TRYCREATE] No such mailbox")
            if folder is None:
                return
            ready = []
            for message in messages:
                try:
                    writer = await _content(session, message, writers)
                except urls.BadURL as e:
                    session.tagged(tag, b"NO", b"[BADURL " + e.url.encode("utf-8", "replace") + b"] " + e.reason.encode("ascii", "replace"))
                    return
                if writer.size > session.policy.max_message_size:
                    session.tagged(tag, b"NO", b"[TOOBIG] Message exceeds the size limit (APPENDLIMIT)")
                    return
                ready.append((message, writer))
            await room_for(session, sum(writer.size for _, writer in ready), len(ready))
            uids: list[int] = []
            structures: dict[int, bytes] = {}
            sizes: dict[int, int] = {}
            try:
                for message, writer in ready:
                    writers.remove(writer)
                    computing = _structure(session, writer)
                    appended = await folder.appendMessage(writer, [f for f in message.flags if f != RECENT], message.date)
                    uid, validity = appended.uid, appended.uidvalidity
                    uids.append(uid)
                    blob = await computing
                    if blob is not None:
                        structures[uid] = blob
                        sizes[uid] = writer.size
            except BaseException:
                if uids:
                    # All or none (RFC 3502 6): take back what was added.
                    await folder.expunge(uids)
                raise
            keep_structures(session, folder, structures, sizes)
            if not uids:
                validity = (await folder.status()).uidvalidity
        finally:
            for writer in writers:
                writer.discard()
        # The UIDVALIDITY the last message's UID was given under, read in its own transaction.
        await session.complete(tag, b"[APPENDUID %d %s] APPEND completed" % (validity, format_uid_set(uids)))

    return append()


async def _content(session: IMAPServer, message: _Message, writers: list[Any]) -> Any:
    """The message's content in a finished spool writer (which C{writers} holds until the store takes it)."""
    if message.spooled is not None:
        await message.spooled.writer.finish()
        return message.spooled.writer
    writer = session.store.newMessage()
    writers.append(writer)
    if message.data is not None:
        await writer.write(await session.factory.offThread(binary.encode_binary_parts, message.data))
    else:
        assert message.parts is not None
        for part in message.parts:
            if isinstance(part, bytes):
                await writer.write(part)
            else:
                await writer.write(await urls.fetch_url(session, part))
    await writer.finish()
    return writer


def _structure(session: IMAPServer, writer: Any) -> defer.Deferred[bytes | None]:
    """
    The cached structure blob of the message in C{writer}, computed on the
    store's worker pool from the bytes it holds in memory (taken now,
    before the store takes the writer), or None: the message is only on
    disk, or a bound cut its structure. Never fails: a blob is an
    optimisation, and the message is stored either way.
    """
    data = held_bytes(writer)
    if data is None:
        return defer.succeed(None)
    computing = session.factory.offThread(lambda: structurecache.compute(io.BytesIO(data)))

    def failed(reason: Any) -> None:
        _log.failure("imap structure at append not computed", reason, log_event=logevents.IMAP_INTERNAL_ERROR)
        return None

    return computing.addErrback(failed)


async def room_for(session: IMAPServer, size: int, messages: int) -> None:
    """Raise L{OverQuota} (answered C{NO [OVERQUOTA]}) unless the mailbox has room for C{messages} of C{size} bytes."""
    quotas = session.factory.quotas
    if quotas is None:
        return
    refused = await quotas.check(session.mailbox.account, size, messages)
    if refused is not None:
        raise refused
