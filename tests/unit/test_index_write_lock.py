"""
The index's cross-process write lock (L{mailapp.store.database.WriteLock}):
a writer waiting for another's transaction is let in the moment it ends,
where SQLite's busy handler had it sleep (up to 100 ms between tries), and a
lock is never left held by a transaction that ended, failed or was closed.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from mailapp.store import index
from mailapp.store.database import WRITE_LOCK_NAME
from mailapp.store.names import mailbox_directory
from mailapp.store.repair import open_index as open_store_index

ALICE = "alice@example.test"


@pytest.fixture
def mailbox(tmp_path: Path) -> Path:
    index.reset_connections()
    return mailbox_directory(tmp_path / "mail", ALICE)


def open_index(mailbox: Path) -> sqlite3.Connection:
    return open_store_index(mailbox)


def lock_is_free(mailbox: Path) -> bool:
    """Whether another open file can take the lock now (as another process would)."""
    fd = os.open(mailbox / WRITE_LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_the_lock_is_held_from_begin_immediate_to_commit_or_rollback(mailbox: Path) -> None:
    conn = open_index(mailbox)
    try:
        for end in ("COMMIT", "ROLLBACK"):
            conn.execute("BEGIN IMMEDIATE")
            assert not lock_is_free(mailbox)
            conn.execute("UPDATE folders SET uidnext = uidnext WHERE name = 'INBOX'")
            assert not lock_is_free(mailbox)
            conn.execute(end)
            assert lock_is_free(mailbox)
        # A read transaction takes no write lock.
        conn.execute("BEGIN")
        assert lock_is_free(mailbox)
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_closing_a_connection_in_a_write_transaction_lets_the_lock_go(mailbox: Path) -> None:
    conn = open_index(mailbox)
    conn.execute("BEGIN IMMEDIATE")
    assert not lock_is_free(mailbox)
    conn.close()
    assert lock_is_free(mailbox)


def test_a_failed_begin_leaves_no_lock_held(mailbox: Path) -> None:
    conn = open_index(mailbox)
    try:
        conn.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("BEGIN IMMEDIATE")  # a transaction within a transaction
        conn.execute("COMMIT")
        assert lock_is_free(mailbox)
    finally:
        conn.close()


def test_a_waiting_writer_is_let_in_as_soon_as_the_other_commits(mailbox: Path) -> None:
    first, second = open_index(mailbox), open_index(mailbox)
    try:
        first.execute("BEGIN IMMEDIATE")
        committed: list[float] = []
        entered: list[float] = []

        def write() -> None:
            second.execute("BEGIN IMMEDIATE")
            entered.append(time.monotonic())
            second.execute("COMMIT")

        waiter = threading.Thread(target=write)
        waiter.start()
        # SQLite's busy handler would be between tries 103 and 128 ms in, then
        # 128 and 178: a commit at 130 ms would let it in about 48 ms late.
        time.sleep(0.13)
        first.execute("COMMIT")
        committed.append(time.monotonic())
        waiter.join(10)
        assert entered and entered[0] - committed[0] < 0.025
    finally:
        first.close()
        second.close()


def test_a_second_connection_of_the_same_thread_times_out_rather_than_waiting_for_itself(mailbox: Path) -> None:
    first, second = open_index(mailbox), open_index(mailbox)
    try:
        second.execute("PRAGMA busy_timeout = 50")
        first.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            second.execute("BEGIN IMMEDIATE")
        assert time.monotonic() - started < 5
        first.execute("COMMIT")
        assert lock_is_free(mailbox)
        second.execute("BEGIN IMMEDIATE")
        second.execute("COMMIT")
        assert lock_is_free(mailbox)
    finally:
        first.close()
        second.close()
