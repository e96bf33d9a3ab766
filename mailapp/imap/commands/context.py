"""
CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 section 4): ``SEARCH RETURN
(UPDATE ...)`` (or SORT's) keeps a search live, and the server tells the
client as messages enter and leave its result, with ``* ESEARCH (TAG "t")
ADDTO (position set)`` and ``REMOVEFROM (position set)``, until
CANCELUPDATE or the next SELECT. A position is where in the result (1-based,
ascending for SEARCH, in the sort order for SORT) the message is or was.

A live search keeps its key, its result (UIDs) and the flags of every
message as it last looked at them. After each update of the view (at the
end of a command, or during IDLE) the messages that are new or whose flags
changed are matched again, and only those (a key that needs the message's
text reads just their files). Expunged messages leave the result before
their EXPUNGE responses are sent (L{SelectedFolder.expunging}), while their
sequence numbers still mean them (section 4.3).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from mailapp.imap.sorting import SortFields, sort_order
from mailapp.imap.wire import BadCommand, Token, as_string, format_uid_set

if TYPE_CHECKING:
    from mailapp.imap.selected import SelectedFolder
    from mailapp.imap.session import IMAPServer

__all__ = ["cancelupdate", "changed", "watch"]


@dataclass
class _Live:
    tag: bytes
    key: Any
    by_uid: bool
    #: The result, ascending UIDs.
    result: list[int]
    #: Each message's flags as last matched.
    seen: dict[int, frozenset[str]] = field(default_factory=dict)
    #: A live SORT: its criteria, and the sort fields of the messages in its result (kept in sort order).
    criteria: list[tuple[str, bool]] | None = None
    fields: dict[int, SortFields] = field(default_factory=dict)
    wanted: frozenset[str] = frozenset()


#: The live searches of each selected view, by tag.
_live: WeakKeyDictionary[SelectedFolder, dict[bytes, _Live]] = WeakKeyDictionary()


def watch(
    session: IMAPServer,
    tag: bytes,
    key: Any,
    uids: list[int],
    by_uid: bool,
    criteria: list[tuple[str, bool]] | None = None,
    fields: dict[int, SortFields] | None = None,
    wanted: frozenset[str] = frozenset(),
) -> None:
    """
    Keep the search C{key} live under C{tag}: C{uids} is its result
    (ascending; for a SORT, in its C{criteria}'s order, with each message's C{fields}).
    """
    view = session.selected
    assert view is not None
    searches = _live.get(view)
    if searches is None:
        searches = _live[view] = {}
        view.expunging.append(lambda gone: _expunging(session, view, gone))
    seen = {uid: view.info[uid].flags for uid in view.uids}
    if criteria is None:
        searches[tag] = _Live(tag, key, by_uid, sorted(uids), seen)
    else:
        searches[tag] = _Live(tag, key, by_uid, list(uids), seen, criteria, dict(fields or {}), wanted)


def is_live(session: IMAPServer, tag: bytes) -> bool:
    view = session.selected
    return view is not None and tag in _live.get(view, {})


def cancelupdate(session: IMAPServer, tag: bytes, arguments: list[Token]) -> None:
    """CANCELUPDATE "tag" ...: those searches stop being live (section 4.2)."""
    if not arguments:
        raise BadCommand("CANCELUPDATE needs the tags of the searches")
    tags = [as_string(argument, "tag") for argument in arguments]
    view = session.selected
    searches = _live.get(view, {}) if view is not None else {}
    if any(t not in searches for t in tags):
        session.tagged(tag, b"BAD", b"[NOUPDATE] No such live search")
        return
    for t in tags:
        del searches[t]
    session.tagged(tag, b"OK", b"CANCELUPDATE completed")


def _numbers(view: SelectedFolder, search: _Live, uids: list[int]) -> list[int]:
    return uids if search.by_uid else [bisect_left(view.uids, uid) + 1 for uid in uids]


def _notify(session: IMAPServer, search: _Live, verb: bytes, position: int, numbers: list[int]) -> None:
    uid = b" UID" if search.by_uid else b""
    session.untagged(b'ESEARCH (TAG "%s")%s %s (%d %s)' % (search.tag, uid, verb, position, format_uid_set(numbers)))


def _expunging(session: IMAPServer, view: SelectedFolder, gone: list[int]) -> None:
    """(before the EXPUNGE responses) REMOVEFROM for the messages of each live result that are going."""
    for search in _live.get(view, {}).values():
        for uid in gone:
            search.seen.pop(uid, None)
        _remove(session, view, search, [uid for uid in gone if _member(search, uid)])


def _member(search: _Live, uid: int) -> bool:
    if search.criteria is not None:
        return uid in search.fields
    index = bisect_left(search.result, uid)
    return index < len(search.result) and search.result[index] == uid


def _remove(session: IMAPServer, view: SelectedFolder, search: _Live, leaving: list[int]) -> None:
    if not leaving:
        return
    if search.criteria is None:
        position = bisect_left(search.result, leaving[0]) + 1
        going = set(leaving)
        search.result = [uid for uid in search.result if uid not in going]
        _notify(session, search, b"REMOVEFROM", position, _numbers(view, search, leaving))
        return
    # One REMOVEFROM each, in result order; each position as the result stands after those before it.
    where = {uid: i for i, uid in enumerate(search.result)}
    for removed, uid in enumerate(sorted(leaving, key=where.__getitem__)):
        _notify(session, search, b"REMOVEFROM", where[uid] - removed + 1, _numbers(view, search, [uid]))
        del search.fields[uid]
    gone = set(leaving)
    search.result = [uid for uid in search.result if uid not in gone]


async def changed(session: IMAPServer) -> None:
    """(after the view's update) ADDTO and REMOVEFROM for the new messages and those whose flags changed."""
    from mailapp.imap.commands.search import matching
    from mailapp.imap.commands.sort import header_fields

    view = session.selected
    if view is None:
        return
    for search in list(_live.get(view, {}).values()):
        positions = [p for p, uid in enumerate(view.uids) if search.seen.get(uid) != view.info[uid].flags]
        if not positions:
            continue
        for p in positions:
            search.seen[view.uids[p]] = view.info[view.uids[p]].flags
        hits = {view.uids[p] for p in await matching(session, search.key, within=positions)}
        if session.selected is not view:
            return
        looked = [view.uids[p] for p in positions]
        _remove(session, view, search, [uid for uid in looked if uid not in hits and _member(search, uid)])
        entering = [uid for uid in looked if uid in hits and not _member(search, uid)]
        if not entering:
            continue
        if search.criteria is None:
            search.result = sorted(search.result + entering)  # two sorted runs: a linear merge
            position = bisect_left(search.result, entering[0]) + 1
            _notify(session, search, b"ADDTO", position, _numbers(view, search, entering))
            continue
        added = await header_fields(session, [bisect_left(view.uids, uid) for uid in entering], search.wanted)
        if session.selected is not view:
            return
        for p, fields in added.items():
            search.fields[view.uids[p]] = fields
        members = sorted(search.fields, key=lambda uid: bisect_left(view.uids, uid))
        search.result = sort_order(search.criteria, [(uid, search.fields[uid]) for uid in members])
        where = {uid: i for i, uid in enumerate(search.result)}
        for uid in sorted(entering, key=where.__getitem__):
            _notify(session, search, b"ADDTO", where[uid] + 1, _numbers(view, search, [uid]))
