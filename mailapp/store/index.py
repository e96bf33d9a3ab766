"""
The per-mailbox index: a small SQLite database beside the Maildir.

It keeps, per folder, UIDVALIDITY and UIDNEXT, and per message its UID, file
name, flags, size and internal date, so that listing a folder or its flags
never opens a message file. The Maildir stays the truth for content and
readable by other tools (Dovecot, mutt, backups); the index is derived from it
and is rebuilt when it is missing or damaged.

A message's ``size`` here is its wire size (lines ending in CRLF): what
IMAP's RFC822.SIZE and POP3's LIST report. Files are stored with LF, and
their names carry both sizes, Dovecot's ``,S=<file size>,W=<wire size>``
(L{mailapp.store.messagefile}); a name without ``W=`` is from state format 1
(CRLF files, so both sizes are S=) or from another tool.

So that a rebuild can keep UIDs, each message's file name carries its UID
(``,U=<uid>``) and each folder directory holds a small ``mailapp-folder``
file with its UIDVALIDITY and the UIDNEXT as of the last expunge. A rebuild
keeps UIDVALIDITY when that file is readable, takes UIDNEXT as the larger of
the recorded value and the highest UID on disk plus one (so a UID is never
reused), and gives files without a UID (dropped in by other tools) fresh ones.
Without that file it starts a new UIDVALIDITY. Keywords are in the names
too, as Dovecot writes them: lower-case letters after the system flags in
the ``:2,`` info, each folder's ``dovecot-keywords`` file saying which
keyword each letter stands for (26 per folder; a folder's 27th keyword is
kept in the index only, as Dovecot keeps it in its own index only).

Damage is found at the first open in each process (``PRAGMA quick_check``)
and whenever SQLite reports it (SQLITE_CORRUPT, SQLITE_NOTADB): the damaged
index is moved aside as ``mailapp-index.sqlite3.damaged-<UTC time>`` and
rebuilt from the Maildir, once no thread of this process uses it.

Everything here is synchronous and runs on a worker thread.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from twisted.logger import Logger

from mailapp import logevents
from mailapp.errors import MailboxGone, StoreError
from mailapp.store import durable, intent, messagefile, outside
from mailapp.store.records import Usage
from mailapp.store.names import INBOX, SPECIAL_FOLDERS, folder_directory, folder_from_directory

INDEX_NAME = "mailapp-index.sqlite3"
META_NAME = "mailapp-folder"
#: Dovecot's name for the file that maps keyword letters to keywords.
KEYWORDS_NAME = "dovecot-keywords"
SCHEMA_VERSION = 1

_T = TypeVar("_T")

_log = Logger()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS folders (
    name TEXT PRIMARY KEY,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    subscribed INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS messages (
    folder TEXT NOT NULL,
    uid INTEGER NOT NULL,
    filename TEXT NOT NULL,
    flags TEXT NOT NULL,
    size INTEGER NOT NULL,
    internaldate REAL NOT NULL,
    PRIMARY KEY (folder, uid)
) WITHOUT ROWID;
"""

# Maildir info flags (https://cr.yp.to/proto/maildir.html) for the IMAP system flags.
_FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
_LETTER_FLAGS = {letter: flag for flag, letter in _FLAG_LETTERS.items()}
_NAME = re.compile(r"^(?P<base>[^:,]+)(?P<fields>(?:,[A-Za-z]=[^,:]*)*)(?::2,(?P<info>[A-Za-z]*))?$")


@dataclass
class ParsedName:
    base: str
    #: ``S=``: the file's size.
    size: int | None
    uid: int | None
    flags: frozenset[str]
    #: ``W=``: the size with CRLF line ends (None: the name has none).
    wire_size: int | None = None
    #: The lower-case letters of the ``:2,`` info: keywords, by the folder's L{KEYWORDS_NAME}.
    keyword_letters: str = ""

    def index_size(self, stat: os.stat_result) -> int:
        """
        The size the index keeps (the wire size) for a file the store named:
        ``W=``, else ``S=`` (state format 1 stored CRLF), else the file's.
        """
        if self.wire_size is not None:
            return self.wire_size
        return self.size if self.size is not None else stat.st_size


