"""
Each message's cached structure: an opaque blob a protocol computed once
from the message file (IMAP's rendered ENVELOPE, BODYSTRUCTURE and the
header fields its SEARCH reads: L{mailapp.imap.structurecache}), kept in
the index beside the message's row so that it is not re-read and re-parsed
for every FETCH and SEARCH.

The store never looks inside a blob and never imports the protocol that
makes it: the protocol registers a L{StructureCodec} (the composition root
does, L{register_codec}), and the store asks it to compute blobs where it
reads every file anyway, in the index rebuild (L{fill_rebuilt_folder},
within L{REBUILD_FILL_SECONDS}). Everything else is filled at first use,
through L{mailapp.interfaces.IFolder.cachedStructures} and
L{mailapp.interfaces.IFolder.saveStructures}.

A row carries the codec's version: one of another version is never
returned (the protocol recomputes and replaces it), so bumping the version
invalidates every cached blob at once without a migration. Rows live in
their own ``structures`` table, so that listing a folder never reads them,
a table with rowids (a blob of about a kilobyte spills out of a ``WITHOUT
ROWID`` table's pages into overflow pages: 10,000 of 1.2 KB read in 40 ms
there, 14 ms here); SQLite triggers on ``messages`` drop a message's row
when the message row goes, changes folder or UID, or is inserted (a UID is never reused in a
folder of one UIDVALIDITY, but a folder deleted and made again starts over):
a blob can only ever describe the file its message row names. It is derived
data: durable as the rest of the index (the same transactions, WAL,
``synchronous = NORMAL``), and lost with it, to be filled again.

Synchronous; runs on a worker thread.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import IO, Iterable, Protocol, Sequence

from mailapp.store import messagefile
from mailapp.store.filenames import parse_filename

#: A blob larger than this is not kept: the protocol parses such a message each time.
MAX_BLOB = 64 * 1024

#: A rebuild computes blobs for at most this long (newest messages first), so
#: that a huge mailbox's rebuild, which holds its index's write lock, stays
#: bounded; the rest are filled at first use.
REBUILD_FILL_SECONDS = 5.0

#: Rows per statement when reading blobs (SQLite's bound on parameters is 32,766).
_READ_CHUNK = 900

STRUCTURES_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS structures (
        folder TEXT NOT NULL,
        uid INTEGER NOT NULL,
        version INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (folder, uid)
    )
    """,
    """
    CREATE TRIGGER IF NOT EXISTS structures_after_delete AFTER DELETE ON messages BEGIN
        DELETE FROM structures WHERE folder = OLD.folder AND uid = OLD.uid;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS structures_after_move AFTER UPDATE OF folder, uid ON messages BEGIN
        DELETE FROM structures WHERE folder = OLD.folder AND uid = OLD.uid;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS structures_after_insert AFTER INSERT ON messages BEGIN
        DELETE FROM structures WHERE folder = NEW.folder AND uid = NEW.uid;
    END
    """,
)


class StructureCodec(Protocol):
    """What the store needs of the protocol that makes the blobs."""

    #: The blobs' version: bumped whenever what C{compute} returns changes.
    version: int

    def compute(self, handle: IO[bytes]) -> bytes | None:
        """The blob of the message read from C{handle} (wire form, at its start), or None to keep none."""


_codec: StructureCodec | None = None


def register_codec(codec: StructureCodec | None) -> None:
    """The codec rebuilds fill blobs with (None: none). Called once by the composition root."""
    global _codec
    _codec = codec


def registered_codec() -> StructureCodec | None:
    return _codec


def add_structures_table(conn: sqlite3.Connection) -> None:
    """Create the table and its triggers (a new index, or the migration from schema 2), in the caller's transaction."""
    for statement in STRUCTURES_SCHEMA:
        conn.execute(statement)


def read_structures(conn: sqlite3.Connection, folder: str, uids: Sequence[int], version: int) -> dict[int, bytes]:
    """The blobs of C{version} kept for C{uids} of C{folder}."""
    found: dict[int, bytes] = {}
    if uids and max(uids) - min(uids) < 2 * len(uids):
        # Dense (1:*, a range): one pass over the primary key between the ends.
        wanted = set(uids)
        rows = conn.execute(
            "SELECT uid, data FROM structures WHERE folder = ? AND uid BETWEEN ? AND ? AND version = ?",
            (folder, min(uids), max(uids), version),
        ).fetchall()
        return {int(uid): bytes(data) for uid, data in rows if uid in wanted}
    for start in range(0, len(uids), _READ_CHUNK):
        chunk = list(uids[start : start + _READ_CHUNK])
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT uid, data FROM structures WHERE folder = ? AND version = ? AND uid IN ({marks})",  # noqa: S608 - only marks
            (folder, version, *chunk),
        ).fetchall()
        for uid, data in rows:
            found[int(uid)] = bytes(data)
    return found


def write_structures(conn: sqlite3.Connection, folder: str, blobs: dict[int, bytes], version: int) -> int:
    """
    Keep C{blobs} (UID -> blob) for the messages of C{folder} that still
    exist, replacing rows of any version; blobs over L{MAX_BLOB} are
    skipped. In one transaction of its own. Returns how many were kept.
    """
    rows = [(folder, uid, version, data, folder, uid) for uid, data in blobs.items() if len(data) <= MAX_BLOB]
    if not rows:
        return 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = conn.total_changes
        conn.executemany(
            "INSERT OR REPLACE INTO structures (folder, uid, version, data)"
            " SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM messages WHERE folder = ? AND uid = ?)",
            rows,
        )
        kept = conn.total_changes - before
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return kept


def fill_rebuilt_folder(conn: sqlite3.Connection, folder: str, directory: Path, messages: Iterable[tuple[int, str]], deadline: float) -> int:
    """
    In a rebuild, inside its transaction: compute and keep the blobs of
    C{messages} ((UID, file name relative to C{directory}), newest first)
    with the registered codec, until C{deadline} (C{time.monotonic()}).
    A file that cannot be read or parsed is left for first use. Returns
    how many were kept.
    """
    codec = _codec
    if codec is None:
        return 0
    kept = 0
    for uid, relative in messages:
        if time.monotonic() > deadline:
            break
        path = directory / relative
        parsed = parse_filename(path.name)
        try:
            with messagefile.open_message(path, parsed.wire_size if parsed is not None else None) as handle:
                blob = codec.compute(handle)
        except Exception:  # noqa: BLE001 - a file another tool broke is left for first use, never fails the rebuild
            continue
        if blob is not None and len(blob) <= MAX_BLOB:
            conn.execute(
                "INSERT OR REPLACE INTO structures (folder, uid, version, data) VALUES (?, ?, ?, ?)",
                (folder, uid, codec.version, blob),
            )
            kept += 1
    return kept
