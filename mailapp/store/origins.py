"""
Where each message of a folder came from, as RFC 8474 and RFC 8514 ask:
its EMAILID (which stored message it is) and its save date (when it was
saved into this folder).

The EMAILID is derived from the Maildir file's unique name (the base
before ``,S=``: L{mailapp.store.filenames}), not kept: COPY and MOVE link
the same file under the same base into another folder (RFC 8474 5.1 lets
copies share it), flag changes rename only the ``:2,`` info, and a rebuild
of a lost index reads the same names, so the identifier is the same in
every folder, across restarts and rebuilds, with nothing to store. Two
APPENDs of the same bytes are two files, two bases, two EMAILIDs. A file
hard-linked to several recipients shares its base between their mailboxes,
which never see each other's.

The save date is a column of the ``messages`` table (schema 5), set by
every writer that saves a message into a folder (delivery, APPEND, COPY,
MOVE, and a reconcile that finds a file: the moment it is seen). It is not
in the file's name or times (a copy shares the file, and every flag change
renames it), so a rebuilt index does not know it: NULL, which IMAP answers
as NIL (RFC 8514 allows it).

Synchronous; runs on a worker thread.
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Sequence

from mailapp.records import MessageOrigin

__all__ = ["add_savedate_column", "email_id", "read_origins"]

#: Rows per statement when reading (SQLite's bound on parameters is 32,766).
_READ_CHUNK = 900


def add_savedate_column(conn: sqlite3.Connection) -> None:
    """The migration to schema 5: every message indexed before has no known save date (NULL). In the caller's transaction."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)").fetchall()}
    if "savedate" not in columns:
        conn.execute("ALTER TABLE messages ADD COLUMN savedate REAL")


def email_id(filename: str) -> str:
    """
    The EMAILID of the message in C{filename} (relative to its folder,
    ``new/`` or ``cur/`` and the name): ``M`` and 24 hex digits of a hash
    of the name's unique base, so a valid RFC 8474 objectid whatever
    characters another tool put in the name.
    """
    name = filename.rsplit("/", 1)[-1]
    base = name.split(":", 1)[0].split(",", 1)[0]
    return "M" + hashlib.blake2b(base.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


def read_origins(conn: sqlite3.Connection, folder: str, uids: Sequence[int]) -> dict[int, MessageOrigin]:
    """The origin of each of C{uids} that folder C{folder} still lists."""
    rows: list[tuple[int, str, float | None]] = []
    if uids and max(uids) - min(uids) < 2 * len(uids):
        # Dense (1:*, a range): one pass over the primary key between the ends.
        wanted = set(uids)
        rows = [
            row
            for row in conn.execute(
                "SELECT uid, filename, savedate FROM messages WHERE folder = ? AND uid BETWEEN ? AND ?",
                (folder, min(uids), max(uids)),
            )
            if row[0] in wanted
        ]
    else:
        for start in range(0, len(uids), _READ_CHUNK):
            chunk = list(uids[start : start + _READ_CHUNK])
            marks = ",".join("?" * len(chunk))
            rows.extend(
                conn.execute(
                    f"SELECT uid, filename, savedate FROM messages WHERE folder = ? AND uid IN ({marks})",  # noqa: S608 - only marks
                    (folder, *chunk),
                ).fetchall()
            )
    return {int(uid): MessageOrigin(email_id(filename), savedate) for uid, filename, savedate in rows}
