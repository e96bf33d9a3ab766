"""
FETCH and UID FETCH (RFC 3501 6.4.5, 6.4.8), with the fetch-item parser.

What the index knows (FLAGS, UID, INTERNALDATE, RFC822.SIZE) is answered
from the session's view, in batches paced by the transport. ENVELOPE,
BODYSTRUCTURE and BODY come from each message's cached structure in the
index (L{mailapp.imap.structurecache}), a batch per store read: a message
without one has its file scanned once, and the result saved. What needs the
message's bytes (BODY[...]) opens its file on a worker thread, scans its
MIME structure there when an item needs it, and streams the bytes a chunk
at a time, so memory stays bounded whatever the message size. Fetching a
body sets \\Seen first (not BODY.PEEK), in one store change.

EMAILID and SAVEDATE (RFC 8474, RFC 8514) come from the index, one read
per FETCH (L{mailapp.interfaces.IFolder.origins}), kept by the view since
they never change; THREADID and PREVIEW (RFC 8474, RFC 8970) from the
cached structure, so a PREVIEW is computed once per message, not per FETCH.
PREVIEW (LAZY) is answered the same way: the cache fills at first use.
"""

from __future__ import annotations

import bisect
import functools
import io
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Coroutine

from twisted.internet import defer
from twisted.logger import Logger

from mailapp import logevents
from mailapp.errors import NoSuchMessage
from mailapp.imap import binary, mime, partoffsets, preview, structurecache
from mailapp.imap.commands.condstore import enable_condstore, parse_modseq, vanished_earlier
from mailapp.imap.flags import RECENT, SEEN
from mailapp.imap.policy import CHUNK_SIZE, FETCH_BATCH
from mailapp.imap.wire import (
    Atom,
    BadCommand,
    Token,
    as_string,
    format_datetime,
    format_flags,
    format_value,
    parse_arguments,
    parse_sequence_set,
    select_positions,
)
from mailapp.records import MessageInfo, MessageOrigin

if TYPE_CHECKING:
    from mailapp.imap.selected import SelectedFolder
    from mailapp.imap.session import IMAPServer

__all__ = [
    "FetchItem",
    "fetch",
    "fetch_unsolicited",
    "keep_structures",
    "load_structures",
    "parse_fetch_items",
    "remember_structures",
    "structure_cut",
    "uid_fetch",
]

_log = Logger()

