"""Faults a mailbox index can suffer on disk, made on purpose: a damaged page, a lost WAL."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

__all__ = ["damage_messages_page", "lose_wal"]


def damage_messages_page(index_path: Path, seed: int = 1) -> None:
    """
    Write random bytes over the root page of the index's ``messages`` table,
    as a bad sector or a stray write would, with nothing holding the index
    open: first fold the WAL into the file, so that the page read is the
    damaged one. The ``folders`` table stays intact.
    """
    conn = sqlite3.connect(index_path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages'").fetchone()[0]
    finally:
        conn.close()
    with open(index_path, "r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(random.Random(seed).randbytes(page_size))


def lose_wal(index_path: Path) -> int:
    """
    Delete the index's WAL and shared-memory files, as a power cut can lose
    the tail of a WAL that was never fsync'd; returns the WAL's size before.
    """
    wal = Path(str(index_path) + "-wal")
    size = wal.stat().st_size if wal.exists() else 0
    for suffix in ("-wal", "-shm"):
        Path(str(index_path) + suffix).unlink(missing_ok=True)
    return size
