"""
The pool of index connections: borrowed per operation, pinned to the
mailbox directory they were opened on, and the repair of an index that a
connection found damaged.

A connection is used by one thread at a time; idle ones are kept (up to
L{_MAX_IDLE_CONNECTIONS}) and reused only while the mailbox path still
names the directory they were opened on. When SQLite reports damage through
a connection (L{mailapp.store.database}), the index is moved aside and
rebuilt as the last connection this thread holds to it is given back, after
every other thread has given theirs back: renaming an SQLite file under an
open connection would split the writers between two files. The operation
that met the damage sees L{IndexRepaired}, and L{retry_after_repair} runs
it once more on the new index.

Synchronous; runs on a worker thread.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import Counter, OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from twisted.logger import Logger

from mailapp import logevents
from mailapp.errors import MailboxGone, StoreError
from mailapp.store import outside
from mailapp.store.database import INDEX_NAME, is_damage, rollback
from mailapp.store.reconcile import forget_reconciled
from mailapp.store.repair import open_index, set_aside

_T = TypeVar("_T")

_log = Logger()

#: A directory's identity on disk: (st_dev, st_ino), or None when it is missing.
DirectoryIdentity = tuple[int, int] | None


def directory_identity(directory: Path) -> DirectoryIdentity:
    """
    Which directory C{directory} names right now. A mailbox deleted by the
    admin command is renamed away and a new account at the same address gets
    a new directory: the path stays, the identity changes.
    """
    try:
        status = os.stat(directory)
    except FileNotFoundError:
        return None
    return (status.st_dev, status.st_ino)


class MailboxPin:
    """
    The directory one mailbox object (one session's view of an account) was
    first opened on. Every later use checks the path still names that
    directory, so a session of a deleted account fails with L{MailboxGone}
    instead of reading or writing a new account's mail at the same path, and
    never recreates the directory the deletion moved away.
    """

    def __init__(self) -> None:
        self.identity: DirectoryIdentity = None

    def check(self, current: DirectoryIdentity) -> None:
        """Raise L{MailboxGone} if this pin is set and C{current} is another directory (or none)."""
        if self.identity is not None and current != self.identity:
            raise MailboxGone("this mailbox was deleted")

    def take(self, identity: DirectoryIdentity) -> None:
        """Pin the directory of the first successful open."""
        if self.identity is None:
            self.identity = identity


_pool_lock = threading.Lock()
#: Notified whenever a connection is given back or a repair ends.
_pool_changed = threading.Condition(_pool_lock)
_idle: OrderedDict[int, tuple[Path, DirectoryIdentity, sqlite3.Connection]] = OrderedDict()
_MAX_IDLE_CONNECTIONS = 64
#: Connections lent out now, per mailbox directory (every thread).
_borrowed: Counter[Path] = Counter()
#: Mailboxes whose index a connection found damaged, not yet rebuilt.
_damaged: set[Path] = set()
#: Mailboxes whose index is being moved aside and rebuilt: nobody may borrow.
_repairing: set[Path] = set()
#: Per thread, the connections it holds per mailbox (a thread may nest them).
_held = threading.local()
#: How long a repair waits for the other threads to give their connections
#: back, and a borrower for a repair to end.
REPAIR_WAIT_SECONDS = 30.0


class IndexRepaired(StoreError):
    """
    The operation hit a damaged index, which has been moved aside and
    rebuilt since: running the operation again works on the new index
    (L{retry_after_repair}). Left unretried, it is a L{StoreError}.
    """


def _held_here() -> Counter[Path]:
    held: Counter[Path] | None = getattr(_held, "paths", None)
    if held is None:
        held = _held.paths = Counter()
    return held


@contextmanager
def connection(mailbox_dir: Path, pin: MailboxPin | None = None) -> Iterator[sqlite3.Connection]:
    """
    Borrow a connection to C{mailbox_dir}'s index (for use on one thread at a
    time), creating the mailbox (INBOX and the special folders) and rebuilding
    the index when it is missing or damaged.

    An idle connection is reused only while the path still names the
    directory it was opened on: one opened before the account was deleted
    holds the old index file open and would show the old mail to a new
    account at the same address. With C{pin}, a path that names another
    directory (or none) raises L{MailboxGone} before anything is created.

    When SQLite reports damage through the connection, the index is moved
    aside and rebuilt as the last connection this thread holds to it is
    given back, after every other thread has given theirs back (a rebuild
    must never run under a connection still reading the old file); the
    error reaches the caller as L{IndexRepaired}. While a rebuild runs, a
    borrower waits for it.
    """
    current = directory_identity(mailbox_dir)
    if pin is not None:
        pin.check(current)
    held = _held_here()
    conn = None
    identity: DirectoryIdentity = None
    stale: list[sqlite3.Connection] = []
    with _pool_lock:
        if mailbox_dir in _repairing and not held[mailbox_dir] and not _pool_changed.wait_for(
            lambda: mailbox_dir not in _repairing, REPAIR_WAIT_SECONDS
        ):
            raise StoreError("the mailbox index is being rebuilt")
        for key, (path, opened_on, idle) in list(reversed(_idle.items())):
            if path != mailbox_dir:
                continue
            if opened_on != current:
                del _idle[key]
                stale.append(idle)
            elif conn is None:
                del _idle[key]
                conn, identity = idle, opened_on
        _borrowed[mailbox_dir] += 1
        held[mailbox_dir] += 1
    try:
        if stale:
            for old in stale:
                old.close()
            forget_reconciled(mailbox_dir)
        if conn is None:
            conn = open_index(mailbox_dir)
            identity = directory_identity(mailbox_dir)
        if pin is not None:
            try:
                pin.check(identity)
            except MailboxGone:
                conn.close()
                conn = None
                raise
            pin.take(identity)
    except BaseException:
        _give_back(mailbox_dir, identity, conn)
        raise
    try:
        yield conn
    except BaseException as e:
        _roll_back(conn)
        damaged = _give_back(mailbox_dir, identity, conn)
        if damaged and is_damage(e):
            raise IndexRepaired("the mailbox index was damaged and has been rebuilt") from e
        raise
    if conn.in_transaction:  # pragma: no cover - a bug in the caller
        _roll_back(conn)
    _give_back(mailbox_dir, identity, conn)


def _roll_back(conn: sqlite3.Connection) -> None:
    """End a transaction the borrower left open; a connection that cannot is closed by L{_give_back}."""
    try:
        rollback(conn)
    except sqlite3.Error:
        pass


def _give_back(mailbox_dir: Path, identity: DirectoryIdentity, conn: sqlite3.Connection | None) -> bool:
    """
    Return a borrowed connection to the pool (or close it when it saw
    damage), and rebuild the index if it is damaged and this was the last
    connection this thread held to it. Returns whether the index was found
    damaged (and is rebuilt now, or being rebuilt by another thread).
    """
    held = _held_here()
    with _pool_lock:
        _borrowed[mailbox_dir] -= 1
        if _borrowed[mailbox_dir] <= 0:
            del _borrowed[mailbox_dir]
        held[mailbox_dir] -= 1
        if held[mailbox_dir] <= 0:
            del held[mailbox_dir]
        if conn is not None and getattr(conn, "damaged", False):
            _damaged.add(mailbox_dir)
        if conn is not None and (getattr(conn, "damaged", False) or conn.in_transaction):
            conn.close()
        elif conn is not None:
            _idle[id(conn)] = (mailbox_dir, identity, conn)
            while len(_idle) > _MAX_IDLE_CONNECTIONS:
                _, (_, _, old) = _idle.popitem(last=False)
                old.close()
        damaged = mailbox_dir in _damaged or mailbox_dir in _repairing
        repair = mailbox_dir in _damaged and mailbox_dir not in _repairing and not held[mailbox_dir]
        if repair:
            _repairing.add(mailbox_dir)
        _pool_changed.notify_all()
    if repair:
        _repair(mailbox_dir)
    return damaged


def _repair(mailbox_dir: Path) -> None:
    """
    Move the damaged index aside and rebuild it, once no thread of this
    process holds a connection to it: wait (bounded) for the others to give
    theirs back, close every idle one. If they do not come back in time,
    the damage stays noted and the next connection given back tries again;
    if the rebuild fails once the file is aside, the next open builds it.
    """
    try:
        with _pool_lock:
            if not _pool_changed.wait_for(lambda: not _borrowed[mailbox_dir], REPAIR_WAIT_SECONDS):
                _log.warn(
                    "store.index_repair_postponed {mailbox}: connections still in use",
                    log_event=logevents.INDEX_REPAIR_POSTPONED,
                    mailbox=str(mailbox_dir),
                )
                return
            for key, (path, _, idle) in list(_idle.items()):
                if path == mailbox_dir:
                    del _idle[key]
                    idle.close()
        set_aside(mailbox_dir / INDEX_NAME, "SQLite reported damage")
        with _pool_lock:
            _damaged.discard(mailbox_dir)
        try:
            conn = open_index(mailbox_dir)
        except Exception as e:
            # Say locked by another process for too long: the next use builds it.
            _log.error(
                "store.index_repair_postponed {mailbox}: {error!r}",
                log_event=logevents.INDEX_REPAIR_POSTPONED,
                mailbox=str(mailbox_dir),
                error=e,
            )
            return
        with _pool_lock:
            _idle[id(conn)] = (mailbox_dir, directory_identity(mailbox_dir), conn)
    finally:
        with _pool_lock:
            _repairing.discard(mailbox_dir)
            _pool_changed.notify_all()


def retry_after_repair(function: Callable[..., _T], *args: Any) -> _T:
    """
    Run C{function(*args)}, and once more if it met a damaged index that
    has been rebuilt meanwhile: every store operation runs through here, so
    that the session which meets the damage gets an answer, not an error.
    """
    try:
        return function(*args)
    except IndexRepaired:
        return function(*args)


def reset_connections() -> None:
    """
    Close every idle connection, so each index is opened afresh on next use:
    what a restart does. Tests use it to prove that state persists on disk.
    """
    with _pool_lock:
        while _idle:
            _, (_, _, old) = _idle.popitem()
            old.close()
        _damaged.clear()
    forget_reconciled()
    outside.forget_all()


def close_idle_connections(mailbox_dir: Path) -> None:
    """
    Close the idle connections to C{mailbox_dir}'s index but remember that
    it was checked and reconciled: the next use opens a new connection
    without a check, as a long-running process would after its pool
    evicted the connection. Tests use it to meet damage at run time.
    """
    with _pool_lock:
        for key, (path, _, idle) in list(_idle.items()):
            if path == mailbox_dir:
                del _idle[key]
                idle.close()

