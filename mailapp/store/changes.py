"""
Each folder's change counter: a number in its ``folders`` row that SQLite
triggers change in the same statement as every message row of the folder
inserted, deleted or updated (flags, file name, a move), so that a reader
can tell whether a folder is as it last read it with one read by primary
key, whichever process changed it (IMAP's warm SELECT:
L{mailapp.interfaces.IFolder.messagesIfChanged}).

It starts at a random value whenever a folder row is made (a new folder, a
rebuild), so that a folder made again, or rebuilt from a Maildir others
changed, never shows a counter an earlier reader remembers; with
UIDVALIDITY it makes the token a reader compares.

Synchronous; runs on a worker thread.
"""

from __future__ import annotations

import sqlite3

from mailapp.records import ChangesSince, FolderDelta, MessageInfo
from mailapp.store.filenames import decode_flags
from mailapp.store.modseq import vanished_since

#: The triggers, each statement on its own (a trigger's body has semicolons).
CHANGES_TRIGGERS: tuple[str, ...] = (
    """
    CREATE TRIGGER IF NOT EXISTS folders_changes_start AFTER INSERT ON folders BEGIN
        UPDATE folders SET changes = (random() >> 2) WHERE name = NEW.name;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS folders_changes_after_insert AFTER INSERT ON messages BEGIN
        UPDATE folders SET changes = changes + 1 WHERE name = NEW.folder;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS folders_changes_after_delete AFTER DELETE ON messages BEGIN
        UPDATE folders SET changes = changes + 1 WHERE name = OLD.folder;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS folders_changes_after_update AFTER UPDATE ON messages BEGIN
        UPDATE folders SET changes = changes + 1 WHERE name IN (OLD.folder, NEW.folder);
    END
    """,
)


def add_change_counter(conn: sqlite3.Connection, add_column: bool) -> None:
    """
    The triggers, and (C{add_column}: the migration of an index made before
    it) the column where it is missing, every folder starting at a random
    value. In the caller's transaction.
    """
    columns = {row[1] for row in conn.execute("PRAGMA table_info(folders)").fetchall()}
    if add_column and "changes" not in columns:
        conn.execute("ALTER TABLE folders ADD COLUMN changes INTEGER NOT NULL DEFAULT 0")
        conn.execute("UPDATE folders SET changes = (random() >> 2)")
    for statement in CHANGES_TRIGGERS:
        conn.execute(statement)


def messages_if_changed(
    conn: sqlite3.Connection, folder: str, known: tuple[int, int] | None
) -> tuple[tuple[int, int], int, list[MessageInfo] | None] | None:
    """
    (UIDVALIDITY and change counter, UIDNEXT, the messages in UID order or
    None when the token is still C{known}), read in one transaction; None
    when there is no such folder.
    """
    conn.execute("BEGIN")
    try:
        row = conn.execute("SELECT uidvalidity, uidnext, changes FROM folders WHERE name = ?", (folder,)).fetchone()
        if row is None:
            return None
        token = (int(row[0]), int(row[2]))
        if token == known:
            return token, int(row[1]), None
        rows = conn.execute(
            "SELECT uid, flags, size, internaldate, modseq FROM messages WHERE folder = ? ORDER BY uid", (folder,)
        ).fetchall()
        return token, int(row[1]), [MessageInfo(uid, decode_flags(flags), size, date, m) for uid, flags, size, date, m in rows]
    finally:
        conn.execute("COMMIT")


def changes_since(conn: sqlite3.Connection, folder: str, modseq: int) -> ChangesSince | None:
    """
    What changed in C{folder} after C{modseq}, read in one transaction (by
    the ``messages_modseq`` index: proportional to the changes); None when
    there is no such folder.
    """
    conn.execute("BEGIN")
    try:
        row = conn.execute(
            "SELECT uidvalidity, uidnext, changes, highestmodseq FROM folders WHERE name = ?", (folder,)
        ).fetchone()
        if row is None:
            return None
        changed = _changed_after(conn, folder, modseq)
        return ChangesSince((int(row[0]), int(row[2])), int(row[1]), int(row[3]), changed, vanished_since(conn, folder, modseq))
    finally:
        conn.execute("COMMIT")


#: Changes (mod-sequences) one transaction describes at most (L{folder_delta}); past it, None.
MAX_DELTA_CHANGES = 1000


def highest_modseq(conn: sqlite3.Connection, folder: str) -> int | None:
    """C{folder}'s HIGHESTMODSEQ, or None when there is no such folder (in the caller's transaction)."""
    row = conn.execute("SELECT highestmodseq FROM folders WHERE name = ?", (folder,)).fetchone()
    return None if row is None else int(row[0])


def folder_delta(conn: sqlite3.Connection, folder: str, before: int) -> FolderDelta | None:
    """
    What the caller's write transaction changed in C{folder} since its
    HIGHESTMODSEQ was C{before} (read by the caller after its C{BEGIN
    IMMEDIATE}): inside that transaction, under the write lock, so nothing
    else is in between. None when the folder is gone or its expunges are no
    longer all remembered that far back.
    """
    row = conn.execute("SELECT uidvalidity, highestmodseq FROM folders WHERE name = ?", (folder,)).fetchone()
    if row is None:
        return None
    after = int(row[1])
    # A big change (STORE 1:* on a large folder) is cheaper read by each view than kept in
    # memory by every view that has not updated yet; the write lock is not held for it either.
    if after - before > MAX_DELTA_CHANGES:
        return None
    vanished = vanished_since(conn, folder, before)
    if vanished is None:
        return None
    changed = tuple(_changed_after(conn, folder, before))
    return FolderDelta(int(row[0]), before, after, changed, tuple(vanished))


def _changed_after(conn: sqlite3.Connection, folder: str, modseq: int) -> list[MessageInfo]:
    """The messages of C{folder} whose mod-sequence is above C{modseq}, in UID order (by the ``messages_modseq`` index)."""
    # No ORDER BY: SQLite would then walk the primary key, every row of the folder, to save a sort.
    rows = conn.execute(
        "SELECT uid, flags, size, internaldate, modseq FROM messages WHERE folder = ? AND modseq > ?", (folder, modseq)
    ).fetchall()
    rows.sort()
    return [MessageInfo(uid, decode_flags(flags), size, date, m) for uid, flags, size, date, m in rows]
