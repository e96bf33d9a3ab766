"""
A mailbox's folders on disk: their directories, each one's ``mailapp-folder``
record, and their rows in the index.

The record holds a folder's UIDVALIDITY and its UIDNEXT as of the last
expunge, written durably, so that a rebuild of the index
(L{mailapp.store.rebuild}) keeps UIDVALIDITY and never hands out a UID
again; without it a rebuild starts a new UIDVALIDITY. It also holds the
folder's MAILBOXID (RFC 8474): in the directory, it moves with a RENAME
and survives a rebuild, and a folder deleted and made again (a new
directory, a new record) gets a new one. The directories are
the truth about which folders exist: INBOX is the mailbox's own, every
other folder a Maildir++ ``.Name`` directory with a ``cur/``.

Synchronous; runs on a worker thread.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
from pathlib import Path

from mailapp.store import durable
from mailapp.store.names import INBOX, SPECIAL_FOLDERS, folder_directory, folder_from_directory
from mailapp.store.uidvalidity import next_uidvalidity

#: Each folder directory's record of its UIDVALIDITY and UIDNEXT.
META_NAME = "mailapp-folder"

#: A deleted folder's directory while its files are removed: a name no folder has.
DELETING_PREFIX = "mailapp-deleting-"

def read_meta(directory: Path) -> dict[str, int] | None:
    """The folder's record, ``{"uidvalidity": ..., "uidnext": ...}``, or None when it is missing or unreadable."""
    try:
        data = json.loads((directory / META_NAME).read_text())
        if isinstance(data.get("uidvalidity"), int) and isinstance(data.get("uidnext"), int):
            return {"uidvalidity": data["uidvalidity"], "uidnext": data["uidnext"]}
    except (OSError, ValueError, AttributeError):
        pass
    return None


def read_mailbox_id(directory: Path) -> str | None:
    """The folder's MAILBOXID as its record keeps it, or None (no record, or one written before there were any)."""
    try:
        value = json.loads((directory / META_NAME).read_text()).get("mailboxid")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def new_mailbox_id() -> str:
    """A fresh MAILBOXID: random, so unique across folders, mailboxes and servers (RFC 8474 4: objectid characters only)."""
    return "F" + secrets.token_hex(12)


def write_meta(directory: Path, uidvalidity: int, uidnext: int) -> None:
    """
    Replace the folder's metadata file atomically and durably. Its
    MAILBOXID is kept while its UIDVALIDITY is the same (the same folder);
    a record of another UIDVALIDITY, or none, gets a new one.
    """
    old = read_meta(directory)
    mailboxid = read_mailbox_id(directory) if old is not None and old["uidvalidity"] == uidvalidity else None
    data = json.dumps({"uidvalidity": uidvalidity, "uidnext": uidnext, "mailboxid": mailboxid or new_mailbox_id()}).encode()
    durable.replace_file(directory / META_NAME, data, directory / "tmp")


def mailbox_id(conn: sqlite3.Connection, directory: Path) -> str:
    """
    The folder's MAILBOXID; a folder whose record has none (made before
    there were any) is given one now, under the index's write lock so that
    two processes asking at once agree on it. Fails with L{FileNotFoundError}
    when the folder has no record at all (it is gone).
    """
    found = read_mailbox_id(directory)
    if found is not None:
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        meta = read_meta(directory)
        if meta is None:
            raise FileNotFoundError(directory / META_NAME)
        found = read_mailbox_id(directory)
        if found is None:
            write_meta(directory, meta["uidvalidity"], meta["uidnext"])
            found = read_mailbox_id(directory)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    assert found is not None
    return found


def record_uidnext(directory: Path, uidvalidity: int, uidnext: int) -> None:
    """
    Before an expunge: make sure the metadata file (which a rebuild of a
    lost index starts from) records a UIDNEXT of at least C{uidnext}, so
    that no rebuild ever hands out a removed UID again; a durable write only
    when it records less (expunges with no delivery between them pay none).
    It records exactly C{uidnext}, never more: a reserve ahead would reach
    UIDNEXT through the reconcile, and RFC 3501 2.3.1.1 forbids UIDNEXT to
    change unless messages were added.
    """
    meta = read_meta(directory)
    if meta is not None and meta["uidvalidity"] == uidvalidity and meta["uidnext"] >= uidnext:
        return
    write_meta(directory, uidvalidity, uidnext)


