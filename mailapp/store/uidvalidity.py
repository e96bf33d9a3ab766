"""
Each folder's UIDVALIDITY, chosen inside the index's write transaction so
that every process over one mailbox agrees it is new.

RFC 3501 2.3.1.1 (and RFC 9051 2.3.1.1) require a new UIDVALIDITY whenever
a name's UIDs may no longer mean what they did: a folder deleted and made
again, or another folder renamed onto a deleted one's name. The time in
seconds alone is not enough: two worker processes (or one process after a
restart with a clock stepped back) can make folders within one second. So
the index keeps the largest UIDVALIDITY it ever gave in this mailbox
(schema 7, table ``uidvalidity``) and a new one is the greater of the time
and that value + 1 (and of every folder's + 1, for folders a rebuild took
from their records), taken and recorded under the same ``IMMEDIATE`` lock
that inserts the folder's row, so that two processes never take the same.

An index rebuilt from the Maildir has lost the value for folders deleted
since; it starts again from the records of the folders on disk
(L{note_given}, before any folder without a record gets a new one), the
time, and the largest this process gave, as every UIDVALIDITY did before
schema 7.

Synchronous; runs on a worker thread, in the caller's write transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time

__all__ = ["add_uidvalidity_table", "next_uidvalidity", "note_given"]

#: UIDVALIDITY is a 32-bit unsigned number (RFC 3501 9: nz-number); the
#: time is kept below 2^31, as it always was here, for clients that read it signed.
_TIME_MASK = 0x7FFFFFFF

#: The largest this process gave: a floor for an index that lost its own (a rebuild).
_process_lock = threading.Lock()
_process_last = 0


def add_uidvalidity_table(conn: sqlite3.Connection) -> None:
    """
    The table of schema 7: one row, the largest UIDVALIDITY given so far,
    starting at the largest of the folders already listed (a migrated
    index gives every new folder a value above theirs). In the caller's transaction.
    """
    conn.execute("CREATE TABLE IF NOT EXISTS uidvalidity (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL)")
    conn.execute("INSERT OR IGNORE INTO uidvalidity (id, last) SELECT 1, coalesce(max(uidvalidity), 0) FROM folders")


def next_uidvalidity(conn: sqlite3.Connection) -> int:
    """
    A UIDVALIDITY no folder of this mailbox was ever given (as far as this
    index knows), recorded as given. The caller must hold the index's write
    lock (``BEGIN IMMEDIATE``) and insert the folder's row in the same
    transaction: a rollback then gives the value back along with the row.
    """
    if not conn.in_transaction:
        raise RuntimeError("next_uidvalidity outside the index's write transaction")
    row = conn.execute(
        "SELECT max(coalesce((SELECT last FROM uidvalidity WHERE id = 1), 0), coalesce((SELECT max(uidvalidity) FROM folders), 0))"
    ).fetchone()
    global _process_last
    with _process_lock:
        value = max(int(time.time()) & _TIME_MASK, int(row[0]) + 1, _process_last + 1)
        _process_last = value
    note_given(conn, value)
    return value


def note_given(conn: sqlite3.Connection, value: int) -> None:
    """Record C{value} as given (a folder's record a rebuild found), unless a larger one was. In the caller's transaction."""
    conn.execute(
        "INSERT INTO uidvalidity (id, last) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET last = max(last, excluded.last)", (value,)
    )