_FETCH_SECTION = re.compile(rb"^(BODY(?:\.PEEK)?)\[(.*)\](?:<([0-9]{1,10})(?:\.([0-9]{1,10}))?>)?$", re.S | re.I)
#: RFC 3516: BINARY[1.2]<0.10>, BINARY.PEEK[...], BINARY.SIZE[...] (part numbers only, no partial for SIZE).
_FETCH_BINARY = re.compile(rb"^(BINARY(?:\.PEEK|\.SIZE)?)\[([0-9.]*)\](?:<([0-9]{1,10})\.([0-9]{1,10})>)?$", re.I)
_SIMPLE = {
    b"FLAGS", b"UID", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODYSTRUCTURE", b"BODY", b"MODSEQ",
    b"EMAILID", b"THREADID", b"SAVEDATE", b"PREVIEW",
}
_MACROS = {
    b"ALL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"],
    b"FAST": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"],
    b"FULL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"],
}
_FROM_INDEX = ("FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "MODSEQ", "EMAILID", "SAVEDATE")
#: The index items read with L{mailapp.interfaces.IFolder.origins}.
_FROM_ORIGINS = ("EMAILID", "SAVEDATE")
#: The items a cached structure answers.
_FROM_CACHE = ("ENVELOPE", "BODYSTRUCTURE", "BODY", "PREVIEW", "THREADID")
_SECTIONS = {
    "ENVELOPE": structurecache.ENVELOPE,
    "BODYSTRUCTURE": structurecache.BODYSTRUCTURE,
    "BODY": structurecache.BODY,
    "PREVIEW": structurecache.PREVIEW,
    "THREADID": structurecache.THREADID,
}
#: Which of L{structurecache.CachedStructure}'s items each cached FETCH item is.
_CACHED_ITEM = {"ENVELOPE": 0, "BODYSTRUCTURE": 1, "BODY": 2, "PREVIEW": 4, "THREADID": 5}
#: Cached structures read per store trip by a FETCH.
_CACHE_READ = 1024
#: A message at most this size is read whole for a FETCH of its bytes, L{_SMALL_READ} in one store trip.
SMALL_MESSAGE = 128 * 1024
_SMALL_READ = 32
#: Message files opened at once (and scanned in one trip to a worker thread) to fill missing structures.
_FILL_BATCH = 64


@dataclass
class FetchItem:
    """One item a FETCH asks for."""

    kind: str  # FLAGS UID INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY SECTION BINARY BINARY.SIZE, MODSEQ EMAILID SAVEDATE THREADID PREVIEW
    label: bytes = b""
    section: mime.Section | None = None
    start: int | None = None
    length: int | None = None
    seen: bool = False

    @property
    def needs_file(self) -> bool:
        return self.kind in ("ENVELOPE", "BODYSTRUCTURE", "BODY", "SECTION", "BINARY", "BINARY.SIZE", "PREVIEW", "THREADID")

    @property
    def needs_structure(self) -> bool:
        return self.kind in ("ENVELOPE", "BODYSTRUCTURE", "BODY", "BINARY", "BINARY.SIZE") or (
            self.kind == "SECTION" and self.section is not None and self.section.needs_structure()
        )


# -- the fetch-item parser ----------------------------------------------------------------------


def parse_fetch_items(tokens: list[Token]) -> list[FetchItem]:
    """The items of a FETCH: one item, a macro (ALL, FAST, FULL) or a parenthesized list."""
    if len(tokens) == 1 and isinstance(tokens[0], list):
        tokens = tokens[0]
    elif len(tokens) == 1 and isinstance(tokens[0], Atom):
        macro = tokens[0].upper()
        if macro in _MACROS:
            tokens = [Atom(x) for x in _MACROS[macro]]
    else:
        raise BadCommand("FETCH items must be one item or a parenthesized list")
    if not tokens:
        raise BadCommand("No FETCH items")
    items: list[FetchItem] = []
    for token in tokens:
        if isinstance(token, list) and items and items[-1].kind == "PREVIEW" and not items[-1].label:
            # RFC 8970 3.1: PREVIEW (LAZY); the only modifier, and we always have (or make) the preview.
            if not token or any(not isinstance(t, Atom) or t.upper() != b"LAZY" for t in token):
                raise BadCommand("Unknown PREVIEW modifier")
            items[-1].label = b"LAZY"
            continue
        if not isinstance(token, Atom):
            raise BadCommand("Bad FETCH item")
        items.append(_fetch_item(bytes(token)))
    return items


def _fetch_item(text: bytes) -> FetchItem:
    upper = text.upper()
    if upper in _SIMPLE:
        return FetchItem(upper.decode())
    if upper == b"RFC822":
        return FetchItem("SECTION", b"RFC822", mime.Section(), seen=True)
    if upper == b"RFC822.HEADER":
        return FetchItem("SECTION", b"RFC822.HEADER", mime.Section((), "HEADER"))
    if upper == b"RFC822.TEXT":
        return FetchItem("SECTION", b"RFC822.TEXT", mime.Section((), "TEXT"), seen=True)
    if upper.startswith(b"BINARY"):
        return _binary_item(text)
    match = _FETCH_SECTION.match(text)
    if not match:
        raise BadCommand("Unknown FETCH item")
    inner = match.group(2)
    field_names: list[bytes] = []
    paren = inner.find(b"(")
    section_text = inner
    if paren >= 0:
        section_text = inner[:paren]
        try:
            tokens = parse_arguments([inner[paren:]])
        except BadCommand:
            raise BadCommand("Bad header field list") from None
        if len(tokens) != 1 or not isinstance(tokens[0], list) or not tokens[0]:
            raise BadCommand("Bad header field list")
        field_names = [as_string(t, "header field") for t in tokens[0]]
        if not section_text.endswith(b" "):
            raise BadCommand("Bad section")
    try:
        section = mime.parse_section(section_text, field_names)
    except ValueError as e:
        raise BadCommand(f"Bad section: {e}") from None
    start = int(match.group(3)) if match.group(3) is not None else None
    length = int(match.group(4)) if match.group(4) is not None else None
    if match.group(3) is not None and match.group(4) is None:
        raise BadCommand("Partial needs <start.length>")
    peek = match.group(1).upper() == b"BODY.PEEK"
    label_inner = section_text.strip().upper()
    if field_names:
        label_inner += b" (" + b" ".join(f.upper() for f in field_names) + b")"
    label = b"BODY[" + label_inner + b"]" + (b"<%d>" % start if start is not None else b"")
    return FetchItem("SECTION", label, section, start, length, seen=not peek)


def _binary_item(text: bytes) -> FetchItem:
    """BINARY[...], BINARY.PEEK[...], BINARY.SIZE[...] (RFC 3516 4.2): a part's content, decoded."""
    match = _FETCH_BINARY.match(text)
    if not match:
        raise BadCommand("Bad BINARY item")
    name = match.group(1).upper()
    numbers = match.group(2)
    if numbers and not all(n.isdigit() and int(n) > 0 for n in numbers.split(b".")):
        raise BadCommand("Bad BINARY section")
    if name == b"BINARY.SIZE" and match.group(3) is not None:
        raise BadCommand("BINARY.SIZE takes no partial")
    section = mime.Section(tuple(int(n) for n in numbers.split(b".")) if numbers else ())
    start = int(match.group(3)) if match.group(3) is not None else None
    length = int(match.group(4)) if match.group(4) is not None else None
    if name == b"BINARY.SIZE":
        return FetchItem("BINARY.SIZE", b"BINARY.SIZE[" + numbers + b"]", section)
    label = b"BINARY[" + numbers + b"]" + (b"<%d>" % start if start is not None else b"")
    return FetchItem("BINARY", label, section, start, length, seen=name == b"BINARY")


# -- the commands -------------------------------------------------------------------------------------


def fetch(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _fetch(session, tag, arguments, by_uid=False)


def uid_fetch(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _fetch(session, tag, arguments, by_uid=True)


async def _fetch(session: IMAPServer, tag: bytes, arguments: list[Token], by_uid: bool) -> None:
    if len(arguments) < 2:
        raise BadCommand("FETCH sequence-set items")
    ranges = parse_sequence_set(as_string(arguments[0], "sequence set"))
    changed_since, vanished = None, False
    if len(arguments) == 3 and isinstance(arguments[2], list):
        changed_since, vanished = _modifiers(session, arguments[2], by_uid)
        arguments = arguments[:2]
    items = parse_fetch_items(arguments[1:])
    if by_uid and not any(i.kind == "UID" for i in items):
        items.insert(0, FetchItem("UID"))
    selected = session.selected
    assert selected is not None
    if changed_since is not None or any(i.kind == "MODSEQ" for i in items):
        await enable_condstore(session)
    if changed_since is not None and not any(i.kind == "MODSEQ" for i in items):
        items.append(FetchItem("MODSEQ"))  # RFC 7162 3.1.4.1: CHANGEDSINCE implies MODSEQ
    positions = select_positions(ranges, selected.uids, by_uid)
    if vanished:
        assert changed_since is not None
        await vanished_earlier(session, selected, changed_since, ranges)
    if changed_since is not None:
        info = selected.info
        positions = [p for p in positions if info[selected.uids[p]].modseq > changed_since]
    flags_changed: set[int] = set()
    if not selected.readonly and any(i.seen for i in items):
        unseen = [selected.uids[p] for p in positions if SEEN not in selected.info[selected.uids[p]].flags]
        if unseen:
            change = await selected.folder.changeFlags(unseen, [SEEN], "add")
            for uid, flags in change.flags.items():
                if uid in selected.info:
                    selected.setFlags(uid, flags, change.modseqs.get(uid))
                    flags_changed.add(uid)
    if flags_changed and not any(i.kind == "FLAGS" for i in items):
        items.append(FetchItem("FLAGS"))
    if session.condstore and not any(i.kind == "MODSEQ" for i in items) and any(i.kind == "FLAGS" for i in items):
        items.append(FetchItem("MODSEQ"))  # once CONDSTORE is on, FLAGS come with their MODSEQ (as Dovecot sends them)
    kept, origins = await _with_origins(selected, positions, items)
    missing = len(kept) < len(positions)  # gone from the index and the hold (expunged by another session): as a gone file
    positions = kept
    if not any(i.needs_file for i in items):
        await _fetchFromIndex(session, selected, positions, items, origins)
    elif all(i.kind in _FROM_INDEX or i.kind in _FROM_CACHE for i in items):
        missing = not await _fetchFromCache(session, selected, positions, items, origins) or missing
    else:
        try:
            missing = not await _fetchMessages(session, selected, positions, items, origins) or missing
        except binary.UnknownEncoding:
            session.tagged(tag, b"NO", b"[UNKNOWN-CTE] Unknown content-transfer-encoding")
            return
    if missing:
        # Expunged longer ago than the store holds its file (mailapp.store.expunged), or
        # deleted behind the store's back: no response for it, and OK as Dovecot says it
        # (RFC 5530 EXPUNGEISSUED; a NO made clients retry or give up the whole FETCH).
        selected.look_outside = True
        await session.update(allow_expunge=by_uid, with_uid=by_uid)
        session.tagged(tag, b"OK", b"[EXPUNGEISSUED] Some messages were already expunged")
        return
    await session.complete(tag, b"FETCH completed", allow_expunge=by_uid, with_uid=by_uid)


async def fetch_unsolicited(session: IMAPServer, uids: list[int], items: list[FetchItem]) -> None:
    """
    FETCH responses for C{uids} of the selected folder, with no tagged
    reply and never setting \\Seen (a body section is answered as its
    ``.PEEK``): NOTIFY's MessageNew fetch-atts (RFC 5465 5.2), sent after
    the EXISTS of the new messages. A message gone meanwhile is left out.
    """
    selected = session.selected
    if selected is None or not uids:
        return
    positions = []
    for uid in sorted(uids):  # by bisection: new mail is at the end of a folder of any size
        position = bisect.bisect_left(selected.uids, uid)
        if position < len(selected.uids) and selected.uids[position] == uid:
            positions.append(position)
    positions, origins = await _with_origins(selected, positions, items)
    if not any(i.needs_file for i in items):
        await _fetchFromIndex(session, selected, positions, items, origins)
    elif all(i.kind in _FROM_INDEX or i.kind in _FROM_CACHE for i in items):
        await _fetchFromCache(session, selected, positions, items, origins)
    else:
        await _fetchMessages(session, selected, positions, items, origins, skip_unknown_encoding=True)


@functools.lru_cache(maxsize=1024)
def _flagsItem(flags: frozenset[str], recent: bool) -> bytes:
    """FLAGS as sent: a folder's messages share a few sets, formatted once each (sorting was 8% of an index FETCH)."""
    return b"FLAGS " + format_flags(flags | {RECENT} if recent else flags)


def _simpleItem(item: FetchItem, uid: int, info: MessageInfo, recent: bool, origins: dict[int, MessageOrigin]) -> bytes:
    if item.kind == "FLAGS":
        return _flagsItem(info.flags, recent)
    if item.kind == "UID":
        return b"UID %d" % uid
    if item.kind == "INTERNALDATE":
        return b"INTERNALDATE " + format_datetime(info.internaldate)
    if item.kind == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % info.size
    if item.kind == "MODSEQ":
        return b"MODSEQ (%d)" % info.modseq
    if item.kind == "EMAILID":
        return b"EMAILID (%s)" % origins[uid].emailid.encode("ascii")
    if item.kind == "SAVEDATE":
        saved = origins[uid].savedate
        return b"SAVEDATE " + (format_datetime(saved) if saved is not None else b"NIL")
    raise AssertionError(item.kind)


async def _with_origins(
    selected: SelectedFolder, positions: list[int], items: list[FetchItem]
) -> tuple[list[int], dict[int, MessageOrigin]]:
    """
    For items that need them (EMAILID, SAVEDATE), the origins of the
    messages at C{positions}, and the positions of those that still have
    one (the others are gone); otherwise C{positions} as they are.
    """
    if not any(i.kind in _FROM_ORIGINS for i in items):
        return positions, {}
    origins = await load_origins(selected, [selected.uids[p] for p in positions])
    return [p for p in positions if selected.uids[p] in origins], origins


async def load_origins(selected: SelectedFolder, uids: list[int]) -> dict[int, MessageOrigin]:
    """
    The EMAILID and save date of C{uids}: those the view already knows
    (they never change for a UID of one UIDVALIDITY), the rest in one read
    of the index, kept by the view. A UID left out is no longer in the index.
    """
    known = selected.origins
    wanted = [uid for uid in uids if uid not in known]
    if wanted:
        known.update(await selected.folder.origins(wanted))
    return {uid: known[uid] for uid in uids if uid in known}


def _modifiers(session: IMAPServer, modifiers: list[Token], by_uid: bool) -> tuple[int | None, bool]:
    """FETCH's (CHANGEDSINCE n [VANISHED]) (RFC 7162 3.1.4.1, 3.2.6): VANISHED only in UID FETCH, with QRESYNC on."""
    changed_since, vanished = None, False
    position = 0
    while position < len(modifiers):
        name = as_string(modifiers[position], "FETCH modifier").upper()
        position += 1
        if name == b"CHANGEDSINCE" and position < len(modifiers):
            changed_since = parse_modseq(modifiers[position], "CHANGEDSINCE mod-sequence", zero=False)
            position += 1
        elif name == b"VANISHED" and by_uid and session.qresync:
            vanished = True
        else:
            raise BadCommand("Unknown FETCH modifier")
    if vanished and changed_since is None:
        raise BadCommand("VANISHED needs CHANGEDSINCE")
    return changed_since, vanished


async def _fetchFromIndex(
    session: IMAPServer, selected: SelectedFolder, positions: list[int], items: list[FetchItem], origins: dict[int, MessageOrigin]
) -> None:
    """FLAGS, UID, INTERNALDATE, RFC822.SIZE: answered from the view, in batches paced by the transport."""
    uids, info, recent = selected.uids, selected.info, selected.recent
    flow = session.flow
    for start in range(0, len(positions), FETCH_BATCH):
        out = []
        for position in positions[start : start + FETCH_BATCH]:
            uid = uids[position]
            entry = info[uid]
            is_recent = uid in recent
            body = b" ".join([_simpleItem(item, uid, entry, is_recent, origins) for item in items])
            out.append(b"* %d FETCH (%s)\r\n" % (position + 1, body))
        session.write(b"".join(out))
        if flow.paused:
            await flow.wait()


async def _fetchFromCache(
    session: IMAPServer, selected: SelectedFolder, positions: list[int], items: list[FetchItem], origins: dict[int, MessageOrigin]
) -> bool:
    """
    Index items and ENVELOPE, BODYSTRUCTURE, BODY: from the cached
    structures, read L{_CACHE_READ} at a time in one store trip (the next
    while this one is answered) and written
    L{FETCH_BATCH} responses at a time, paced by the transport. A message
    that has none (cut by a bound) goes the file's way. False if some
    message is gone.
    """
    flow = session.flow
    complete = True
    recent = selected.recent
    kinds = {i.kind for i in items}
    wanted = sum(section for kind, section in _SECTIONS.items() if kind in kinds)
    chunks = [[p for p in positions[start : start + _CACHE_READ] if p < len(selected.uids)] for start in range(0, len(positions), _CACHE_READ)]

    def load(chunk: list[int]) -> defer.Deferred[tuple[dict[int, structurecache.CachedStructure], set[int]]]:
        return defer.Deferred.fromCoroutine(load_structures(session, selected.folder, [selected.uids[p] for p in chunk], wanted))

    # The next chunk is read (on a worker thread, SQLite without the GIL) while this one is written.
    pending = load(chunks[0]) if chunks else None
    for index, chunk in enumerate(chunks):
        assert pending is not None
        cached, gone = await pending
        pending = load(chunks[index + 1]) if index + 1 < len(chunks) and selected.active else None
        if not selected.active:
            break
        uids = [selected.uids[p] for p in chunk]
        out: list[bytes] = []
        for position, uid in zip(chunk, uids):
            structure = cached.get(uid)
            if structure is None:
                if uid in gone:
                    complete = False
                    continue
                session.write(b"".join(out))
                out = []
                if not await _fetchOne(session, selected, position, items, origins):
                    complete = False
                continue
            entry = selected.info[uid]
            parts = []
            for item in items:
                cached_item = _CACHED_ITEM.get(item.kind)
                if cached_item is not None:
                    parts.append(structure[cached_item])
                else:
                    parts.append(_simpleItem(item, uid, entry, uid in recent, origins))
            out.append(b"* %d FETCH (%s)\r\n" % (position + 1, b" ".join(parts)))
            if len(out) >= FETCH_BATCH:
                session.write(b"".join(out))
                out = []
                if flow.paused:
                    await flow.wait()
        session.write(b"".join(out))
        if flow.paused:
            await flow.wait()
    return complete


async def load_structures(
    session: IMAPServer,
    folder: Any,
    uids: list[int],
    wanted: int = structurecache.ALL_SECTIONS,
    read: dict[int, bytes] | None = None,
    blobs: dict[int, bytes] | None = None,
) -> tuple[dict[int, structurecache.CachedStructure], set[int]]:
    """
    The cached structures of C{uids}: read from the index, and for those
    without a usable one (none, another version, damaged) computed from
    their files, a few at a time on a worker thread, and saved; only the
    C{wanted} sections (L{structurecache.decode}). Also the
    UIDs whose files are gone. A message whose structure a bound cut has
    none (the caller reads its file). C{read}: messages' bytes the caller
    already has (L{_fetchMessages}), not read again to fill a structure;
    C{blobs}: what the index (or L{_kept_blobs}) already gave for C{uids}.
    """
    found: dict[int, structurecache.CachedStructure] = {}
    if blobs is None:
        blobs = await folder.cachedStructures(uids, structurecache.STRUCTURE_VERSION)
    for uid, blob in blobs.items():
        decoded = structurecache.decode(blob, wanted)
        if decoded is not None:
            found[uid] = decoded
    misses = [uid for uid in uids if uid not in found]
    gone: set[int] = set()
    for start in range(0, len(misses), _FILL_BATCH):
        chunk = misses[start : start + _FILL_BATCH]
        known = read or {}
        unread = [uid for uid in chunk if uid not in known]
        # Small messages in one store trip (gone or larger ones left out: opened one by one).
        if unread:
            known = {**known, **(await folder.readMessages(unread, SMALL_MESSAGE))}
        handles: list[IO[bytes] | None] = [io.BytesIO(known[uid]) if uid in known else None for uid in chunk]
        rest = [index for index, uid in enumerate(chunk) if uid not in known]
        if rest:
            opened = await defer.gatherResults(
                [folder.openMessage(chunk[index]).addErrback(lambda f: f.trap(NoSuchMessage) and None) for index in rest],
                consumeErrors=True,
            )
            for index, handle in zip(rest, opened):
                handles[index] = handle
        where = _scan_key(session, folder)
        keys = [(*where, uid) for uid in chunk] if where else None
        computed = await session.factory.offThread(_compute_all, handles, keys)
        fresh = {}
        for uid, handle, blob in zip(chunk, handles, computed):
            if handle is None:
                gone.add(uid)
            elif blob is not None:
                decoded = structurecache.decode(blob, wanted)
                if decoded is not None:
                    found[uid] = decoded
                    fresh[uid] = blob
        keep_structures(session, folder, fresh)
    return found, gone


def keep_structures(session: IMAPServer, folder: Any, blobs: dict[int, bytes], sizes: dict[int, int] | None = None) -> None:
    """
    Keep freshly computed C{blobs} (UID -> blob): in this process's memory
    at once (L{remember_structures}), and in the index by the store's
    writer in its next batch, not waited for. The answer does not depend
    on the save, and waiting would add a whole batch (its fsync) to the
    command whenever the writer is busy; a failure only costs a later scan.
    """
    if not blobs:
        return
    remember_structures(session, folder, blobs, sizes)
    folder.saveStructures(blobs, structurecache.STRUCTURE_VERSION).addErrback(
        lambda f: _log.failure("imap structure cache not saved", f, log_event=logevents.IMAP_INTERNAL_ERROR)
    )


def _wanted_sections(items: list[FetchItem]) -> int:
    """The sections of the cached structure the items use: the rendered ones, and the part tree for body sections."""
    wanted = sum(_SECTIONS[i.kind] for i in items if i.kind in _SECTIONS)
    if any(_needs_parts(i) for i in items):
        wanted |= structurecache.PARTS
    return wanted


def _needs_parts(item: FetchItem) -> bool:
    """Whether the item is a body section that needs to know where the message's parts are."""
    return item.kind in ("BINARY", "BINARY.SIZE") or (item.kind == "SECTION" and item.section is not None and item.section.needs_structure())


async def _fetchMessages(
    session: IMAPServer,
    selected: SelectedFolder,
    positions: list[int],
    items: list[FetchItem],
    origins: dict[int, MessageOrigin],
    skip_unknown_encoding: bool = False,
) -> bool:
    """
    The FETCH responses of C{positions} for items that need the messages'
    bytes; False if some message is gone. A small message (at most
    L{SMALL_MESSAGE}) is read whole, L{_SMALL_READ} of them in one store
    trip while their cached structures are read (from this process's
    L{_kept_blobs}, else from the index in another trip at the same time);
    a larger one is opened and streamed by itself. Under
    imaptest's stress a FETCH of twenty small messages took one
    worker-thread round trip or three per message, 1.3 ms each.

    A message whose cached structure has its part tree
    (L{mailapp.imap.partoffsets}) has its sections cut from its bytes by
    the tree: it is not scanned. One without (none yet: it is computed from
    the bytes read and saved, L{load_structures}; or a bound cut its
    structure) is scanned, on a worker thread with the other messages'
    BINARY decoding (L{_prepare_all}).
    """
    complete = True
    info = selected.info
    wanted = _wanted_sections(items)
    start = 0
    while start < len(positions):
        if not selected.active:
            break
        chunk: list[int] = []
        while start < len(positions) and len(chunk) < _SMALL_READ:
            position = positions[start]
            if position >= len(selected.uids) or info[selected.uids[position]].size > SMALL_MESSAGE:
                break
            chunk.append(position)
            start += 1
        if not chunk:
            position = positions[start]
            start += 1
            if position >= len(selected.uids):
                break
            chunk_prepared: list[_Prepared | None] = [None]
            chunk = [position]
        else:
            uids = [selected.uids[p] for p in chunk]
            folder = selected.folder
            # Both reads at once, on two of the store's threads.
            reading = folder.readMessages(uids, SMALL_MESSAGE)
            kept = defer.Deferred.fromCoroutine(_kept_blobs(session, folder, uids)) if wanted else defer.succeed({})
            read, blobs = await reading, await kept
            cached: dict[int, structurecache.CachedStructure] = {}
            if wanted:
                cached, _ = await load_structures(session, folder, [uid for uid in uids if uid in read], wanted, read, blobs)
            chunk_prepared = await _prepare_chunk(session, read, uids, items, cached)
        for position, prepared in zip(chunk, chunk_prepared):
            if position >= len(selected.uids) or not selected.active:
                break
            try:
                if not await _fetchOne(session, selected, position, items, origins, prepared):
                    complete = False
            except binary.UnknownEncoding:
                if not skip_unknown_encoding:
                    raise
    return complete


async def _prepare_chunk(
    session: IMAPServer, read: dict[int, bytes], uids: list[int], items: list[FetchItem], cached: dict[int, structurecache.CachedStructure]
) -> list[_Prepared | None]:
    """
    L{_prepare_all} for a chunk of small messages read whole: on a worker
    thread when a message must be scanned or a BINARY part decoded, and
    at once when every part tree is cached and nothing is to be decoded
    (the common case: a trip to a thread for nothing costs more than
    cutting a few sections).
    """
    parts_needed = any(_needs_parts(i) for i in items)
    trees: dict[int, mime.PartTree] = {}
    if parts_needed:
        for uid, structure in cached.items():
            tree = structurecache.parts(structure)
            if tree is not None:
                trees[uid] = tree
    rendered = any(i.kind in _SECTIONS for i in items)
    scans = {uid for uid in uids if uid in read and ((parts_needed and uid not in trees) or (rendered and uid not in cached))}
    decodes = any(i.kind in ("BINARY", "BINARY.SIZE") for i in items)
    if scans or decodes:
        where = _scan_key(session, session.selected.folder) if session.selected is not None else ()
        prepared: list[_Prepared | None] = await session.factory.offThread(_prepare_all, read, uids, items, where, trees, scans)
    else:
        prepared = [_Prepared(io.BytesIO(read[uid]), tree=trees.get(uid)) if uid in read else None for uid in uids]
    for uid, entry in zip(uids, prepared):
        if entry is not None:
            entry.cached = cached.get(uid)
    return prepared


class _ScannedStructures:
    """
    The MIME structures scanned for FETCH, shared by every session of
    this process, least recently used first out: a message's bytes never
    change under its (account, folder, UIDVALIDITY, UID), so a structure
    scanned for one client serves the next until the structure cache in
    the index has it (its blob is saved without being waited for), and
    for good for a message whose structure cannot be cached (a bound cut
    it, or its blob is too big). Parts are only read once scanned, so
    sharing them across threads is safe.
    """

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], mime.Structure] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> mime.Structure | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[Any, ...], structure: mime.Structure) -> None:
        with self._lock:
            self._items[key] = structure
            while len(self._items) > self.size:
                self._items.popitem(last=False)