def make_folder_directory(directory: Path) -> None:
    """Create a folder's ``cur/``, ``new/`` and ``tmp/`` (and a subfolder's Maildir++ marker) if missing."""
    for sub in ("cur", "new", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    if directory.name.startswith("."):
        # Maildir++ marks subfolders with this empty file (Courier, Dovecot).
        marker = directory / "maildirfolder"
        if not marker.exists():
            marker.touch(mode=0o600)


def message_counts(conn: sqlite3.Connection, name: str) -> tuple[int, int]:
    """How many of folder C{name}'s messages the index has in C{new/} and in C{cur/}."""
    new, total = conn.execute(
        "SELECT coalesce(sum(substr(filename, 1, 4) = 'new/'), 0), count(*) FROM messages WHERE folder = ?", (name,)
    ).fetchone()
    return int(new), int(total) - int(new)


def ensure_default_folders(conn: sqlite3.Connection, mailbox_dir: Path) -> None:
    """Create INBOX and the special folders (Sent, Drafts, ...) where they are missing."""
    for name in (INBOX, *SPECIAL_FOLDERS):
        if conn.execute("SELECT 1 FROM folders WHERE name = ?", (name,)).fetchone() is None:
            create_folder(conn, mailbox_dir, name, subscribed=True)


def create_folder(conn: sqlite3.Connection, mailbox_dir: Path, name: str, subscribed: bool = False) -> bool:
    """
    Create one folder (directory, metadata, index row); False if it exists.
    Only INBOX and the special folders start subscribed: RFC 3501 6.3.3 has
    CREATE make a mailbox, and SUBSCRIBE (6.3.6) is the client's to send.
    """
    directory = folder_directory(mailbox_dir, name)
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT 1 FROM folders WHERE name = ?", (name,)).fetchone():
            conn.execute("ROLLBACK")
            return False
        # Under the index's write lock: made before it, the directory would be
        # a folder on disk without a row to another process's reconcile, which
        # would list it first (and this CREATE would fail as "exists").
        make_folder_directory(directory)
        meta = read_meta(directory)
        uidvalidity = meta["uidvalidity"] if meta else next_uidvalidity(conn)
        uidnext = meta["uidnext"] if meta else 1
        if not meta:
            write_meta(directory, uidvalidity, uidnext)
        conn.execute(
            "INSERT INTO folders (name, uidvalidity, uidnext, subscribed) VALUES (?, ?, ?, ?)", (name, uidvalidity, uidnext, int(subscribed))
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    durable.fsync_directory(directory.parent if directory != mailbox_dir else mailbox_dir)
    return True


def folders_on_disk(mailbox_dir: Path) -> list[tuple[str, Path]]:
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


def set_aside(mailbox_dir: Path, directory: Path) -> Path | None:
    """
    Move a folder being deleted out of the folders' names, in the index
    transaction that drops its row, so that no process (a reconcile, a
    CREATE of the same name) meets its directory and record between that
    commit and the removal of its files and takes it for a folder on disk
    (it would come back with its old UIDVALIDITY and UIDNEXT). Returns
    where it went (to remove after the commit; L{remove_set_aside} removes
    what a crash left), or None when it was gone already.
    """
    aside = mailbox_dir / (DELETING_PREFIX + secrets.token_hex(8))
    try:
        os.rename(directory, aside)
    except FileNotFoundError:
        return None
    return aside


def remove_set_aside(mailbox_dir: Path) -> None:
    """Remove the directories of deleted folders a crash left set aside (L{set_aside})."""
    if mailbox_dir.exists():
        for entry in os.scandir(mailbox_dir):
            if entry.name.startswith(DELETING_PREFIX) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
