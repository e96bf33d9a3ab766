"""
The embedded store: Maildir++ per user, an SQLite index per mailbox, and a
group-committing writer.

Layout under the store root (``state_dir/mail``)::

    <domain>/<local>/            INBOX (cur/ new/ tmp/) and the index
    <domain>/<local>/.Sent/      a Maildir++ folder; ``a/b`` is ``.a.b``
    .spool/                      messages being received

Durability: a received message is spooled (small ones in memory, larger ones
to ``.spool/``), made durable, hard-linked into the ``new/`` of every recipient
folder, the new names made durable, and only then are the index rows that
make it visible committed, and the Deferred that lets SMTP say 250 fired.
L{mailapp.store.committer} does this in batches (group commit).

Every index change happens in an ``IMMEDIATE`` SQLite transaction, and a
message's UID is taken from UIDNEXT in the same transaction that makes it
visible, so another process sharing the store (the admin command, a second
server) can never see UIDs commit out of order.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import IO, Any, Callable, ContextManager, Iterable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailapp.errors import (
    MAX_KEYWORDS_PER_FOLDER,
    MAX_KEYWORDS_PER_MESSAGE,
    BadFolderName,
    FolderExists,
    KeywordLimit,
    NoSuchFolder,
    NoSuchMessage,
)
from mailapp.interfaces import IFolder, IMailbox, IMessageStore
from mailapp.store import durable, index, messagefile, outside, transfer
from mailapp.store.events import ADDED, EXPUNGED, FLAGS_CHANGED, EventBus, FolderEvent
from mailapp.store.names import INBOX, SPECIAL_FOLDERS, DELIMITER, folder_directory, mailbox_directory, normalize_folder
from mailapp.store.records import FolderInfo, FolderStatus, MessageInfo, Usage
from mailapp.store.committer import GroupCommitter, _Call, _Delivery, _Placement
from mailapp.store.spool import SpoolWriter
from mailapp.store.freespace import FreeSpace

_log = Logger()

_T = TypeVar("_T")

SPOOL_NAME = ".spool"
STALE_SPOOL_SECONDS = 3600


def ensure_mailbox(state_dir: Path, account: str) -> Path:
    """
    Create C{account}'s Maildir (INBOX and the special folders) and index,
    synchronously: for the admin command, which runs no reactor.
    """
    mailbox_dir = mailbox_directory(Path(state_dir) / "mail", account)
    with index.connection(mailbox_dir):
        pass
    index.reset_connections()
    return mailbox_dir


#: Where deleted accounts' mailboxes go, under the state directory.
DELETED_NAME = "deleted"


def mailbox_usage(root: Path, account: str) -> Usage:
    """
    What C{account}'s mailbox holds, from its index, synchronously (the
    admin command; the server asks L{MaildirMailbox.usage}). A mailbox not
    created yet holds nothing.
    """
    directory = mailbox_directory(root, account)
    if not directory.is_dir():
        return Usage()
    with index.connection(directory) as conn:
        return index.usage(conn)


def retire_mailbox(state_dir: Path, account: str, *, keep: bool, now: float | None = None) -> Path | None:
    """
    Take C{account}'s Maildir out of the store, synchronously (for the admin
    command): one rename(2) to C{state_dir/deleted/<domain>/<local>.<UTC
    time>}, so that a running server sees either the whole old mailbox or
    no mailbox at that path, and a new account at the same address starts
    empty. Unless C{keep}, the moved copy is then deleted.

    A server session still open on the old mailbox fails from then on with
    L{mailapp.errors.MailboxGone} (see L{index.MailboxPin}).

    @return: where the mailbox was moved (gone again unless C{keep}), or
        C{None} when the account had no mailbox on disk.
    """
    source = mailbox_directory(Path(state_dir) / "mail", account)
    return _retire_directory(Path(state_dir), source, keep=keep, now=now)


def retire_domain_mailboxes(state_dir: Path, domain: str, *, keep: bool, now: float | None = None) -> list[Path]:
    """
    Retire every mailbox left under C{domain} (each as L{retire_mailbox}
    does) and remove the domain's directory: what is left when a domain is
    deleted, so that re-adding it never revives old mail.

    @return: where each mailbox was moved.
    """
    domain_dir = mailbox_directory(Path(state_dir) / "mail", f"x@{domain}").parent
    moved: list[Path] = []
    if not domain_dir.is_dir():
        return moved
    for entry in sorted(domain_dir.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            target = _retire_directory(Path(state_dir), entry, keep=keep, now=now)
            if target is not None:
                moved.append(target)
    try:
        domain_dir.rmdir()
    except OSError:
        pass  # something that is not a mailbox is left there: not ours to delete
    return moved


def _retire_directory(state_dir: Path, source: Path, *, keep: bool, now: float | None) -> Path | None:
    if not source.is_dir():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    archive = state_dir / DELETED_NAME / source.parent.name
    archive.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = archive / f"{source.name}.{stamp}"
    suffix = 1
    # rename(2) would silently replace an empty directory: never reuse a name.
    while target.exists():
        target = archive / f"{source.name}.{stamp}.{suffix}"
        suffix += 1
    os.rename(source, target)
    durable.fsync_directory(source.parent)
    durable.fsync_directory(archive)
    if not keep:
        shutil.rmtree(target)
    return target


def open_message_file(path: Path) -> IO[bytes]:
    """
    Open a Maildir message file for reading in wire form (CRLF, as IMAP
    and POP3 send it): its name says how it is stored (the ``W=`` size;
    L{messagefile}). Every read of a stored message comes through here or
    L{read_message_file}; tools and tests that look at the Maildir from
    outside use them too. Blocking.
    """
    parsed = index.parse_filename(path.name)
    return messagefile.open_message(path, parsed.wire_size if parsed is not None else None)


def read_message_file(path: Path, limit: int) -> bytes | None:
    """The whole message of a Maildir file in wire form if at most C{limit} bytes, else None. Blocking."""
    parsed = index.parse_filename(path.name)
    return messagefile.read_message(path, parsed.wire_size if parsed is not None else None, limit)


# -- the store -------------------------------------------------------------------


@implementer(IMessageStore)
class MaildirStore:
    """Every user's Maildir under C{root}; see the module docstring."""

    def __init__(
        self,
        root: Path,
        reactor: Any = None,
        threadpool: Any = None,
        events: EventBus | None = None,
        batch_sync: bool | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.root = Path(root)
        self.spool_dir = self.root / SPOOL_NAME
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.reactor = reactor
        self.threadpool = threadpool if threadpool is not None else reactor.getThreadPool()
        self.events = events if events is not None else EventBus()
        #: Sync each batch's files and directories with one syncfs(2) each
        #: (Linux) rather than one fsync per file and per directory.
        self.batch_sync = durable.has_syncfs() if batch_sync is None else batch_sync
        self.committer = GroupCommitter(reactor, self.threadpool, self.batch_sync)
        #: The disk new messages are written to (the spool is under the root).
        self.freeSpace = FreeSpace(self.root, reactor)

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Run a read-only index or file operation on a worker thread (once
        more if it met a damaged index, rebuilt meanwhile).
        """
        return deferToThreadPool(self.reactor, self.threadpool, index.retry_after_repair, function, *args)

    def write(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run a change on the writer, in order with every other change (retried as L{run} is)."""
        return self.committer.submit(_Call(index.retry_after_repair, (function, *args)))

    def mailbox(self, account: str) -> MaildirMailbox:
        return MaildirMailbox(self, account)

    def newMessage(self) -> SpoolWriter:
        # With batch sync the writer skips its own fsync: the committer makes
        # every file of a batch durable at once before linking it anywhere.
        return SpoolWriter(self.spool_dir, self.reactor, self.threadpool, sync=not self.batch_sync)

    def deliver(self, message: SpoolWriter, accounts: Iterable[str], folder: str = INBOX) -> Deferred[dict[str, int]]:
        if not message.finished:
            raise RuntimeError("deliver() before the message's finish() fired")
        folder = normalize_folder(folder)
        unique: dict[str, str] = {}
        for account in accounts:
            unique.setdefault(account.lower(), account)
        placements = [_Placement(mailbox_directory(self.root, a), a, folder) for a in unique.values()]
        job = _Delivery(
            message.path,
            message.base,
            message.size,
            message.internaldate,
            placements,
            synced=message.sync,
            data=message.pending,
            stored_size=message.stored_size,
        )
        d = self.committer.submit(job)

        def delivered(uids: list[int]) -> dict[str, int]:
            for placement, uid in zip(placements, uids):
                self.events.publish(FolderEvent(ADDED, placement.account, folder, (uid,)))
            return {placement.account: uid for placement, uid in zip(placements, uids)}

        return d.addCallback(delivered)

    def cleanup(self, max_age: float = STALE_SPOOL_SECONDS) -> Deferred[int]:
        """
        Remove spool files nobody has written to for C{max_age} seconds: left
        by a crash mid-receive, they were never visible in any mailbox.
        """

        def sweep() -> int:
            removed = 0
            cutoff = time.time() - max_age
            for entry in os.scandir(self.spool_dir):
                try:
                    if entry.is_file() and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    pass
            if removed:
                _log.info("store.spool_cleaned {removed} stale files", removed=removed)
            return removed

        return self.run(sweep)

    def sweep(self) -> Deferred[int]:
        """L{cleanup} with its default age: what L{mailapp.leftovers} calls every hour."""
        return self.cleanup()


@implementer(IMailbox)
class MaildirMailbox:
    """One user's folders; cheap to make, no I/O until used."""

    def __init__(self, store: MaildirStore, account: str) -> None:
        self.store = store
        self.account = account
        self.directory = mailbox_directory(store.root, account)
        #: A session keeps one mailbox object; this ties it to the directory
        #: it first opened, so it cannot outlive its account's deletion.
        self.pin = index.MailboxPin()

    def _connect(self) -> ContextManager[sqlite3.Connection]:
        return index.connection(self.directory, self.pin)

    def listFolders(self) -> Deferred[list[FolderInfo]]:
        def read() -> list[FolderInfo]:
            with self._connect() as conn:
                rows = conn.execute("SELECT name, subscribed FROM folders").fetchall()
            folders = [FolderInfo(name, SPECIAL_FOLDERS.get(name), bool(subscribed)) for name, subscribed in rows]
            return sorted(folders, key=lambda f: (f.name != INBOX, f.name))

        return self.store.run(read)

    def usage(self) -> Deferred[Usage]:
        def read() -> Usage:
            with self._connect() as conn:
                return index.usage(conn)

        return self.store.run(read)

    def createFolder(self, name: str) -> Deferred[None]:
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return _fail(e)

        def create() -> None:
            with self._connect() as conn:
                parts = name.split(DELIMITER)
                for depth in range(1, len(parts)):
                    index.create_folder(conn, self.directory, DELIMITER.join(parts[:depth]))
                if not index.create_folder(conn, self.directory, name):
                    raise FolderExists(f"folder exists: {name}")

        return self.store.write(create)

    def deleteFolder(self, name: str) -> Deferred[None]:
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return _fail(e)
        if name == INBOX:
            return _fail(BadFolderName("INBOX cannot be deleted"))

        def delete() -> None:
            with self._connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if conn.execute("DELETE FROM folders WHERE name = ?", (name,)).rowcount == 0:
                        raise NoSuchFolder(f"no such folder: {name}")
                    conn.execute("DELETE FROM messages WHERE folder = ?", (name,))
                    conn.execute("COMMIT")
                except BaseException:
                    index.rollback(conn)
                    raise
                shutil.rmtree(folder_directory(self.directory, name), ignore_errors=True)

        return self.store.write(delete)

    def renameFolder(self, old: str, new: str) -> Deferred[None]:
        try:
            old, new = normalize_folder(old), normalize_folder(new)
        except BadFolderName as e:
            return _fail(e)
        if INBOX in (old, new):
            return _fail(BadFolderName("renaming INBOX is not supported"))

        def rename() -> None:
            with self._connect() as conn:
                names = [r[0] for r in conn.execute("SELECT name FROM folders").fetchall()]
                if old not in names:
                    raise NoSuchFolder(f"no such folder: {old}")
                if new in names:
                    raise FolderExists(f"folder exists: {new}")
                moving = [n for n in names if n == old or n.startswith(old + DELIMITER)]
                parts = new.split(DELIMITER)
                for depth in range(1, len(parts)):
                    parent = DELIMITER.join(parts[:depth])
                    if parent not in names and parent not in moving:
                        index.create_folder(conn, self.directory, parent)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for name in moving:
                        target = new + name[len(old) :]
                        os.rename(folder_directory(self.directory, name), folder_directory(self.directory, target))
                        conn.execute("UPDATE folders SET name = ? WHERE name = ?", (target, name))
                        conn.execute("UPDATE messages SET folder = ? WHERE folder = ?", (target, name))
                    conn.execute("COMMIT")
                except BaseException:
                    index.rollback(conn)
                    raise
                durable.fsync_directory(self.directory)

        return self.store.write(rename)

    def setSubscribed(self, name: str, subscribed: bool) -> Deferred[bool]:
        """
        Mark C{name} subscribed or not (IMAP SUBSCRIBE/UNSUBSCRIBE); fires
        with C{False} when no such folder exists (nothing changes then).
        """
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return _fail(e)

        def change() -> bool:
            with self._connect() as conn:
                cursor = conn.execute("UPDATE folders SET subscribed = ? WHERE name = ?", (int(bool(subscribed)), name))
                return cursor.rowcount > 0

        return self.store.write(change)

    def folder(self, name: str) -> Deferred[IFolder]:
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return _fail(e)

        def find() -> MaildirFolder:
            with self._connect() as conn:
                exists = conn.execute("SELECT 1 FROM folders WHERE name = ?", (name,)).fetchone()
            if exists is None:
                raise NoSuchFolder(f"no such folder: {name}")
            return MaildirFolder(self, name)

        return self.store.run(find)


@implementer(IFolder)
class MaildirFolder:
    """One folder, read through its index."""

    def __init__(self, mailbox: MaildirMailbox, name: str) -> None:
        self.mailbox = mailbox
        self.store = mailbox.store
        self.account = mailbox.account
        self.name = name
        self.directory = folder_directory(mailbox.directory, name)

    def _connect(self) -> ContextManager[sqlite3.Connection]:
        return self.mailbox._connect()

    def _publish(self, kind: str, uids: Iterable[int]) -> None:
        uids = tuple(sorted(uids))
        if uids:
            self.store.events.publish(FolderEvent(kind, self.account, self.name, uids))

    def refresh(self) -> Deferred[None]:
        """
        Take in what other tools changed in this folder's directory since
        the store last knew it (L{outside}): two C{stat} calls when nothing
        did; otherwise the folder is reconciled on the writer, and the
        changes are published (C{added}, C{expunged}, C{flags_changed}) as
        the store's own are, so every session is told.
        """

        def look() -> bool:
            def counts() -> tuple[int, int]:
                with self._connect() as conn:
                    return index.message_counts(conn, self.name)

            return outside.changed(self.directory, counts)

        def reconcile() -> index.FolderChanges:
            with self._connect() as conn:
                return index.reconcile_running_folder(conn, self.name, self.directory)

        def publish(changes: index.FolderChanges) -> None:
            self._publish(EXPUNGED, changes.removed)
            self._publish(FLAGS_CHANGED, changes.flags_changed)
            self._publish(ADDED, changes.added)

        def reconcileIfChanged(changed: bool) -> Deferred[None] | None:
            if not changed:
                return None
            return self.store.write(reconcile).addCallback(publish)

        return self.store.run(look).addCallback(reconcileIfChanged)

    def status(self) -> Deferred[FolderStatus]:
        def read() -> FolderStatus:
            with self._connect() as conn:
                row = conn.execute("SELECT uidvalidity, uidnext FROM folders WHERE name = ?", (self.name,)).fetchone()
                if row is None:
                    raise NoSuchFolder(f"no such folder: {self.name}")
                total, unseen = conn.execute(
                    "SELECT count(*), coalesce(sum(instr(' ' || flags || ' ', ' \\Seen ') = 0), 0)"
                    " FROM messages WHERE folder = ?",
                    (self.name,),
                ).fetchone()
                return FolderStatus(row[0], row[1], total, unseen)

        return self.store.run(read)

    def messages(self) -> Deferred[list[MessageInfo]]:
        def read() -> list[MessageInfo]:
            with self._connect() as conn:
                rows = conn.execute(
                    "SELECT uid, flags, size, internaldate FROM messages WHERE folder = ? ORDER BY uid", (self.name,)
                ).fetchall()
            return [MessageInfo(uid, index.decode_flags(flags), size, date) for uid, flags, size, date in rows]

        return self.store.run(read)

    def messagesAfter(self, uid: int) -> Deferred[list[MessageInfo]]:
        def read() -> list[MessageInfo]:
            with self._connect() as conn:
                rows = conn.execute(
                    "SELECT uid, flags, size, internaldate FROM messages WHERE folder = ? AND uid > ? ORDER BY uid",
                    (self.name, uid),
                ).fetchall()
            return [MessageInfo(uid, index.decode_flags(flags), size, date) for uid, flags, size, date in rows]

        return self.store.run(read)

    def _filename(self, uid: int) -> str:
        with self._connect() as conn:
            row = conn.execute("SELECT filename FROM messages WHERE folder = ? AND uid = ?", (self.name, uid)).fetchone()
        if row is None:
            raise NoSuchMessage(f"no such message: {uid}")
        return str(row[0])

    def _readFile(self, uid: int, read: Callable[[Path], _T]) -> _T:
        """
        Worker thread: C{read(path)} on the message's file. A concurrent
        flag change may rename the file between the index read and the
        open: read the index again and retry once.
        """
        filename = ""
        for attempt in (1, 2):
            filename = self._filename(uid)
            try:
                return read(self.directory / filename)
            except FileNotFoundError:
                pass
        # A rename the store could not take back (see _undo_renames) left the
        # file under another name: find it by its base name and UID.
        found = _find_renamed(self.directory, filename)
        if found is not None:
            try:
                return read(found)
            except FileNotFoundError:
                pass
        raise NoSuchMessage(f"message {uid} is missing from the Maildir")

    def openMessage(self, uid: int) -> Deferred[Any]:
        return self.store.run(self._readFile, uid, open_message_file)

    def readMessage(self, uid: int, limit: int) -> Deferred[bytes | None]:
        return self.store.run(self._readFile, uid, lambda path: read_message_file(path, limit))

    def setFlags(self, uids: Iterable[int], flags: Iterable[str], mode: str = "replace") -> Deferred[dict[int, frozenset[str]]]:
        if mode not in ("replace", "add", "remove"):
            raise ValueError(f"bad mode {mode!r}")
        wanted = frozenset(flags)
        uids = sorted(set(uids))

        def change() -> dict[int, frozenset[str]]:
            # Files first, then the index: the names on disk are what a
            # reconcile trusts after a crash. When anything fails before the
            # commit, every rename is undone, so a flag change is all or
            # nothing and the index never names a file that is not there.
            renamed: list[tuple[Path, Path]] = []
            with self._connect() as conn, outside.own_change(self.directory):
                result: dict[int, frozenset[str]] = {}
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if mode != "remove":
                        _check_folder_keywords(conn, self.name, wanted)
                    for uid in uids:
                        row = conn.execute(
                            "SELECT filename, flags, size FROM messages WHERE folder = ? AND uid = ?", (self.name, uid)
                        ).fetchone()
                        if row is None:
                            continue
                        filename, old_text, size = row
                        old = index.decode_flags(old_text)
                        new = wanted if mode == "replace" else (old | wanted if mode == "add" else old - wanted)
                        if len(_keywords(new)) > MAX_KEYWORDS_PER_MESSAGE and len(_keywords(new)) > len(_keywords(old)):
                            raise KeywordLimit(f"a message may carry at most {MAX_KEYWORDS_PER_MESSAGE} keywords")
                        result[uid] = new
                        if new == old:
                            continue
                        parsed = index.parse_filename(filename.split("/", 1)[1])
                        relative = filename
                        if parsed is not None:
                            relative = index.message_filename(
                                self.directory,
                                parsed.base,
                                parsed.size if parsed.size is not None else size,
                                uid,
                                new,
                                filename.startswith("cur/"),
                                parsed.wire_size,
                            )
                            if relative != filename:
                                try:
                                    durable.rename(self.directory / filename, self.directory / relative)
                                    renamed.append((self.directory / filename, self.directory / relative))
                                except FileNotFoundError:
                                    relative = filename
                        conn.execute(
                            "UPDATE messages SET flags = ?, filename = ? WHERE folder = ? AND uid = ?",
                            (index.encode_flags(new), relative, self.name, uid),
                        )
                    conn.execute("COMMIT")
                except BaseException:
                    index.rollback(conn)
                    _undo_renames(renamed)
                    raise
                return result

        def publish(result: dict[int, frozenset[str]]) -> dict[int, frozenset[str]]:
            self._publish(FLAGS_CHANGED, result)
            return result

        return self.store.write(change).addCallback(publish)

    def expunge(self, uids: Iterable[int]) -> Deferred[list[int]]:
        uids = sorted(set(uids))

        def remove() -> list[int]:
            with self._connect() as conn, outside.own_change(self.directory):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    validity, uidnext = conn.execute(
                        "SELECT uidvalidity, uidnext FROM folders WHERE name = ?", (self.name,)
                    ).fetchone()
                    # Record UIDNEXT first, so that a rebuild never hands out a removed UID again.
                    index.write_meta(self.directory, validity, uidnext)
                    victims = []
                    for uid in uids:
                        row = conn.execute(
                            "SELECT filename FROM messages WHERE folder = ? AND uid = ?", (self.name, uid)
                        ).fetchone()
                        if row is not None:
                            victims.append((uid, row[0]))
                    conn.executemany("DELETE FROM messages WHERE folder = ? AND uid = ?", [(self.name, u) for u, _ in victims])
                    conn.execute("COMMIT")
                except BaseException:
                    index.rollback(conn)
                    raise
                for _, filename in victims:
                    durable.unlink(self.directory / filename)
                return [uid for uid, _ in victims]

        def publish(removed: list[int]) -> list[int]:
            self._publish(EXPUNGED, removed)
            return removed

        return self.store.write(remove).addCallback(publish)

    def append(self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None) -> Deferred[int]:
        writer = self.store.newMessage()
        if internaldate is not None:
            writer.internaldate = internaldate
        writer.write(data)
        flags = frozenset(flags)

        def written(_: object) -> Deferred[list[int]]:
            job = _Delivery(
                writer.path,
                writer.base,
                writer.size,
                writer.internaldate,
                [_Placement(self.mailbox.directory, self.account, self.name, flags, self.mailbox.pin)],
                synced=writer.sync,
                data=writer.pending,
                stored_size=writer.stored_size,
            )
            return self.store.committer.submit(job)

        def failed(reason: Failure) -> Failure:
            writer.discard()
            return reason

        def appended(uids: list[int]) -> int:
            self._publish(ADDED, uids)
            return uids[0]

        return writer.finish().addCallbacks(written, failed).addCallback(appended)

    def appendMessage(
        self, message: SpoolWriter, flags: Iterable[str] = (), internaldate: float | None = None
    ) -> Deferred[int]:
        """
        Store a message received into a spool writer (IMAP APPEND streams a
        literal there, so memory stays bounded), with C{flags}; fires with
        its UID and publishes C{added}. The writer's file belongs to the
        store from here on, delivered or not.
        """
        if not message.finished:
            raise RuntimeError("appendMessage() before the message's finish() fired")
        job = _Delivery(
            message.path,
            message.base,
            message.size,
            message.internaldate if internaldate is None else internaldate,
            [_Placement(self.mailbox.directory, self.account, self.name, frozenset(flags), self.mailbox.pin)],
            synced=message.sync,
            data=message.pending,
            stored_size=message.stored_size,
        )

        def appended(uids: list[int]) -> int:
            self._publish(ADDED, uids)
            return uids[0]

        return self.store.committer.submit(job).addCallback(appended)

    def copyTo(self, uids: Iterable[int], target: MaildirFolder) -> Deferred[dict[int, int]]:  # type: ignore[override]
        return self._transfer(uids, target, move=False)

    def moveTo(self, uids: Iterable[int], target: MaildirFolder) -> Deferred[dict[int, int]]:  # type: ignore[override]
        return self._transfer(uids, target, move=True)

    def _transfer(self, uids: Iterable[int], target: MaildirFolder, move: bool) -> Deferred[dict[int, int]]:
        """One change on the writer (L{transfer}): atomic against expunges, and across a crash."""
        if target.mailbox.directory != self.mailbox.directory:
            raise ValueError("a copy or move stays within one mailbox")
        d = self.store.write(
            lambda: transfer.transfer(
                self.mailbox.directory,
                self.mailbox.pin,
                self.name,
                target.name,
                sorted(set(uids)),
                move=move,
                batch_sync=self.store.batch_sync,
            )
        )

        def publish(mapping: dict[int, int]) -> dict[int, int]:
            target._publish(ADDED, mapping.values())
            if move:
                self._publish(EXPUNGED, mapping)
            return mapping

        return d.addCallback(publish)


def _find_renamed(directory: Path, filename: str) -> Path | None:
    """The file in C{directory}'s new/ or cur/ with the base name and UID of C{filename}, if any. Scans: a rare path."""
    wanted = index.parse_filename(filename.split("/", 1)[-1])
    if wanted is None or wanted.uid is None:
        return None
    for sub in ("cur", "new"):
        try:
            entries = os.scandir(directory / sub)
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith(wanted.base + ","):
                    parsed = index.parse_filename(entry.name)
                    if parsed is not None and parsed.base == wanted.base and parsed.uid == wanted.uid:
                        return Path(entry.path)
    return None


def _undo_renames(renamed: list[tuple[Path, Path]]) -> None:
    """
    Give files back the names the index still lists, newest first. One that
    cannot be renamed back is logged and left: the read path finds a message
    under another name (L{MaildirFolder._readFile}).
    """
    for old, new in reversed(renamed):
        try:
            durable.rename(new, old)
        except OSError as e:
            _log.error("store.rename_undo_failed {path}: {error}", path=str(new), error=str(e))


def _fail(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d


def _keywords(flags: Iterable[str]) -> set[str]:
    return {flag for flag in flags if not flag.startswith("\\")}


def _check_folder_keywords(conn: Any, folder: str, wanted: Iterable[str]) -> None:
    """
    Refuse (L{KeywordLimit}) keywords that would take C{folder} past
    L{MAX_KEYWORDS_PER_FOLDER} distinct ones. Reads the folder's flags only
    when a keyword is asked for, inside the caller's write transaction.
    """
    asked = _keywords(wanted)
    if not asked:
        return
    known: set[str] = set()
    for (text,) in conn.execute("SELECT flags FROM messages WHERE folder = ? AND flags != ''", (folder,)):
        known |= _keywords(index.decode_flags(text))
    if len(known | asked) > MAX_KEYWORDS_PER_FOLDER and asked - known:
        raise KeywordLimit(f"a folder may hold at most {MAX_KEYWORDS_PER_FOLDER} distinct keywords")