_scanned = _ScannedStructures()


class _KeptBlobs:
    """
    The cached structure blobs this process read from the index or
    computed, by (account, folder, UIDVALIDITY, UID), least recently used
    first out, at most C{size} bytes of them: a blob never changes under
    its key (a UID is never reused in a folder of one UIDVALIDITY), so
    sessions of one process read each one from the index once. Under
    imaptest's stress ten sessions FETCH the same new messages' sections,
    and reading a small message's blob from SQLite for each FETCH took as
    much of the GIL as the scan it replaced. One per store object (every
    listener of the process shares it; a test's store has its own), as
    \\Recent's markers are. Reactor thread only.
    """

    def __init__(self, size: int = 8 * 1024 * 1024) -> None:
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: tuple[Any, ...], blob: bytes) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old)
        self._items[key] = blob
        self._bytes += len(blob)
        while self._bytes > self.size and self._items:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= len(dropped)


def _kept(session: IMAPServer) -> _KeptBlobs:
    kept: _KeptBlobs | None = getattr(session.store, "_imapKeptStructures", None)
    if kept is None:
        kept = _KeptBlobs()
        try:
            session.store._imapKeptStructures = kept
        except AttributeError:  # pragma: no cover - a store that takes no attributes: kept for this call only
            pass
    return kept


