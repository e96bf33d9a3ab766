"""
SORT, UID SORT (RFC 5256, with RFC 5957's DISPLAYFROM/DISPLAYTO and RFC
5267's ESORT: ``SORT RETURN (...)``), THREAD and UID THREAD
(ORDEREDSUBJECT, REFERENCES).

The search keys pick the messages (L{search.matching}); the header fields
they are sorted or threaded by come from L{header_fields}: from the cached
ENVELOPEs (L{mailapp.imap.structurecache}) when those hold them (every
SORT criterion, ORDEREDSUBJECT), else from each message's header block,
read at most once per command on the store's worker pool, in batches (a
block the search already read for its own keys is taken from there: its
fields are made on the same worker-thread trip, not read again).
REFERENCES needs References, which an ENVELOPE does not keep. Sorting and threading run on a worker thread too:
on a 10,000-message folder they take long enough to be felt by every other
session on the reactor.
"""

from __future__ import annotations

import dataclasses
from typing import IO, TYPE_CHECKING, Any, Coroutine

from twisted.internet import defer

from mailapp.errors import NoSuchMessage
from mailapp.imap import search as keys
from mailapp.imap import sorting, structurecache, threads
from mailapp.imap.commands import context, results
from mailapp.imap.commands.fetch import load_structures
from mailapp.imap.commands.search import matching, relevancy_scores, take_relevancy
from mailapp.imap.wire import Atom, BadCommand, Token, as_string

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["header_fields", "sort", "thread", "uid_sort", "uid_thread"]

#: Messages whose files are open at once while their header blocks are read.
_HEADER_BATCH = 128
#: Messages whose cached structures are asked for in one store read.
_CACHED_BATCH = 1024
_CHARSETS = ("UTF-8", "US-ASCII")
_ALGORITHMS = {"ORDEREDSUBJECT": threads.ordered_subject, "REFERENCES": threads.references}


