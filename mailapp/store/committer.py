"""
The group committer: every change to the store goes through it, in batches.

Each batch, on a worker thread:

  1. writes the files of small messages that were kept in memory, and makes
     every new file's data durable (one syncfs(2), or one fsync per file);
  2. locks the mailboxes (always in path order, so two writers can never
     deadlock), takes UIDs, hard-links each file into the ``new/`` of every
     recipient folder, and makes the new names durable (one syncfs, or one
     fsync per directory);
  3. commits the index rows that make the messages visible, and only then
     fires the Deferreds that let SMTP say 250.

Deliveries that arrive while a batch runs wait for the next one, so many
concurrent deliveries share each sync and each index commit (group commit).
Other changes (flags, expunges, folder operations) are calls that run in
the batch, in order.

Step 1 touches only the batch's own spool files, so it is the batch's
C{prepare} stage (L{mailapp.store.batching}): it runs while the batch
before is still in steps 2 and 3, which stay strictly serial, batch after
batch, with every call; no mailbox lock, UID or index row is ever taken
outside them. A job's Deferred fires after its own batch's commit and
after every earlier batch's, so no 250 goes out before its own data and
names are durable, and UIDs become visible in the order they were given.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from twisted.logger import Logger

from mailapp.errors import MailboxGone, NoSuchFolder, NoSuchMessage, StorageFull, StoreError
from mailapp.store import connections as pool
from mailapp.records import FolderDelta
from mailapp.store import changes, durable, messagefile, outside
from mailapp.store.batching import BatchRunner
from mailapp.store.filenames import encode_flags
from mailapp.store.keywords import message_filename
from mailapp.store.names import folder_directory

_log = Logger()


@dataclass
class _Placement:
    mailbox_dir: Path
    account: str
    folder: str
    flags: frozenset[str] = frozenset()
    #: For a change made through a session's mailbox (APPEND, COPY): the
    #: directory it was opened on, so that it never lands in a new account's.
    pin: pool.MailboxPin | None = None
    #: A session of this process has the folder open: describe what the batch changed
    #: there (L{_Delivery.deltas}), so that its view need not read it.
    watched: bool = False


@dataclass
class _Delivery:
    """Give one durable file a name in each placement's folder."""

    source: Path
    base: str
    #: The message's wire size (RFC822.SIZE): the index's size, and W= in the name.
    size: int
    internaldate: float
    placements: list[_Placement]
    owns_source: bool = True
    #: The file's size (S= in the name); None until the batch writes C{data}.
    stored_size: int | None = None
    #: False for a copy of a file whose name has no W= (state format 1): the
    #: copy is named like its original, so that both are read the same way.
    wire_size_in_name: bool = True
    #: The source is already durable (fsync'd by its writer, or an existing message).
    synced: bool = True
    #: The bytes of a small message not yet written: the batch writes C{source} first.
    data: bytes | None = None
    #: For a copy of a stored message: (mailbox directory, folder, uid). Its
    #: file name is looked up under the mailbox's lock, since a flag change
    #: may have renamed it since the caller last read the index.
    stored: tuple[Path, str, int] | None = None
    uids: list[int | None] = field(default_factory=list)
    #: The UIDVALIDITY of each placement's folder when its UID was given.
    uidvalidities: list[int | None] = field(default_factory=list)
    #: For each watched placement, what its batch changed in the folder (the same
    #: L{FolderDelta} for every job of the batch there); None where not known exactly.
    deltas: list[FolderDelta | None] = field(default_factory=list)
    #: Step 1 ran for this job (in the batch's prepare stage); what stopped it, if anything.
    prepared: bool = False
    prepare_error: BaseException | None = None


    def delta(self, slot: int) -> FolderDelta | None:
        """What the batch changed in placement C{slot}'s folder, for its C{added} event; None when not described."""
        return self.deltas[slot] if slot < len(self.deltas) else None


@dataclass
class _Call:
    """Any other change: runs alone, in order, on the writer."""

    function: Callable[..., Any]
    args: tuple[Any, ...]