async def _kept_blobs(session: IMAPServer, folder: Any, uids: list[int]) -> dict[int, bytes]:
    """
    The cached structure blobs of C{uids} (of this version): those this
    process holds (L{_kept}, for the selected folder), the rest in one
    read of the index, kept for the next FETCH. What the body sections'
    FETCHes read; ENVELOPE, SEARCH and SORT read the index each time, a
    thousand blobs a trip, so that a blob damaged there is noticed and
    replaced at once.
    """
    where = _scan_key(session, folder)
    found: dict[int, bytes] = {}
    if where:
        kept = _kept(session)
        info = session.selected.info if session.selected is not None else {}
        for uid in uids:
            entry = info.get(uid)
            blob = kept.get((*where, uid, entry.size)) if entry is not None else None
            if blob is not None:
                found[uid] = blob
    rest = [uid for uid in uids if uid not in found] if found else uids
    if rest:
        read = await folder.cachedStructures(rest, structurecache.STRUCTURE_VERSION)
        found.update(read)
        remember_structures(session, folder, read)
    return found


def remember_structures(session: IMAPServer, folder: Any, blobs: dict[int, bytes], sizes: dict[int, int] | None = None) -> None:
    """
    Keep C{blobs} (UID -> blob, of this version) for this process's next
    FETCHes, when C{folder} is the selected one, under their messages'
    sizes too (as L{_scanned} keys its scans: a second guard besides the
    UIDVALIDITY against a folder made again under the same name): from
    C{sizes}, or the view's for messages it lists.
    """
    where = _scan_key(session, folder)
    if not where or not blobs or session.selected is None:
        return
    kept = _kept(session)
    info = session.selected.info
    for uid, blob in blobs.items():
        entry = info.get(uid)
        size = sizes.get(uid) if sizes is not None and uid in sizes else (entry.size if entry is not None else None)
        if size is not None:
            kept.put((*where, uid, size), blob)


