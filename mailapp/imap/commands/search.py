"""
SEARCH and UID SEARCH (RFC 3501 6.4.4): the keys are parsed and matched by
L{mailapp.imap.search}; here the selected folder is walked.

Keys the index decides (flags, sizes, dates, sequence and UID sets) are
matched from the view without touching a file. When the rest need only the
header fields a cached structure keeps (SUBJECT, FROM, TO, CC, BCC,
SENT*: L{mailapp.imap.structurecache}), the messages they cannot decide are
matched from those, a batch per store read; otherwise they are read in
batches, their files opened together and decoded in one trip to a worker
thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Coroutine

from twisted.internet import defer

from mailapp.errors import NoSuchMessage
from mailapp.imap import search as keys
from mailapp.imap.commands.fetch import load_structures, structure_cut
from mailapp.imap.structurecache import SEARCH_FIELDS, header_keys_only
from mailapp.imap.wire import Token

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["search", "uid_search"]

#: Messages a SEARCH reads per trip to a worker thread (with their files open at once).
_SEARCH_BATCH = 64
#: The same when the keys search bodies (up to search.MAX_CONTENT each): fewer, so that one trip stays short.
_BODY_BATCH = 4
#: The same when the cached structures answer: one store read each.
_CACHED_BATCH = 1024


def search(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _search(session, tag, arguments, by_uid=False)


def uid_search(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _search(session, tag, arguments, by_uid=True)


async def _search(session: IMAPServer, tag: bytes, arguments: list[Token], by_uid: bool) -> None:
    selected = session.selected
    assert selected is not None
    charset, parsed = keys.parse_search(arguments, len(selected.uids))
    if charset not in (None, "UTF-8", "US-ASCII"):
        session.tagged(tag, b"NO", b"[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
        return
    key = ("AND", parsed)
    uids = list(selected.uids)
    count = len(uids)
    last_uid = uids[-1] if uids else 0

    def in_set(ranges: Any, message: keys.Message, uid_set: bool) -> bool:
        value = message.uid if uid_set else message.seq
        last = last_uid if uid_set else count
        for low, high in ranges:
            a = last if low is None else low
            b = last if high is None else high
            if min(a, b) <= value <= max(a, b):
                return True
        return False

    hits = []
    needles = keys.body_needles(key)
    undecided: list[tuple[int, int, keys.Message]] = []

    from_cache = not needles and header_keys_only(key)
    batch_size = _CACHED_BATCH if from_cache else _SEARCH_BATCH if not needles else _BODY_BATCH

    async def decide(batch: list[tuple[int, int, keys.Message]]) -> None:
        if from_cache:
            cached, gone = await load_structures(session, selected.folder, [uid for _, uid, _ in batch], SEARCH_FIELDS)
            for position, uid, message in batch:
                structure = cached.get(uid)
                if structure is not None and keys.matches(key, message, structure.content(), in_set):
                    hits.append(uid if by_uid else position + 1)
            # A message whose structure a bound cut has none: its file is read.
            batch = [entry for entry in batch if entry[1] not in cached and entry[1] not in gone]
            if not batch:
                return
        opened = await defer.gatherResults(
            [selected.folder.openMessage(uid).addErrback(lambda f: f.trap(NoSuchMessage) and None) for _, uid, _ in batch],
            consumeErrors=True,
        )
        contents = await session.factory.offThread(keys.load_contents, opened, needles)
        for (position, uid, message), content in zip(batch, contents):
            if content is not None and content.cut:
                structure_cut(uid)
            if content is not None and keys.matches(key, message, content, in_set):
                hits.append(uid if by_uid else position + 1)

    for position, uid in enumerate(uids):
        entry = selected.info[uid]
        message = keys.Message(position + 1, uid, entry.flags, entry.size, entry.internaldate, uid in selected.recent)
        try:
            matched = keys.matches(key, message, None, in_set)
        except keys.NeedContent:
            undecided.append((position, uid, message))
            if len(undecided) >= batch_size:
                await decide(undecided)
                undecided = []
            continue
        if matched:
            hits.append(uid if by_uid else position + 1)
    if undecided:
        await decide(undecided)
    hits.sort()
    session.untagged(b"SEARCH" + b"".join(b" %d" % hit for hit in hits))
    await session.complete(tag, b"SEARCH completed", allow_expunge=by_uid, with_uid=by_uid)
