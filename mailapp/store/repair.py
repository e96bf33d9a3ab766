"""
Opening a mailbox's index, and moving a damaged one out of the way.

Damage is found at the first open in each process (C{PRAGMA quick_check})
and whenever SQLite reports it (L{mailapp.store.database}): the damaged
index is moved aside as ``mailapp-index.sqlite3.damaged-<UTC time>`` (kept
for whoever wants to look) and rebuilt from the Maildir
(L{mailapp.store.rebuild}). Repairing an index other threads still have
open is the pool's business (L{mailapp.store.connections}), which calls
L{set_aside} and L{open_index} once nobody uses it.

Synchronous; runs on a worker thread.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from twisted.logger import Logger

from mailapp import logevents
from mailapp.store import durable, intent
from mailapp.store.database import INDEX_NAME, check, connect, is_damage
from mailapp.store.folders import ensure_default_folders
from mailapp.store.reconcile import is_reconciled, mark_reconciled, reconcile
from mailapp.store.usage import check_usage

_log = Logger()


def set_aside(path: Path, reason: str) -> Path:
    """
    Move a damaged index (and its WAL and shared-memory files) to
    C{<name>.damaged-<UTC time>} beside it, never over an earlier one: kept
    for whoever wants to look, and out of the way of the rebuild.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{INDEX_NAME}.damaged-{stamp}")
    number = 1
    while any(Path(str(aside) + suffix).exists() for suffix in ("", "-wal", "-shm")):
        aside = path.with_name(f"{INDEX_NAME}.damaged-{stamp}.{number}")
        number += 1
    for suffix in ("", "-wal", "-shm"):
        victim = Path(str(path) + suffix)
        if victim.exists():
            os.replace(victim, Path(str(aside) + suffix))
    durable.fsync_directory(path.parent)
    _log.warn(
        "store.index_damaged {path}: {error}; moved to {aside}, rebuilding from the Maildir",
        log_event=logevents.INDEX_DAMAGED,
        path=str(path),
        aside=str(aside),
        error=reason,
    )
    return aside


def open_index(mailbox_dir: Path) -> sqlite3.Connection:
    """
    Open a new connection. At the first open in this process the whole
    index is checked (``PRAGMA quick_check``) and reconciled with the
    Maildir, and its usage total compared with its rows; a damaged index,
    found then or by any step of the open, is moved aside and rebuilt.
    """
    mailbox_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = mailbox_dir / INDEX_NAME
    first_open = not is_reconciled(mailbox_dir)
    if first_open:
        # Before a rebuild or reconcile reads the Maildir: a move a crash
        # cut short would otherwise leave its messages in both folders.
        intent.finish_interrupted(mailbox_dir)
    for attempt in (1, 2):
        conn = None
        try:
            conn, built = connect(path, mailbox_dir)
            if first_open and not built:
                check(conn)
                reconcile(conn, mailbox_dir)
                check_usage(conn, mailbox_dir)
            ensure_default_folders(conn, mailbox_dir)
        except sqlite3.DatabaseError as e:
            if conn is not None:
                conn.close()
            if attempt == 2 or not is_damage(e):
                raise
            set_aside(path, str(e))
            continue
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        # Marked only once it worked: a reconcile that failed (say the index
        # was locked too long) is tried again by the next open.
        mark_reconciled(mailbox_dir)
        return conn
    raise AssertionError("unreachable")  # pragma: no cover

