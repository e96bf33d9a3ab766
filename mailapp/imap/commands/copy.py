"""
COPY, MOVE and their UID forms (RFC 3501 6.4.7, RFC 6851, RFC 4315's
COPYUID): one store transfer each, atomic against other sessions' expunges.
What still exists is copied (or moved) and reported in COPYUID, what was
expunged meanwhile is left out; NO only when nothing was left. A COPY is
checked against the quota first; a MOVE within one mailbox changes no usage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Coroutine

from mailapp.imap.commands.append import room_for
from mailapp.imap.commands.mailboxes import open_folder
from mailapp.imap.wire import Token, as_string, expect_count, format_uid_set, parse_sequence_set, select_positions

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["copy", "move", "uid_copy", "uid_move"]


def copy(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _copy(session, tag, arguments, by_uid=False, move=False)


def uid_copy(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _copy(session, tag, arguments, by_uid=True, move=False)


def move(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _copy(session, tag, arguments, by_uid=False, move=True)


def uid_move(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _copy(session, tag, arguments, by_uid=True, move=True)


async def _copy(session: IMAPServer, tag: bytes, arguments: list[Token], by_uid: bool, move: bool) -> None:
    expect_count(arguments, 2, "COPY")
    ranges = parse_sequence_set(as_string(arguments[0], "sequence set"))
    selected = session.selected
    assert selected is not None
    if move and selected.readonly:
        session.tagged(tag, b"NO", b"[READ-ONLY] Mailbox is read-only")
        return
    target = await open_folder(session, tag, arguments[1], missing=b"[TRYCREATE] No such mailbox")
    if target is None:
        return
    positions = select_positions(ranges, selected.uids, by_uid)
    uids = [selected.uids[p] for p in positions]
    verb = b"MOVE" if move else b"COPY"
    if not uids:
        await session.complete(tag, verb + b" completed (nothing to do)", allow_expunge=by_uid or move)
        return
    if move:
        # Within one mailbox: a move changes no usage, so even a full mailbox may file its mail.
        mapping = await selected.folder.moveTo(uids, target)
    else:
        await room_for(session, sum(selected.info[uid].size for uid in uids if uid in selected.info), len(uids))
        mapping = await selected.folder.copyTo(uids, target)
    if not mapping:
        session.tagged(tag, b"NO", b"[EXPUNGEISSUED] The messages were expunged")
        return
    status = await target.status()
    sources = sorted(mapping)
    code = b"[COPYUID %d %s %s]" % (status.uidvalidity, format_uid_set(sources), format_uid_set(mapping[u] for u in sources))
    if not move:
        await session.complete(tag, code + b" COPY completed", allow_expunge=by_uid, with_uid=by_uid)
        return
    session.untagged(b"OK " + code + b" Moved")
    selected.expunged(set(sources))
    await session.complete(tag, b"MOVE completed", with_uid=by_uid)
