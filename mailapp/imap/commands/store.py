"""
STORE and UID STORE (RFC 3501 6.4.6): set, add or remove flags, in one
store transaction, answering the new flags unless ``.SILENT``; with
RFC 7162's (UNCHANGEDSINCE n), messages changed since are left alone and
named in ``[MODIFIED ...]``, and once CONDSTORE is on every answer carries
MODSEQ.
"""

from __future__ import annotations

import bisect
import re
from typing import TYPE_CHECKING, Any, Coroutine

from mailapp.imap.commands.condstore import enable_condstore, parse_modseq
from mailapp.imap.flags import RECENT, parse_flag_list
from mailapp.imap.policy import FETCH_BATCH
from mailapp.imap.wire import BadCommand, Token, as_string, format_flags, format_uid_set, parse_sequence_set, select_positions
from mailapp.records import FlagChange

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
    unchanged_since = None
    if len(arguments) >= 2 and isinstance(arguments[1], list):
        unchanged_since = _modifiers(arguments[1])
        arguments = arguments[:1] + arguments[2:]
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
    if unchanged_since is not None:
        await enable_condstore(session)
    modseqs = session.condstore
    positions = select_positions(ranges, selected.uids, by_uid)
    uids = [selected.uids[p] for p in positions]
    change = await selected.folder.changeFlags(uids, flags, mode, unchanged_since) if uids else FlagChange({}, {})
    modified = set(change.modified)
    out = []
    flow = session.flow
    for position in positions:
        uid = selected.uids[position]
        if uid not in change.flags or uid in modified:
            continue
        before = selected.info[uid].modseq
        after = change.modseqs.get(uid, before)
        selected.setFlags(uid, change.flags[uid], after)
        items = []
        if not silent:
            items.append(b"FLAGS " + format_flags(selected.shownFlags(uid, change.flags[uid])))
        if by_uid and (items or (modseqs and after != before)):
            items.insert(0, b"UID %d" % uid)
        if modseqs and (items or after != before):
            # RFC 7162 3.1.3: with CONDSTORE on, a changed message is told its MODSEQ even under .SILENT.
            items.append(b"MODSEQ (%d)" % after)
        if items:
            out.append(b"* %d FETCH (%s)\r\n" % (position + 1, b" ".join(items)))
        if len(out) >= FETCH_BATCH:
            session.write(b"".join(out))
            out = []
            if flow.paused:
                await flow.wait()
    if out:
        session.write(b"".join(out))
    text = b"STORE completed"
    if modified:
        shown = sorted(uid if by_uid else bisect.bisect_left(selected.uids, uid) + 1 for uid in modified if uid in selected.info)
        text = b"[MODIFIED " + format_uid_set(shown) + b"] Conditional STORE failed"
    await session.complete(tag, text, allow_expunge=by_uid, with_uid=by_uid)


def _modifiers(modifiers: list[Token]) -> int:
    """STORE's (UNCHANGEDSINCE n) (RFC 7162 3.1.3): the mod-sequence, 0 included (which always fails)."""
    if len(modifiers) != 2 or as_string(modifiers[0], "STORE modifier").upper() != b"UNCHANGEDSINCE":
        raise BadCommand("Unknown STORE modifier")
    return parse_modseq(modifiers[1], "UNCHANGEDSINCE mod-sequence")