@dataclass
class _Prepared:
    """A message's bytes (or open file), with what its FETCH needs found before its response is written."""

    handle: IO[bytes]
    #: Its structure as scanned (when it had to be: no cached structure, or no part tree in it).
    scanned: mime.Structure | None = None
    #: Its part tree: the cached one, else the scanned root.
    tree: mime.PartTree | None = None
    #: Its cached structure, with the sections the items use.
    cached: structurecache.CachedStructure | None = None
    #: Item index -> a BINARY item's decoded content.
    decoded: dict[int, bytes] | None = None
    #: BINARY met an encoding it does not know (raised where the response is made, in order).
    unknown_encoding: bool = False


def _prepare_all(
    read: dict[int, bytes],
    uids: list[int],
    items: list[FetchItem],
    where: tuple[Any, ...] = (),
    trees: dict[int, mime.PartTree] | None = None,
    scans: set[int] | None = None,
) -> list[_Prepared | None]:
    """
    Worker thread: each message of C{uids} (its bytes in C{read}) with its
    part tree, cached (C{trees}), or scanned for those in C{scans} (all
    without a tree when None; found in L{_scanned} when it has them, by
    C{where} (account, folder, UIDVALIDITY) and UID), and BINARY parts
    decoded, when the items need them. None for one C{read} left out
    (gone, or larger than read whole after all): its own trip says which,
    and streams it.
    """
    trees = trees or {}
    wants_structure = any(i.needs_structure or i.kind in ("PREVIEW", "THREADID") for i in items)
    prepared: list[_Prepared | None] = []
    for uid in uids:
        data = read.get(uid)
        if data is None:
            prepared.append(None)
            continue
        entry = _Prepared(io.BytesIO(data), tree=trees.get(uid))
        if wants_structure:
            if (entry.tree is None) if scans is None else (uid in scans):
                key = (*where, uid, len(data))
                scanned = _scanned.get(key) if where else None
                if scanned is None:
                    scanned = _scan(entry.handle)
                    if where:
                        _scanned.put(key, scanned)
                entry.scanned = scanned
                if entry.tree is None:
                    entry.tree = scanned.root
            decoded: dict[int, bytes] = {}
            try:
                for index, item in enumerate(items):
                    if item.kind in ("BINARY", "BINARY.SIZE"):
                        assert item.section is not None and entry.tree is not None
                        decoded[index] = _decoded(entry.handle, entry.tree, item.section.parts)
            except binary.UnknownEncoding:
                entry.unknown_encoding = True
            entry.decoded = decoded
        prepared.append(entry)
    return prepared


