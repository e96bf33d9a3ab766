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
Without that file it starts a new UIDVALIDITY.

Everything here is synchronous and runs on a worker thread.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from twisted.logger import Logger

from mailapp.errors import MailboxGone
from mailapp.store import durable, intent, messagefile
from mailapp.store.names import INBOX, SPECIAL_FOLDERS, folder_directory, folder_from_directory

INDEX_NAME = "mailapp-index.sqlite3"
META_NAME = "mailapp-folder"
SCHEMA_VERSION = 1

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
    flags = frozenset(_LETTER_FLAGS[c] for c in (match.group("info") or "") if c in _LETTER_FLAGS)
    return ParsedName(match.group("base"), size, uid, flags, wire_size)


def format_filename(
    base: str,
    size: int,
    uid: int,
    flags: frozenset[str] | set[str] | tuple[str, ...],
    cur: bool = False,
    wire_size: int | None = None,
) -> str:
    """
    The file name for a message, relative to its folder: ``new/`` names
    carry no info part; once a message has flags (or was in ``cur/``) it
    lives in ``cur/`` with ``:2,<letters>`` and never goes back. C{size} is
    the file's (``S=``), C{wire_size} the message's as sent (``W=``; None
    only to keep the name of a state format 1 file as it was).
    """
    sizes = f"S={size}" if wire_size is None else f"S={size},W={wire_size}"
    name = f"{base},{sizes},U={uid}"
    letters = "".join(sorted(_FLAG_LETTERS[f] for f in flags if f in _FLAG_LETTERS))
    if flags or cur:
        return f"cur/{name}:2,{letters}"
    return f"new/{name}"


def encode_flags(flags: frozenset[str] | set[str] | tuple[str, ...]) -> str:
    return " ".join(sorted(set(flags)))


