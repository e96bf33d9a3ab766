"""
IMAP's C{\\Recent}, kept in the index so that every process agrees on it
(RFC 3501 2.3.2: a message is recent in exactly one session, the first to
select its folder after it arrived).

Each folder's record keeps C{first_recent_uid} (schema 6), as Dovecot's
index does: the lowest UID no session has claimed yet. A session that
selects the folder (or is told of new mail while it has it selected)
claims up to the highest UID it sees: one C{IMMEDIATE} transaction reads
the marker and moves it past that UID, so that of two sessions claiming
at once, in one process or two, each UID goes to exactly one. A claim
knows nothing of sessions: it is a range of UIDs handed to whoever asked.

The marker outlives a restart (RFC 3501 allows either; Dovecot keeps it).
An index rebuilt from the Maildir, or migrated from schema 5, starts it at
1: every message there is recent once more, to the first session that
selects the folder, as every message was after a restart before.

Synchronous; runs on a worker thread (a claim on the store's writer).
"""

from __future__ import annotations

import sqlite3

__all__ = ["add_recent_column", "claim_recent", "first_recent"]


def add_recent_column(conn: sqlite3.Connection) -> None:
    """The migration to schema 6: every folder's messages unclaimed (1). In the caller's transaction."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(folders)").fetchall()}
    if "first_recent_uid" not in columns:
        conn.execute("ALTER TABLE folders ADD COLUMN first_recent_uid INTEGER NOT NULL DEFAULT 1")


def first_recent(conn: sqlite3.Connection, folder: str) -> int | None:
    """The lowest UID of C{folder} no session has claimed (None: no such folder). A read; claims nothing."""
    row = conn.execute("SELECT first_recent_uid FROM folders WHERE name = ?", (folder,)).fetchone()
    return None if row is None else int(row[0])


def claim_recent(conn: sqlite3.Connection, folder: str, uid: int) -> range | None:
    """
    Claim C{folder}'s unclaimed UIDs up to C{uid}: the range the caller now
    owns (empty when another claim got there first), or None when the folder
    is gone. Read and advance in one C{IMMEDIATE} transaction of its own.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        first = first_recent(conn, folder)
        if first is None:
            conn.execute("ROLLBACK")
            return None
        if uid < first:
            conn.execute("ROLLBACK")
            return range(first, first)
        conn.execute("UPDATE folders SET first_recent_uid = ? WHERE name = ?", (uid + 1, folder))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return range(first, uid + 1)