async def _fetchOne(
    session: IMAPServer,
    selected: SelectedFolder,
    position: int,
    items: list[FetchItem],
    origins: dict[int, MessageOrigin],
    prepared: _Prepared | None = None,
) -> bool:
    """
    One message's FETCH response, its bodies streamed from the file (or
    from C{prepared}, in memory), its sections found by its cached part
    tree when it has one, else by scanning it; False if it is gone.
    """
    uid = selected.uids[position]
    entry = selected.info[uid]
    wanted = _wanted_sections(items)
    cached = prepared.cached if prepared is not None else None
    scanned = prepared.scanned if prepared is not None else None
    if prepared is None and wanted:
        # From the cache, as the other paths answer them (filled below from the file opened here).
        kept = await _kept_blobs(session, selected.folder, [uid])
        cached = structurecache.decode(kept[uid], wanted) if uid in kept else None
    if prepared is not None:
        handle = prepared.handle
    else:
        try:
            handle = await selected.folder.openMessage(uid)
        except NoSuchMessage:
            return False
    try:
        if prepared is None and wanted and cached is None:
            # A large message without a cached structure yet: scanned once, and its blob saved for the next FETCH.
            scan_key = _scan_key(session, selected.folder)
            blob, scanned = await session.factory.offThread(_compute_open, handle, (*scan_key, uid) if scan_key else None)
            if blob is not None:
                cached = structurecache.decode(blob, wanted)
                keep_structures(session, selected.folder, {uid: blob})
        tree = prepared.tree if prepared is not None else None
        parts_needed = any(_needs_parts(i) for i in items)
        if parts_needed and tree is None and cached is not None:
            tree = structurecache.parts(cached)
        rendered = any(i.kind in _SECTIONS for i in items)
        if scanned is None and ((parts_needed and tree is None) or (rendered and cached is None)):
            scanned = await session.factory.offThread(_scan, handle)
        if scanned is not None:
            if tree is None:
                tree = scanned.root
            if scanned.cut:
                structure_cut(uid)
        size = tree.end if tree is not None else None
        decoded: dict[int, bytes] = {}
        if prepared is not None and prepared.unknown_encoding:
            raise binary.UnknownEncoding()
        for index, item in enumerate(items):
            if item.kind in ("BINARY", "BINARY.SIZE"):
                assert tree is not None and item.section is not None
                if prepared is not None and prepared.decoded is not None and index in prepared.decoded:
                    decoded[index] = prepared.decoded[index]
                else:
                    decoded[index] = await session.factory.offThread(_decoded, handle, tree, item.section.parts)
        out = [b"* %d FETCH (" % (position + 1)]
        first = True
        for index, item in enumerate(items):
            if not first:
                out.append(b" ")
            first = False
            if item.kind in _FROM_INDEX:
                out.append(_simpleItem(item, uid, entry, uid in selected.recent, origins))
            elif item.kind in _CACHED_ITEM and cached is not None:
                out.append(cached[_CACHED_ITEM[item.kind]])
            elif item.kind in ("PREVIEW", "THREADID"):
                out.append(await _uncached(session, handle, scanned.root if scanned is not None else None, item.kind))
            elif item.kind in ("ENVELOPE", "BODYSTRUCTURE", "BODY"):
                assert scanned is not None  # scanned above when there is no cached structure
                out.append(_rendered(scanned.root, item.kind))
            elif item.kind == "BINARY.SIZE":
                out.append(item.label + b" %d" % len(decoded[index]))
            elif item.kind == "BINARY":
                content = decoded[index]
                if item.start is not None:
                    content = content[item.start : item.start + (item.length or 0)]
                # literal8 (RFC 3516 4.3) only where a NUL makes it necessary, as Dovecot does
                out.append(item.label + (b" ~{%d}\r\n" if b"\0" in content else b" {%d}\r\n") % len(content) + content)
            else:
                assert item.section is not None
                where: Any
                if item.section.needs_structure():
                    assert tree is not None
                    where = await _section(session, handle, tree, item.section)
                else:
                    if size is None:
                        size = await session.factory.offThread(_file_size, handle)
                    where = (0, size)
                if where is None:
                    where = b""
                if isinstance(where, bytes):
                    if item.start is not None:
                        where = where[item.start : item.start + (item.length or 0)]
                    out.append(item.label + b" {%d}\r\n" % len(where) + where)
                    continue
                begin, end = where
                if item.start is not None:
                    begin = min(begin + item.start, end)
                    end = min(begin + (item.length or 0), end)
                out.append(item.label + b" {%d}\r\n" % (end - begin))
                session.write(b"".join(out))
                out = []
                await _stream(session, handle, begin, end - begin)
        out.append(b")\r\n")
        session.write(b"".join(out))
    finally:
        handle.close()
    if session.flow.paused:
        await session.flow.wait()
    return True


