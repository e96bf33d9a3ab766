"""
A mailbox's usage total (L{mailapp.store.usage}): kept by triggers in the
same transaction as every message row, so it stays what a count of the
rows says, and what the message files add up to, across every change the
store makes, what other tools change, a rebuild, a lost WAL tail and a
crash in the middle of a change.

Each test ends in L{UsageTestCase.assertUsageRight}: the total the quota
reads, a count of the index's rows, and the wire sizes of the files on disk
all agree, after the next start too.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from mailapp import logevents
from mailapp.store import MaildirStore, connections, durable, expunged, index, usage
from mailapp.store.names import folder_directory, mailbox_directory
from mailapp.store.records import Usage
from tests.index_faults import damage_messages_page, lose_wal

ALICE = "alice@example.test"


def message(number: int, size: int = 0) -> bytes:
    return b"Subject: message %d\r\n\r\nbody %d\r\n" % (number, number) + b"x" * size + b"\r\n"


def uid_of(name: str) -> int | None:
    parsed = index.parse_filename(name)
    return parsed.uid if parsed is not None else None


class _Crash(BaseException):
    """The process dies here: no undo code runs."""


class UsageTestCase(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "mail"
        self.store = MaildirStore(self.root, reactor=reactor)
        self.mailbox_dir = mailbox_directory(self.root, ALICE)
        self.addCleanup(index.reset_connections)

    def restart(self) -> MaildirStore:
        index.reset_connections()
        self.store = MaildirStore(self.root, reactor=reactor)
        return self.store

    @inlineCallbacks
    def deliver(self, count: int, size: int = 0, start: int = 1) -> Any:
        for number in range(start, start + count):
            writer = self.store.newMessage()
            yield writer.write(message(number, size))
            yield writer.finish()
            yield self.store.deliver(writer, [ALICE])

    def folder(self, name: str = "INBOX") -> Any:
        return self.store.mailbox(ALICE).folder(name)

    def files_usage(self) -> Usage:
        """What the message files of every folder add up to, in wire sizes."""
        count = total = 0
        folders = [self.mailbox_dir] + [p for p in self.mailbox_dir.iterdir() if p.name.startswith(".") and p.is_dir()]
        for directory in folders:
            for sub in ("new", "cur"):
                for name in os.listdir(directory / sub):
                    parsed = index.parse_filename(name)
                    assert parsed is not None and parsed.wire_size is not None, name
                    count += 1
                    total += parsed.wire_size
        return Usage(count, total)

    def kept_and_counted(self) -> tuple[Usage, Usage]:
        with connections.connection(self.mailbox_dir) as conn:
            return usage.usage(conn), usage.count_usage(conn)

    @inlineCallbacks
    def assertUsageRight(self, expected_messages: int | None = None) -> Any:
        """The total, a count of the rows and the files agree, now and after the next start."""
        for _ in ("now", "after a restart"):
            kept, counted = self.kept_and_counted()
            self.assertEqual(kept, counted)
            self.assertEqual(kept, self.files_usage())
            self.assertEqual((yield self.store.mailbox(ALICE).usage()), kept)
            if expected_messages is not None:
                self.assertEqual(kept.messages, expected_messages)
            self.restart()


class UsageAcrossChangesTests(UsageTestCase):
    @inlineCallbacks
    def test_each_delivery_and_append_adds_its_wire_size(self):
        yield self.deliver(3)
        inbox = yield self.folder()
        yield inbox.append(b"Subject: appended\n\nLF only\n", ["\\Seen"])
        kept, _ = self.kept_and_counted()
        self.assertEqual(kept.bytes, sum(info.size for info in (yield inbox.messages())))
        yield self.assertUsageRight(4)

    @inlineCallbacks
    def test_a_copy_adds_a_move_keeps_and_an_expunge_frees(self):
        yield self.deliver(4, size=100)
        inbox = yield self.folder()
        archive = yield self.folder("Archive")
        before, _ = self.kept_and_counted()
        yield inbox.copyTo([1, 2], archive)
        after_copy, _ = self.kept_and_counted()
        self.assertEqual(after_copy.messages, before.messages + 2)
        yield inbox.moveTo([3], archive)
        self.assertEqual(self.kept_and_counted()[0], after_copy)
        yield inbox.expunge([1, 4])
        yield self.assertUsageRight(4)

    @inlineCallbacks
    def test_flag_changes_leave_it_alone_and_a_deleted_folder_frees_what_it_held(self):
        yield self.deliver(3)
        inbox = yield self.folder()
        yield self.store.mailbox(ALICE).createFolder("Work")
        work = yield self.folder("Work")
        yield inbox.copyTo([1, 2, 3], work)
        yield inbox.setFlags([1, 2], ["\\Seen", "$Important"], "add")
        yield self.store.mailbox(ALICE).renameFolder("Work", "Old")
        yield self.store.mailbox(ALICE).deleteFolder("Old")
        yield self.assertUsageRight(3)


class UsageAcrossOutsideChangesTests(UsageTestCase):
    @inlineCallbacks
    def test_a_file_dropped_into_cur_and_one_removed_by_another_tool_are_counted_at_the_refresh(self):
        yield self.deliver(3, size=50)
        inbox = yield self.folder()
        yield inbox.refresh()
        dropped = self.mailbox_dir / "cur" / "1700000000.outside.host:2,S"
        dropped.write_bytes(b"Subject: from procmail\n\n" + b"y" * 300 + b"\n")
        [victim] = [name for name in os.listdir(self.mailbox_dir / "new") if uid_of(name) == 2]
        os.unlink(self.mailbox_dir / "new" / victim)
        yield inbox.refresh()
        yield self.assertUsageRight(3)

    @inlineCallbacks
    def test_files_changed_while_no_server_ran_are_counted_at_the_next_start(self):
        yield self.deliver(3)
        index.reset_connections()
        (self.mailbox_dir / "new" / "1700000001.outside.host").write_bytes(b"Subject: while down\n\nhello\n")
        [victim] = [name for name in os.listdir(self.mailbox_dir / "new") if uid_of(name) == 1]
        os.unlink(self.mailbox_dir / "new" / victim)
        archive = folder_directory(self.mailbox_dir, "Archive")
        shutil.rmtree(archive)
        self.restart()
        yield self.assertUsageRight(3)


class UsageAcrossDamageAndCrashesTests(UsageTestCase):
    def index_path(self) -> Path:
        return self.mailbox_dir / index.INDEX_NAME

    @inlineCallbacks
    def test_an_index_rebuilt_after_damage_counts_every_message(self):
        yield self.deliver(30, size=200)
        index.reset_connections()
        damage_messages_page(self.index_path())
        self.restart()
        yield self.assertUsageRight(30)
        self.assertTrue(any(".damaged-" in p.name for p in self.mailbox_dir.iterdir()))

    @inlineCallbacks
    def test_a_lost_wal_tail_loses_the_total_with_its_rows_and_the_reconcile_counts_them_again(self):
        yield self.deliver(2)
        index.reset_connections()
        old = self.index_path().read_bytes()
        yield self.deliver(3, start=3)
        inbox = yield self.folder()
        yield inbox.expunge([1])
        index.reset_connections()
        self.index_path().write_bytes(old)
        lose_wal(self.index_path())
        self.restart()
        yield self.assertUsageRight(4)

    @inlineCallbacks
    def test_an_expunge_cut_short_while_its_files_go_into_the_hold_is_counted_as_the_files_say(self):
        yield self.deliver(4)
        inbox = yield self.folder()
        real = expunged.hold  # moving each file out of the Maildir, just before the commit

        def crashing(*args: Any, **options: Any) -> Any:
            if calls:
                raise _Crash("hold")
            calls.append(args)
            return real(*args, **options)

        calls: list[Any] = []

        self.patch(expunged, "hold", crashing)
        yield self.assertFailure(inbox.expunge([1, 2]), _Crash)
        self.patch(expunged, "hold", real)
        self.restart()
        yield self.assertUsageRight()

    @inlineCallbacks
    def test_a_move_cut_short_halfway_through_its_links_is_counted_once_at_the_next_start(self):
        yield self.deliver(6)
        inbox = yield self.folder()
        archive = yield self.folder("Archive")
        real = durable.link
        calls: list[Any] = []

        def crashing(*args: Any) -> Any:
            calls.append(args)
            if len(calls) == 3:
                raise _Crash("link")
            return real(*args)

        self.patch(durable, "link", crashing)
        yield self.assertFailure(inbox.moveTo(range(1, 7), archive), _Crash)
        self.patch(durable, "link", real)
        self.restart()
        yield self.assertUsageRight(6)


class UsageTableTests(UsageTestCase):
    @inlineCallbacks
    def test_a_version_1_index_is_migrated_with_its_usage_counted_once(self):
        yield self.deliver(5, size=10)
        index.reset_connections()
        conn = sqlite3.connect(self.index_path())
        try:
            for trigger in ("usage_after_insert", "usage_after_delete", "usage_after_size_change"):
                conn.execute(f"DROP TRIGGER {trigger}")
            conn.execute("DROP TABLE usage")
            conn.execute("PRAGMA user_version = 1")
            conn.commit()
        finally:
            conn.close()
        self.restart()
        yield self.assertUsageRight(5)
        conn = sqlite3.connect(self.index_path())
        try:
            self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], index.SCHEMA_VERSION)
        finally:
            conn.close()

    @inlineCallbacks
    def test_a_total_that_disagrees_with_the_rows_is_recounted_at_the_first_open_and_logged(self):
        yield self.deliver(4)
        index.reset_connections()
        conn = sqlite3.connect(self.index_path())
        try:
            conn.execute("UPDATE usage SET messages = 99, bytes = 1")
            conn.commit()
        finally:
            conn.close()
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.restart()
        self.assertEqual((yield self.store.mailbox(ALICE).usage()).messages, 4)
        self.assertEqual([e["counted"].messages for e in events if e.get("log_event") == logevents.INDEX_USAGE_RECOUNTED], [4])
        yield self.assertUsageRight(4)

    def index_path(self) -> Path:
        return self.mailbox_dir / index.INDEX_NAME

    def test_the_quota_reads_the_total_by_primary_key_not_by_a_pass_over_the_messages(self):
        with connections.connection(self.mailbox_dir) as conn:
            plan = " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN SELECT messages, bytes FROM usage WHERE id = 0"))
        self.assertIn("SEARCH usage USING INTEGER PRIMARY KEY", plan)