def parse_filename(name: str) -> ParsedName | None:
    """Read base, ``S=`` and ``W=`` sizes, ``U=`` UID and info flags out of a Maildir file name."""
    match = _NAME.match(name)
    if not match:
        return None
    size = uid = wire_size = None
    for field in match.group("fields").split(",")[1:]:
        key, _, value = field.partition("=")
        if key == "S" and value.isdigit():
            size = int(value)
        elif key == "W" and value.isdigit():
            wire_size = int(value)
        elif key == "U" and value.isdigit() and int(value) > 0:
            uid = int(value)
    info = match.group("info") or ""
    flags = frozenset(_LETTER_FLAGS[c] for c in info if c in _LETTER_FLAGS)
    keyword_letters = "".join(sorted({c for c in info if c in _KEYWORD_LETTERS}))
    return ParsedName(match.group("base"), size, uid, flags, wire_size, keyword_letters)


def format_filename(
    base: str,
    size: int,
    uid: int,
    flags: frozenset[str] | set[str] | tuple[str, ...],
    cur: bool = False,
    wire_size: int | None = None,
    keyword_letters: str = "",
) -> str:
    """
    The file name for a message, relative to its folder: ``new/`` names
    carry no info part; once a message has flags (or was in ``cur/``) it
    lives in ``cur/`` with ``:2,<letters>`` and never goes back. C{size} is
    the file's (``S=``), C{wire_size} the message's as sent (``W=``; None
    only to keep the name of a state format 1 file as it was).
    C{keyword_letters} follow the system flags' (L{message_filename} finds them).
    """
    sizes = f"S={size}" if wire_size is None else f"S={size},W={wire_size}"
    name = f"{base},{sizes},U={uid}"
    letters = "".join(sorted(_FLAG_LETTERS[f] for f in flags if f in _FLAG_LETTERS)) + "".join(sorted(keyword_letters))
    if flags or cur:
        return f"cur/{name}:2,{letters}"
    return f"new/{name}"


def message_filename(
    directory: Path,
    base: str,
    size: int,
    uid: int,
    flags: frozenset[str] | set[str] | tuple[str, ...],
    cur: bool = False,
    wire_size: int | None = None,
) -> str:
    """
    L{format_filename} for a message in the folder at C{directory}, with
    its keywords as letters, so that a rebuild of the index finds them.
    Call it inside the index's write transaction: a keyword new to the
    folder is given a letter in its L{KEYWORDS_NAME} file, durably, before
    any file is named with it.
    """
    return format_filename(base, size, uid, flags, cur, wire_size, keyword_letters(directory, flags))


def encode_flags(flags: frozenset[str] | set[str] | tuple[str, ...]) -> str:
    return " ".join(sorted(set(flags)))