def _rendered(root: mime.Part, kind: str) -> bytes:
    """ENVELOPE, BODYSTRUCTURE or BODY of a scanned message, as sent (what the cached structure keeps rendered)."""
    if kind == "ENVELOPE":
        return b"ENVELOPE " + format_value(mime.envelope(root))
    if kind == "BODYSTRUCTURE":
        return b"BODYSTRUCTURE " + format_value(mime.body_structure(root, True))
    return b"BODY " + format_value(mime.body_structure(root, False))


async def _section(session: IMAPServer, handle: IO[bytes], tree: mime.PartTree, section: mime.Section) -> tuple[int, int] | bytes | None:
    """
    Where a section's bytes are (L{mime.where}), with HEADER.FIELDS
    answered: from a scanned part's header block, or from the bytes of
    the header a cached tree points at (read from the file).
    """
    found = mime.where(tree, section)
    if found is None or isinstance(found, tuple):
        return found
    negate = section.specifier.endswith(".NOT")
    if isinstance(found, mime.Part):
        return mime.header_fields(found.header, section.fields, negate)
    assert isinstance(found, partoffsets.PartOffsets)
    if isinstance(handle, io.BytesIO):
        block = handle.getbuffer()[found.start : found.header_end].tobytes()
    else:
        block = await session.factory.offThread(_read_at, handle, found.start, found.header_end - found.start)
    return mime.header_fields(block, section.fields, negate)