def sort(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _sort(session, tag, arguments, by_uid=False)


def uid_sort(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _sort(session, tag, arguments, by_uid=True)


def thread(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _thread(session, tag, arguments, by_uid=False)


def uid_thread(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _thread(session, tag, arguments, by_uid=True)


def _charset(token: Token) -> str:
    return as_string(token, "charset").decode("ascii", "replace").upper()


async def _sort(session: IMAPServer, tag: bytes, arguments: list[Token], by_uid: bool) -> None:
    selected = session.selected
    assert selected is not None
    arguments, relevancy = take_relevancy(arguments)
    options, arguments = results.parse_return(arguments)
    try:
        if len(arguments) < 3:
            raise BadCommand("SORT (criteria) charset search-keys")
        criteria = sorting.parse_sort_criteria(arguments[0])
        charset = _charset(arguments[1])
        _, parsed, fuzzy = keys.parse_search_fuzzy(arguments[2:], len(selected.uids))
        ranked = relevancy or any(name == "RELEVANCY" for name, _ in criteria)
        if ranked and not fuzzy:
            raise BadCommand("RELEVANCY needs a FUZZY search key")  # RFC 6203 section 4
        if ranked and options is not None and options.update:
            raise BadCommand("RELEVANCY cannot be kept up to date")
    except BadCommand:
        results.failed(session, options)
        raise
    if charset not in _CHARSETS:
        results.failed(session, options)
        session.tagged(tag, b"NO", b"[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
        return
    wanted = frozenset().union(*(sorting.NEEDS[name] for name, _ in criteria))
    relevance: dict[int, float] | None = {} if ranked else None
    items = await _matching_fields(session, ("AND", parsed), wanted, relevance)
    scores: dict[int, int] = {}
    if relevance is not None:
        matched = [selected.uids[position] for position, _ in items]
        scores = dict(zip(matched, relevancy_scores(matched, relevance)))
        items = [(position, dataclasses.replace(fields, relevancy=scores[selected.uids[position]])) for position, fields in items]
    order: list[int] = await session.factory.offThread(sorting.sort_order, criteria, items)
    uids = [selected.uids[position] for position in order]
    if options is None:
        shown = uids if by_uid else [position + 1 for position in order]
        session.untagged(b"SORT" + b"".join(b" %d" % n for n in shown))
    else:
        extra = b"RELEVANCY (" + b" ".join(b"%d" % scores[uid] for uid in uids) + b")" if relevancy else b""
        results.answer(session, tag, options, uids, by_uid, extra=extra)
        if options.update:
            fields = {selected.uids[position]: item for position, item in items}
            context.watch(session, tag, ("AND", parsed), uids, by_uid, criteria, fields, wanted)
    await session.complete(tag, b"SORT completed", allow_expunge=by_uid, with_uid=by_uid)


async def _thread(session: IMAPServer, tag: bytes, arguments: list[Token], by_uid: bool) -> None:
    selected = session.selected
    assert selected is not None
    if len(arguments) < 3 or not isinstance(arguments[0], Atom):
        raise BadCommand("THREAD algorithm charset search-keys")
    algorithm = _ALGORITHMS.get(arguments[0].upper().decode("ascii", "replace"))
    if algorithm is None:
        raise BadCommand("Unknown THREAD algorithm")
    charset = _charset(arguments[1])
    _, parsed = keys.parse_search(arguments[2:], len(selected.uids))
    if charset not in _CHARSETS:
        session.tagged(tag, b"NO", b"[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
        return
    # ORDEREDSUBJECT needs what a cached ENVELOPE holds; REFERENCES needs References too.
    wanted = sorting.THREADING if algorithm is threads.references else frozenset({"date", "subject"})
    items = await _matching_fields(session, ("AND", parsed), wanted)
    numbered = [(selected.uids[p] if by_uid else p + 1, fields) for p, fields in items]
    text: bytes = await session.factory.offThread(lambda: threads.format_threads(algorithm(numbered)))
    session.untagged(b"THREAD " + text if text else b"THREAD")
    await session.complete(tag, b"THREAD completed", allow_expunge=by_uid, with_uid=by_uid)


async def _matching_fields(
    session: IMAPServer, key: Any, wanted: frozenset[str], relevance: dict[int, float] | None = None
) -> list[tuple[int, sorting.SortFields]]:
    """(position, fields) of every message C{key} matches, in sequence order; C{relevance} as L{matching} fills it."""
    known: dict[int, sorting.SortFields] = {}
    envelopes: dict[int, bytes] = {}
    positions = await matching(
        session,
        key,
        derive=lambda content: sorting.sort_fields(content.header_block, 0.0, 0, wanted),
        on_derived=known.__setitem__,
        on_envelope=envelopes.__setitem__ if wanted <= sorting.ENVELOPE_FIELDS else None,
        cache=wanted <= sorting.ENVELOPE_FIELDS,
        relevance=relevance,
    )
    fields = await header_fields(session, positions, wanted, known, envelopes)
    return [(position, fields[position]) for position in positions]


async def header_fields(
    session: IMAPServer,
    positions: list[int],
    wanted: frozenset[str],
    known: dict[int, sorting.SortFields] | None = None,
    envelopes: dict[int, bytes] | None = None,
) -> dict[int, sorting.SortFields]:
    """
    The C{wanted} header fields (L{sorting.NEEDS}) of the messages at
    C{positions} of the selected view: the one place SORT and THREAD get
    header fields from. Each header block is read at most once (C{known}
    holds the fields of those the search already read, C{envelopes} the
    cached ENVELOPEs it already had), on the store's worker pool; a message
    whose file is gone is sorted by its index entry alone.
    """
    selected = session.selected
    assert selected is not None
    known = known or {}
    out: dict[int, sorting.SortFields] = {}
    cacheable = wanted <= sorting.ENVELOPE_FIELDS
    step = _CACHED_BATCH if cacheable else _HEADER_BATCH
    for start in range(0, len(positions), step):
        batch = positions[start : start + step]
        if not wanted:
            # ARRIVAL and SIZE are the index's: no file is opened.
            for p in batch:
                entry = selected.info[selected.uids[p]]
                out[p] = sorting.SortFields(entry.internaldate, entry.size)
            continue
        for p in batch:
            if p in known:
                entry = selected.info[selected.uids[p]]
                out[p] = dataclasses.replace(known[p], internaldate=entry.internaldate, size=entry.size)
        unread = [p for p in batch if p not in known]
        if unread and cacheable:
            unread = await _from_cache(session, unread, wanted, out, envelopes or {})
        for chunk in range(0, len(unread), _HEADER_BATCH):
            await _from_files(session, unread[chunk : chunk + _HEADER_BATCH], wanted, out)
    return out


async def _from_files(session: IMAPServer, unread: list[int], wanted: frozenset[str], out: dict[int, sorting.SortFields]) -> None:
    """The fields of the messages at C{unread} from their header blocks (files open together), into C{out}."""
    selected = session.selected
    assert selected is not None
    opened = await defer.gatherResults(
        [selected.folder.openMessage(selected.uids[p]).addErrback(lambda f: f.trap(NoSuchMessage) and None) for p in unread],
        consumeErrors=True,
    )
    handles = dict(zip(unread, opened))
    work = [(p, handles[p], selected.info[selected.uids[p]].internaldate, selected.info[selected.uids[p]].size) for p in unread]
    out.update(await session.factory.offThread(_read_fields, work, wanted))


async def _from_cache(
    session: IMAPServer, positions: list[int], wanted: frozenset[str], out: dict[int, sorting.SortFields], envelopes: dict[int, bytes]
) -> list[int]:
    """
    The fields of the messages at C{positions} from their cached ENVELOPEs
    (L{mailapp.imap.structurecache}; one made from a message's file, and
    kept, when it has none yet), into C{out}; the positions still to read
    (a message whose structure a bound cut has no cached one).
    """
    selected = session.selected
    assert selected is not None
    uids = [selected.uids[p] for p in positions]
    asked = [uid for p, uid in zip(positions, uids) if p not in envelopes]
    cached, gone = await load_structures(session, selected.folder, asked, structurecache.ENVELOPE) if asked else ({}, set())
    work = []
    for p, uid in zip(positions, uids):
        envelope = envelopes.get(p)
        structure = cached.get(uid)
        if envelope is None and structure is not None:
            envelope = structure[0]
        if envelope is not None:
            entry = selected.info[uid]
            work.append((p, envelope, entry.internaldate, entry.size))
    parsed: dict[int, sorting.SortFields | None] = await session.factory.offThread(_parse_envelopes, work, wanted)
    rest = []
    for p, uid in zip(positions, uids):
        fields = parsed.get(p)
        if fields is not None:
            out[p] = fields
        elif uid in gone:
            entry = selected.info[uid]
            out[p] = sorting.SortFields(entry.internaldate, entry.size)
        else:
            rest.append(p)
    return rest


def _parse_envelopes(work: list[tuple[int, bytes, float, int]], wanted: frozenset[str]) -> dict[int, sorting.SortFields | None]:
    """(worker thread) L{sorting.envelope_fields} of each cached ENVELOPE."""
    return {p: sorting.envelope_fields(envelope, internaldate, size, wanted) for p, envelope, internaldate, size in work}


def _read_fields(work: list[tuple[int, IO[bytes] | None, float, int]], wanted: frozenset[str]) -> dict[int, sorting.SortFields]:
    """(worker thread) Each message's fields from its open file (none when the file is gone)."""
    out: dict[int, sorting.SortFields] = {}
    for position, handle, internaldate, size in work:
        block = sorting.read_header_block(handle) if handle is not None else b""
        out[position] = sorting.sort_fields(block, internaldate, size, wanted)
    return out
