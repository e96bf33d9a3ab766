"""
One folder of a Maildir mailbox (L{MaildirFolder}), read through the
mailbox's index and changed on the store's writer, and the one way to read
a stored message file.

Every change happens in one ``IMMEDIATE`` index transaction: a flag change
renames the files first (the names on disk are what a reconcile trusts
after a crash) and takes every rename back when anything fails before the
commit; an expunge records UIDNEXT in the folder's ``mailapp-folder``
first, so that a rebuild never hands out a removed UID again. Each change
is published on the store's event bus once it is committed, so that every
session is told. An expunged message's file stays readable for a while,
outside the Maildir, for the sessions that still have it in view
(L{expunged}).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Mapping, Sequence, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailapp.errors import MAX_KEYWORDS_PER_FOLDER, MAX_KEYWORDS_PER_MESSAGE, KeywordLimit, NoSuchFolder, NoSuchMessage
from mailapp.interfaces import IFolder
from mailapp.store import changes, durable, expunged, fulltext, messagefile, origins, outside, recent, structures, transfer
from mailapp.store import reconcile as reconciling
from mailapp.store.committer import _Delivery, _Placement
from mailapp.store.database import rollback
from mailapp.records import ADDED, EXPUNGED, FLAGS_CHANGED, Appended, ChangesSince, Expunged, FlagChange, FolderDelta, FolderEvent, FolderStatus, MessageInfo, MessageOrigin
from mailapp.store.filenames import DELETED_FLAG, SEEN_FLAG, decode_flags, encode_flags, flag_parameter, has_flag_sql, parse_filename
from mailapp.store.folders import mailbox_id, message_counts, record_uidnext
from mailapp.store.keywords import message_filename
from mailapp.store.modseq import prune_vanished, vanished_since
from mailapp.store.names import folder_directory
from mailapp.store.reconcile import FolderChanges
from mailapp.store.spool import SpoolWriter

if TYPE_CHECKING:
    from mailapp.records import TextMatches
    from mailapp.store.mailbox import MaildirMailbox

_log = Logger()

_T = TypeVar("_T")


def open_message_file(path: Path) -> IO[bytes]:
    """
    Open a Maildir message file for reading in wire form (CRLF, as IMAP
    and POP3 send it): its name says how it is stored (the ``W=`` size;
    L{messagefile}). Every read of a stored message comes through here or
    L{read_message_file}; tools and tests that look at the Maildir from
    outside use them too. Blocking.
    """
    parsed = parse_filename(path.name)
    return messagefile.open_message(path, parsed.wire_size if parsed is not None else None)


def read_message_file(path: Path, limit: int) -> bytes | None:
    """The whole message of a Maildir file in wire form if at most C{limit} bytes, else None. Blocking."""
    parsed = parse_filename(path.name)
    return messagefile.read_message(path, parsed.wire_size if parsed is not None else None, limit)



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

    def _publish(self, kind: str, uids: Iterable[int], source: str | None = None, delta: FolderDelta | None = None) -> None:
        uids = tuple(sorted(uids))
        if uids:
            self.store.events.publish(FolderEvent(kind, self.account, self.name, uids, source, delta))

    def _placement(self, flags: frozenset[str]) -> _Placement:
        """A committer placement of a new message in this folder, through this session's mailbox."""
        watched = self.store.events.watched(self.account, self.name)
        return _Placement(self.mailbox.directory, self.account, self.name, flags, self.mailbox.pin, watched)

    def refresh(self) -> Deferred[None]:
        """
        Take in what other tools changed in this folder's directory since
        the store last knew it (L{outside}): two C{stat} calls when nothing
        did; otherwise the folder is reconciled on the writer, and the
        changes are published (C{added}, C{expunged}, C{flags_changed}) as
        the store's own are, so every session is told.
        """

        def reconcileIfChanged(changed: bool) -> Deferred[None] | None:
            return self._reconcile() if changed else None

        return self.store.run(self._look).addCallback(reconcileIfChanged)

    def _look(self) -> bool:
        """Worker thread: whether the folder's directory changed behind the store's back (L{refresh})."""

        def counts() -> tuple[int, int]:
            with self._connect() as conn:
                return message_counts(conn, self.name)

        self.store.held_expunged.purge(self.directory)  # no system call until a held file is old enough
        return outside.changed(self.directory, counts)

    def _reconcile(self) -> Deferred[None]:
        """Reconcile the folder with its directory on the writer, and publish what that changed."""

        def reconcile() -> FolderChanges:
            with self._connect() as conn:
                return reconciling.reconcile_running_folder(conn, self.name, self.directory)

        def publish(changes: FolderChanges) -> None:
            self._publish(EXPUNGED, changes.removed)
            self._publish(FLAGS_CHANGED, changes.flags_changed)
            self._publish(ADDED, changes.added)

        return self.store.write(reconcile).addCallback(publish)

    def status(self, refresh: bool = False) -> Deferred[FolderStatus]:
        def read() -> FolderStatus:
            with self._connect() as conn:
                # One statement, one snapshot: every counter STATUS may ask for, in one scan.
                flagged = has_flag_sql("m.flags")
                row = conn.execute(
                    "SELECT f.uidvalidity, f.uidnext, f.highestmodseq, count(m.uid),"
                    f" coalesce(sum(NOT {flagged}), 0),"
                    " coalesce(sum(m.uid >= f.first_recent_uid), 0), coalesce(sum(m.size), 0),"
                    f" coalesce(sum({flagged}), 0)"
                    " FROM folders f LEFT JOIN messages m ON m.folder = f.name WHERE f.name = ? GROUP BY f.name",
                    (flag_parameter(SEEN_FLAG), flag_parameter(DELETED_FLAG), self.name),
                ).fetchone()
                if row is None:
                    raise NoSuchFolder(f"no such folder: {self.name}")
                validity, uidnext, highest, total, unseen, unclaimed, size, deleted = row
                return FolderStatus(validity, uidnext, total, unseen, highest, unclaimed, size, deleted)

        if not refresh:
            return self.store.run(read)

        def lookThenRead() -> FolderStatus | None:
            return None if self._look() else read()

        def reconciledFirst(found: FolderStatus | None) -> FolderStatus | Deferred[FolderStatus]:
            if found is not None:
                return found
            return self._reconcile().addCallback(lambda _: self.store.run(read))

        # Nothing changed outside (the usual case): the look and the counters in one trip.
        return self.store.run(lookThenRead).addCallback(reconciledFirst)

    def messages(self) -> Deferred[list[MessageInfo]]:
        def read() -> list[MessageInfo]:
            with self._connect() as conn:
                rows = conn.execute(
                    "SELECT uid, flags, size, internaldate, modseq FROM messages WHERE folder = ? ORDER BY uid", (self.name,)
                ).fetchall()
            return [MessageInfo(uid, decode_flags(flags), size, date, m) for uid, flags, size, date, m in rows]

        return self.store.run(read)

    def messagesIfChanged(self, known: tuple[int, int] | None) -> Deferred[tuple[tuple[int, int], int, list[MessageInfo] | None]]:
        def read() -> tuple[tuple[int, int], int, list[MessageInfo] | None]:
            with self._connect() as conn:
                found = changes.messages_if_changed(conn, self.name, known)
            if found is None:
                raise NoSuchFolder(f"no such folder: {self.name}")
            return found

        return self.store.run(read)

    def messagesAfter(self, uid: int) -> Deferred[list[MessageInfo]]:
        def read() -> list[MessageInfo]:
            with self._connect() as conn:
                rows = conn.execute(
                    "SELECT uid, flags, size, internaldate, modseq FROM messages WHERE folder = ? AND uid > ? ORDER BY uid",
                    (self.name, uid),
                ).fetchall()
            return [MessageInfo(uid, decode_flags(flags), size, date, m) for uid, flags, size, date, m in rows]

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
            try:
                filename = self._filename(uid)
            except NoSuchMessage:
                filename = ""
                break
            try:
                return read(self.directory / filename)
            except FileNotFoundError:
                pass
        if not filename:
            # Expunged: still readable for a while by whoever still has it in view (L{expunged}).
            held = expunged.find(self.directory, uid)
            if held is not None:
                try:
                    return read(held)
                except FileNotFoundError:
                    pass
            raise NoSuchMessage(f"no such message: {uid}")
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

    def readMessages(self, uids: Sequence[int], limit: int) -> Deferred[dict[int, bytes]]:
        wanted = list(uids)

        def read() -> dict[int, bytes]:
            # One index read for every file name, then the files; a message
            # whose file moved meanwhile (a flag change) or went (an expunge)
            # takes L{_readFile}'s careful path alone.
            with self._connect() as conn:
                names = dict(
                    conn.execute(
                        f"SELECT uid, filename FROM messages WHERE folder = ? AND uid IN ({','.join('?' * len(wanted))})",
                        (self.name, *wanted),
                    ).fetchall()
                )
            found: dict[int, bytes] = {}
            for uid in wanted:
                data: bytes | None = None
                try:
                    name = names.get(uid)
                    if name is not None:
                        try:
                            data = read_message_file(self.directory / str(name), limit)
                        except FileNotFoundError:
                            name = None
                    if name is None:
                        data = self._readFile(uid, lambda path: read_message_file(path, limit))
                except NoSuchMessage:
                    continue
                if data is not None:
                    found[uid] = data
            return found

        return self.store.run(read) if wanted else succeed({})

    def cachedStructures(self, uids: Sequence[int], version: int) -> Deferred[dict[int, bytes]]:
        wanted = list(uids)

        def read() -> dict[int, bytes]:
            with self._connect() as conn:
                return structures.read_structures(conn, self.name, wanted, version)

        return self.store.run(read)

    def mailboxId(self) -> Deferred[str]:
        def read() -> str:
            with self._connect() as conn:
                try:
                    return mailbox_id(conn, self.directory)
                except FileNotFoundError:
                    raise NoSuchFolder(f"no such folder: {self.name}") from None

        return self.store.run(read)

    def origins(self, uids: Sequence[int]) -> Deferred[dict[int, MessageOrigin]]:
        wanted = sorted(uids)

        def read() -> dict[int, MessageOrigin]:
            with self._connect() as conn:
                found = origins.read_origins(conn, self.name, wanted)
            if len(found) < len(wanted):
                # Expunged moments ago and still held for the sessions that have it in view
                # (L{expunged}): its EMAILID is its file's still; its save date went with its row.
                held = expunged.held_names(self.directory)
                for uid in wanted:
                    if uid not in found and uid in held:
                        found[uid] = MessageOrigin(origins.email_id(held[uid]), None)
            return found

        return self.store.run(read)

    def saveStructures(self, blobs: Mapping[int, bytes], version: int) -> Deferred[None]:
        kept = dict(blobs)

        def save() -> None:
            with self._connect() as conn:
                structures.write_structures(conn, self.name, kept, version)

        return self.store.write(save)

    def searchText(
        self, terms: Sequence[tuple[str, str]], approximate: Sequence[tuple[str, str]] = ()
    ) -> Deferred[TextMatches | None]:
        asked = list(terms)
        near = list(approximate)

        def read() -> tuple[TextMatches | None, bool]:
            with self._connect() as conn:
                row = conn.execute("SELECT uidvalidity, uidnext FROM folders WHERE name = ?", (self.name,)).fetchone()
                if row is None:
                    raise NoSuchFolder(f"no such folder: {self.name}")
                last = conn.execute("SELECT max(uid) FROM messages WHERE folder = ?", (self.name,)).fetchone()[0] or 0
            matches = fulltext.search(self.mailbox.directory, self.name, row[0], asked, near)
            return matches, matches is None or last not in matches.indexed

        def behind(result: tuple[TextMatches | None, bool]) -> TextMatches | None:
            matches, lagging = result
            if lagging:
                self.store.fulltext.changed(self.mailbox.directory)
            return matches

        return self.store.run(read).addCallback(behind)

    def setFlags(self, uids: Iterable[int], flags: Iterable[str], mode: str = "replace") -> Deferred[dict[int, frozenset[str]]]:
        return self.changeFlags(uids, flags, mode).addCallback(lambda change: change.flags)

    def highestModseq(self) -> Deferred[int]:
        def read() -> int:
            with self._connect() as conn:
                value = changes.highest_modseq(conn, self.name)
            if value is None:
                raise NoSuchFolder(f"no such folder: {self.name}")
            return value

        return self.store.run(read)

    def firstRecent(self) -> Deferred[int]:
        def read() -> int:
            with self._connect() as conn:
                first = recent.first_recent(conn, self.name)
            if first is None:
                raise NoSuchFolder(f"no such folder: {self.name}")
            return first

        return self.store.run(read)

    def claimRecent(self, uid: int) -> Deferred[range]:
        """
        On the writer, in one transaction (L{recent.claim_recent}): two
        claims never overlap, in any process. A read first: when every UID
        up to C{uid} is claimed already (a SELECT again, a session told of
        mail another one claimed), nothing waits for the writer.
        """

        def claim() -> range:
            with self._connect() as conn:
                owned = recent.claim_recent(conn, self.name, uid)
            if owned is None:
                raise NoSuchFolder(f"no such folder: {self.name}")
            return owned

        def claimIfAny(first: int) -> range | Deferred[range]:
            if uid < first:
                return range(first, first)
            return self.store.write(claim)

        return self.firstRecent().addCallback(claimIfAny)

    def changesSince(self, modseq: int) -> Deferred[ChangesSince]:
        def read() -> ChangesSince:
            with self._connect() as conn:
                found = changes.changes_since(conn, self.name, modseq)
            if found is None:
                raise NoSuchFolder(f"no such folder: {self.name}")
            return found

        return self.store.run(read)

    def vanishedSince(self, modseq: int) -> Deferred[list[int] | None]:
        def read() -> list[int] | None:
            with self._connect() as conn:
                conn.execute("BEGIN")
                try:
                    if conn.execute("SELECT 1 FROM folders WHERE name = ?", (self.name,)).fetchone() is None:
                        raise NoSuchFolder(f"no such folder: {self.name}")
                    return vanished_since(conn, self.name, modseq)
                finally:
                    conn.execute("COMMIT")

        return self.store.run(read)

    def changeFlags(
        self, uids: Iterable[int], flags: Iterable[str], mode: str = "replace", unchangedSince: int | None = None
    ) -> Deferred[FlagChange]:
        if mode not in ("replace", "add", "remove"):
            raise ValueError(f"bad mode {mode!r}")
        wanted = frozenset(flags)
        uids = sorted(set(uids))
        describe = self.store.events.watched(self.account, self.name)

        def change() -> FlagChange:
            # Files first, then the index: the names on disk are what a
            # reconcile trusts after a crash. When anything fails before the
            # commit, every rename is undone, so a flag change is all or
            # nothing and the index never names a file that is not there.
            renamed: list[tuple[Path, Path]] = []
            with self._connect() as conn, outside.own_change(self.directory):
                result: dict[int, frozenset[str]] = {}
                modseqs: dict[int, int] = {}
                modified: list[int] = []
                changed: list[int] = []
                delta: FolderDelta | None = None
                conn.execute("BEGIN IMMEDIATE")
                try:
                    before = changes.highest_modseq(conn, self.name)
                    if mode != "remove":
                        _check_folder_keywords(conn, self.name, wanted)
                    for uid in uids:
                        row = conn.execute(
                            "SELECT filename, flags, size, modseq FROM messages WHERE folder = ? AND uid = ?", (self.name, uid)
                        ).fetchone()
                        if row is None:
                            continue
                        filename, old_text, size, current = row
                        old = decode_flags(old_text)
                        if unchangedSince is not None and current > unchangedSince:
                            modified.append(uid)
                            continue
                        modseqs[uid] = current
                        new = wanted if mode == "replace" else (old | wanted if mode == "add" else old - wanted)
                        if len(_keywords(new)) > MAX_KEYWORDS_PER_MESSAGE and len(_keywords(new)) > len(_keywords(old)):
                            raise KeywordLimit(f"a message may carry at most {MAX_KEYWORDS_PER_MESSAGE} keywords")
                        result[uid] = new
                        if new == old:
                            continue
                        parsed = parse_filename(filename.split("/", 1)[1])
                        relative = filename
                        if parsed is not None:
                            relative = message_filename(
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
                            (encode_flags(new), relative, self.name, uid),
                        )
                        changed.append(uid)
                    for uid in changed:  # the triggers gave each its mod-sequence (L{modseq})
                        modseqs[uid] = conn.execute(
                            "SELECT modseq FROM messages WHERE folder = ? AND uid = ?", (self.name, uid)
                        ).fetchone()[0]
                    if changed and before is not None and describe:
                        delta = changes.folder_delta(conn, self.name, before)
                    conn.execute("COMMIT")
                except BaseException:
                    rollback(conn)
                    _undo_renames(renamed)
                    raise
                for uid in modified:  # still told, as they are now
                    row = conn.execute(
                        "SELECT flags, modseq FROM messages WHERE folder = ? AND uid = ?", (self.name, uid)
                    ).fetchone()
                    if row is not None:
                        result[uid] = decode_flags(row[0])
                        modseqs[uid] = row[1]
                return FlagChange(result, modseqs, tuple(modified), delta)

        def publish(result: FlagChange) -> FlagChange:
            self._publish(FLAGS_CHANGED, [uid for uid in result.flags if uid not in result.modified], delta=result.delta)
            return result

        return self.store.write(change).addCallback(publish)

    def expunge(self, uids: Iterable[int]) -> Deferred[list[int]]:
        uids = sorted(set(uids))

        def chosen(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            victims = []
            for uid in uids:
                row = conn.execute("SELECT filename FROM messages WHERE folder = ? AND uid = ?", (self.name, uid)).fetchone()
                if row is not None:
                    victims.append((uid, row[0]))
            return victims

        return self._expunge(chosen).addCallback(lambda done: done.uids)

    def expungeDeleted(self, wanted: Callable[[int], bool] | None = None) -> Deferred[Expunged]:
        def chosen(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            rows = conn.execute(
                f"SELECT uid, filename FROM messages WHERE folder = ? AND {has_flag_sql('flags')} ORDER BY uid",
                (self.name, flag_parameter(DELETED_FLAG)),
            ).fetchall()
            return [(uid, filename) for uid, filename in rows if wanted is None or wanted(uid)]

        return self._expunge(chosen)

    def _expunge(self, chosen: Callable[[sqlite3.Connection], list[tuple[int, str]]]) -> Deferred[Expunged]:
        """
        Expunge what C{chosen} picks, as (uid, filename) pairs, read under
        the index's write lock: one writer trip, and no message can gain or
        lose a flag between the choice and the removal. The folder's
        HIGHESTMODSEQ is read in the same transaction.
        """

        def highest(conn: sqlite3.Connection) -> int:
            value = changes.highest_modseq(conn, self.name)
            if value is None:
                raise NoSuchFolder(f"no such folder: {self.name}")
            return value

        describe = self.store.events.watched(self.account, self.name)

        def remove() -> Expunged:
            with self._connect() as conn, outside.own_change(self.directory):
                moved: list[tuple[Path, Path | None]] = []
                conn.execute("BEGIN IMMEDIATE")
                try:
                    before = highest(conn)
                    victims = chosen(conn)
                    if not victims:
                        conn.execute("COMMIT")
                        return Expunged([], before)
                    validity, uidnext = conn.execute(
                        "SELECT uidvalidity, uidnext FROM folders WHERE name = ?", (self.name,)
                    ).fetchone()
                    # Record UIDNEXT before anything goes, so that a rebuild never hands out a removed UID again.
                    record_uidnext(self.directory, validity, uidnext)
                    conn.executemany("DELETE FROM messages WHERE folder = ? AND uid = ?", [(self.name, u) for u, _ in victims])
                    prune_vanished(conn, self.name)
                    # Into the hold before the commit, under the index's write
                    # lock: another process (a second worker) reconciling this
                    # folder right after the commit would otherwise find a file
                    # whose row is gone and give it a new UID, bringing the
                    # expunged message back.
                    for uid, filename in victims:
                        target = expunged.hold(self.directory, filename, uid, unlink_if_stuck=False)
                        moved.append((self.directory / filename, target))
                    delta = changes.folder_delta(conn, self.name, before) if describe else None
                    highestmodseq = highest(conn) if delta is None else delta.after
                    conn.execute("COMMIT")
                except BaseException:
                    for source, target in moved:
                        if target is not None:
                            try:
                                os.rename(target, source)
                            except OSError:
                                pass  # readable from the hold by UID meanwhile (L{expunged.find})
                    rollback(conn)
                    raise
                holds = self.store.held_expunged
                for source, target in moved:
                    if target is None:
                        expunged.unlink_if_present(source)  # could not be moved: never left for the reconcile
                if victims:
                    holds.held(self.directory)
                holds.purge(self.directory)
                return Expunged([uid for uid, _ in victims], highestmodseq, delta)

        def publish(done: Expunged) -> Expunged:
            self._publish(EXPUNGED, done.uids, delta=done.delta)
            return done

        return self.store.write(remove).addCallback(publish)

    def append(self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None) -> Deferred[int]:
        writer = self.store.newMessage()
        if internaldate is not None:
            writer.internaldate = internaldate
        writer.write(data)
        flags = frozenset(flags)

        made: list[_Delivery] = []

        def written(_: object) -> Deferred[list[int]]:
            job = _Delivery(
                writer.path,
                writer.base,
                writer.size,
                writer.internaldate,
                [self._placement(flags)],
                synced=writer.sync,
                data=writer.pending,
                stored_size=writer.stored_size,
            )
            made.append(job)
            return self.store.committer.submit(job)

        def failed(reason: Failure) -> Failure:
            writer.discard()
            return reason

        def appended(uids: list[int]) -> int:
            self._publish(ADDED, uids, delta=made[0].delta(0))
            return uids[0]

        # The errback first: it sees the writer's failures only, never the commit's.
        return writer.finish().addErrback(failed).addCallback(written).addCallback(appended)

    def appendMessage(
        self, message: SpoolWriter, flags: Iterable[str] = (), internaldate: float | None = None
    ) -> Deferred[Appended]:
        """
        Store a message received into a spool writer (IMAP APPEND streams a
        literal there, so memory stays bounded), with C{flags}; fires with
        its UID and its folder's UIDVALIDITY and publishes C{added}. The
        writer's file belongs to the store from here on, delivered or not.
        """
        if not message.finished:
            raise RuntimeError("appendMessage() before the message's finish() fired")
        job = _Delivery(
            message.path,
            message.base,
            message.size,
            message.internaldate if internaldate is None else internaldate,
            [self._placement(frozenset(flags))],
            synced=message.sync,
            data=message.pending,
            stored_size=message.stored_size,
        )

        def appended(uids: list[int]) -> Appended:
            self._publish(ADDED, uids, delta=job.delta(0))
            validity = job.uidvalidities[0]
            assert validity is not None
            return Appended(uids[0], validity)

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
            target._publish(ADDED, mapping.values(), source=self.name)
            if move:
                self._publish(EXPUNGED, mapping)
            return mapping

        return d.addCallback(publish)


def _find_renamed(directory: Path, filename: str) -> Path | None:
    """The file in C{directory}'s new/ or cur/ with the base name and UID of C{filename}, if any. Scans: a rare path."""
    wanted = parse_filename(filename.split("/", 1)[-1])
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
                    parsed = parse_filename(entry.name)
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
        known |= _keywords(decode_flags(text))
    if len(known | asked) > MAX_KEYWORDS_PER_FOLDER and asked - known:
        raise KeywordLimit(f"a folder may hold at most {MAX_KEYWORDS_PER_FOLDER} distinct keywords")
