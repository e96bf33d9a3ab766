"""
Building a mailbox's index from its Maildir: for a new index, and for one
that was damaged and moved aside (L{mailapp.store.repair}).

UIDs survive: each file's name carries its UID (L{mailapp.store.filenames}),
and each folder's ``mailapp-folder`` record its UIDVALIDITY and UIDNEXT as
of the last expunge (L{mailapp.store.folders}). A rebuild keeps UIDVALIDITY
when the record is readable, takes UIDNEXT as the larger of the recorded
value and the highest UID on disk plus one (so a UID is never reused), and
gives files without a UID (dropped in by other tools) fresh ones, renaming
them to carry it. Without a record it starts a new UIDVALIDITY. Keywords
come back from the folder's letters (L{mailapp.store.keywords}): a rebuild
loses nothing but subscriptions. Each message's cached structure is
computed again as the files are indexed, within a time bound
(L{mailapp.store.structures.fill_rebuilt_folder}).

Synchronous; runs on a worker thread, inside the caller's transaction.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from pathlib import Path

from twisted.logger import Logger

from mailapp import logevents
from mailapp.store import durable, messagefile, modseq, outside, structures
from mailapp.store.filenames import ParsedName, encode_flags, format_filename, parse_filename
from mailapp.store.folders import folders_on_disk, make_folder_directory, read_meta, write_meta
from mailapp.store.keywords import read_keywords
from mailapp.store.uidvalidity import next_uidvalidity, note_given

_log = Logger()


def scan(directory: Path) -> list[tuple[str, ParsedName, os.stat_result]]:
    """Every message file of a folder, its name parsed, keywords included (by the folder's letters)."""
    keywords = read_keywords(directory)
    found = []
    for sub in ("new", "cur"):
        try:
            entries = list(os.scandir(directory / sub))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.is_file(follow_symlinks=False) or entry.name.startswith("."):
                continue
            parsed = parse_filename(entry.name)
            if parsed is None:
                continue
            if parsed.keyword_letters:
                named = {keywords[letter] for letter in parsed.keyword_letters if letter in keywords}
                parsed = dataclasses.replace(parsed, flags=parsed.flags | named)
            found.append((f"{sub}/{entry.name}", parsed, entry.stat()))
    return found


def name_with_uid(
    directory: Path, relative: str, parsed: ParsedName, stat: os.stat_result, uid: int
) -> tuple[str, ParsedName]:
    """
    Rename a file the index just gave C{uid} so that its name carries it,
    with both sizes: a file another tool put here (a Dovecot Maildir copied
    in has ``S=`` and ``W=``; others may have neither, and are measured,
    which reads an LF file through once).
    """
    if parsed.wire_size is not None:
        stored = parsed.size if parsed.size is not None else stat.st_size
        wire = parsed.wire_size
    else:
        stored, wire = messagefile.measure(directory / relative)
    new_relative = format_filename(
        parsed.base, stored, uid, parsed.flags, relative.startswith("cur/"), wire, parsed.keyword_letters
    )
    durable.rename(directory / relative, directory / new_relative)
    return new_relative, ParsedName(parsed.base, stored, uid, parsed.flags, wire, parsed.keyword_letters)


def rebuild_tables(conn: sqlite3.Connection, mailbox_dir: Path) -> None:
    """
    Recreate the index of every folder from the Maildir, inside the caller's
    transaction: keep UIDVALIDITY and UIDs where the folder metadata allows
    it, else start a new UIDVALIDITY.
    """
    folders = folders_on_disk(mailbox_dir)
    conn.execute("DELETE FROM messages")
    conn.execute("DELETE FROM folders")
    conn.execute("DELETE FROM structures")
    conn.execute("DELETE FROM vanished")
    fill_until = time.monotonic() + structures.REBUILD_FILL_SECONDS
    for _, directory in folders:
        # Before any folder without a record takes a new UIDVALIDITY: above every recorded one.
        meta = read_meta(directory)
        if meta is not None:
            note_given(conn, meta["uidvalidity"])
    for name, directory in folders:
        make_folder_directory(directory)
        rebuild_folder(conn, name, directory, fill_until)
    # The full-text file is rebuilt with the index: emptied here, filled again
    # by the indexer when the mailbox is next opened. (Imported here: the
    # full-text module reads index files, whose module imports this one.)
    from mailapp.store import fulltext

    fulltext.reset(mailbox_dir)
    _log.info(
        "store.index_rebuilt {mailbox} folders={count}",
        log_event=logevents.INDEX_REBUILT,
        mailbox=str(mailbox_dir),
        count=len(folders),
    )


def rebuild_folder(conn: sqlite3.Connection, name: str, directory: Path, fill_until: float | None = None) -> int:
    """
    Index folder C{name} from C{directory} (its rows must not exist yet):
    its record's UIDVALIDITY and every UID it can keep, and the cached
    structures of its newest messages until C{fill_until} (C{time.monotonic()};
    None: L{structures.REBUILD_FILL_SECONDS} from now). Returns the number
    of messages indexed.
    """
    meta = read_meta(directory)
    taken = outside.stamp(directory)
    files = scan(directory)
    if meta:
        uidvalidity = meta["uidvalidity"]
        keep = True
    else:
        uidvalidity = next_uidvalidity(conn)
        keep = False
    used: set[int] = set()
    kept: list[tuple[int, str, ParsedName, os.stat_result]] = []
    fresh: list[tuple[str, ParsedName, os.stat_result]] = []
    for relative, parsed, stat in files:
        if keep and parsed.uid is not None and parsed.uid not in used:
            used.add(parsed.uid)
            kept.append((parsed.uid, relative, parsed, stat))
        else:
            fresh.append((relative, parsed, stat))
    uidnext = max([meta["uidnext"] if meta else 1, *(uid + 1 for uid in used)])
    fresh.sort(key=lambda item: (item[2].st_mtime, item[0]))
    for relative, parsed, stat in fresh:
        uid = uidnext
        uidnext += 1
        new_relative, named = name_with_uid(directory, relative, parsed, stat, uid)
        kept.append((uid, new_relative, named, stat))
    for uid, relative, parsed, stat in kept:
        size = parsed.index_size(stat)
        conn.execute(
            "INSERT INTO messages (folder, uid, filename, flags, size, internaldate) VALUES (?, ?, ?, ?, ?, ?)",
            (name, uid, relative, encode_flags(parsed.flags), size, stat.st_mtime),
        )
    conn.execute("INSERT INTO folders (name, uidvalidity, uidnext) VALUES (?, ?, ?)", (name, uidvalidity, uidnext))
    modseq.restart_folder(conn, name)
    newest_first = sorted(((uid, relative) for uid, relative, _, _ in kept), reverse=True)
    deadline = fill_until if fill_until is not None else time.monotonic() + structures.REBUILD_FILL_SECONDS
    structures.fill_rebuilt_folder(conn, name, directory, newest_first, deadline)
    write_meta(directory, uidvalidity, uidnext)
    # Before the scan: what changed since (files renamed to carry a UID) shows at the next look.
    outside.remember(directory, taken)
    return len(kept)