class GroupCommitter(BatchRunner[Any]):
    """
    Runs store changes in batches on worker threads, the next batch's data
    written and synced while the previous batch commits; see the module
    docstring.
    """

    def __init__(self, reactor: Any, threadpool: Any, batch_sync: bool = False) -> None:
        super().__init__(
            reactor,
            threadpool,
            lambda jobs: _run_batch(jobs, batch_sync),
            prepare=lambda jobs: _prepare_batch(jobs, batch_sync),
            needs_prepare=_needs_prepare,
        )
        self.batch_sync = batch_sync


def _needs_prepare(job: _Delivery | _Call) -> bool:
    """A delivery whose file is still to write or to sync (a flag change, an expunge, a copy has nothing to prepare)."""
    return isinstance(job, _Delivery) and (job.data is not None or not job.synced)


def _prepare_batch(jobs: list[_Delivery | _Call], batch_sync: bool) -> None:
    """Worker thread, the batch's prepare stage: step 1 for all its deliveries at once (one sync for the batch)."""
    deliveries = [job for job in jobs if isinstance(job, _Delivery)]
    if deliveries:
        _prepare_deliveries(deliveries, batch_sync)


def _prepare_deliveries(jobs: list[_Delivery], batch_sync: bool) -> list[BaseException | None]:
    """
    Worker thread, stage 1: write the files of messages kept in memory and
    make the data of every unsynced file durable. Returns, per job, None or
    the error that stops it (its file is then removed). A job already
    prepared (by the batch's prepare stage) is not done again: its outcome
    then is what it was.
    """
    done = [job for job in jobs if job.prepared]
    if done:
        rest = [job for job in jobs if not job.prepared]
        if rest:
            _prepare_deliveries(rest, batch_sync)
        return [job.prepare_error for job in jobs]
    errors: list[BaseException | None] = [None] * len(jobs)
    for number, job in enumerate(jobs):
        if job.data is not None:
            try:
                stored, _ = messagefile.encode(job.data)
                _write_new_file(job.source, stored)
                job.stored_size = len(stored)
                job.data = None
            except BaseException as e:
                errors[number] = e
    unsynced = [job.source for number, job in enumerate(jobs) if not job.synced and errors[number] is None]
    if unsynced:
        try:
            durable.sync_files(unsynced, jobs[0].source.parent, batch_sync)
            for job in jobs:
                job.synced = True
        except BaseException as e:
            for number, job in enumerate(jobs):
                if not job.synced and errors[number] is None:
                    errors[number] = e
    for number, job in enumerate(jobs):
        if errors[number] is not None:
            if job.owns_source:
                durable.unlink(job.source)
            if not isinstance(errors[number], StoreError):
                _log.error("store.delivery_failed {error!r}", error=errors[number])
                errors[number] = durable.store_error_for(errors[number])  # type: ignore[arg-type]
    for job, error in zip(jobs, errors):
        job.prepared = True
        job.prepare_error = error
    return errors


def _run_batch(jobs: list[_Delivery | _Call], batch_sync: bool = False) -> list[Any]:
    """Worker thread: run C{jobs} in order, consecutive deliveries together."""
    results: list[Any] = [None] * len(jobs)
    group: list[int] = []

    def flush() -> None:
        if group:
            deliveries = [jobs[i] for i in group]
            for position, outcome in zip(group, _run_deliveries(deliveries, batch_sync)):  # type: ignore[arg-type]
                results[position] = outcome
            group.clear()

    for position, job in enumerate(jobs):
        if isinstance(job, _Delivery):
            group.append(position)
            continue
        flush()
        try:
            results[position] = job.function(*job.args)
        except BaseException as e:
            if durable.is_disk_full(e) and not isinstance(e, StoreError):
                _log.warn("store.disk_full {error!r}", error=e)
                replacement = StorageFull()
                replacement.__cause__ = e
                e = replacement
            results[position] = e
    flush()
    return results