def decode_flags(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


# -- keywords ------------------------------------------------------------------

_KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _is_keyword(flag: str) -> bool:
    return not flag.startswith("\\")


def read_keywords(directory: Path) -> dict[str, str]:
    """
    The folder's keyword letters, ``{letter: keyword}``, from Dovecot's
    ``dovecot-keywords`` (lines ``<n> <keyword>``, n = 0 for ``a``).
    Lines it cannot read are skipped: at worst a keyword is lost, never
    given to another letter's messages.
    """
    try:
        text = (directory / KEYWORDS_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    mapping: dict[str, str] = {}
    for line in text.splitlines():
        number, _, keyword = line.partition(" ")
        if number.isdigit() and int(number) < len(_KEYWORD_LETTERS) and keyword and " " not in keyword:
            mapping[_KEYWORD_LETTERS[int(number)]] = keyword
    return mapping


def _write_keywords(directory: Path, mapping: dict[str, str]) -> None:
    """Replace the folder's keywords file atomically and durably."""
    lines = "".join(f"{_KEYWORD_LETTERS.index(letter)} {keyword}\n" for letter, keyword in sorted(mapping.items()))
    durable.replace_file(directory / KEYWORDS_NAME, lines.encode("utf-8"), directory / "tmp")


def keyword_letters(directory: Path, flags: Iterable[str]) -> str:
    """
    The letters that stand for C{flags}' keywords in the folder at
    C{directory}, giving each new keyword the first free letter. A keyword
    past the 26th of a folder has none: the index alone keeps it.
    """
    keywords = sorted({flag for flag in flags if _is_keyword(flag)})
    if not keywords:
        return ""
    mapping = read_keywords(directory)
    letters = {keyword: letter for letter, keyword in mapping.items()}
    missing = [keyword for keyword in keywords if keyword not in letters]
    if missing:
        free = [letter for letter in _KEYWORD_LETTERS if letter not in mapping]
        for keyword, letter in zip(missing, free):
            mapping[letter] = keyword
            letters[keyword] = letter
        if free:
            _write_keywords(directory, mapping)
    return "".join(sorted(letters[keyword] for keyword in keywords if keyword in letters))


# -- folder metadata -----------------------------------------------------------

_uidvalidity_lock = threading.Lock()
_last_uidvalidity = 0


def new_uidvalidity() -> int:
    """A fresh UIDVALIDITY: the time, strictly increasing within the process."""
    global _last_uidvalidity
    with _uidvalidity_lock:
        value = max(int(time.time()) & 0x7FFFFFFF, _last_uidvalidity + 1)
        _last_uidvalidity = value
        return value


def read_meta(directory: Path) -> dict[str, int] | None:
    try:
        data = json.loads((directory / META_NAME).read_text())
        if isinstance(data.get("uidvalidity"), int) and isinstance(data.get("uidnext"), int):
            return {"uidvalidity": data["uidvalidity"], "uidnext": data["uidnext"]}
    except (OSError, ValueError, AttributeError):
        pass
    return None


def write_meta(directory: Path, uidvalidity: int, uidnext: int) -> None:
    """Replace the folder's metadata file atomically and durably."""
    data = json.dumps({"uidvalidity": uidvalidity, "uidnext": uidnext}).encode()
    durable.replace_file(directory / META_NAME, data, directory / "tmp")


def make_folder_directory(directory: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    if directory.name.startswith("."):
        # Maildir++ marks subfolders with this empty file (Courier, Dovecot).
        marker = directory / "maildirfolder"
        if not marker.exists():
            marker.touch(mode=0o600)


# -- connections -----------------------------------------------------------------

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


class IndexDamaged(sqlite3.DatabaseError):
    """The index failed its check (``PRAGMA quick_check``) or has a schema this code does not know."""


class IndexRepaired(StoreError):
    """
    The operation hit a damaged index, which has been moved aside and
    rebuilt since: running the operation again works on the new index
    (L{retry_after_repair}). Left unretried, it is a L{StoreError}.
    """


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

    def cursor(self, factory: Any = _WatchedCursor) -> Any:
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = ()) -> _WatchedCursor:
        return self.cursor().execute(sql, parameters)  # type: ignore[no-any-return]

    def executemany(self, sql: str, parameters: Any) -> _WatchedCursor:
        return self.cursor().executemany(sql, parameters)  # type: ignore[no-any-return]


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
            with _reconciled_lock:
                _reconciled.discard(mailbox_dir)
        if conn is None:
            conn = _open(mailbox_dir)
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
        _set_aside(mailbox_dir / INDEX_NAME, "SQLite reported damage")
        with _pool_lock:
            _damaged.discard(mailbox_dir)
        try:
            conn = _open(mailbox_dir)
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


def rollback(conn: sqlite3.Connection) -> None:
    """
    End C{conn}'s transaction if it is still open. SQLite rolls a transaction
    back by itself when a write fails with SQLITE_FULL or an I/O error, and a
    plain ROLLBACK then fails ("cannot rollback - no transaction is active"),
    hiding the error that mattered.
    """
    if conn.in_transaction:
        conn.execute("ROLLBACK")


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
    with _reconciled_lock:
        _reconciled.clear()
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


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL, not FULL: a commit is not fsync'd on its own. The index is
    # derived data: every message file is durable (and carries its UID in its
    # name) before the commit that lists it, and reconcile() repairs the index
    # from the Maildir once per process. That saves one fsync per mailbox per
    # batch on the delivery path.
    conn.execute("PRAGMA synchronous = NORMAL")


def _set_aside(path: Path, reason: str) -> Path:
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


def _open(mailbox_dir: Path) -> sqlite3.Connection:
    """
    Open a new connection. At the first open in this process the whole
    index is checked (``PRAGMA quick_check``) and reconciled with the
    Maildir; a damaged index, found then or by any step of the open, is
    moved aside and rebuilt.
    """
    mailbox_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = mailbox_dir / INDEX_NAME
    with _reconciled_lock:
        first_open = mailbox_dir not in _reconciled
    if first_open:
        # Before a rebuild or reconcile reads the Maildir: a move a crash
        # cut short would otherwise leave its messages in both folders.
        intent.finish_interrupted(mailbox_dir)
    for attempt in (1, 2):
        conn = None
        try:
            conn, built = _connect(path, mailbox_dir)
            if first_open and not built:
                _check(conn)
                reconcile(conn, mailbox_dir)
            ensure_default_folders(conn, mailbox_dir)
        except sqlite3.DatabaseError as e:
            if conn is not None:
                conn.close()
            if attempt == 2 or not is_damage(e):
                raise
            _set_aside(path, str(e))
            continue
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        # Marked only once it worked: a reconcile that failed (say the index
        # was locked too long) is tried again by the next open.
        with _reconciled_lock:
            _reconciled.add(mailbox_dir)
        return conn
    raise AssertionError("unreachable")  # pragma: no cover


def _check(conn: sqlite3.Connection) -> None:
    """
    Raise L{IndexDamaged} unless SQLite finds the whole file sound. A quick
    check, not an integrity check: it reads every page and row but does not
    compare indexes with their tables (this schema has none besides the
    primary keys), in a fraction of the time.
    """
    problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise IndexDamaged("; ".join(str(p) for p in problems[:5]))


def _connect(path: Path, mailbox_dir: Path) -> tuple[sqlite3.Connection, bool]:
    """
    Open the index, creating and filling it from the Maildir when it is new.
    The check and the build happen in one IMMEDIATE transaction, so two
    threads or processes opening a new mailbox at once build it only once.
    Returns the connection and whether it was built now.
    """
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=10, factory=_WatchedConnection
    )
    try:
        _configure(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            built = False
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                _rebuild_tables(conn, mailbox_dir)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                built = True
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


_reconciled_lock = threading.Lock()
_reconciled: set[Path] = set()


def reconcile(conn: sqlite3.Connection, mailbox_dir: Path) -> int:
    """
    Bring an existing index in line with the Maildir, once per process: after
    a crash or power cut commits may be missing (index commits are not
    fsync'd, so a whole tail of the WAL can go), and other tools may have
    added or removed files. The files, which carry their UIDs and flags, and
    each folder's ``mailapp-folder`` record (written durably) are the truth:

      - every Maildir++ folder on disk is listed, and a listed folder whose
        directory is gone is dropped (INBOX and the special folders come
        back empty);
      - a folder whose record has another UIDVALIDITY than the index (it
        was deleted and created again) is rebuilt from its directory;
      - UIDNEXT is at least the record's and the highest UID on disk + 1,
        so no UID is ever given out twice under one UIDVALIDITY.

    Keeps UIDVALIDITY, every UID it can, and keywords. Returns the number
    of rows changed.
    """
    changed = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        listed = {name: (validity, uidnext) for name, validity, uidnext in conn.execute("SELECT name, uidvalidity, uidnext FROM folders")}
        on_disk = dict(_folders_on_disk(mailbox_dir))
        for name in sorted(set(listed) - set(on_disk)):
            conn.execute("DELETE FROM messages WHERE folder = ?", (name,))
            conn.execute("DELETE FROM folders WHERE name = ?", (name,))
            changed += 1
        stamps: list[tuple[Path, outside.Stamp | None]] = []
        for name, directory in on_disk.items():
            meta = read_meta(directory)
            stamps.append((directory, outside.stamp(directory)))
            if name in listed and (meta is None or meta["uidvalidity"] == listed[name][0]):
                uidnext = max(listed[name][1], meta["uidnext"] if meta else 1)
                changed += _reconcile_folder(conn, name, directory, uidnext).count
                continue
            conn.execute("DELETE FROM messages WHERE folder = ?", (name,))
            conn.execute("DELETE FROM folders WHERE name = ?", (name,))
            make_folder_directory(directory)
            changed += 1 + _rebuild_folder(conn, name, directory)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    for directory, taken in stamps:
        # Taken before the scan: a change made during it (ours, naming a
        # new file with its UID, or another tool's) shows at the next look.
        outside.remember(directory, taken)
    if changed:
        _log.info(
            "store.index_reconciled {mailbox} changed={changed}",
            log_event=logevents.INDEX_RECONCILED,
            mailbox=str(mailbox_dir),
            changed=changed,
        )
    return changed


@dataclass
class FolderChanges:
    """What a reconcile changed in one folder's index, so that sessions can be told."""

    added: list[int] = dataclasses.field(default_factory=list)
    removed: list[int] = dataclasses.field(default_factory=list)
    flags_changed: list[int] = dataclasses.field(default_factory=list)
    #: Rows changed, UIDNEXT included.
    count: int = 0


def _reconcile_folder(
    conn: sqlite3.Connection, name: str, directory: Path, uidnext: int, running: bool = False
) -> FolderChanges:
    """
    One listed folder of L{reconcile}; C{uidnext} is the larger of the
    index's and the record's. C{running}: the index is known complete (no
    crash since this process reconciled it), so a file whose ``U=`` is one
    the folder already gave out, or collides with a listed message's, was
    put there by another tool (copied from another Maildir) and gets a new
    UID: a UID below UIDNEXT must never appear, nor one change its message.
    """
    changes = FolderChanges()
    rows = {
        uid: (filename, decode_flags(flags))
        for uid, filename, flags in conn.execute("SELECT uid, filename, flags FROM messages WHERE folder = ?", (name,)).fetchall()
    }
    on_disk: dict[int, tuple[str, ParsedName, os.stat_result]] = {}
    fresh: list[tuple[str, ParsedName, os.stat_result]] = []
    scanned = _scan(directory)
    # The file the index names wins a UID shared by several (a copy of it).
    scanned.sort(key=lambda item: item[1].uid is None or rows.get(item[1].uid, ("",))[0] != item[0])
    for relative, parsed, stat in scanned:
        foreign = running and parsed.uid is not None and parsed.uid not in rows and parsed.uid < uidnext
        if parsed.uid is not None and parsed.uid not in on_disk and not foreign:
            on_disk[parsed.uid] = (relative, parsed, stat)
        else:
            fresh.append((relative, parsed, stat))
    if on_disk:
        uidnext = max(uidnext, max(on_disk) + 1)
    lettered = set(read_keywords(directory).values())
    for uid, (filename, flags) in rows.items():
        if uid not in on_disk:
            conn.execute("DELETE FROM messages WHERE folder = ? AND uid = ?", (name, uid))
            changes.removed.append(uid)
        elif on_disk[uid][0] != filename:
            # The name is newer than the row; keywords without a letter live only in the row.
            unlettered = {f for f in flags if _is_keyword(f) and f not in lettered}
            merged = encode_flags(on_disk[uid][1].flags | unlettered)
            conn.execute(
                "UPDATE messages SET filename = ?, flags = ? WHERE folder = ? AND uid = ?",
                (on_disk[uid][0], merged, name, uid),
            )
            if decode_flags(merged) != flags:
                changes.flags_changed.append(uid)
            changes.count += 1
    for uid, (relative, parsed, stat) in sorted(on_disk.items()):
        if uid in rows:
            continue
        conn.execute(
            "INSERT INTO messages (folder, uid, filename, flags, size, internaldate) VALUES (?, ?, ?, ?, ?, ?)",
            (name, uid, relative, encode_flags(parsed.flags), parsed.index_size(stat), stat.st_mtime),
        )
        changes.added.append(uid)
    fresh.sort(key=lambda item: (item[2].st_mtime, item[0]))
    for relative, parsed, stat in fresh:
        uid, uidnext = uidnext, uidnext + 1
        new_relative, named = _name_with_uid(directory, relative, parsed, stat, uid)
        conn.execute(
            "INSERT INTO messages (folder, uid, filename, flags, size, internaldate) VALUES (?, ?, ?, ?, ?, ?)",
            (name, uid, new_relative, encode_flags(parsed.flags), named.index_size(stat), stat.st_mtime),
        )
        changes.added.append(uid)
    cursor = conn.execute("UPDATE folders SET uidnext = ? WHERE name = ? AND uidnext < ?", (uidnext, name, uidnext))
    changes.count += len(changes.added) + len(changes.removed) + cursor.rowcount
    return changes


def reconcile_running_folder(conn: sqlite3.Connection, name: str, directory: Path) -> FolderChanges:
    """
    Bring one folder's index in line with its directory while the server
    runs (L{outside}: another tool added, removed or renamed files): new
    files get new UIDs above every one given out, rows whose file is gone
    are dropped, renamed files' flags are taken. Run it on the writer, so
    that no change of ours is half made while it scans. Nothing is changed
    for a folder the index does not list.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT uidvalidity, uidnext FROM folders WHERE name = ?", (name,)).fetchone()
        if row is None:
            conn.execute("ROLLBACK")
            return FolderChanges()
        validity, uidnext = row
        meta = read_meta(directory)
        if meta is not None and meta["uidvalidity"] == validity:
            uidnext = max(uidnext, meta["uidnext"])
        taken = outside.stamp(directory)
        changes = _reconcile_folder(conn, name, directory, uidnext, running=True)
        if changes.removed:
            # As an expunge does: a rebuild must never hand out these UIDs again.
            current = conn.execute("SELECT uidnext FROM folders WHERE name = ?", (name,)).fetchone()[0]
            write_meta(directory, validity, current)
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    outside.remember(directory, taken)
    if changes.count:
        _log.info(
            "store.folder_reconciled {directory} added={added} removed={removed} flags_changed={flags}",
            log_event=logevents.FOLDER_RECONCILED,
            directory=str(directory),
            added=len(changes.added),
            removed=len(changes.removed),
            flags=len(changes.flags_changed),
        )
    return changes


def message_counts(conn: sqlite3.Connection, name: str) -> tuple[int, int]:
    """How many of folder C{name}'s messages the index has in C{new/} and in C{cur/}."""
    new, total = conn.execute(
        "SELECT coalesce(sum(substr(filename, 1, 4) = 'new/'), 0), count(*) FROM messages WHERE folder = ?", (name,)
    ).fetchone()
    return int(new), int(total) - int(new)


def usage(conn: sqlite3.Connection) -> Usage:
    """
    Messages and the sum of their wire sizes over every folder of the
    mailbox: what its quota counts (L{mailapp.quota}). One pass over the
    messages table, about 1 ms per 10,000 messages.
    """
    count, total = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM messages").fetchone()
    return Usage(int(count), int(total))


def ensure_default_folders(conn: sqlite3.Connection, mailbox_dir: Path) -> None:
    for name in (INBOX, *SPECIAL_FOLDERS):
        if conn.execute("SELECT 1 FROM folders WHERE name = ?", (name,)).fetchone() is None:
            create_folder(conn, mailbox_dir, name)


def create_folder(conn: sqlite3.Connection, mailbox_dir: Path, name: str) -> bool:
    """Create one folder (directory, metadata, index row); False if it exists."""
    directory = folder_directory(mailbox_dir, name)
    make_folder_directory(directory)
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT 1 FROM folders WHERE name = ?", (name,)).fetchone():
            conn.execute("ROLLBACK")
            return False
        meta = read_meta(directory)
        uidvalidity = meta["uidvalidity"] if meta else new_uidvalidity()
        uidnext = meta["uidnext"] if meta else 1
        if not meta:
            write_meta(directory, uidvalidity, uidnext)
        conn.execute("INSERT INTO folders (name, uidvalidity, uidnext) VALUES (?, ?, ?)", (name, uidvalidity, uidnext))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    durable.fsync_directory(directory.parent if directory != mailbox_dir else mailbox_dir)
    return True


def _scan(directory: Path) -> list[tuple[str, ParsedName, os.stat_result]]:
    """Every message file of a folder, its name parsed, keywords included (by the folder's letters)."""
    keywords = read_keywords(directory)
    found = []
    for sub in ("new", "cur"):
        try:
            entries = list(os.scandir(directory / sub))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.is_file(follow_symlinks=False) or entry.name.startswith("."):
                continue
            parsed = parse_filename(entry.name)
            if parsed is None:
                continue
            if parsed.keyword_letters:
                named = {keywords[letter] for letter in parsed.keyword_letters if letter in keywords}
                parsed = dataclasses.replace(parsed, flags=parsed.flags | named)
            found.append((f"{sub}/{entry.name}", parsed, entry.stat()))
    return found


def _name_with_uid(
    directory: Path, relative: str, parsed: ParsedName, stat: os.stat_result, uid: int
) -> tuple[str, ParsedName]:
    """
    Rename a file the index just gave C{uid} so that its name carries it,
    with both sizes: a file another tool put here (a Dovecot Maildir copied
    in has ``S=`` and ``W=``; others may have neither, and are measured,
    which reads an LF file through once).
    """
    if parsed.wire_size is not None:
        stored = parsed.size if parsed.size is not None else stat.st_size
        wire = parsed.wire_size
    else:
        stored, wire = messagefile.measure(directory / relative)
    new_relative = format_filename(
        parsed.base, stored, uid, parsed.flags, relative.startswith("cur/"), wire, parsed.keyword_letters
    )
    durable.rename(directory / relative, directory / new_relative)
    return new_relative, ParsedName(parsed.base, stored, uid, parsed.flags, wire, parsed.keyword_letters)


def _rebuild_tables(conn: sqlite3.Connection, mailbox_dir: Path) -> None:
    """
    Recreate the index of every folder from the Maildir, inside the caller's
    transaction: keep UIDVALIDITY and UIDs where the folder metadata allows
    it, else start a new UIDVALIDITY.
    """
    folders = _folders_on_disk(mailbox_dir)
    conn.execute("DELETE FROM messages")
    conn.execute("DELETE FROM folders")
    for name, directory in folders:
        make_folder_directory(directory)
        _rebuild_folder(conn, name, directory)
    _log.info(
        "store.index_rebuilt {mailbox} folders={count}",
        log_event=logevents.INDEX_REBUILT,
        mailbox=str(mailbox_dir),
        count=len(folders),
    )


def _folders_on_disk(mailbox_dir: Path) -> list[tuple[str, Path]]:
    """
    Every folder in the Maildir: INBOX, then each Maildir++ ``.Name``
    directory with a ``cur/`` (whatever the index lists: the directories
    are the truth about which folders exist).
    """
    folders = [(INBOX, mailbox_dir)]
    if mailbox_dir.exists():
        for entry in sorted(os.scandir(mailbox_dir), key=lambda e: e.name):
            name = folder_from_directory(entry.name)
            if name is not None and name != INBOX and entry.is_dir() and (Path(entry.path) / "cur").is_dir():
                folders.append((name, Path(entry.path)))
    return folders


def _rebuild_folder(conn: sqlite3.Connection, name: str, directory: Path) -> int:
    meta = read_meta(directory)
    taken = outside.stamp(directory)
    files = _scan(directory)
    if meta:
        uidvalidity = meta["uidvalidity"]
        keep = True
    else:
        uidvalidity = new_uidvalidity()
        keep = False
    used: set[int] = set()
    kept: list[tuple[int, str, ParsedName, os.stat_result]] = []
    fresh: list[tuple[str, ParsedName, os.stat_result]] = []
    for relative, parsed, stat in files:
        if keep and parsed.uid is not None and parsed.uid not in used:
            used.add(parsed.uid)
            kept.append((parsed.uid, relative, parsed, stat))
        else:
            fresh.append((relative, parsed, stat))
    uidnext = max([meta["uidnext"] if meta else 1, *(uid + 1 for uid in used)])
    fresh.sort(key=lambda item: (item[2].st_mtime, item[0]))
    for relative, parsed, stat in fresh:
        uid = uidnext
        uidnext += 1
        new_relative, named = _name_with_uid(directory, relative, parsed, stat, uid)
        kept.append((uid, new_relative, named, stat))
    for uid, relative, parsed, stat in kept:
        size = parsed.index_size(stat)
        conn.execute(
            "INSERT INTO messages (folder, uid, filename, flags, size, internaldate) VALUES (?, ?, ?, ?, ?, ?)",
            (name, uid, relative, encode_flags(parsed.flags), size, stat.st_mtime),
        )
    conn.execute("INSERT INTO folders (name, uidvalidity, uidnext) VALUES (?, ?, ?)", (name, uidvalidity, uidnext))
    write_meta(directory, uidvalidity, uidnext)
    # Before the scan: what changed since (files renamed to carry a UID) shows at the next look.
    outside.remember(directory, taken)
    return len(kept)
