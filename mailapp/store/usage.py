"""
A mailbox's usage: its messages and the sum of their wire sizes over every
folder, what its quota counts (L{mailapp.quota}).

Kept as a total in the index, in a one-row ``usage`` table that SQLite
triggers on the ``messages`` table change in the same statement as every
insert, delete and size change, so in the same transaction. A quota check
is then one read by primary key, not a pass over every message (1.6 ms per
10,000 messages, 23 ms per 100,000, twice per SMTP message).

The total needs no crash recovery of its own, and that is why it is kept
by triggers and never by the code that changes rows: it commits, or is lost
with the WAL tail, together with the rows it counts; the reconcile at the
first open (L{mailapp.store.reconcile}) and a rebuild
(L{mailapp.store.rebuild}) change rows through the same triggers, so what
crashes and other tools change is counted as the rows are put right. At the
first open in each process the total is also compared with a count of the
rows (L{check_usage}, in the pass over the file C{quick_check} makes
anyway), and replaced if they differ.

Synchronous; runs on a worker thread.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.logger import Logger

from mailapp import logevents
from mailapp.records import Usage

_log = Logger()

#: The table, its triggers and its row, each statement on its own: a
#: trigger's body has semicolons, and C{executescript} would commit the
#: transaction the schema is made in.
USAGE_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS usage (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        messages INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    )
    """,
    """
    CREATE TRIGGER IF NOT EXISTS usage_after_insert AFTER INSERT ON messages BEGIN
        UPDATE usage SET messages = messages + 1, bytes = bytes + NEW.size WHERE id = 0;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS usage_after_delete AFTER DELETE ON messages BEGIN
        UPDATE usage SET messages = messages - 1, bytes = bytes - OLD.size WHERE id = 0;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS usage_after_size_change AFTER UPDATE OF size ON messages BEGIN
        UPDATE usage SET bytes = bytes - OLD.size + NEW.size WHERE id = 0;
    END
    """,
)


def add_usage_table(conn: sqlite3.Connection) -> None:
    """
    Create the usage table and its triggers, and count what the messages
    table holds now: for a new index before it is filled, and once for an
    index of schema version 1 (the migration). Inside the caller's
    transaction, so that no row can change between the count and the
    triggers taking over.
    """
    for statement in USAGE_SCHEMA:
        conn.execute(statement)
    _store(conn, count_usage(conn))


def usage(conn: sqlite3.Connection) -> Usage:
    """What the mailbox holds, from the total the triggers keep: one read by primary key."""
    row = conn.execute("SELECT messages, bytes FROM usage WHERE id = 0").fetchone()
    if row is None:  # pragma: no cover - add_usage_table always writes the row
        return count_usage(conn)
    return Usage(int(row[0]), int(row[1]))


def count_usage(conn: sqlite3.Connection) -> Usage:
    """What the mailbox holds, counted from its rows: one pass over the messages table."""
    count, total = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM messages").fetchone()
    return Usage(int(count), int(total))


def check_usage(conn: sqlite3.Connection, mailbox_dir: Path) -> bool:
    """
    Compare the total with a count of the rows, in one transaction, and
    replace it when they differ (logged as C{store.index_usage_recounted}):
    at the first open in each process, so that whatever wrote rows without
    the triggers (nothing in mailapp does) is put right before a quota
    counts on it. Returns whether it had to.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        kept, counted = usage(conn), count_usage(conn)
        if kept != counted:
            _store(conn, counted)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if kept == counted:
        return False
    _log.warn(
        "store.index_usage_recounted {mailbox}: kept {kept}, counted {counted}",
        log_event=logevents.INDEX_USAGE_RECOUNTED,
        mailbox=str(mailbox_dir),
        kept=kept,
        counted=counted,
    )
    return True


def _store(conn: sqlite3.Connection, total: Usage) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO usage (id, messages, bytes) VALUES (0, ?, ?)", (total.messages, total.bytes)
    )
