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

``SEARCH RETURN (...)`` answers ESEARCH (RFC 4731), saves the result for
``$`` (RFC 5182) and pages it (RFC 5267 PARTIAL): L{results}; with UPDATE
it stays live (RFC 5267 section 4): L{context}. L{matching} is the walk,
for SORT and THREAD too.

BODY and TEXT ask the folder's full-text index first
(L{mailapp.interfaces.IFolder.searchText}): for the messages it covers it
says exactly which contain each string of three characters or more, so
that only the messages it does not cover (delivered since, or beyond its
bounds) are read. When every key that needs content is such a string (and
no caller wants what a read gives: SORT's fields, cached envelopes), the
covered messages are matched from the index alone; otherwise its answer
only rules out the messages a top-level BODY/TEXT key excludes, and the
rest are read as before.

FUZZY BODY and TEXT (RFC 6203) go the same way: each word of the string
is a needle the index answers (an approximate one through
L{mailapp.interfaces.IFolder.searchText}'s C{approximate}), and a message
it does not cover is read and checked with the same rule, so a message
not indexed yet is found as it will be once it is. ``RETURN (RELEVANCY)``
answers each message's score, 1 to 100: the index's bm25 of what it
found, scaled so that the best message of the result scores 100; a
message the index did not rank (read instead, or matched by a header key
alone) scores L{UNRANKED}. RELEVANCY without a FUZZY key is BAD (RFC 6203
section 4).

EMAILID, THREADID and the SAVED* keys (RFC 8474, RFC 8514) are decided
like index keys: what they need is loaded once for the messages
considered, before the walk (the origins from the index, the thread
identifiers from the cached structures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Coroutine

from twisted.internet import defer

from mailapp.errors import NoSuchMessage
from mailapp.imap import search as keys
from mailapp.imap.commands.condstore import enable_condstore
from mailapp.imap.commands import context, results
from mailapp.imap import mime, preview
from mailapp.imap.commands.fetch import load_origins, load_structures, structure_cut
from mailapp.imap.structurecache import ENVELOPE, SEARCH_FIELDS, STRUCTURE_VERSION, THREADID, header_keys_only, search_fields
from mailapp.imap.structurecache import content as cached_content
from mailapp.imap.wire import Atom, BadCommand, Token
from mailapp.records import MIN_TEXT_NEEDLE, TextMatches
from mailapp.store import fuzzy
from mailapp.store.fuzzy import Approximate

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["UNRANKED", "matching", "relevancy_scores", "search", "take_relevancy", "uid_search"]

#: Messages a SEARCH reads per trip to a worker thread (with their files open at once).
_SEARCH_BATCH = 64
#: The same when the keys search bodies (up to search.MAX_CONTENT each): fewer, so that one trip stays short.
_BODY_BATCH = 4
#: The same when the cached structures answer: one store read each.
_CACHED_BATCH = 1024
#: Cached structures read per store trip to rule messages out before matching (L{_candidates}).
_PREFILTER_READ = 1024
#: The RELEVANCY score of a message found but not ranked by the index: the middle of RFC 6203's 1-100.
UNRANKED = 50


def search(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _search(session, tag, arguments, by_uid=False)


def uid_search(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _search(session, tag, arguments, by_uid=True)


async def _search(session: IMAPServer, tag: bytes, arguments: list[Token], by_uid: bool) -> None:
    selected = session.selected
    assert selected is not None
    arguments, relevancy = take_relevancy(arguments)
    options, arguments = results.parse_return(arguments)
    if options is None and session.rev2:
        options = results.ReturnOptions(all=True)  # RFC 9051 6.4.4: SEARCH answers ESEARCH
    try:
        charset, parsed, fuzzy = keys.parse_search_fuzzy(arguments, len(selected.uids))
        if relevancy and not fuzzy:
            raise BadCommand("RELEVANCY needs a FUZZY search key")
        if relevancy and options is not None and options.update:
            raise BadCommand("RELEVANCY cannot be kept up to date")
    except BadCommand:
        results.failed(session, options)
        raise
    if charset not in (None, "UTF-8", "US-ASCII"):
        results.failed(session, options)
        session.tagged(tag, b"NO", b"[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
        return
    key = ("AND", parsed)
    with_modseq = keys.uses_modseq(key)
    if with_modseq:
        await enable_condstore(session)
    scores: dict[int, float] | None = {} if relevancy else None
    positions = await matching(session, key, relevance=scores)
    if options is None:
        hits = [selected.uids[p] if by_uid else p + 1 for p in positions]
        # RFC 7162 3.1.5: a search by MODSEQ answers the highest mod-sequence of what it found.
        highest = b""
        if with_modseq and positions:
            highest = b" (MODSEQ %d)" % max(selected.info[selected.uids[p]].modseq for p in positions)
        session.untagged(b"SEARCH" + b"".join(b" %d" % hit for hit in hits) + highest)
    else:
        uids = [selected.uids[p] for p in positions]
        extra = b"RELEVANCY (" + b" ".join(b"%d" % n for n in relevancy_scores(uids, scores)) + b")" if scores is not None else b""
        results.answer(session, tag, options, uids, by_uid, modseq=with_modseq, extra=extra)
        if options.update:
            context.watch(session, tag, ("AND", parsed), uids, by_uid)
    await session.complete(tag, b"SEARCH completed", allow_expunge=by_uid, with_uid=by_uid)


def take_relevancy(arguments: list[Token]) -> tuple[list[Token], bool]:
    """
    C{arguments} with RELEVANCY taken out of a leading ``RETURN (...)``,
    and whether it was there (RFC 6203 section 4; C{results} knows the
    other options). ``RETURN (RELEVANCY)`` alone answers ALL too (what
    an empty list means), since its scores follow ALL's order.
    """
    if len(arguments) < 2 or not isinstance(arguments[0], Atom) or arguments[0].upper() != b"RETURN" or not isinstance(arguments[1], list):
        return arguments, False
    items = arguments[1]
    kept = [item for item in items if not (isinstance(item, Atom) and item.upper() == b"RELEVANCY")]
    if len(kept) == len(items):
        return arguments, False
    return [arguments[0], kept, *arguments[2:]], True


def relevancy_scores(uids: list[int], relevance: dict[int, float]) -> list[int]:
    """
    The RELEVANCY of each of C{uids}, in their order: 1 to 100, the
    index's relevance scaled so that the best ranked message scores 100,
    L{UNRANKED} for one it did not rank.
    """
    ranked = [relevance[uid] for uid in uids if uid in relevance]
    best = max(ranked, default=0.0)
    return [max(1, min(100, round(100 * relevance[uid] / best))) if uid in relevance and best > 0 else UNRANKED for uid in uids]


async def matching(
    session: IMAPServer,
    key: Any,
    derive: Callable[[keys.Content], Any] | None = None,
    on_derived: Callable[[int, Any], None] | None = None,
    within: list[int] | None = None,
    on_envelope: Callable[[int, bytes], None] | None = None,
    cache: bool = True,
    relevance: dict[int, float] | None = None,
) -> list[int]:
    """
    The 0-based positions in the selected view of the messages C{key}
    matches, ascending; of the positions C{within} only, if given (a live
    search looks again at what changed). For each matching message whose
    file had to be read, C{derive(content)} runs on the worker thread that
    read it and C{on_derived(position, result)} is told of its result (SORT
    takes its fields from the same read); for each matching message the
    cached structures decided, C{on_envelope(position, envelope)} is told
    of its cached ENVELOPE. Without C{cache}, header keys are matched from
    the files even when cached structures could answer (THREAD REFERENCES
    reads the files anyway, for References: once, for both). Given
    C{relevance}, it is filled with what the full-text index says of each
    match's relevance to the FUZZY words (UID -> score, higher is better),
    for the matches it ranked.
    """
    selected = session.selected
    assert selected is not None
    uids = list(selected.uids)
    count = len(uids)
    last_uid = uids[-1] if uids else 0

    saved = set(results.saved(session))

    def in_set(ranges: Any, message: keys.Message, uid_set: bool) -> bool:
        if ranges is keys.SAVED:
            return message.uid in saved
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

    from_cache = cache and not needles and header_keys_only(key)
    batch_size = _CACHED_BATCH if from_cache else _SEARCH_BATCH if not needles else _BODY_BATCH

    async def decide(batch: list[tuple[int, int, keys.Message]]) -> None:
        if from_cache:
            sections = SEARCH_FIELDS | (ENVELOPE if on_envelope is not None else 0)
            cached, gone = await load_structures(session, selected.folder, [uid for _, uid, _ in batch], sections)
            unread = []
            for entry in batch:
                position, uid, message = entry
                structure = cached.get(uid)
                loaded = cached_content(structure[3]) if structure is not None else None
                if loaded is None:
                    if uid not in gone:
                        unread.append(entry)
                elif keys.matches(key, message, loaded, in_set):
                    hits.append(position)
                    if on_envelope is not None and structure is not None:
                        on_envelope(position, structure[0])
            # A message whose structure a bound cut has none: its file is read.
            batch = unread
            if not batch:
                return
        opened = await defer.gatherResults(
            [selected.folder.openMessage(uid).addErrback(lambda f: f.trap(NoSuchMessage) and None) for _, uid, _ in batch],
            consumeErrors=True,
        )
        loaded = await session.factory.offThread(_load, opened, needles, derive)
        for (position, uid, message), (content, derived) in zip(batch, loaded):
            if content is not None and content.cut:
                structure_cut(uid)
            if content is not None and keys.matches(key, message, content, in_set):
                if on_derived is not None:
                    on_derived(position, derived)
                hits.append(position)

    considered = range(count) if within is None else within
    wanted = keys.object_keys(key)
    origins = await load_origins(selected, [uids[p] for p in considered]) if wanted & {"EMAILID", "SAVED"} else {}
    threads = await _thread_ids(session, [uids[p] for p in considered]) if "THREADID" in wanted else {}

    def with_objects(message: keys.Message) -> keys.Message:
        origin = origins.get(message.uid)
        if origin is not None:
            message.emailid, message.savedate = origin.emailid, origin.savedate
        message.threadid = threads.get(message.uid)
        return message

    candidates = await _candidates(selected.folder, [uids[p] for p in considered], key) if from_cache else None
    terms, decidable = _text_terms(key)
    decidable = decidable and derive is None and on_envelope is None
    required = _required_terms(key)
    asked = terms if decidable or relevance is not None else required
    text = await _ask_index(selected.folder, asked) if asked else None
    for position in considered:
        uid = uids[position]
        if candidates is not None and uid not in candidates:
            continue
        if text is not None and text.covers(uid):
            if required and not all(_found(text, uid, term) for term in required):
                continue
            if decidable:
                entry = selected.info[uid]
                message = keys.Message(position + 1, uid, entry.flags, entry.size, entry.internaldate, uid in selected.recent)
                if wanted:
                    with_objects(message)
                if keys.matches(key, message, _indexed_content(text, uid, terms), in_set):
                    hits.append(position)
                continue
        entry = selected.info[uid]
        message = keys.Message(position + 1, uid, entry.flags, entry.size, entry.internaldate, uid in selected.recent, entry.modseq)
        if wanted:
            with_objects(message)
        try:
            matched = keys.matches(key, message, None, in_set)
        except keys.NeedContent:
            undecided.append((position, uid, message))
            if len(undecided) >= batch_size:
                await decide(undecided)
                undecided = []
            continue
        if matched:
            hits.append(position)
    if undecided:
        await decide(undecided)
    hits.sort()
    if relevance is not None and text is not None:
        relevance.update((uids[p], text.relevance[uids[p]]) for p in hits if uids[p] in text.relevance)
    return hits


async def _thread_ids(session: IMAPServer, uids: list[int]) -> dict[int, str]:
    """
    The THREADID of each of C{uids} that has one: from the cached
    structures (filled where missing), as FETCH THREADID answers; a message
    without a blob (a bound cut its structure) from its header block.
    """
    selected = session.selected
    assert selected is not None
    found: dict[int, str] = {}
    for start in range(0, len(uids), _CACHED_BATCH):
        chunk = uids[start : start + _CACHED_BATCH]
        cached, gone = await load_structures(session, selected.folder, chunk, THREADID)
        for uid in chunk:
            structure = cached.get(uid)
            if structure is not None:
                item = structure[5]  # b"THREADID (T...)" or b"THREADID NIL"
                if item.endswith(b")"):
                    found[uid] = item[item.index(b"(") + 1 : -1].decode("ascii")
            elif uid not in gone:
                try:
                    handle = await selected.folder.openMessage(uid)
                except NoSuchMessage:
                    continue
                thread = await session.factory.offThread(_thread_of_file, handle)
                if thread is not None:
                    found[uid] = thread
    return found


def _thread_of_file(handle: Any) -> str | None:
    """(worker thread) The THREADID of the open message, from its header block alone; closes it."""
    with handle:
        return preview.thread_id(mime.Part(0, header=keys.read_header_block(handle)))


def _load(
    handles: list[Any], needles: frozenset[str], derive: Callable[[keys.Content], Any] | None
) -> list[tuple[keys.Content | None, Any]]:
    """(worker thread) L{keys.load_contents}, and what C{derive} makes of each."""
    contents = keys.load_contents(handles, needles)
    return [(c, None if c is None or derive is None else derive(c)) for c in contents]


async def _candidates(folder: Any, uids: list[int], key: Any) -> set[int] | None:
    """
    The messages that can match a header search whose top-level keys
    include plain SUBJECT/FROM/... strings (None: it has none, every message
    can): each such string must appear in the message's cached fields, which
    are kept case-folded (L{structurecache.search_fields}); of a FUZZY
    string, each exact word and each approximate word's head or tail.
    Messages without
    a usable blob stay candidates: the match fills and reads theirs. One
    store read per L{_PREFILTER_READ} messages, the next while one is checked, no decoding.
    """
    required = [
        sub[2].encode("utf-8", "surrogatepass") for sub in key[1] if sub[0] in ("HEADER", "ADDRESS") and isinstance(sub[2], str) and sub[2]
    ]
    # A FUZZY string's words: an exact one must be there, an approximate one's head or tail (fuzzy.pieces).
    alternatives = [
        [part.encode("utf-8", "surrogatepass") for part in (fuzzy.pieces(needle.word) if isinstance(needle, Approximate) else (needle,))]
        for sub in key[1]
        if sub[0] in ("HEADER", "ADDRESS") and isinstance(sub[2], keys.Fuzzy)
        for needle in sub[2].needles
    ]
    if not required and not alternatives:
        return None
    candidates: set[int] = set()
    chunks = [uids[start : start + _PREFILTER_READ] for start in range(0, len(uids), _PREFILTER_READ)]
    # The next chunk is read (on a worker thread, SQLite without the GIL) while this one is checked.
    pending = folder.cachedStructures(chunks[0], STRUCTURE_VERSION) if chunks else None
    for index, chunk in enumerate(chunks):
        assert pending is not None
        blobs = await pending
        pending = folder.cachedStructures(chunks[index + 1], STRUCTURE_VERSION) if index + 1 < len(chunks) else None
        for uid in chunk:
            blob = blobs.get(uid)
            fields = search_fields(blob) if blob is not None else None
            if fields is None or (
                all(needle in fields for needle in required) and all(any(part in fields for part in parts) for parts in alternatives)
            ):
                candidates.add(uid)
    return candidates


#: The keys whose content the full-text index cannot decide (the header cache or the file does).
_HEADER_CONTENT_KEYS = frozenset({"HEADER", "ADDRESS", "SENTBEFORE", "SENTON", "SENTSINCE"})


#: A needle as the index is asked for it: (scope, exact string or approximate word).
_Term = tuple[str, keys.Needle]


def _text_terms(key: Any) -> tuple[list[_Term], bool]:
    """
    Every BODY/TEXT needle in C{key} as the index's (scope, needle), and
    whether the index decides C{key} alone for the messages it covers:
    every key that needs content is BODY or TEXT with needles long enough,
    and no needle is asked both as BODY and as TEXT (the matched needles
    are handed to the match as one set).
    """
    terms: set[_Term] = set()
    decidable = True
    stack = [key]
    while stack:
        sub = stack.pop()
        kind = sub[0]
        if kind in ("BODY", "TEXT"):
            for needle in keys.key_needles(sub[1]):
                terms.add((kind.lower(), needle))
                decidable = decidable and len(needle) >= MIN_TEXT_NEEDLE
        elif kind == "AND":
            stack.extend(sub[1])
        elif kind == "NOT":
            stack.append(sub[1])
        elif kind == "OR":
            stack.extend((sub[1], sub[2]))
        elif kind in _HEADER_CONTENT_KEYS:
            decidable = False
    if len({needle for _, needle in terms}) < len(terms):
        decidable = False
    return sorted(terms, key=_term_order), decidable and bool(terms)


def _term_order(term: _Term) -> tuple[str, bool, str]:
    scope, needle = term
    return (scope, isinstance(needle, Approximate), needle.word if isinstance(needle, Approximate) else needle)


def _required_terms(key: Any) -> list[_Term]:
    """The BODY/TEXT needles of C{key}'s top level (ANDed: a message must contain each) long enough for the index."""
    required = {
        (sub[0].lower(), needle)
        for sub in key[1]
        if sub[0] in ("BODY", "TEXT")
        for needle in keys.key_needles(sub[1])
        if len(needle) >= MIN_TEXT_NEEDLE
    }
    return sorted(required, key=_term_order)


async def _ask_index(folder: Any, terms: list[_Term]) -> TextMatches | None:
    """The full-text index's answer, or None (no index, or it failed: every message is read, as before)."""
    exact = [(scope, needle) for scope, needle in terms if isinstance(needle, str)]
    near = [(scope, needle.word) for scope, needle in terms if isinstance(needle, Approximate)]
    try:
        result: TextMatches | None = await (folder.searchText(exact, approximate=near) if near else folder.searchText(exact))
    except Exception:  # noqa: BLE001 - the index is an accelerator: reading the messages answers too
        return None
    return result


def _found(text: TextMatches, uid: int, term: _Term) -> bool:
    """Whether the index found C{term} in the covered message C{uid}."""
    scope, needle = term
    if isinstance(needle, Approximate):
        return uid in text.approximate.get((scope, needle.word), ())
    return uid in text.found.get((scope, needle), ())


def _indexed_content(text: TextMatches, uid: int, terms: list[_Term]) -> keys.Content:
    """What the match needs of a covered message: which BODY/TEXT needles it contains, by the index."""
    return keys.Content({}, "", frozenset(term[1] for term in terms if _found(text, uid, term)), None)
