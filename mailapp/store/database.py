"""
The index file itself: one SQLite database per mailbox, its schema, and the
connection class that notices damage.

C{<maildir>/mailapp-index.sqlite3} keeps, per folder, UIDVALIDITY and
UIDNEXT, and per message its UID, file name, flags, size and internal date,
so that listing a folder or its flags never opens a message file. The
Maildir stays the truth for content and readable by other tools (Dovecot,
mutt, backups); the index is derived from it and is rebuilt when it is
missing or damaged (L{mailapp.store.rebuild}).

A message's ``size`` here is its wire size (lines ending in CRLF): what
IMAP's RFC822.SIZE and POP3's LIST report.

Damage is whatever SQLite reports as SQLITE_CORRUPT or SQLITE_NOTADB, and a
failed C{PRAGMA quick_check}: every connection is a L{_WatchedConnection},
which remembers the damage whoever catches the error, so that the pool
(L{mailapp.store.connections}) can rebuild the index.

Synchronous; runs on a worker thread.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from mailapp.store.changes import add_change_counter
from mailapp.store.modseq import add_modseq
from mailapp.store.origins import add_savedate_column
from mailapp.store.rebuild import rebuild_tables
from mailapp.store.recent import add_recent_column
from mailapp.store.structures import add_structures_table
from mailapp.store.uidvalidity import add_uidvalidity_table
from mailapp.store.usage import add_usage_table

INDEX_NAME = "mailapp-index.sqlite3"
#: Beside the index: the lock every writer of it holds (L{WriteLock}).
WRITE_LOCK_NAME = "mailapp-index.lock"
#: 2: the mailbox's usage kept as a total by triggers (L{mailapp.store.usage});
#: 3: each message's cached structure (L{mailapp.store.structures}) and each
#: folder's change counter (L{mailapp.store.changes}); 4: each message's
#: mod-sequence, each folder's highest, and the expunged UIDs (L{mailapp.store.modseq});
#: 5: each message's save date (L{mailapp.store.origins}); 6: each folder's
#: first UID no IMAP session has claimed as \Recent (L{mailapp.store.recent});
#: 7: the largest UIDVALIDITY the mailbox ever gave (L{mailapp.store.uidvalidity}).
#: An index of an older version is migrated at its first open.
SCHEMA_VERSION = 7

_SCHEMA = """
CREATE TABLE IF NOT EXISTS folders (
    name TEXT PRIMARY KEY,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    subscribed INTEGER NOT NULL DEFAULT 1,
    changes INTEGER NOT NULL DEFAULT 0,
    highestmodseq INTEGER NOT NULL DEFAULT 1,
    vanished_before INTEGER NOT NULL DEFAULT 1,
    first_recent_uid INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS messages (
    folder TEXT NOT NULL,
    uid INTEGER NOT NULL,
    filename TEXT NOT NULL,
    flags TEXT NOT NULL,
    size INTEGER NOT NULL,
    internaldate REAL NOT NULL,
    modseq INTEGER NOT NULL DEFAULT 1,
    savedate REAL,
    PRIMARY KEY (folder, uid)
) WITHOUT ROWID;
"""


class IndexDamaged(sqlite3.DatabaseError):
    """The index failed its check (``PRAGMA quick_check``) or has a schema this code does not know."""


#: SQLite's primary result codes that mean the file is damaged.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def is_damage(error: BaseException) -> bool:
    """
    Whether C{error} says the index file is damaged (SQLITE_CORRUPT,
    SQLITE_NOTADB, a failed check), as opposed to busy, locked, full or
    read-only, which a rebuild would not cure.
    """
    if isinstance(error, IndexDamaged):
        return True
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(error)
    return "malformed" in text or "not a database" in text


class _WatchedCursor(sqlite3.Cursor):
    """A cursor that marks its connection damaged when SQLite reports damage, whoever catches the error."""

    connection: _WatchedConnection

    def _noted(self, error: sqlite3.DatabaseError) -> sqlite3.DatabaseError:
        if is_damage(error):
            self.connection.damaged = True
        return error

    def execute(self, sql: str, parameters: Any = ()) -> _WatchedCursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.DatabaseError as e:
            raise self._noted(e)

    def executemany(self, sql: str, parameters: Any) -> _WatchedCursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.DatabaseError as e:
            raise self._noted(e)

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.DatabaseError as e:
            raise self._noted(e)

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.DatabaseError as e:
            raise self._noted(e)

    def fetchmany(self, size: int | None = 1) -> list[Any]:
        try:
            return super().fetchmany(size)
        except sqlite3.DatabaseError as e:
            raise self._noted(e)

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.DatabaseError as e:
            raise self._noted(e)


class _WatchedConnection(sqlite3.Connection):
    """
    An index connection that remembers whether SQLite ever reported damage
    through it, so that L{connection} can discard it and rebuild the index
    even when the caller caught the error (the committer fails the jobs of
    a batch one by one).
    """

    damaged = False
    #: The index's cross-process write lock (L{WriteLock}), taken around
    #: every C{BEGIN IMMEDIATE} transaction; None on a connection opened without one.
    write_lock: WriteLock | None = None

    def cursor(self, factory: Any = _WatchedCursor) -> Any:
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = ()) -> _WatchedCursor:
        lock = self.write_lock
        if lock is None:
            return self.cursor().execute(sql, parameters)  # type: ignore[no-any-return]
        if sql == "BEGIN IMMEDIATE" and not lock.held:
            lock.acquire()
        try:
            return self.cursor().execute(sql, parameters)  # type: ignore[no-any-return]
        finally:
            if lock.held and not self.in_transaction:
                lock.release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.write_lock is not None:
                self.write_lock.close()

    def executemany(self, sql: str, parameters: Any) -> _WatchedCursor:
        return self.cursor().executemany(sql, parameters)  # type: ignore[no-any-return]


class WriteLock:
    """
    An exclusive flock(2) on the index's lock file, held from C{BEGIN
    IMMEDIATE} to the end of the transaction, by every index connection of
    every process (each on its own open file, so threads exclude each other
    too). SQLite's own busy handler polls for a write lock, sleeping 1 ms,
    then 2, 5, 10 and up to 100 ms between tries; with two worker processes
    writing to one mailbox, a write waited on the other's by sleeping (a
    p99 batch of 37-57 ms against 20 ms with one process). A writer
    waiting here is woken the moment the lock is let go; SQLite's lock is
    then free, as every writer takes this one first.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self.held = False
        #: Held by this thread through another connection already: not locked again.
        self._nested = False

    def acquire(self) -> None:
        held = _locks_held_here()
        if held.get(self._path):
            # A second connection of this thread to the same index would wait
            # for itself here for ever; SQLite's busy timeout ends that wait instead.
            self._nested = True
        else:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        held[self._path] = held.get(self._path, 0) + 1
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        held = _locks_held_here()
        left = held.get(self._path, 1) - 1
        if left:
            held[self._path] = left
        else:
            held.pop(self._path, None)
        if self._nested:
            self._nested = False
        elif self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.release()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


