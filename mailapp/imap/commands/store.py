"""
STORE and UID STORE (RFC 3501 6.4.6): set, add or remove flags, in one
store transaction, answering the new flags unless ``.SILENT``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Coroutine

from mailapp.imap.flags import RECENT, parse_flag_list
from mailapp.imap.policy import FETCH_BATCH
from mailapp.imap.wire import BadCommand, Token, as_string, format_flags, parse_sequence_set, select_positions

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["store", "uid_store"]

_ITEM = re.compile(rb"^([+-]?)FLAGS(\.SILENT)?$")
_MODES = {b"": "replace", b"+": "add", b"-": "remove"}


def store(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _store(session, tag, arguments, by_uid=False)


def uid_store(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _store(session, tag, arguments, by_uid=True)


async def _store(session: IMAPServer, tag: bytes, arguments: list[Token], by_uid: bool) -> None:
    if len(arguments) < 3:
        raise BadCommand("STORE sequence-set item flags")
    ranges = parse_sequence_set(as_string(arguments[0], "sequence set"))
    what = as_string(arguments[1], "store item").upper()
    match = _ITEM.match(what)
    if not match:
        raise BadCommand("STORE item must be [+-]FLAGS[.SILENT]")
    values = arguments[2:]
    if len(values) == 1 and isinstance(values[0], list):
        values = values[0]
    flags = [f for f in parse_flag_list(values) if f != RECENT]
    mode = _MODES[match.group(1)]
    silent = match.group(2) is not None
    selected = session.selected
    assert selected is not None
    if selected.readonly:
        session.tagged(tag, b"NO", b"[READ-ONLY] Mailbox is read-only")
        return
    positions = select_positions(ranges, selected.uids, by_uid)
    uids = [selected.uids[p] for p in positions]
    changed = await selected.folder.setFlags(uids, flags, mode) if uids else {}
    out = []
    flow = session.flow
    for position in positions:
        uid = selected.uids[position]
        if uid not in changed:
            continue
        selected.setFlags(uid, changed[uid])
        if not silent:
            shown = selected.shownFlags(uid, changed[uid])
            extra = b" UID %d" % uid if by_uid else b""
            out.append(b"* %d FETCH (FLAGS %s%s)\r\n" % (position + 1, format_flags(shown), extra))
        if len(out) >= FETCH_BATCH:
            session.write(b"".join(out))
            out = []
            if flow.paused:
                await flow.wait()
    if out:
        session.write(b"".join(out))
    await session.complete(tag, b"STORE completed", allow_expunge=by_uid, with_uid=by_uid)