def decode_flags(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


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
    temporary = directory / "tmp" / (META_NAME + f".{os.getpid()}.{threading.get_ident()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        durable.write_all(fd, json.dumps({"uidvalidity": uidvalidity, "uidnext": uidnext}).encode())
        durable.fsync_file(fd)
    finally:
        os.close(fd)
    durable.rename(temporary, directory / META_NAME)
    durable.fsync_directory(directory)


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
_idle: OrderedDict[int, tuple[Path, DirectoryIdentity, sqlite3.Connection]] = OrderedDict()
_MAX_IDLE_CONNECTIONS = 64


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
    """
    current = directory_identity(mailbox_dir)
    if pin is not None:
        pin.check(current)
    conn = None
    identity: DirectoryIdentity = None
    stale: list[sqlite3.Connection] = []
    with _pool_lock:
        for key, (path, opened_on, idle) in list(reversed(_idle.items())):
            if path != mailbox_dir:
                continue
            if opened_on != current:
                del _idle[key]
                stale.append(idle)
            elif conn is None:
                del _idle[key]
                conn, identity = idle, opened_on
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
            raise
        pin.take(identity)
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if conn.in_transaction:  # pragma: no cover - a bug in the caller
        conn.execute("ROLLBACK")
    with _pool_lock:
        _idle[id(conn)] = (mailbox_dir, identity, conn)
        while len(_idle) > _MAX_IDLE_CONNECTIONS:
            _, (_, _, old) = _idle.popitem(last=False)
            old.close()


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
    with _reconciled_lock:
        _reconciled.clear()


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL, not FULL: a commit is not fsync'd on its own. The index is
    # derived data: every message file is durable (and carries its UID in its
    # name) before the commit that lists it, and reconcile() repairs the index
    # from the Maildir once per process. That saves one fsync per mailbox per
    # batch on the delivery path.
    conn.execute("PRAGMA synchronous = NORMAL")


def _open(mailbox_dir: Path) -> sqlite3.Connection:
    mailbox_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = mailbox_dir / INDEX_NAME
    with _reconciled_lock:
        first_open = mailbox_dir not in _reconciled
    if first_open:
        # Before a rebuild or reconcile reads the Maildir: a move a crash
        # cut short would otherwise leave its messages in both folders.
        intent.finish_interrupted(mailbox_dir)
    try:
        conn, built = _connect(path, mailbox_dir)
    except sqlite3.DatabaseError as e:
        _log.warn("store.index_damaged {path}: {error}; rebuilding from the Maildir", path=str(path), error=str(e))
        aside = path.with_name(f"{INDEX_NAME}.damaged-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            victim = Path(str(path) + suffix)
            if victim.exists():
                os.replace(victim, Path(str(aside) + suffix))
        conn, built = _connect(path, mailbox_dir)
    try:
        with _reconciled_lock:
            first_open = mailbox_dir not in _reconciled
        if first_open and not built:
            reconcile(conn, mailbox_dir)
        # Marked only once it worked: a reconcile that failed (say the index
        # was locked too long) is tried again by the next open.
        with _reconciled_lock:
            _reconciled.add(mailbox_dir)
        ensure_default_folders(conn, mailbox_dir)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect(path: Path, mailbox_dir: Path) -> tuple[sqlite3.Connection, bool]:
    """
    Open the index, creating and filling it from the Maildir when it is new.
    The check and the build happen in one IMMEDIATE transaction, so two
    threads or processes opening a new mailbox at once build it only once.
    Returns the connection and whether it was built now.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
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
                raise sqlite3.DatabaseError(f"unknown index schema version {version}")
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
    a crash or power cut a commit may be missing (the files, which carry their
    UIDs, are the truth), and other tools may have added or removed files.
    Keeps UIDVALIDITY, every UID it can, and keywords (which file names do
    not carry). Returns the number of rows changed.
    """
    changed = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        folders = conn.execute("SELECT name, uidnext FROM folders").fetchall()
        for name, uidnext in folders:
            directory = folder_directory(mailbox_dir, name)
            on_disk: dict[int, tuple[str, ParsedName, os.stat_result]] = {}
            fresh: list[tuple[str, ParsedName, os.stat_result]] = []
            for relative, parsed, stat in _scan(directory):
                if parsed.uid is not None and parsed.uid not in on_disk:
                    on_disk[parsed.uid] = (relative, parsed, stat)
                else:
                    fresh.append((relative, parsed, stat))
            rows = {
                uid: (filename, decode_flags(flags))
                for uid, filename, flags in conn.execute("SELECT uid, filename, flags FROM messages WHERE folder = ?", (name,))
            }
            for uid, (filename, flags) in rows.items():
                if uid not in on_disk:
                    conn.execute("DELETE FROM messages WHERE folder = ? AND uid = ?", (name, uid))
                    changed += 1
                elif on_disk[uid][0] != filename:
                    keywords = {f for f in flags if f not in _FLAG_LETTERS}
                    merged = encode_flags(on_disk[uid][1].flags | keywords)
                    conn.execute(
                        "UPDATE messages SET filename = ?, flags = ? WHERE folder = ? AND uid = ?",
                        (on_disk[uid][0], merged, name, uid),
                    )
                    changed += 1
            for uid, (relative, parsed, stat) in on_disk.items():
                if uid in rows:
                    continue
                size = parsed.index_size(stat)
                conn.execute(
                    "INSERT INTO messages (folder, uid, filename, flags, size, internaldate) VALUES (?, ?, ?, ?, ?, ?)",
                    (name, uid, relative, encode_flags(parsed.flags), size, stat.st_mtime),
                )
                uidnext = max(uidnext, uid + 1)
                changed += 1
            fresh.sort(key=lambda item: (item[2].st_mtime, item[0]))
            for relative, parsed, stat in fresh:
                uid, uidnext = uidnext, uidnext + 1
                new_relative, named = _name_with_uid(directory, relative, parsed, stat, uid)
                conn.execute(
                    "INSERT INTO messages (folder, uid, filename, flags, size, internaldate) VALUES (?, ?, ?, ?, ?, ?)",
                    (name, uid, new_relative, encode_flags(parsed.flags), named.index_size(stat), stat.st_mtime),
                )
                changed += 1
            conn.execute("UPDATE folders SET uidnext = max(uidnext, ?) WHERE name = ?", (uidnext, name))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if changed:
        _log.info("store.index_reconciled {mailbox} changed={changed}", mailbox=str(mailbox_dir), changed=changed)
    return changed


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
    new_relative = format_filename(parsed.base, stored, uid, parsed.flags, relative.startswith("cur/"), wire)
    durable.rename(directory / relative, directory / new_relative)
    return new_relative, ParsedName(parsed.base, stored, uid, parsed.flags, wire)


def _rebuild_tables(conn: sqlite3.Connection, mailbox_dir: Path) -> None:
    """
    Recreate the index of every folder from the Maildir, inside the caller's
    transaction: keep UIDVALIDITY and UIDs where the folder metadata allows
    it, else start a new UIDVALIDITY.
    """
    folders = [(INBOX, mailbox_dir)]
    if mailbox_dir.exists():
        for entry in sorted(os.scandir(mailbox_dir), key=lambda e: e.name):
            name = folder_from_directory(entry.name)
            if name is not None and entry.is_dir() and (Path(entry.path) / "cur").is_dir():
                folders.append((name, Path(entry.path)))
    conn.execute("DELETE FROM messages")
    conn.execute("DELETE FROM folders")
    for name, directory in folders:
        make_folder_directory(directory)
        _rebuild_folder(conn, name, directory)
    _log.info("store.index_rebuilt {mailbox} folders={count}", mailbox=str(mailbox_dir), count=len(folders))


def _rebuild_folder(conn: sqlite3.Connection, name: str, directory: Path) -> None:
    meta = read_meta(directory)
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
