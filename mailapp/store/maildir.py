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
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from mailapp.interfaces import IMessageStore
from mailapp.records import ADDED, FolderEvent, FolderPlacement, Usage
from mailapp.store import connections, durable, expunged
from mailapp.store.committer import GroupCommitter, _Call, _Delivery, _Placement
from mailapp.store.events import EventBus
from mailapp.store.mailbox import account_directory
from mailapp.store.names import INBOX, mailbox_directory, normalize_folder
from mailapp.store.spool import SpoolWriter
from mailapp.store.freespace import FreeSpace
from mailapp.store.fulltext import FullTextIndexer
from mailapp.store.usage import usage

# The store's parts, importable from here as before they had modules of
# their own ("X as X": an explicit re-export).
from mailapp.store.folder import MaildirFolder as MaildirFolder
from mailapp.store.folder import open_message_file as open_message_file
from mailapp.store.folder import read_message_file as read_message_file
from mailapp.store.mailbox import MaildirMailbox as MaildirMailbox
from mailapp.store.retire import DELETED_NAME as DELETED_NAME
from mailapp.store.retire import retire_domain_mailboxes as retire_domain_mailboxes
from mailapp.store.retire import retire_mailbox as retire_mailbox


_log = Logger()

SPOOL_NAME = ".spool"
STALE_SPOOL_SECONDS = 3600


def ensure_mailbox(state_dir: Path, account: str) -> Path:
    """
    Create C{account}'s Maildir (INBOX and the special folders) and index,
    synchronously: for the admin command, which runs no reactor.
    """
    mailbox_dir = mailbox_directory(Path(state_dir) / "mail", account)
    with connections.connection(mailbox_dir):
        pass
    connections.reset_connections()
    return mailbox_dir


def mailbox_usage(root: Path, account: str) -> Usage:
    """
    What C{account}'s mailbox holds, from its index, synchronously (the
    admin command; the server asks L{MaildirMailbox.usage}). A mailbox not
    created yet holds nothing.
    """
    directory = mailbox_directory(root, account)
    if not directory.is_dir():
        return Usage()
    with connections.connection(directory) as conn:
        return usage(conn)


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
        fulltext_pool: Any = None,
        writer_pool: Any = None,
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
        #: The group committer's batches run on C{writer_pool} (the server gives
        #: it threads of its own, so that no commit waits behind the reads of
        #: C{threadpool}; by default the same pool).
        self.committer = GroupCommitter(reactor, writer_pool if writer_pool is not None else self.threadpool, self.batch_sync)
        #: The disk new messages are written to (the spool is under the root).
        self.freeSpace = FreeSpace(self.root, reactor)
        #: Fills each mailbox's full-text file after its deliveries commit, on
        #: C{fulltext_pool} (the server gives it a thread of its own; by default
        #: the store's pool, one pass at a time).
        self.fulltext = FullTextIndexer(
            reactor, fulltext_pool if fulltext_pool is not None else self.threadpool, lambda account: account_directory(self.root, account)
        )
        self.events.subscribeAll(self.fulltext.event)
        #: Folder directories whose expunged messages are held (L{expunged}), and when each is next due a purge.
        self.held_expunged = expunged.Holds()

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Run a read-only index or file operation on a worker thread (once
        more if it met a damaged index, rebuilt meanwhile).
        """
        return deferToThreadPool(self.reactor, self.threadpool, connections.retry_after_repair, function, *args)

    def write(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run a change on the writer, in order with every other change (retried as L{run} is)."""
        return self.committer.submit(_Call(connections.retry_after_repair, (function, *args)))

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
        placements = [
            _Placement(account_directory(self.root, a), a, folder, watched=self.events.watched(a, folder)) for a in unique.values()
        ]
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
            for slot, (placement, uid) in enumerate(zip(placements, uids)):
                self.events.publish(FolderEvent(ADDED, placement.account, folder, (uid,), delta=job.delta(slot)))
            return {placement.account: uid for placement, uid in zip(placements, uids)}

        return d.addCallback(delivered)

    def deliverPlacements(self, message: SpoolWriter, placements: Sequence[FolderPlacement]) -> Deferred[list[int]]:
        if not message.finished:
            raise RuntimeError("deliverPlacements() before the message's finish() fired")
        # One job: the committer links one file into each placement, in one durable batch.
        jobs = []
        for p in placements:
            folder = normalize_folder(p.folder)
            watched = self.events.watched(p.account, folder)
            jobs.append(_Placement(account_directory(self.root, p.account), p.account, folder, frozenset(p.flags), watched=watched))
        job = _Delivery(
            message.path,
            message.base,
            message.size,
            message.internaldate,
            jobs,
            synced=message.sync,
            data=message.pending,
            stored_size=message.stored_size,
        )

        def delivered(uids: list[int]) -> list[int]:
            for slot, (placement, uid) in enumerate(zip(jobs, uids)):
                self.events.publish(FolderEvent(ADDED, placement.account, placement.folder, (uid,), delta=job.delta(slot)))
            return uids

        return self.committer.submit(job).addCallback(delivered)

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
        """
        L{cleanup} with its default age, and the expunged messages held in
        the folders this process expunged from that are old enough
        (L{expunged}): what L{mailapp.leftovers} calls every hour.
        """

        return self.run(self.held_expunged.sweep).addCallback(lambda _: self.cleanup())