_held_locks = threading.local()


def _locks_held_here() -> dict[Path, int]:
    """The write locks this thread holds, per lock file (L{WriteLock})."""
    held: dict[Path, int] | None = getattr(_held_locks, "paths", None)
    if held is None:
        held = _held_locks.paths = {}
    return held


def rollback(conn: sqlite3.Connection) -> None:
    """
    End C{conn}'s transaction if it is still open. SQLite rolls a transaction
    back by itself when a write fails with SQLITE_FULL or an I/O error, and a
    plain ROLLBACK then fails ("cannot rollback - no transaction is active"),
    hiding the error that mattered.
    """
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _configure(conn: sqlite3.Connection) -> None:
    """Every connection's settings: wait for locks rather than fail, WAL, commits not fsync'd."""
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL, not FULL: a commit is not fsync'd on its own. The index is
    # derived data: every message file is durable (and carries its UID in its
    # name) before the commit that lists it, and reconcile() repairs the index
    # from the Maildir once per process. That saves one fsync per mailbox per
    # batch on the delivery path.
    conn.execute("PRAGMA synchronous = NORMAL")


def check(conn: sqlite3.Connection) -> None:
    """
    Raise L{IndexDamaged} unless SQLite finds the whole file sound. A quick
    check, not an integrity check: it reads every page and row but does not
    compare indexes with their tables (this schema has none besides the
    primary keys), in a fraction of the time.
    """
    problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise IndexDamaged("; ".join(str(p) for p in problems[:5]))


def connect(path: Path, mailbox_dir: Path) -> tuple[sqlite3.Connection, bool]:
    """
    Open the index, creating and filling it from the Maildir when it is new.
    The check and the build happen in one IMMEDIATE transaction, so two
    threads or processes opening a new mailbox at once build it only once.
    Returns the connection and whether it was built now.

    A brand-new file is the one moment SQLite may answer "database is
    locked" without waiting for the busy timeout: switching a new file to
    WAL needs it alone, while another opener holds it for its build. Such
    an open is tried again, a few times, a little later each time; by then
    the file is in WAL mode and built.
    """
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            return _connect(path, mailbox_dir)
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == _OPEN_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


#: Opens of a new index tried when SQLite says it is locked (L{connect}).
_OPEN_ATTEMPTS = 5


def _connect(path: Path, mailbox_dir: Path) -> tuple[sqlite3.Connection, bool]:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=10, factory=_WatchedConnection
    )
    try:
        conn.write_lock = WriteLock(path.with_name(WRITE_LOCK_NAME))
        _configure(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            built = False
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                # Before the rows: the triggers count them as the rebuild inserts them.
                add_usage_table(conn)
                add_structures_table(conn)
                add_change_counter(conn, add_column=False)
                add_modseq(conn, add_columns=False)
                add_uidvalidity_table(conn)
                rebuild_tables(conn, mailbox_dir)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                built = True
            elif version in (1, 2, 3, 4, 5, 6):
                if version == 1:
                    add_usage_table(conn)
                if version in (1, 2):
                    # Empty: every blob is filled at first use.
                    add_structures_table(conn)
                    add_change_counter(conn, add_column=True)
                if version in (1, 2, 3):
                    # Every message and folder at mod-sequence 1.
                    add_modseq(conn, add_columns=True)
                if version in (1, 2, 3, 4):
                    # Every message indexed so far: save date unknown.
                    add_savedate_column(conn)
                if version in (1, 2, 3, 4, 5):
                    # Every message unclaimed: recent to the next session that selects its folder.
                    add_recent_column(conn)
                # New folders given UIDVALIDITYs above every one listed now.
                add_uidvalidity_table(conn)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version == SCHEMA_VERSION:
                conn.execute("SELECT count(*) FROM folders").fetchone()
            else:
                raise IndexDamaged(f"unknown index schema version {version}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except BaseException:
        conn.close()
        raise
    return conn, built

