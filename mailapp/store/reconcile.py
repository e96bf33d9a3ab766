"""
Reconcile: bringing an index in line with the Maildir, which is the truth.

Twice: once per process at the first open of a mailbox (L{reconcile}),
because index commits are not fsync'd and a power cut can take a whole WAL
tail, and because other tools may have changed the Maildir while no server
ran; and for one folder while the server runs (L{reconcile_running_folder}),
when L{mailapp.store.outside} sees that another tool changed its directory.

Synchronous; runs on a worker thread.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from mailapp import logevents
from mailapp.store import expunged, outside
from mailapp.store.database import rollback
from mailapp.store.filenames import ParsedName, decode_flags, encode_flags, is_keyword
from mailapp.store.folders import folders_on_disk, make_folder_directory, read_meta, remove_set_aside, write_meta
from mailapp.store.keywords import read_keywords
from mailapp.store.modseq import prune_vanished
from mailapp.store.rebuild import name_with_uid, rebuild_folder, scan

_log = Logger()

_reconciled_lock = threading.Lock()
#: The mailboxes this process has reconciled since it started (or since a test's reset).
_reconciled: set[Path] = set()


def is_reconciled(mailbox_dir: Path) -> bool:
    """Whether this process has reconciled C{mailbox_dir}'s index (at its first open)."""
    with _reconciled_lock:
        return mailbox_dir in _reconciled


def mark_reconciled(mailbox_dir: Path) -> None:
    """Note that the first open reconciled C{mailbox_dir}: later opens skip the check and the scan."""
    with _reconciled_lock:
        _reconciled.add(mailbox_dir)


def forget_reconciled(mailbox_dir: Path | None = None) -> None:
    """
    Make the next open of C{mailbox_dir} (of every mailbox, with None)
    check and reconcile again: its directory was replaced, or a test
    simulates a restart.
    """
    with _reconciled_lock:
        if mailbox_dir is None:
            _reconciled.clear()
        else:
            _reconciled.discard(mailbox_dir)


def reconcile(conn: sqlite3.Connection, mailbox_dir: Path) -> int:
    """
    Bring an existing index in line with the Maildir, once per process: after
    a crash or power cut commits may be missing (index commits are not
    fsync'd, so a whole tail of the WAL can go), and other tools may have
    added or removed files. The files, which carry their UIDs and flags, and
    each folder's ``mailapp-folder`` record (written durably) are the truth:

      - every Maildir++ folder on disk is listed, and a listed folder whose
        directory is gone is dropped (INBOX and the special folders come
        back empty);
      - a folder whose record has another UIDVALIDITY than the index (it
        was deleted and created again) is rebuilt from its directory;
      - UIDNEXT is at least the record's and the highest UID on disk + 1,
        so no UID is ever given out twice under one UIDVALIDITY.

    Keeps UIDVALIDITY, every UID it can, and keywords. Returns the number
    of rows changed.
    """
    remove_set_aside(mailbox_dir)  # deleted folders whose files a crash left
    changed = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        listed = {name: (validity, uidnext) for name, validity, uidnext in conn.execute("SELECT name, uidvalidity, uidnext FROM folders")}
        on_disk = dict(folders_on_disk(mailbox_dir))
        for name in sorted(set(listed) - set(on_disk)):
            conn.execute("DELETE FROM messages WHERE folder = ?", (name,))
            conn.execute("DELETE FROM folders WHERE name = ?", (name,))
            changed += 1
        stamps: list[tuple[Path, outside.Stamp | None]] = []
        for name, directory in on_disk.items():
            expunged.purge(directory)  # what an expunge held before a restart (L{expunged})
            meta = read_meta(directory)
            stamps.append((directory, outside.stamp(directory)))
            if name in listed and (meta is None or meta["uidvalidity"] == listed[name][0]):
                uidnext = max(listed[name][1], meta["uidnext"] if meta else 1)
                changed += _reconcile_folder(conn, name, directory, uidnext).count
                continue
            conn.execute("DELETE FROM messages WHERE folder = ?", (name,))
            conn.execute("DELETE FROM folders WHERE name = ?", (name,))
            make_folder_directory(directory)
            changed += 1 + rebuild_folder(conn, name, directory)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    for directory, taken in stamps:
        # Taken before the scan: a change made during it (ours, naming a
        # new file with its UID, or another tool's) shows at the next look.
        outside.remember(directory, taken)
    if changed:
        _log.info(
            "store.index_reconciled {mailbox} changed={changed}",
            log_event=logevents.INDEX_RECONCILED,
            mailbox=str(mailbox_dir),
            changed=changed,
        )
    return changed


@dataclass
class FolderChanges:
    """What a reconcile changed in one folder's index, so that sessions can be told."""

    added: list[int] = dataclasses.field(default_factory=list)
    removed: list[int] = dataclasses.field(default_factory=list)
    flags_changed: list[int] = dataclasses.field(default_factory=list)
    #: Rows changed, UIDNEXT included.
    count: int = 0


