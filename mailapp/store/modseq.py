"""
Mod-sequences (RFC 7162, CONDSTORE and QRESYNC): a number per message that
rises with every change of it, each folder's highest, and the UIDs expunged
with the mod-sequence of their expunge.

SQLite triggers keep them, in the statement that changes a message row,
so that every writer raises them alike: this process's flag changes,
deliveries, APPEND, COPY and MOVE, another process's, and the reconcile
that takes in what a Maildir tool did (L{mailapp.store.reconcile}). Each
changed message takes the folder's ``highestmodseq`` + 1, so no two
changes of a folder share a value. An expunge (or a move out) takes one
too, and leaves a row in ``vanished``: QRESYNC's ``VANISHED (EARLIER)``
reads it. That table is bounded (L{VANISHED_KEPT} per folder, pruned by
L{prune_vanished}); the folder's ``vanished_before`` says up to which
mod-sequence the rows are gone, so a reader knows when the list is no
longer complete.

A rebuilt folder starts at the time in milliseconds (L{restart_folder}),
above any value it can have handed out before (a folder would need more
than a thousand changes a second for its whole life to catch up), and
with nothing remembered as vanished.

Synchronous; runs on a worker thread, inside the caller's transaction.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = [
    "VANISHED_KEPT",
    "add_modseq",
    "prune_vanished",
    "restart_folder",
    "vanished_since",
]

#: Expunged UIDs remembered per folder; older ones are pruned (L{prune_vanished}).
VANISHED_KEPT = 20_000

_TABLE = """
CREATE TABLE IF NOT EXISTS vanished (
    folder TEXT NOT NULL,
    modseq INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    PRIMARY KEY (folder, modseq)
) WITHOUT ROWID
"""

#: The triggers, each statement on its own (a trigger's body has semicolons).
MODSEQ_TRIGGERS: tuple[str, ...] = (
    # coalesce: a rebuild inserts a folder's messages before its row (restart_folder sets them after).
    """
    CREATE TRIGGER IF NOT EXISTS modseq_after_insert AFTER INSERT ON messages BEGIN
        UPDATE folders SET highestmodseq = highestmodseq + 1 WHERE name = NEW.folder;
        UPDATE messages SET modseq = coalesce((SELECT highestmodseq FROM folders WHERE name = NEW.folder), 1)
            WHERE folder = NEW.folder AND uid = NEW.uid;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS modseq_after_flags AFTER UPDATE OF flags ON messages
    WHEN OLD.flags IS NOT NEW.flags BEGIN
        UPDATE folders SET highestmodseq = highestmodseq + 1 WHERE name = NEW.folder;
        UPDATE messages SET modseq = coalesce((SELECT highestmodseq FROM folders WHERE name = NEW.folder), 1)
            WHERE folder = NEW.folder AND uid = NEW.uid;
    END
    """,
    # A folder deleted first (DELETE FROM folders, then its messages) remembers nothing.
    """
    CREATE TRIGGER IF NOT EXISTS modseq_after_delete AFTER DELETE ON messages BEGIN
        UPDATE folders SET highestmodseq = highestmodseq + 1 WHERE name = OLD.folder;
        INSERT OR REPLACE INTO vanished (folder, modseq, uid)
            SELECT OLD.folder, highestmodseq, OLD.uid FROM folders WHERE name = OLD.folder;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS modseq_folder_renamed AFTER UPDATE OF name ON folders BEGIN
        UPDATE vanished SET folder = NEW.name WHERE folder = OLD.name;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS modseq_folder_deleted AFTER DELETE ON folders BEGIN
        DELETE FROM vanished WHERE folder = OLD.name;
    END
    """,
)


def add_modseq(conn: sqlite3.Connection, add_columns: bool) -> None:
    """
    The ``vanished`` table and the triggers, and (C{add_columns}: the
    migration of an index made before them) the columns: every existing
    message and folder at mod-sequence 1. In the caller's transaction.
    """
    if add_columns:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)").fetchall()}
        if "modseq" not in columns:
            conn.execute("ALTER TABLE messages ADD COLUMN modseq INTEGER NOT NULL DEFAULT 1")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(folders)").fetchall()}
        if "highestmodseq" not in columns:
            conn.execute("ALTER TABLE folders ADD COLUMN highestmodseq INTEGER NOT NULL DEFAULT 1")
        if "vanished_before" not in columns:
            conn.execute("ALTER TABLE folders ADD COLUMN vanished_before INTEGER NOT NULL DEFAULT 1")
    conn.execute(_TABLE)
    # What changed since a mod-sequence, read in time proportional to the changes (L{changes.changes_since}).
    conn.execute("CREATE INDEX IF NOT EXISTS messages_modseq ON messages (folder, modseq)")
    for statement in MODSEQ_TRIGGERS:
        conn.execute(statement)


def restart_folder(conn: sqlite3.Connection, folder: str) -> None:
    """
    A folder indexed afresh (a rebuild): every message, the highest and
    the vanished point at the time in milliseconds, above whatever the old
    index handed out; nothing remembered as vanished.
    """
    start = int(time.time() * 1000)
    conn.execute("DELETE FROM vanished WHERE folder = ?", (folder,))
    conn.execute("UPDATE messages SET modseq = ? WHERE folder = ?", (start, folder))
    conn.execute(
        "UPDATE folders SET highestmodseq = ?, vanished_before = ? WHERE name = ?", (start, start, folder)
    )


def vanished_since(conn: sqlite3.Connection, folder: str, modseq: int) -> list[int] | None:
    """
    The UIDs expunged from C{folder} after C{modseq}, ascending; None when
    the table no longer reaches back that far (or there is no such folder).
    """
    row = conn.execute("SELECT vanished_before FROM folders WHERE name = ?", (folder,)).fetchone()
    if row is None or modseq < int(row[0]):
        return None
    rows = conn.execute(
        "SELECT uid FROM vanished WHERE folder = ? AND modseq > ?", (folder, modseq)
    ).fetchall()
    return sorted(int(r[0]) for r in rows)


def prune_vanished(conn: sqlite3.Connection, folder: str, kept: int = VANISHED_KEPT) -> None:
    """
    Forget all but the C{kept} newest expunges of C{folder}, remembering up
    to where (``vanished_before``). In the caller's transaction; one read
    by primary key when there is nothing to prune.
    """
    row = conn.execute(
        "SELECT modseq FROM vanished WHERE folder = ? ORDER BY modseq DESC LIMIT 1 OFFSET ?", (folder, kept)
    ).fetchone()
    if row is None:
        return
    edge = int(row[0])
    conn.execute("DELETE FROM vanished WHERE folder = ? AND modseq <= ?", (folder, edge))
    conn.execute(
        "UPDATE folders SET vanished_before = max(vanished_before, ?) WHERE name = ?", (edge, folder)
    )
