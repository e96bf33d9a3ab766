"""The index schema's migrations, as their tests check them: an index made older by hand, then found migrated in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mailapp.store import index


def make_older(mailbox_dir: Path, version: int, *statements: str) -> None:
    """Run C{statements} on the (closed) index of C{mailbox_dir}, then mark it schema C{version}."""
    index.reset_connections()
    conn = sqlite3.connect(mailbox_dir / index.INDEX_NAME)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    finally:
        conn.close()


def migrated_in_place(mailbox_dir: Path) -> bool:
    """Whether the index of C{mailbox_dir} is of this code's schema and was not rebuilt (no damaged copy set aside)."""
    conn = sqlite3.connect(mailbox_dir / index.INDEX_NAME)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
    rebuilt = any(p.name.startswith(index.INDEX_NAME + ".damaged-") for p in mailbox_dir.iterdir())
    return bool(version == index.SCHEMA_VERSION and not rebuilt)