def _reconcile_folder(
    conn: sqlite3.Connection, name: str, directory: Path, uidnext: int, running: bool = False
) -> FolderChanges:
    """
    One listed folder of L{reconcile}; C{uidnext} is the larger of the
    index's and the record's. C{running}: the index is known complete (no
    crash since this process reconciled it), so a file whose ``U=`` is one
    the folder already gave out, or collides with a listed message's, was
    put there by another tool (copied from another Maildir) and gets a new
    UID: a UID below UIDNEXT must never appear, nor one change its message.
    """
    changes = FolderChanges()
    rows = {
        uid: (filename, decode_flags(flags))
        for uid, filename, flags in conn.execute("SELECT uid, filename, flags FROM messages WHERE folder = ?", (name,)).fetchall()
    }
    on_disk: dict[int, tuple[str, ParsedName, os.stat_result]] = {}
    fresh: list[tuple[str, ParsedName, os.stat_result]] = []
    scanned = scan(directory)
    # The file the index names wins a UID shared by several (a copy of it).
    scanned.sort(key=lambda item: item[1].uid is None or rows.get(item[1].uid, ("",))[0] != item[0])
    for relative, parsed, stat in scanned:
        foreign = running and parsed.uid is not None and parsed.uid not in rows and parsed.uid < uidnext
        if parsed.uid is not None and parsed.uid not in on_disk and not foreign:
            on_disk[parsed.uid] = (relative, parsed, stat)
        else:
            fresh.append((relative, parsed, stat))
    if on_disk:
        uidnext = max(uidnext, max(on_disk) + 1)
    lettered = set(read_keywords(directory).values())
    for uid, (filename, flags) in rows.items():
        if uid not in on_disk:
            conn.execute("DELETE FROM messages WHERE folder = ? AND uid = ?", (name, uid))
            changes.removed.append(uid)
        elif on_disk[uid][0] != filename:
            # The name is newer than the row; keywords without a letter live only in the row.
            unlettered = {f for f in flags if is_keyword(f) and f not in lettered}
            merged = encode_flags(on_disk[uid][1].flags | unlettered)
            conn.execute(
                "UPDATE messages SET filename = ?, flags = ? WHERE folder = ? AND uid = ?",
                (on_disk[uid][0], merged, name, uid),
            )
            if decode_flags(merged) != flags:
                changes.flags_changed.append(uid)
            changes.count += 1
    for uid, (relative, parsed, stat) in sorted(on_disk.items()):
        if uid in rows:
            continue
        conn.execute(
            "INSERT INTO messages (folder, uid, filename, flags, size, internaldate, savedate) VALUES (?, ?, ?, ?, ?, ?, ?)",
            # Saved into the folder when first seen here (L{mailapp.store.origins}).
            (name, uid, relative, encode_flags(parsed.flags), parsed.index_size(stat), stat.st_mtime, time.time()),
        )
        changes.added.append(uid)
    fresh.sort(key=lambda item: (item[2].st_mtime, item[0]))
    for relative, parsed, stat in fresh:
        uid, uidnext = uidnext, uidnext + 1
        new_relative, named = name_with_uid(directory, relative, parsed, stat, uid)
        conn.execute(
            "INSERT INTO messages (folder, uid, filename, flags, size, internaldate, savedate) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (name, uid, new_relative, encode_flags(parsed.flags), named.index_size(stat), stat.st_mtime, time.time()),
        )
        changes.added.append(uid)
    cursor = conn.execute("UPDATE folders SET uidnext = ? WHERE name = ? AND uidnext < ?", (uidnext, name, uidnext))
    changes.count += len(changes.added) + len(changes.removed) + cursor.rowcount
    return changes


def reconcile_running_folder(conn: sqlite3.Connection, name: str, directory: Path) -> FolderChanges:
    """
    Bring one folder's index in line with its directory while the server
    runs (L{outside}: another tool added, removed or renamed files): new
    files get new UIDs above every one given out, rows whose file is gone
    are dropped, renamed files' flags are taken. Run it on the writer, so
    that no change of ours is half made while it scans. Nothing is changed
    for a folder the index does not list.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT uidvalidity, uidnext FROM folders WHERE name = ?", (name,)).fetchone()
        if row is None:
            conn.execute("ROLLBACK")
            return FolderChanges()
        validity, uidnext = row
        meta = read_meta(directory)
        if meta is not None and meta["uidvalidity"] == validity:
            uidnext = max(uidnext, meta["uidnext"])
        taken = outside.stamp(directory)
        changes = _reconcile_folder(conn, name, directory, uidnext, running=True)
        if changes.removed:
            # As an expunge does: a rebuild must never hand out these UIDs again.
            current = conn.execute("SELECT uidnext FROM folders WHERE name = ?", (name,)).fetchone()[0]
            write_meta(directory, validity, current)
            prune_vanished(conn, name)
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    outside.remember(directory, taken)
    if changes.count:
        _log.info(
            "store.folder_reconciled {directory} added={added} removed={removed} flags_changed={flags}",
            log_event=logevents.FOLDER_RECONCILED,
            directory=str(directory),
            added=len(changes.added),
            removed=len(changes.removed),
            flags=len(changes.flags_changed),
        )
    return changes