def _run_deliveries(jobs: list[_Delivery], batch_sync: bool = False) -> list[Any]:
    """
    Link each job's file into every placement, fsync each directory once,
    then commit the index rows per mailbox. A job either gets every copy or
    none: its links are removed and its rows never committed if any step fails.
    """
    failed: dict[int, BaseException] = {}
    links: dict[int, list[Path]] = defaultdict(list)
    rows: dict[Path, list[tuple[int, tuple[Any, ...]]]] = defaultdict(list)
    uidnext: dict[tuple[Path, str], int] = {}
    connections: dict[Path, sqlite3.Connection] = {}
    directories: dict[Path, set[int]] = defaultdict(set)
    with ExitStack() as borrowed, ExitStack() as ours:
        return _deliver_batch(jobs, batch_sync, borrowed, ours, failed, links, rows, uidnext, connections, directories)


def _deliver_batch(
    jobs: list[_Delivery],
    batch_sync: bool,
    borrowed: ExitStack,
    ours: ExitStack,
    failed: dict[int, BaseException],
    links: dict[int, list[Path]],
    rows: dict[Path, list[tuple[int, tuple[Any, ...]]]],
    uidnext: dict[tuple[Path, str], int],
    connections: dict[Path, sqlite3.Connection],
    directories: dict[Path, set[int]],
) -> list[Any]:

    anchor = jobs[0].source.parent
    # Left (after the index commits and the connections are given back) in
    # reverse order of entry: each folder's new state is then known as ours.
    stamped: set[Path] = set()
    for number, error in enumerate(_prepare_deliveries(jobs, batch_sync)):
        if error is not None:
            failed[number] = error

    # Lock every mailbox this batch touches, always in path order, so that two
    # batches running at once (or another process) can never deadlock.
    touching: dict[Path, list[int]] = defaultdict(list)
    for number, job in enumerate(jobs):
        for placement in job.placements:
            if placement.pin is not None and number not in failed:
                try:
                    placement.pin.check(pool.directory_identity(placement.mailbox_dir))
                except MailboxGone as e:
                    failed[number] = e
        if number not in failed:
            for placement in job.placements:
                touching[placement.mailbox_dir].append(number)
            if job.stored is not None:
                touching[job.stored[0]].append(number)
    for mailbox_dir in sorted(touching):
        try:
            conn = borrowed.enter_context(pool.connection(mailbox_dir))
            conn.execute("BEGIN IMMEDIATE")
            connections[mailbox_dir] = conn
        except BaseException as e:
            for number in touching[mailbox_dir]:
                failed.setdefault(number, e)

    #: Each folder's UIDVALIDITY, read with its UIDNEXT (what APPENDUID reports),
    #: and, where a placement is watched, its HIGHESTMODSEQ before the batch.
    validities: dict[tuple[Path, str], int] = {}
    befores: dict[tuple[Path, str], int] = {}
    saved = time.time()  # the batch's save date (RFC 8514: when each message is saved into its folder)
    for number, job in enumerate(jobs):
        job.uids = [None] * len(job.placements)
        job.uidvalidities = [None] * len(job.placements)
        job.deltas = [None] * len(job.placements)
        if job.stored is not None and number not in failed:
            mailbox_dir, folder, stored_uid = job.stored
            row = connections[mailbox_dir].execute(
                "SELECT filename FROM messages WHERE folder = ? AND uid = ?", (folder, stored_uid)
            ).fetchone()
            if row is None:
                failed[number] = NoSuchMessage(f"no such message: {stored_uid}")
            else:
                job.source = folder_directory(mailbox_dir, folder) / row[0]
        for slot, placement in enumerate(job.placements):
            if number in failed:
                break
            try:
                conn = connections[placement.mailbox_dir]
                key = (placement.mailbox_dir, placement.folder)
                if key not in uidnext:
                    row = conn.execute(
                        "SELECT uidnext, uidvalidity, highestmodseq FROM folders WHERE name = ?", (placement.folder,)
                    ).fetchone()
                    if row is None:
                        raise NoSuchFolder(f"no such folder: {placement.folder}")
                    uidnext[key] = row[0]
                    validities[key] = row[1]
                    befores[key] = row[2]
                job.uidvalidities[slot] = validities[key]
                uid = uidnext[key]
                uidnext[key] = uid + 1
                directory = folder_directory(placement.mailbox_dir, placement.folder)
                if directory not in stamped:
                    stamped.add(directory)
                    ours.enter_context(outside.own_change(directory))
                relative = message_filename(
                    directory,
                    job.base,
                    job.size if job.stored_size is None else job.stored_size,
                    uid,
                    placement.flags,
                    wire_size=job.size if job.wire_size_in_name else None,
                )
                target = directory / relative
                durable.link(job.source, target)
                links[number].append(target)
                directories[target.parent].add(number)
                job.uids[slot] = uid
                rows[placement.mailbox_dir].append(
                    (
                        number,
                        (placement.folder, uid, relative, encode_flags(placement.flags), job.size, job.internaldate, saved),
                    )
                )
            except BaseException as e:
                failed[number] = e

    if directories:
        try:
            durable.sync_directories(list(directories), anchor, batch_sync)
        except BaseException as e:
            for numbers in directories.values():
                for number in numbers:
                    failed.setdefault(number, e)

    committed: list[Path] = []
    watched = {(p.mailbox_dir, p.folder) for job in jobs for p in job.placements if p.watched}
    deltas: dict[tuple[Path, str], FolderDelta | None] = {}
    for mailbox_dir, conn in connections.items():
        good = [values for number, values in rows[mailbox_dir] if number not in failed]
        try:
            conn.executemany(
                "INSERT INTO messages (folder, uid, filename, flags, size, internaldate, savedate) VALUES (?, ?, ?, ?, ?, ?, ?)",
                good,
            )
            for (box, folder), value in uidnext.items():
                if box == mailbox_dir:
                    # UIDs taken by a failed job are skipped, never reused.
                    conn.execute("UPDATE folders SET uidnext = max(uidnext, ?) WHERE name = ?", (value, folder))
                    if (box, folder) in watched and not failed:
                        deltas[(box, folder)] = changes.folder_delta(conn, folder, befores[(box, folder)])
            conn.execute("COMMIT")
            committed.append(mailbox_dir)
        except BaseException as e:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for number, _ in rows[mailbox_dir]:
                failed.setdefault(number, e)
    try:
        _undo_committed(jobs, failed, rows, committed)
    except BaseException as e:
        # The failed jobs' rows may still be listed in a committed mailbox:
        # leave their files, so that what the index shows stays readable; the
        # sender got no 250 for them and will send again (a duplicate, never
        # a loss), and reconcile sorts the index out at the next start.
        _log.error("store.undo_failed {error!r}", error=e)
        for number in failed:
            links[number] = []

    if not failed:
        # Only when every job got every copy: a failed job's rows may be undone after its mailbox committed.
        for job in jobs:
            job.deltas = [deltas.get((p.mailbox_dir, p.folder)) for p in job.placements]
    outcomes: list[Any] = []
    for number, job in enumerate(jobs):
        if number in failed:
            for path in links[number]:
                durable.unlink(path)
            error = failed[number]
            if not isinstance(error, (StoreError, NoSuchFolder, NoSuchMessage)):
                _log.error("store.delivery_failed {error!r}", error=error)
                error = durable.store_error_for(error)
            outcomes.append(error)
        else:
            outcomes.append(list(job.uids))
        if job.owns_source:
            try:
                durable.unlink(job.source)
            except OSError as e:  # the copies are made; a spool file left over is swept at the next start
                _log.warn("store.spool_unlink_failed {path}: {error}", path=str(job.source), error=str(e))
    return outcomes


def _write_new_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        durable.write_all(fd, data)
    finally:
        os.close(fd)


def _undo_committed(
    jobs: list[_Delivery],
    failed: dict[int, BaseException],
    rows: dict[Path, list[tuple[int, tuple[Any, ...]]]],
    committed: list[Path],
) -> None:
    """A commit failed after others succeeded: take back the rows of failed jobs so none is half-delivered."""
    for mailbox_dir in committed:
        victims = [values for number, values in rows[mailbox_dir] if number in failed]
        if not victims:
            continue
        with pool.connection(mailbox_dir) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("DELETE FROM messages WHERE folder = ? AND uid = ?", [(v[0], v[1]) for v in victims])
            conn.execute("COMMIT")