async def _stream(session: IMAPServer, handle: IO[bytes], offset: int, length: int) -> None:
    """Send C{length} bytes of the file from C{offset}, a chunk at a time, paced by the transport."""
    flow = session.flow
    if isinstance(handle, io.BytesIO):
        # A small message read whole (L{_fetchMessages}): no trip for its bytes.
        data = handle.getbuffer()[offset : offset + length].tobytes()
        if len(data) < length:
            _log.error("imap message file shorter than expected", log_event=logevents.IMAP_INTERNAL_ERROR)
            data += b" " * (length - len(data))  # keep the literal's promise, as below
        session.write(data)
        return
    while length > 0:
        data = await session.factory.offThread(_read_at, handle, offset, min(CHUNK_SIZE, length))
        if not data:
            # The file is shorter than its index entry said: keep the literal's promise.
            _log.error("imap message file shorter than expected", log_event=logevents.IMAP_INTERNAL_ERROR)
            data = b" " * min(CHUNK_SIZE, length)
        session.write(data)
        offset += len(data)
        length -= len(data)
        if flow.paused or flow.stopped:
            await flow.wait()


# -- on worker threads --------------------------------------------------------------------------------


async def _uncached(session: IMAPServer, handle: IO[bytes], structure: mime.Part | None, kind: str) -> bytes:
    """PREVIEW or THREADID of a message that has no cached structure (a bound cut it): computed from its file."""
    assert structure is not None
    if kind == "THREADID":
        return structurecache.thread_item(preview.thread_id(structure))
    return structurecache.preview_item(await session.factory.offThread(preview.preview, handle, structure))


def _scan(handle: IO[bytes]) -> mime.Structure:
    handle.seek(0)
    return mime.scan_structure(handle)


def _compute_all(handles: list[IO[bytes] | None], keys: list[tuple[Any, ...]] | None = None) -> list[bytes | None]:
    """
    Each open message's structure blob (None: its structure was cut, or it
    is gone); closes them. With C{keys} (L{_scan_key} and the UID), a
    structure L{_scanned} already holds is not scanned again, and one
    scanned here is kept there for the body sections' FETCHes.
    """
    blobs: list[bytes | None] = []
    for index, handle in enumerate(handles):
        if handle is None:
            blobs.append(None)
            continue
        with handle:
            blobs.append(_compute_open(handle, keys[index] if keys is not None else None)[0])
    return blobs


def _compute_open(handle: IO[bytes], key: tuple[Any, ...] | None) -> tuple[bytes | None, mime.Structure]:
    """
    One open message's structure blob (None when a bound cut its
    structure) and its scanned structure, shared through L{_scanned} by
    C{key} (as L{_compute_all}); the handle stays open.
    """
    scanned = None
    if key is not None:
        key = (*key, handle.seek(0, os.SEEK_END))
        scanned = _scanned.get(key)
    if scanned is None:
        scanned = _scan(handle)
        if key is not None:
            _scanned.put(key, scanned)
    return structurecache.compute(handle, scanned), scanned


def _scan_key(session: IMAPServer, folder: Any) -> tuple[Any, ...]:
    """(account, folder, UIDVALIDITY) when C{folder} is the selected one, whose UIDVALIDITY the session knows; else () (no sharing)."""
    selected = session.selected
    if selected is None or selected.folder.name != folder.name:
        return ()
    return (session.account, selected.folder.name, selected.uidvalidity)


def structure_cut(uid: int) -> None:
    """One warning line for a message whose structure a bound cut: hostile or broken, never a traceback."""
    _log.warn(
        "imap message structure cut uid={uid}: deeper than {depth} or more than {parts} parts, the rest is text",
        log_event=logevents.IMAP_STRUCTURE_CUT,
        uid=uid,
        depth=mime.MAX_DEPTH,
        parts=mime.MAX_PARTS,
    )


def _decoded(handle: IO[bytes], root: mime.PartTree, parts: tuple[int, ...]) -> bytes:
    """A part's content, its transfer encoding undone (the whole message as it is for C{()})."""
    part = mime.locate(root, parts)
    if part is None:
        return b""
    if not parts:
        handle.seek(0)
        return handle.read(root.end)
    handle.seek(part.body_start)
    body = handle.read(part.end - part.body_start)
    if part.message is not None or part.children:
        return body
    return binary.decode(body, part.encoding)


def _file_size(handle: IO[bytes]) -> int:
    # The message's size as sent, which the store's file object knows
    # without reading (the file on disk is smaller: LF line ends).
    return handle.seek(0, os.SEEK_END)


def _read_at(handle: IO[bytes], offset: int, size: int) -> bytes:
    handle.seek(offset)
    return handle.read(size)
