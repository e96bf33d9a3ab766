"""
The store under faults: a full disk in the middle of a flag change, a copy
or move racing an expunge, a crash in the middle of a move.

A full disk is simulated deterministically (the call that would hit it
raises ENOSPC, or the index's COMMIT fails as SQLite's does); a crash is a
L{BaseException} raised at one step, which the store's undo code (written
for L{Exception}) lets through, so what is left on disk is what a SIGKILL
at that step would leave; L{restart} is the next start.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.errors import StorageFull
from mailapp.store import MaildirStore, connections, durable, index, intent
from mailapp.store.names import folder_directory, mailbox_directory
from mailapp.store.spool import SpoolWriter

ALICE = "alice@example.test"


def message(number: int) -> bytes:
    return b"Subject: message %d\r\n\r\nbody %d\r\n" % (number, number)


class _Crash(BaseException):
    """The process dies here: no undo code runs."""


class _FullDiskConnection:
    """A connection whose next COMMIT fails as SQLite's does on a full disk: rolled back, then SQLITE_FULL."""

    def __init__(self, conn: sqlite3.Connection, armed: list[bool]) -> None:
        self._conn = conn
        self._armed = armed

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self._armed[0]:
            self._armed[0] = False
            self._conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class FaultTestCase(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "mail"
        self.store = MaildirStore(self.root, reactor=reactor)
        self.mailbox_dir = mailbox_directory(self.root, ALICE)

    def restart(self) -> MaildirStore:
        index.reset_connections()
        self.store = MaildirStore(self.root, reactor=reactor)
        return self.store

    @inlineCallbacks
    def deliver(self, count: int):
        for number in range(1, count + 1):
            writer = self.store.newMessage()
            yield writer.write(message(number))
            yield writer.finish()
            yield self.store.deliver(writer, [ALICE])

    @inlineCallbacks
    def folder(self, name: str = "INBOX"):
        folder = yield self.store.mailbox(ALICE).folder(name)
        return folder

    @inlineCallbacks
    def contents(self, name: str) -> Any:
        """{uid: (flags, bytes)} of a folder, every message read through the index."""
        folder = yield self.folder(name)
        found = {}
        for info in (yield folder.messages()):
            data = yield folder.readMessage(info.uid, 1 << 20)
            found[info.uid] = (info.flags, data)
        return found

    def files(self, name: str) -> list[str]:
        directory = folder_directory(self.mailbox_dir, name)
        return sorted(f"{sub}/{entry}" for sub in ("new", "cur") for entry in os.listdir(directory / sub))

    def bases(self, name: str) -> list[str]:
        return sorted(path.split("/", 1)[1].split(",", 1)[0] for path in self.files(name))


class FullDiskFlagTests(FaultTestCase):
    @inlineCallbacks
    def test_flag_change_whose_index_commit_hits_a_full_disk_changes_nothing_and_every_message_stays_readable(self):
        yield self.deliver(5)
        before = yield self.contents("INBOX")
        armed = [False]
        real_connection = connections.connection

        @contextmanager
        def connection(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with real_connection(*args, **kwargs) as conn:
                yield _FullDiskConnection(conn, armed)

        self.patch(connections, "connection", connection)
        inbox = yield self.folder()
        armed[0] = True
        yield self.assertFailure(inbox.setFlags([1, 2, 3, 4, 5], ["\\Seen"], "add"), StorageFull)
        self.assertEqual((yield self.contents("INBOX")), before)
        self.assertEqual(self.files("INBOX"), sorted(f"new/{name}" for name in os.listdir(self.mailbox_dir / "new")))
        self.assertEqual(os.listdir(self.mailbox_dir / "cur"), [])
        # Space is back: the same change works, without a restart.
        result = yield inbox.setFlags([1, 2, 3, 4, 5], ["\\Seen"], "add")
        self.assertEqual(set(result), {1, 2, 3, 4, 5})
        after = yield self.contents("INBOX")
        self.assertEqual({uid: data for uid, (_, data) in after.items()}, {uid: data for uid, (_, data) in before.items()})
        self.assertTrue(all(flags == {"\\Seen"} for flags, _ in after.values()))

    @inlineCallbacks
    def test_flag_change_whose_third_rename_hits_a_full_disk_takes_back_the_first_two(self):
        yield self.deliver(5)
        before = yield self.contents("INBOX")
        names = self.files("INBOX")
        real_rename = durable.rename
        calls = []

        def rename(source: Path, target: Path) -> None:
            calls.append(source)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_rename(source, target)

        self.patch(durable, "rename", rename)
        inbox = yield self.folder()
        yield self.assertFailure(inbox.setFlags([1, 2, 3, 4, 5], ["\\Flagged"], "add"), StorageFull)
        self.assertEqual(self.files("INBOX"), names)
        self.assertEqual((yield self.contents("INBOX")), before)

    @inlineCallbacks
    def test_a_message_whose_rename_could_not_be_taken_back_is_still_read(self):
        yield self.deliver(1)
        inbox = yield self.folder()
        [name] = os.listdir(self.mailbox_dir / "new")
        # As if a flag change renamed the file and could not rename it back after its commit failed.
        os.rename(self.mailbox_dir / "new" / name, self.mailbox_dir / "cur" / (name + ":2,S"))
        self.assertEqual((yield inbox.readMessage(1, 1 << 20)), message(1))

    @inlineCallbacks
    def test_append_on_a_full_disk_fails_with_storage_full_and_stores_nothing(self):
        yield self.deliver(1)

        def write_all(fd: int, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(durable, "write_all", write_all)
        inbox = yield self.folder()
        yield self.assertFailure(inbox.append(message(2)), StorageFull)
        big = self.store.newMessage()
        yield big.write(b"x" * (SpoolWriter.FLUSH_AT + 1))
        yield self.assertFailure(big.finish(), StorageFull)
        yield big.discard()
        self.assertEqual(list((yield self.contents("INBOX"))), [1])

    @inlineCallbacks
    def test_copy_on_a_full_disk_fails_with_storage_full_and_leaves_the_target_as_it_was(self):
        yield self.deliver(3)
        real_link = durable.link
        calls = []

        def link(source: Path, target: Path) -> None:
            calls.append(target)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_link(source, target)

        self.patch(durable, "link", link)
        inbox = yield self.folder()
        archive = yield self.folder("Archive")
        yield self.assertFailure(inbox.copyTo([1, 2, 3], archive), StorageFull)
        self.assertEqual((yield self.contents("Archive")), {})
        self.assertEqual(self.files("Archive"), [])
        self.assertFalse((self.mailbox_dir / intent.RECORD_NAME).exists())


class ExpungeRaceTests(FaultTestCase):
    @inlineCallbacks
    def check_transfer_racing_expunge(self, move: bool, expunge_first: bool):
        yield self.deliver(10)
        inbox = yield self.folder()
        archive = yield self.folder("Archive")
        originals = yield self.contents("INBOX")
        transfer = inbox.moveTo if move else inbox.copyTo
        if expunge_first:
            expunged, mapping = yield gatherResults([inbox.expunge([3, 5, 9]), transfer(range(1, 11), archive)])
        else:
            mapping, expunged = yield gatherResults([transfer(range(1, 11), archive), inbox.expunge([3, 5, 9])])
        target = yield self.contents("Archive")
        # The reply (the mapping) describes the target exactly, message by message.
        self.assertEqual(sorted(target), sorted(mapping.values()))
        for source, copied in mapping.items():
            self.assertEqual(target[copied][1], originals[source][1])
        left = yield self.contents("INBOX")
        if move:
            self.assertEqual(set(left) & set(mapping), set())
        self.assertEqual(set(mapping) & set(expunged) if expunge_first else set(), set())
        self.assertEqual(sorted(set(mapping) | set(expunged) | set(left)), list(range(1, 11)))

    def test_a_copy_after_an_expunge_copies_what_is_left_and_says_exactly_that(self):
        return self.check_transfer_racing_expunge(move=False, expunge_first=True)

    def test_a_copy_before_an_expunge_copies_everything(self):
        return self.check_transfer_racing_expunge(move=False, expunge_first=False)

    def test_a_move_after_an_expunge_moves_what_is_left_and_says_exactly_that(self):
        return self.check_transfer_racing_expunge(move=True, expunge_first=True)

    def test_a_move_before_an_expunge_moves_everything(self):
        return self.check_transfer_racing_expunge(move=True, expunge_first=False)

    @inlineCallbacks
    def test_a_transfer_of_only_expunged_messages_changes_nothing(self):
        yield self.deliver(2)
        inbox = yield self.folder()
        archive = yield self.folder("Archive")
        yield inbox.expunge([1, 2])
        self.assertEqual((yield inbox.moveTo([1, 2], archive)), {})
        self.assertEqual((yield self.contents("Archive")), {})


class CrashDuringMoveTests(FaultTestCase):
    COUNT = 6

    @inlineCallbacks
    def check_crash(self, where: str, patch: Any):
        yield self.deliver(self.COUNT)
        inbox = yield self.folder()
        archive = yield self.folder("Archive")
        originals = {data for _, data in (yield self.contents("INBOX")).values()}
        bases = self.bases("INBOX")
        patch()
        yield self.assertFailure(inbox.moveTo(range(1, self.COUNT + 1), archive), _Crash)
        self.assertTrue((self.mailbox_dir / intent.RECORD_NAME).exists(), where)
        self.restart()
        inbox_after = yield self.contents("INBOX")
        archive_after = yield self.contents("Archive")
        self.assertEqual(sorted(self.bases("INBOX") + self.bases("Archive")), bases, where)
        self.assertEqual(self.bases("INBOX"), [], where)
        self.assertEqual(list(inbox_after), [], where)
        self.assertEqual({data for _, data in archive_after.values()}, originals, where)
        self.assertEqual(len(archive_after), self.COUNT, where)
        self.assertFalse((self.mailbox_dir / intent.RECORD_NAME).exists(), where)
        # New messages get UIDs above every moved one.
        inbox = yield self.folder()
        archive = yield self.folder("Archive")
        status = yield archive.status()
        self.assertGreater(status.uidnext, max(archive_after))
        self.assertEqual(len((yield inbox.moveTo([], archive))), 0)

    def crash_on_call(self, owner: Any, name: str, number: int, after: bool = False) -> Any:
        real = getattr(owner, name)
        calls = []

        def crashing(*args: Any) -> Any:
            calls.append(args)
            if len(calls) == number:
                if after:
                    real(*args)
                raise _Crash(name)
            return real(*args)

        return lambda: self.patch(owner, name, crashing)

    def test_a_move_cut_short_right_after_its_intent_is_recorded_is_finished_at_the_next_start(self):
        return self.check_crash("after record", self.crash_on_call(intent, "record", 1, after=True))

    def test_a_move_cut_short_halfway_through_its_links_is_finished_at_the_next_start(self):
        return self.check_crash("mid links", self.crash_on_call(durable, "link", self.COUNT // 2))

    def test_a_move_cut_short_before_its_index_commit_is_finished_at_the_next_start(self):
        return self.check_crash("before commit", self.crash_on_call(durable, "sync_directories", 1))

    def test_a_move_cut_short_after_its_index_commit_is_finished_at_the_next_start(self):
        return self.check_crash("after commit", self.crash_on_call(durable, "unlink", 2))

    def test_a_move_cut_short_before_its_record_is_deleted_is_finished_at_the_next_start(self):
        return self.check_crash("before forget", self.crash_on_call(intent, "forget", 1))

    @inlineCallbacks
    def test_a_move_cut_short_with_its_index_lost_too_leaves_each_message_once(self):
        yield self.deliver(self.COUNT)
        inbox = yield self.folder()
        archive = yield self.folder("Archive")
        self.crash_on_call(durable, "link", 2)()
        yield self.assertFailure(inbox.moveTo(range(1, self.COUNT + 1), archive), _Crash)
        index.reset_connections()
        for suffix in ("", "-wal", "-shm"):
            path = Path(str(self.mailbox_dir / index.INDEX_NAME) + suffix)
            if path.exists():
                path.unlink()
        self.restart()
        archive_after = yield self.contents("Archive")
        self.assertEqual((yield self.contents("INBOX")), {})
        self.assertEqual(len(archive_after), self.COUNT)
