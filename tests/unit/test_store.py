"""The Maildir store: delivery, folders, flags, expunge, UIDs, durability, rebuild, names."""

from __future__ import annotations

import dataclasses

import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from mailapp.errors import BadFolderName, FolderExists, MailboxGone, NoSuchFolder, NoSuchMessage, StoreError
from mailapp.records import FolderStatus
from mailapp.interfaces import IEventBus, IFolder, IFreeSpace, IMailbox, IMessageStore, IMessageWriter
from mailapp.store import MaildirStore, durable, ensure_mailbox, index, messagefile, retire_mailbox
from mailapp.store.names import mailbox_directory
from tests.index_faults import damage_messages_page, lose_wal

ALICE = "alice@example.test"
BOB = "bob@example.test"
MESSAGE = b"Subject: hello\r\n\r\nbody line\r\n"


class StoreTestCase(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "mail"
        self.store = MaildirStore(self.root, reactor=reactor)
        self.events: list = []

    def restart(self) -> MaildirStore:
        """A new store over the same directory, with no connection reused: a server restart."""
        index.reset_connections()
        self.store = MaildirStore(self.root, reactor=reactor)
        return self.store

    @inlineCallbacks
    def receive(self, data: bytes = MESSAGE):
        writer = self.store.newMessage()
        yield writer.write(data)
        yield writer.finish()
        return writer

    @inlineCallbacks
    def deliver(self, accounts, data: bytes = MESSAGE):
        writer = yield self.receive(data)
        uids = yield self.store.deliver(writer, accounts)
        return uids

    @inlineCallbacks
    def read(self, account: str, uid: int, folder: str = "INBOX") -> bytes:
        f = yield self.store.mailbox(account).folder(folder)
        handle = yield f.openMessage(uid)
        with handle:
            return handle.read()


class DeliveryTests(StoreTestCase):
    @inlineCallbacks
    def test_store_mailbox_folder_and_writer_provide_their_interfaces(self):
        verifyObject(IMessageStore, self.store)
        verifyObject(IEventBus, self.store.events)
        verifyObject(IFreeSpace, self.store.freeSpace)
        self.assertEqual(self.store.freeSpace.path, self.store.root)
        verifyObject(IMessageWriter, self.store.newMessage())
        mailbox = self.store.mailbox(ALICE)
        verifyObject(IMailbox, mailbox)
        verifyObject(IFolder, (yield mailbox.folder("INBOX")))

    @inlineCallbacks
    def test_delivered_message_is_stored_byte_for_byte_with_uid_1(self):
        uids = yield self.deliver([ALICE])
        self.assertEqual(uids, {ALICE: 1})
        self.assertEqual((yield self.read(ALICE, 1)), MESSAGE)

    @inlineCallbacks
    def test_several_recipients_share_one_file_through_hard_links(self):
        yield self.deliver([ALICE, BOB, "ALICE@example.test"])
        a = list((mailbox_directory(self.root, ALICE) / "new").iterdir())
        b = list((mailbox_directory(self.root, BOB) / "new").iterdir())
        self.assertEqual((len(a), len(b)), (1, 1))
        self.assertEqual(a[0].stat().st_ino, b[0].stat().st_ino)
        self.assertEqual(a[0].stat().st_nlink, 2)
        self.assertEqual(list(self.store.spool_dir.iterdir()), [])

    @inlineCallbacks
    def test_delivery_publishes_added_event_for_each_folder(self):
        self.store.events.subscribe(ALICE, "INBOX", self.events.append)
        yield self.deliver([ALICE, BOB])
        self.assertEqual([(e.kind, e.account, e.folder, e.uids) for e in self.events], [("added", ALICE, "INBOX", (1,))])

    @inlineCallbacks
    def test_first_use_creates_inbox_and_special_folders(self):
        folders = yield self.store.mailbox(ALICE).listFolders()
        self.assertEqual([f.name for f in folders], ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"])
        self.assertEqual({f.name: f.special_use for f in folders}["Sent"], "\\Sent")
        self.assertTrue((mailbox_directory(self.root, ALICE) / ".Sent" / "cur").is_dir())

    @inlineCallbacks
    def test_concurrent_deliveries_get_distinct_uids_and_share_batches(self):
        batches_before = self.store.committer.batches
        writers = yield gatherResults([self.receive(MESSAGE + str(i).encode()) for i in range(40)])
        results = yield gatherResults([self.store.deliver(w, [ALICE]) for w in writers])
        self.assertEqual(sorted(r[ALICE] for r in results), list(range(1, 41)))
        self.assertLess(self.store.committer.batches - batches_before, 40)
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        self.assertEqual(len((yield folder.messages())), 40)

    @inlineCallbacks
    def test_large_message_streams_through_small_writes(self):
        writer = self.store.newMessage()
        chunk = bytes(range(256)) * 64
        for _ in range(40):
            yield writer.write(chunk)
        yield writer.finish()
        yield self.store.deliver(writer, [ALICE])
        self.assertEqual((yield self.read(ALICE, 1)), chunk * 40)


class DurabilityTests(StoreTestCase):
    @inlineCallbacks
    def spy_on_a_delivery(self, batch_sync: bool) -> list[str]:
        """Record the durability steps of one delivery, and whether the index shows the message at each."""
        self.store = MaildirStore(self.root, reactor=reactor, batch_sync=batch_sync)
        calls: list[str] = []
        inbox_new = mailbox_directory(self.root, ALICE) / "new"
        index_path = mailbox_directory(self.root, ALICE) / index.INDEX_NAME

        def visible() -> int:
            conn = sqlite3.connect(index_path)
            try:
                return conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            finally:
                conn.close()

        real = {name: getattr(durable, name) for name in ("fsync_file", "link", "fsync_directory", "_syncfs")}

        def fsync_file(fd):
            calls.append("fsync file")
            real["fsync_file"](fd)

        def link(source, target):
            calls.append(f"link into {target.parent.name}, visible={visible()}")
            real["link"](source, target)

        def fsync_directory(path):
            if path == inbox_new:
                calls.append(f"fsync new/, visible={visible()}")
            real["fsync_directory"](path)

        def syncfs(fd):
            calls.append(f"syncfs, visible={visible()}")
            return real["_syncfs"](fd)

        self.patch(durable, "fsync_file", fsync_file)
        self.patch(durable, "link", link)
        self.patch(durable, "fsync_directory", fsync_directory)
        if real["_syncfs"] is not None:
            self.patch(durable, "_syncfs", syncfs)
        yield self.store.mailbox(ALICE).listFolders()
        calls.clear()
        yield self.deliver([ALICE])
        self.assertEqual(visible(), 1)
        return calls

    @inlineCallbacks
    def test_per_file_fsync_then_link_then_directory_fsync_then_index_visible(self):
        calls = yield self.spy_on_a_delivery(batch_sync=False)
        self.assertEqual(calls, ["fsync file", "link into new, visible=0", "fsync new/, visible=0"])

    @inlineCallbacks
    def test_batch_sync_makes_data_durable_before_link_and_link_before_index(self):
        if not durable.has_syncfs():
            raise SkipTest("syncfs(2) is not available here")
        calls = yield self.spy_on_a_delivery(batch_sync=True)
        self.assertEqual(calls, ["syncfs, visible=0", "link into new, visible=0", "syncfs, visible=0"])

    @inlineCallbacks
    def test_failure_to_link_one_copy_delivers_no_copy(self):
        yield self.store.mailbox(ALICE).listFolders()
        real_link = durable.link
        bob_dir = mailbox_directory(self.root, BOB)

        def link(source, target):
            if bob_dir in target.parents:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_link(source, target)

        self.patch(durable, "link", link)
        writer = yield self.receive()
        yield self.assertFailure(self.store.deliver(writer, [ALICE, BOB]), StoreError)
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        self.assertEqual((yield folder.messages()), [])
        self.assertEqual(list((mailbox_directory(self.root, ALICE) / "new").iterdir()), [])
        self.assertEqual(list(self.store.spool_dir.iterdir()), [])

    @inlineCallbacks
    def test_disk_full_while_spooling_is_reported_at_finish(self):
        def write_all(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(durable, "write_all", write_all)
        writer = self.store.newMessage()
        yield writer.write(b"x" * (writer.FLUSH_AT + 1))
        yield self.assertFailure(writer.finish(), StoreError)
        yield writer.discard()
        self.assertEqual(list(self.store.spool_dir.iterdir()), [])

    @inlineCallbacks
    def test_crash_mid_receive_leaves_nothing_visible_and_is_cleaned(self):
        writer = self.store.newMessage()
        writer.write(b"x" * (writer.FLUSH_AT + 10))  # on its way to the spool, never finished
        for _ in range(200):
            if writer.path.exists() and writer._unwritten == 0:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(writer.path.exists())
        store = self.restart()
        removed = yield store.cleanup(max_age=0)
        self.assertEqual(removed, 1)
        folder = yield store.mailbox(ALICE).folder("INBOX")
        self.assertEqual((yield folder.messages()), [])


class FolderTests(StoreTestCase):
    @inlineCallbacks
    def test_flags_are_kept_in_index_and_maildir_file_name(self):
        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        self.store.events.subscribe(ALICE, "INBOX", self.events.append)
        result = yield folder.setFlags([1, 99], ["\\Seen", "\\Flagged", "$Label1"], "add")
        self.assertEqual(result, {1: frozenset({"\\Seen", "\\Flagged", "$Label1"})})
        [name] = os.listdir(mailbox_directory(self.root, ALICE) / "cur")
        # The keyword is letter a, as Dovecot writes it (dovecot-keywords says which).
        self.assertTrue(name.endswith(":2,FSa"), name)
        self.assertEqual(index.read_keywords(mailbox_directory(self.root, ALICE)), {"a": "$Label1"})
        result = yield folder.setFlags([1], ["\\Flagged"], "remove")
        self.assertEqual(result[1], frozenset({"\\Seen", "$Label1"}))
        [info] = yield folder.messages()
        self.assertEqual(info.flags, frozenset({"\\Seen", "$Label1"}))
        self.assertEqual(info.size, len(MESSAGE))
        status = yield folder.status()
        self.assertEqual((status.messages, status.unseen, status.uidnext), (1, 0, 2))
        self.assertEqual([e.kind for e in self.events], ["flags_changed", "flags_changed"])
        self.assertEqual((yield self.read(ALICE, 1)), MESSAGE)

    @inlineCallbacks
    def test_a_copy_names_its_keywords_in_the_target_folder_so_a_rebuild_finds_them(self):
        yield self.deliver([ALICE])
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Projects")
        inbox = yield mailbox.folder("INBOX")
        yield inbox.setFlags([1], ["\\Seen", "$Label1"], "add")
        archive = yield mailbox.folder("Projects")
        yield inbox.copyTo([1], archive)
        archive_dir = mailbox_directory(self.root, ALICE) / ".Projects"
        [name] = os.listdir(archive_dir / "cur")
        self.assertTrue(name.endswith(":2,Sa"), name)
        self.assertEqual(index.read_keywords(archive_dir), {"a": "$Label1"})

    @inlineCallbacks
    def test_expunged_uids_are_never_reused_even_after_index_rebuild(self):
        yield self.deliver([ALICE])
        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        self.assertEqual((yield folder.expunge([2, 7])), [2])
        (mailbox_directory(self.root, ALICE) / index.INDEX_NAME).unlink()
        store = self.restart()
        uids = yield self.deliver([ALICE])
        self.assertEqual(uids, {ALICE: 3})
        folder = yield store.mailbox(ALICE).folder("INBOX")
        self.assertEqual([m.uid for m in (yield folder.messages())], [1, 3])

    @inlineCallbacks
    def test_expunges_with_no_delivery_between_them_pay_no_further_durable_metadata_write(self):
        from unittest import mock

        from mailapp.store import folders

        for _ in range(3):
            yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        with mock.patch.object(folders, "write_meta", wraps=folders.write_meta) as written:
            for uid in (1, 2, 3):
                yield folder.expunge([uid])
        self.assertEqual(written.call_count, 1)

    @inlineCallbacks
    def test_expunge_deleted_removes_exactly_the_messages_flagged_deleted_now(self):
        for _ in range(4):
            yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        yield folder.setFlags([1, 3], ["\\Deleted"], "add")
        yield folder.setFlags([2], ["$Deleted", "\\Seen"], "add")  # a keyword that merely looks alike
        done = yield folder.expungeDeleted()
        self.assertEqual(done.uids, [1, 3])
        self.assertEqual(done.highestmodseq, (yield folder.highestModseq()))
        self.assertEqual([m.uid for m in (yield folder.messages())], [2, 4])

    @inlineCallbacks
    def test_expunge_deleted_keeps_to_the_uids_it_is_given(self):
        for _ in range(3):
            yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        yield folder.setFlags([1, 2, 3], ["\\Deleted"], "add")
        self.assertEqual((yield folder.expungeDeleted(lambda uid: uid >= 2)).uids, [2, 3])
        self.assertEqual([m.uid for m in (yield folder.messages())], [1])

    @inlineCallbacks
    def test_expunge_deleted_with_nothing_flagged_writes_no_metadata(self):
        from unittest import mock

        from mailapp.store import folders

        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        with mock.patch.object(folders, "write_meta", wraps=folders.write_meta) as written:
            self.assertEqual((yield folder.expungeDeleted()).uids, [])
        self.assertEqual(written.call_count, 0)
        self.assertEqual(len((yield folder.messages())), 1)

    @inlineCallbacks
    def test_status_counts_recent_size_and_deleted_in_one_read(self):
        for _ in range(3):
            yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        yield folder.setFlags([2], ["\\Deleted", "\\Seen"], "add")
        yield folder.claimRecent(1)
        status = yield folder.status()
        sizes = sum(m.size for m in (yield folder.messages()))
        self.assertEqual(
            (status.messages, status.unseen, status.recent, status.size, status.deleted), (3, 2, 2, sizes, 1)
        )
        empty = yield (yield self.store.mailbox(ALICE).folder("Trash")).status()
        self.assertEqual((empty.messages, empty.recent, empty.size, empty.deleted), (0, 0, 0, 0))

    @inlineCallbacks
    def test_uids_and_uidvalidity_persist_across_restart(self):
        yield self.deliver([ALICE])
        before = yield (yield self.store.mailbox(ALICE).folder("INBOX")).status()
        store = self.restart()
        after = yield (yield store.mailbox(ALICE).folder("INBOX")).status()
        self.assertEqual((before.uidvalidity, before.uidnext), (after.uidvalidity, after.uidnext))

    @inlineCallbacks
    def test_deleted_index_is_rebuilt_keeping_uids_flags_and_uidvalidity(self):
        yield self.deliver([ALICE])
        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        yield folder.setFlags([2], ["\\Seen"], "add")
        before = yield folder.status()
        (mailbox_directory(self.root, ALICE) / index.INDEX_NAME).unlink()
        store = self.restart()
        folder = yield store.mailbox(ALICE).folder("INBOX")
        after = yield folder.status()
        self.assertEqual((after.uidvalidity, after.uidnext, after.messages), (before.uidvalidity, 3, 2))
        self.assertEqual([(m.uid, m.flags) for m in (yield folder.messages())], [(1, frozenset()), (2, frozenset({"\\Seen"}))])

    @inlineCallbacks
    def test_corrupt_index_is_moved_aside_and_rebuilt(self):
        yield self.deliver([ALICE])
        path = mailbox_directory(self.root, ALICE) / index.INDEX_NAME
        index.reset_connections()
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        path.write_bytes(b"this is not a database" * 100)
        store = self.restart()
        folder = yield store.mailbox(ALICE).folder("INBOX")
        self.assertEqual([m.uid for m in (yield folder.messages())], [1])
        self.assertTrue(any(p.name.startswith(index.INDEX_NAME + ".damaged-") for p in path.parent.iterdir()))

    @inlineCallbacks
    def test_index_rebuild_without_folder_metadata_starts_a_new_uidvalidity(self):
        yield self.deliver([ALICE])
        mailbox_dir = mailbox_directory(self.root, ALICE)
        before = yield (yield self.store.mailbox(ALICE).folder("INBOX")).status()
        (mailbox_dir / index.INDEX_NAME).unlink()
        (mailbox_dir / index.META_NAME).unlink()
        store = self.restart()
        folder = yield store.mailbox(ALICE).folder("INBOX")
        after = yield folder.status()
        self.assertNotEqual(after.uidvalidity, before.uidvalidity)
        self.assertEqual(after.messages, 1)

    @inlineCallbacks
    def test_message_dropped_in_by_another_tool_gets_a_fresh_uid_on_rebuild(self):
        yield self.deliver([ALICE])
        mailbox_dir = mailbox_directory(self.root, ALICE)
        (mailbox_dir / "new" / "1700000000.M1P1.otherhost").write_bytes(b"Subject: other\r\n\r\nx\r\n")
        (mailbox_dir / index.INDEX_NAME).unlink()
        store = self.restart()
        folder = yield store.mailbox(ALICE).folder("INBOX")
        self.assertEqual([m.uid for m in (yield folder.messages())], [1, 2])
        self.assertEqual((yield self.read(ALICE, 2)), b"Subject: other\r\n\r\nx\r\n")

    @inlineCallbacks
    def test_create_rename_and_delete_folders(self):
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Projects/2026/Q4")
        names = [f.name for f in (yield mailbox.listFolders())]
        self.assertIn("Projects", names)
        self.assertIn("Projects/2026", names)
        yield self.assertFailure(mailbox.createFolder("Projects/2026/Q4"), FolderExists)
        yield mailbox.renameFolder("Projects", "Work")
        names = [f.name for f in (yield mailbox.listFolders())]
        self.assertIn("Work/2026/Q4", names)
        self.assertNotIn("Projects", names)
        yield mailbox.deleteFolder("Work/2026/Q4")
        yield self.assertFailure(mailbox.folder("Work/2026/Q4"), NoSuchFolder)
        yield self.assertFailure(mailbox.deleteFolder("inbox"), BadFolderName)

    @inlineCallbacks
    def test_append_keeps_flags_and_internal_date_and_copy_keeps_flags(self):
        mailbox = self.store.mailbox(ALICE)
        sent = yield mailbox.folder("Sent")
        uid = yield sent.append(MESSAGE, ["\\Seen"], internaldate=1_700_000_000.0)
        [info] = yield sent.messages()
        self.assertEqual((info.uid, info.flags, info.internaldate), (uid, frozenset({"\\Seen"}), 1_700_000_000.0))
        archive = yield mailbox.folder("Archive")
        mapping = yield sent.copyTo([uid], archive)
        self.assertEqual(mapping, {uid: 1})
        [copied] = yield archive.messages()
        self.assertEqual(copied.flags, frozenset({"\\Seen"}))
        self.assertEqual((yield self.read(ALICE, 1, "Archive")), MESSAGE)


class NameTests(StoreTestCase):
    @inlineCallbacks
    def test_folder_names_that_try_to_escape_are_refused(self):
        mailbox = self.store.mailbox(ALICE)
        for name in ["..", "../x", "a/../../b", "a//b", "", "/abs", "a\x00b", "x\r\ny", ".", "a/./b"]:
            yield self.assertFailure(mailbox.createFolder(name), BadFolderName)

    @inlineCallbacks
    def test_folder_names_with_dots_and_slashes_stay_inside_the_mailbox(self):
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder(".hidden/..x/ü")
        mailbox_dir = mailbox_directory(self.root, ALICE)
        for path in mailbox_dir.iterdir():
            self.assertEqual(path.parent, mailbox_dir)
        names = [f.name for f in (yield mailbox.listFolders())]
        self.assertIn(".hidden/..x/ü", names)

    def test_account_names_cannot_reach_outside_the_store(self):
        for account in ["../../etc@example.test", "a/b@example.test", "x@../..", ".@.", "..@x"]:
            try:
                path = mailbox_directory(self.root, account)
            except ValueError:
                continue
            self.assertEqual(path.parent.parent, self.root, account)
            self.assertNotIn("..", path.relative_to(self.root).parts)

    def test_ensure_mailbox_creates_the_maildir_without_a_reactor(self):
        path = ensure_mailbox(self.root.parent, ALICE)
        self.assertTrue((path / "new").is_dir())
        self.assertTrue((path / ".Trash" / "maildirfolder").exists())


class ReconcileTests(StoreTestCase):
    """After a crash the index may lag the Maildir; the first open in a new process repairs it."""

    @inlineCallbacks
    def test_message_whose_index_commit_was_lost_reappears_with_its_uid(self):
        yield self.deliver([ALICE])
        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        yield folder.setFlags([1], ["$Important"], "add")
        index_path = mailbox_directory(self.root, ALICE) / index.INDEX_NAME
        # Simulate a lost commit: the row for UID 2 vanishes and UIDNEXT goes back.
        conn = sqlite3.connect(index_path)
        conn.execute("DELETE FROM messages WHERE uid = 2")
        conn.execute("UPDATE folders SET uidnext = 2 WHERE name = 'INBOX'")
        conn.commit()
        conn.close()
        store = self.restart()
        folder = yield store.mailbox(ALICE).folder("INBOX")
        self.assertEqual([(m.uid, m.flags) for m in (yield folder.messages())], [(1, frozenset({"$Important"})), (2, frozenset())])
        self.assertEqual((yield folder.status()).uidnext, 3)
        self.assertEqual((yield self.deliver([ALICE]))[ALICE], 3)

    @inlineCallbacks
    def test_file_removed_by_another_tool_leaves_the_index_on_next_start(self):
        yield self.deliver([ALICE])
        [name] = os.listdir(mailbox_directory(self.root, ALICE) / "new")
        os.unlink(mailbox_directory(self.root, ALICE) / "new" / name)
        store = self.restart()
        folder = yield store.mailbox(ALICE).folder("INBOX")
        self.assertEqual((yield folder.messages()), [])


class IndexDamageTests(StoreTestCase):
    """A damaged index, found at first open or at run time, is moved aside and rebuilt from the Maildir."""

    @inlineCallbacks
    def fill(self, count: int = 120):
        """C{count} messages in INBOX, some with flags and keywords; returns INBOX's status and messages."""
        for _ in range(count):
            yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        yield folder.setFlags([1, 2], ["\\Seen"], "add")
        yield folder.setFlags([2, 3], ["$Important", "Work"], "add")
        status = yield folder.status()
        messages = yield folder.messages()
        return status, [(m.uid, m.flags) for m in messages]

    def index_path(self) -> Path:
        return mailbox_directory(self.root, ALICE) / index.INDEX_NAME

    def set_aside(self) -> list[str]:
        names = (p.name for p in self.index_path().parent.iterdir())
        return sorted(n for n in names if ".damaged-" in n and not n.endswith(("-wal", "-shm")))

    @inlineCallbacks
    def test_a_damaged_messages_page_is_found_at_first_open_and_rebuilt_keeping_uids_flags_keywords_and_uidvalidity(self):
        status, messages = yield self.fill()
        index.reset_connections()
        damage_messages_page(self.index_path())
        store = self.restart()
        folder = yield store.mailbox(ALICE).folder("INBOX")
        after = yield folder.status()
        self.assertEqual((after.uidvalidity, after.uidnext, after.messages, after.unseen), (status.uidvalidity, 121, 120, 118))
        self.assertEqual([(m.uid, m.flags) for m in (yield folder.messages())], messages)
        self.assertEqual((yield self.deliver([ALICE])), {ALICE: 121})
        [aside] = self.set_aside()
        self.assertTrue(aside.startswith(index.INDEX_NAME + ".damaged-"), aside)

    @inlineCallbacks
    def test_damage_met_at_run_time_is_rebuilt_and_the_read_answered(self):
        status, messages = yield self.fill()
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        index.close_idle_connections(mailbox_directory(self.root, ALICE))
        damage_messages_page(self.index_path())
        self.assertEqual([(m.uid, m.flags) for m in (yield folder.messages())], messages)
        self.assertEqual(len(self.set_aside()), 1)
        rebuilt = yield folder.status()
        # A rebuild starts the mod-sequences above any handed out before (mailapp.store.modseq).
        self.assertEqual(dataclasses.replace(rebuilt, highestmodseq=status.highestmodseq), status)
        self.assertGreater(rebuilt.highestmodseq, status.highestmodseq)
        self.assertEqual((yield self.deliver([ALICE])), {ALICE: 121})

    @inlineCallbacks
    def test_a_delivery_that_meets_damage_at_run_time_fails_temporarily_and_the_next_is_stored(self):
        yield self.fill(60)
        index.close_idle_connections(mailbox_directory(self.root, ALICE))
        damage_messages_page(self.index_path())
        yield self.assertFailure(self.deliver([ALICE]), StoreError)
        self.assertEqual(len(self.set_aside()), 1)
        # UID 61 was never shown to anyone (no 250, no file, no row): it is free.
        self.assertEqual((yield self.deliver([ALICE])), {ALICE: 61})
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        self.assertEqual([m.uid for m in (yield folder.messages())], list(range(1, 62)))

    @inlineCallbacks
    def test_a_rebuild_waits_until_other_threads_give_their_connections_back(self):
        import threading

        _, messages = yield self.fill(60)
        mailbox_dir = mailbox_directory(self.root, ALICE)
        index.close_idle_connections(mailbox_dir)
        damage_messages_page(self.index_path())
        holding, release = threading.Event(), threading.Event()
        outcome: list[BaseException | None] = []

        def hold() -> None:
            with index.connection(mailbox_dir):
                holding.set()
                release.wait(10)

        def read() -> None:
            try:
                with index.connection(mailbox_dir) as conn:
                    conn.execute("SELECT * FROM messages").fetchall()
                outcome.append(None)
            except BaseException as e:
                outcome.append(e)

        holder = threading.Thread(target=hold)
        holder.start()
        self.assertTrue(holding.wait(10))
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(0.5)
        # The reader met the damage but must not move the index from under the holder.
        self.assertTrue(reader.is_alive())
        self.assertEqual(self.set_aside(), [])
        self.assertTrue(self.index_path().exists())
        release.set()
        holder.join(10)
        reader.join(10)
        [error] = outcome
        self.assertIsInstance(error, index.IndexRepaired)
        self.assertEqual(len(self.set_aside()), 1)
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        self.assertEqual([(m.uid, m.flags) for m in (yield folder.messages())], messages)

    def test_a_busy_index_is_not_taken_for_a_damaged_one(self):
        self.assertFalse(index.is_damage(sqlite3.OperationalError("database is locked")))
        self.assertTrue(index.is_damage(sqlite3.DatabaseError("database disk image is malformed")))


class LostIndexCommitsTests(StoreTestCase):
    """
    Index commits are not fsync'd: a power cut can lose the WAL's tail. The
    Maildir and the folder records are durable, so nothing they say is lost.
    """

    def index_path(self) -> Path:
        return mailbox_directory(self.root, ALICE) / index.INDEX_NAME

    @inlineCallbacks
    def lose_commits_since(self, work):
        """Run C{work}, then put the index back as it was before (what a lost WAL tail does)."""
        index.reset_connections()
        old = self.index_path().read_bytes()
        yield work()
        index.reset_connections()
        self.index_path().write_bytes(old)
        lose_wal(self.index_path())
        return self.restart()

    @inlineCallbacks
    def test_uids_expunged_after_the_last_checkpoint_are_never_given_out_again(self):
        for _ in range(3):
            yield self.deliver([ALICE])

        @inlineCallbacks
        def work():
            yield self.deliver([ALICE])
            yield self.deliver([ALICE])
            folder = yield self.store.mailbox(ALICE).folder("INBOX")
            yield folder.expunge([4, 5])

        store = yield self.lose_commits_since(work)
        folder = yield store.mailbox(ALICE).folder("INBOX")
        self.assertEqual((yield folder.status()).uidnext, 6)
        self.assertEqual((yield self.deliver([ALICE])), {ALICE: 6})

    @inlineCallbacks
    def test_a_folder_created_after_the_last_checkpoint_is_listed_with_its_messages(self):
        yield self.deliver([ALICE])
        mailbox = self.store.mailbox(ALICE)
        state = {}

        @inlineCallbacks
        def work():
            yield mailbox.createFolder("Projects/2026")
            projects = yield mailbox.folder("Projects/2026")
            for _ in range(5):
                yield projects.append(MESSAGE, ["$Done"])
            state["status"] = yield projects.status()

        store = yield self.lose_commits_since(work)
        names = [f.name for f in (yield store.mailbox(ALICE).listFolders())]
        self.assertIn("Projects", names)
        self.assertIn("Projects/2026", names)
        projects = yield store.mailbox(ALICE).folder("Projects/2026")
        self.assertEqual(_but_modseq((yield projects.status())), _but_modseq(state["status"]))
        self.assertEqual([(m.uid, m.flags) for m in (yield projects.messages())], [(u, frozenset({"$Done"})) for u in range(1, 6)])

    @inlineCallbacks
    def test_a_folder_deleted_after_the_last_checkpoint_stays_deleted(self):
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Old")

        @inlineCallbacks
        def work():
            yield mailbox.deleteFolder("Old")

        store = yield self.lose_commits_since(work)
        self.assertNotIn("Old", [f.name for f in (yield store.mailbox(ALICE).listFolders())])

    @inlineCallbacks
    def test_a_folder_deleted_and_created_again_after_the_last_checkpoint_shows_its_new_messages(self):
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Box")
        box = yield mailbox.folder("Box")
        for _ in range(3):
            yield box.append(MESSAGE)
        state = {}

        @inlineCallbacks
        def work():
            yield mailbox.deleteFolder("Box")
            yield mailbox.createFolder("Box")
            again = yield mailbox.folder("Box")
            yield again.append(MESSAGE, ["\\Seen"])
            state["status"] = yield again.status()

        store = yield self.lose_commits_since(work)
        box = yield store.mailbox(ALICE).folder("Box")
        self.assertEqual(_but_modseq((yield box.status())), _but_modseq(state["status"]))
        self.assertEqual([(m.uid, m.flags) for m in (yield box.messages())], [(1, frozenset({"\\Seen"}))])


class ConcurrentOpenTests(StoreTestCase):
    def test_threads_opening_a_new_mailbox_at_once_build_its_index_once(self):
        import threading

        mailbox_dir = mailbox_directory(self.root, ALICE)
        errors: list[BaseException] = []
        start = threading.Barrier(6)

        def open_it() -> None:
            try:
                start.wait()
                with index.connection(mailbox_dir) as conn:
                    conn.execute("SELECT count(*) FROM folders").fetchone()
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        self.assertEqual(errors, [])
        conn = sqlite3.connect(mailbox_dir / index.INDEX_NAME)
        try:
            rows = conn.execute("SELECT name, uidvalidity FROM folders ORDER BY name").fetchall()
        finally:
            conn.close()
        self.assertEqual([name for name, _ in rows], ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"])
        self.assertEqual(index.read_meta(mailbox_dir)["uidvalidity"], dict(rows)["INBOX"])


class ReadMessageTests(StoreTestCase):
    @inlineCallbacks
    def test_read_message_returns_small_messages_whole_and_none_for_big_ones(self):
        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        self.assertEqual((yield folder.readMessage(1, len(MESSAGE))), MESSAGE)
        self.assertIsNone((yield folder.readMessage(1, len(MESSAGE) - 1)))
        yield self.assertFailure(folder.readMessage(2, 100), NoSuchMessage)

    @inlineCallbacks
    def test_read_messages_returns_the_small_ones_as_read_message_does_and_leaves_out_the_big_and_the_unknown(self):
        yield self.deliver([ALICE])
        yield self.deliver([ALICE], b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n")
        yield self.deliver([ALICE], b"Subject: third\r\n\r\nthree\r\n")
        yield self.deliver([ALICE], b"Subject: fourth\r\n\r\nfour\r\n")
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        yield folder.expunge([4])
        found = yield folder.readMessages([1, 2, 3, 4, 99], 100)
        # 4 was expunged a moment ago: still read, as readMessage reads it (for the sessions that had it in view).
        self.assertEqual((yield folder.readMessage(4, 100)), b"Subject: fourth\r\n\r\nfour\r\n")
        self.assertEqual(
            found, {1: MESSAGE, 3: b"Subject: third\r\n\r\nthree\r\n", 4: b"Subject: fourth\r\n\r\nfour\r\n"}
        )
        self.assertEqual((yield folder.readMessages([], 100)), {})

    @inlineCallbacks
    def test_read_messages_finds_a_message_a_flag_change_renamed(self):
        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        # The index still names the file as it was: the rename is the store's own, after the index read.
        from mailapp.store import folder as folder_module

        original = folder_module.read_message_file
        calls = []

        def renamed_once(path, limit):
            calls.append(path)
            if len(calls) == 1:
                raise FileNotFoundError(path)
            return original(path, limit)

        self.patch(folder_module, "read_message_file", renamed_once)
        found = yield folder.readMessages([1], 1000)
        self.assertEqual(found, {1: MESSAGE})
        self.assertEqual(len(calls), 2)


class CopyTests(StoreTestCase):
    @inlineCallbacks
    def test_a_copy_finds_its_source_even_if_a_flag_change_renamed_it_meanwhile(self):
        from mailapp.store.committer import _Delivery, _Placement

        yield self.deliver([ALICE])
        mailbox = self.store.mailbox(ALICE)
        inbox = yield mailbox.folder("INBOX")
        [stale] = list((mailbox_directory(self.root, ALICE) / "new").iterdir())
        yield inbox.setFlags([1], ["\\Seen"], "add")  # renames new/X into cur/X:2,S
        self.assertFalse(stale.exists())
        job = _Delivery(
            stale, "base", len(MESSAGE), 0.0,
            [_Placement(mailbox_directory(self.root, ALICE), ALICE, "Archive")],
            owns_source=False, stored=(mailbox_directory(self.root, ALICE), "INBOX", 1),
        )
        uids = yield self.store.committer.submit(job)
        self.assertEqual(uids, [1])
        self.assertEqual((yield self.read(ALICE, 1, "Archive")), MESSAGE)

    @inlineCallbacks
    def test_copying_a_message_expunged_meanwhile_fails_cleanly(self):
        from mailapp.store.committer import _Delivery, _Placement

        yield self.deliver([ALICE])
        inbox = yield self.store.mailbox(ALICE).folder("INBOX")
        [path] = list((mailbox_directory(self.root, ALICE) / "new").iterdir())
        yield inbox.expunge([1])
        job = _Delivery(
            path, "base", len(MESSAGE), 0.0,
            [_Placement(mailbox_directory(self.root, ALICE), ALICE, "Archive")],
            owns_source=False, stored=(mailbox_directory(self.root, ALICE), "INBOX", 1),
        )
        yield self.assertFailure(self.store.committer.submit(job), NoSuchMessage)
        archive = yield self.store.mailbox(ALICE).folder("Archive")
        self.assertEqual((yield archive.messages()), [])


class BackPressureTests(StoreTestCase):
    @inlineCallbacks
    def test_a_writer_asks_to_wait_only_past_its_high_water_mark(self):
        writer = self.store.newMessage()
        chunk = b"y" * writer.FLUSH_AT
        ready = [writer.write(chunk) for _ in range(writer.HIGH_WATER // writer.FLUSH_AT)]
        self.assertTrue(all(d.called for d in ready), "up to the high-water mark nobody waits")
        waiting = writer.write(chunk)
        self.assertFalse(waiting.called, "past it the caller is asked to wait")
        yield waiting
        yield writer.finish()
        self.assertEqual(writer.path.stat().st_size, len(chunk) * (writer.HIGH_WATER // writer.FLUSH_AT + 1))
        yield writer.discard()


class RetiredMailboxTests(StoreTestCase):
    """
    The admin command deletes a user's mailbox while the server runs: the
    server may hold idle index connections and open sessions on it.
    """

    def state_dir(self) -> Path:
        return self.root.parent

    def add_in_another_process(self, account: str) -> None:
        """What 'mailapp user add' does, from its own process (this one's connections stay open)."""
        subprocess.run(
            [sys.executable, "-c", "import sys; from mailapp.store import ensure_mailbox; ensure_mailbox(sys.argv[1], sys.argv[2])",
             str(self.state_dir()), account],
            check=True,
            timeout=60,
        )

    @inlineCallbacks
    def test_a_new_account_at_a_retired_address_sees_an_empty_inbox(self):
        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        self.assertEqual(len((yield folder.messages())), 1)  # an idle connection to the old index now
        retire_mailbox(self.state_dir(), ALICE, keep=True)
        self.add_in_another_process(ALICE)
        fresh = yield self.store.mailbox(ALICE).folder("INBOX")
        self.assertEqual((yield fresh.messages()), [])
        self.assertEqual((yield fresh.status()).messages, 0)

    @inlineCallbacks
    def test_a_session_of_a_retired_account_can_neither_read_nor_write_the_new_one(self):
        yield self.deliver([ALICE])
        old_session = self.store.mailbox(ALICE)
        old_inbox = yield old_session.folder("INBOX")
        retire_mailbox(self.state_dir(), ALICE, keep=True)
        self.add_in_another_process(ALICE)
        yield self.deliver([ALICE], b"Subject: for the new alice\r\n\r\nnew\r\n")
        yield self.assertFailure(old_inbox.messages(), MailboxGone)
        yield self.assertFailure(old_inbox.append(b"Subject: stale\r\n\r\n"), MailboxGone)
        yield self.assertFailure(old_session.folder("INBOX"), MailboxGone)
        new_inbox = yield self.store.mailbox(ALICE).folder("INBOX")
        self.assertEqual([m.uid for m in (yield new_inbox.messages())], [1])
        self.assertEqual(len(list((mailbox_directory(self.root, ALICE) / "new").iterdir())), 1)

    @inlineCallbacks
    def test_a_session_of_a_retired_account_does_not_recreate_its_directory(self):
        yield self.deliver([ALICE])
        old_inbox = yield self.store.mailbox(ALICE).folder("INBOX")
        retire_mailbox(self.state_dir(), ALICE, keep=False)
        yield self.assertFailure(old_inbox.append(b"Subject: stale\r\n\r\n"), MailboxGone)
        yield self.assertFailure(old_inbox.status(), NoSuchFolder)  # how protocols see it
        self.assertFalse(mailbox_directory(self.root, ALICE).exists())

    @inlineCallbacks
    def test_a_kept_mailbox_is_moved_whole_under_deleted(self):
        yield self.deliver([ALICE])
        moved = retire_mailbox(self.state_dir(), ALICE, keep=True, now=0)
        self.assertEqual(moved, self.state_dir() / "deleted" / "example.test" / "alice.19700101T000000Z")
        self.assertEqual(len(list((moved / "new").iterdir())), 1)
        self.assertTrue((moved / index.INDEX_NAME).exists())
        again = ensure_mailbox(self.state_dir(), ALICE)
        self.assertEqual(retire_mailbox(self.state_dir(), ALICE, keep=True, now=0), moved.with_name(moved.name + ".1"))
        self.assertFalse(again.exists())

    def test_retiring_an_account_without_a_mailbox_does_nothing(self):
        self.assertIsNone(retire_mailbox(self.state_dir(), ALICE, keep=False))


def _only_file(directory: Path) -> Path:
    [path] = [p for sub in ("new", "cur") for p in (directory / sub).iterdir()]
    return path


class LineEndingTests(StoreTestCase):
    """Files have LF line ends (what Maildir tools expect); protocols see CRLF, byte for byte."""

    @inlineCallbacks
    def test_a_delivered_message_is_stored_with_lf_line_ends_and_no_cr(self):
        yield self.deliver([ALICE])
        stored = _only_file(mailbox_directory(self.root, ALICE)).read_bytes()
        self.assertEqual(stored, b"Subject: hello\n\nbody line\n")

    @inlineCallbacks
    def test_the_file_name_carries_the_file_size_and_the_wire_size(self):
        yield self.deliver([ALICE])
        name = _only_file(mailbox_directory(self.root, ALICE)).name
        self.assertRegex(name, rf",S={len(MESSAGE) - 3},W={len(MESSAGE)},U=1$")

    @inlineCallbacks
    def test_the_index_size_is_the_wire_size(self):
        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        [info] = yield folder.messages()
        self.assertEqual(info.size, len(MESSAGE))

    @inlineCallbacks
    def test_a_message_is_read_back_in_wire_form_byte_for_byte(self):
        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        self.assertEqual((yield self.read(ALICE, 1)), MESSAGE)
        self.assertEqual((yield folder.readMessage(1, len(MESSAGE))), MESSAGE)
        self.assertIsNone((yield folder.readMessage(1, len(MESSAGE) - 1)))

    @inlineCallbacks
    def test_a_large_message_streamed_in_odd_pieces_is_stored_with_lf_and_read_back_exactly(self):
        line = b"0123456789" * 7 + b"\r\n"
        data = b"Subject: big\r\n\r\n" + line * 20000  # about 1.4 MiB, many flushes
        writer = self.store.newMessage()
        # Pieces that split CRLFs between two writes, and two flushes.
        for start in range(0, len(data), 65537):
            yield writer.write(data[start : start + 65537])
        yield writer.finish()
        yield self.store.deliver(writer, [ALICE])
        path = _only_file(mailbox_directory(self.root, ALICE))
        self.assertNotIn(b"\r", path.read_bytes())
        self.assertEqual(path.stat().st_size, len(data) - data.count(b"\r\n"))
        self.assertEqual((yield self.read(ALICE, 1)), data)

    @inlineCallbacks
    def test_any_range_of_a_large_message_reads_as_the_same_range_of_its_wire_form(self):
        data = b"".join(b"line %d %s\r\n" % (n, b"x" * (n % 50)) for n in range(40000))
        yield self.deliver([ALICE], data)
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        handle = yield folder.openMessage(1)
        with handle:
            self.assertEqual(handle.seek(0, os.SEEK_END), len(data))
            for start, length in [(len(data) - 10, 100), (5, 3), (700_000, 70_000), (65_535, 3), (0, 10), (len(data), 5)]:
                handle.seek(start)
                self.assertEqual(handle.read(length), data[start : start + length], (start, length))

    @inlineCallbacks
    def test_a_message_with_a_bare_lf_is_stored_as_received_and_named_with_equal_sizes(self):
        data = b"Subject: odd\r\n\r\nbare\nline feed\r\n"
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        yield folder.append(data)
        path = _only_file(mailbox_directory(self.root, ALICE))
        self.assertEqual(path.read_bytes(), data)
        self.assertRegex(path.name, rf",S={len(data)},W={len(data)},U=1$")
        self.assertEqual((yield self.read(ALICE, 1)), data)

    @inlineCallbacks
    def test_a_bare_cr_after_the_first_flush_stores_the_whole_message_as_received(self):
        data = b"Subject: late\r\n\r\n" + b"a line\r\n" * 30000 + b"a bare\rcarriage return\r\n"
        yield self.deliver([ALICE], data)
        path = _only_file(mailbox_directory(self.root, ALICE))
        self.assertEqual(path.read_bytes(), data)
        self.assertRegex(path.name, rf",S={len(data)},W={len(data)},U=1$")
        self.assertEqual((yield self.read(ALICE, 1)), data)

    @inlineCallbacks
    def test_a_message_ending_in_a_bare_cr_is_stored_as_received(self):
        data = b"Subject: end\r\n\r\nlast\r"
        yield self.deliver([ALICE], data)
        self.assertEqual(_only_file(mailbox_directory(self.root, ALICE)).read_bytes(), data)
        self.assertEqual((yield self.read(ALICE, 1)), data)

    @inlineCallbacks
    def test_a_flag_change_keeps_both_sizes_in_the_name(self):
        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        yield folder.setFlags([1], ["\\Seen"], "add")
        path = _only_file(mailbox_directory(self.root, ALICE))
        self.assertRegex(path.name, rf",S={len(MESSAGE) - 3},W={len(MESSAGE)},U=1:2,S$")
        self.assertEqual((yield self.read(ALICE, 1)), MESSAGE)

    @inlineCallbacks
    def test_a_copy_is_named_with_both_sizes_and_reads_the_same(self):
        yield self.deliver([ALICE])
        mailbox = self.store.mailbox(ALICE)
        inbox = yield mailbox.folder("INBOX")
        archive = yield mailbox.folder("Archive")
        yield inbox.copyTo([1], archive)
        copy = _only_file(mailbox_directory(self.root, ALICE) / ".Archive")
        self.assertRegex(copy.name, rf",S={len(MESSAGE) - 3},W={len(MESSAGE)},U=1$")
        self.assertEqual((yield self.read(ALICE, 1, "Archive")), MESSAGE)

    @inlineCallbacks
    def test_a_state_format_1_crlf_file_is_still_served_exactly_with_its_flags(self):
        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        yield folder.setFlags([1], ["\\Flagged"], "add")
        # Turn the file into what format 1 wrote: CRLF, named with S= only.
        directory = mailbox_directory(self.root, ALICE)
        path = _only_file(directory)
        old_name = f"cur/{path.name.split(',')[0]},S={len(MESSAGE)},U=1:2,F"
        (directory / old_name).write_bytes(MESSAGE)
        path.unlink()
        with index.connection(directory) as conn:
            conn.execute("UPDATE messages SET filename = ? WHERE uid = 1", (old_name,))
        self.restart()
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        [info] = yield folder.messages()
        self.assertEqual((info.uid, info.size, info.flags), (1, len(MESSAGE), frozenset({"\\Flagged"})))
        self.assertEqual((yield self.read(ALICE, 1)), MESSAGE)
        self.assertEqual((yield folder.readMessage(1, 1000)), MESSAGE)
        yield folder.setFlags([1], ["\\Seen"], "add")
        renamed = _only_file(directory)
        self.assertRegex(renamed.name, rf",S={len(MESSAGE)},U=1:2,FS$")
        self.assertEqual((yield self.read(ALICE, 1)), MESSAGE)

    @inlineCallbacks
    def test_a_dovecot_maildir_copied_in_is_indexed_with_wire_sizes_and_its_flags(self):
        first = b"Subject: one\n\nfirst body\n"
        second = b"Subject: two\n\nsecond\nbody\n"
        directory = mailbox_directory(self.root, ALICE)
        for sub in ("cur", "new", "tmp"):
            (directory / sub).mkdir(parents=True)
        (directory / "dovecot-uidlist").write_text("3 V1733000000 N3 G0\n1 1733000000.M1P1.host\n")
        (directory / "cur" / f"1733000000.M1P1.host,S={len(first)},W={len(first) + 3}:2,RS").write_bytes(first)
        (directory / "new" / f"1733000001.M2P1.host,S={len(second)},W={len(second) + 4}").write_bytes(second)
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        infos = yield folder.messages()
        self.assertEqual(
            [(i.uid, i.size, i.flags) for i in infos],
            [(1, len(first) + 3, frozenset({"\\Seen", "\\Answered"})), (2, len(second) + 4, frozenset())],
        )
        self.assertEqual((yield self.read(ALICE, 1)), first.replace(b"\n", b"\r\n"))
        self.assertEqual((yield folder.readMessage(2, 1000)), second.replace(b"\n", b"\r\n"))
        names = sorted(p.name for sub in ("cur", "new") for p in (directory / sub).iterdir())
        self.assertEqual(
            names,
            [
                f"1733000000.M1P1.host,S={len(first)},W={len(first) + 3},U=1:2,RS",
                f"1733000001.M2P1.host,S={len(second)},W={len(second) + 4},U=2",
            ],
        )

    @inlineCallbacks
    def test_an_lf_file_named_without_sizes_is_measured_when_indexed(self):
        data = b"Subject: procmail\n\ndropped in\nby another tool\n"
        directory = mailbox_directory(self.root, ALICE)
        for sub in ("cur", "new", "tmp"):
            (directory / sub).mkdir(parents=True)
        (directory / "new" / "1733000002.M3P1.host").write_bytes(data)
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        [info] = yield folder.messages()
        wire = data.replace(b"\n", b"\r\n")
        self.assertEqual(info.size, len(wire))
        self.assertEqual((yield self.read(ALICE, 1)), wire)
        self.assertEqual(_only_file(directory).name, f"1733000002.M3P1.host,S={len(data)},W={len(wire)},U=1")


class MessageFileTests(TestCase):
    """The one reader and writer of message files, at chunk boundaries made small."""

    def setUp(self) -> None:
        self.patch(messagefile, "CHUNK_SIZE", 7)
        self.directory = Path(self.mktemp())
        self.directory.mkdir()

    def _file(self, data: bytes) -> Path:
        path = self.directory / "message"
        path.write_bytes(data)
        return path

    def test_every_range_of_an_lf_file_reads_as_that_range_of_its_wire_form(self):
        wire = b"a\r\nbc\r\n\r\ndefghij\r\nk\r\n\r\n\r\nlmnopqrstu\r\n"
        path = self._file(wire.replace(b"\r\n", b"\n"))
        with messagefile.open_message(path, len(wire)) as handle:
            self.assertEqual(handle.read(), wire)
            for start in range(len(wire) + 1):
                for length in (0, 1, 2, 5, 9, 100):
                    handle.seek(start)
                    self.assertEqual(handle.read(length), wire[start : start + length], (start, length))

    def test_a_file_with_crlf_and_lf_and_w_in_its_name_sends_each_lf_once_as_crlf(self):
        # Dovecot's rule: an LF after a CR is already a line end; a bare CR stays.
        stored = b"ab\r\ncdefg\r\nh\nij\rk\n" + b"xxxxx\r" + b"\nyy\n"
        wire = b"ab\r\ncdefg\r\nh\r\nij\rk\r\nxxxxx\r\nyy\r\n"
        path = self._file(stored)
        with messagefile.open_message(path, len(wire)) as handle:
            self.assertEqual(handle.read(), wire)
        self.assertEqual(messagefile.read_message(path, len(wire), 1000), wire)

    def test_a_file_named_without_w_is_sent_as_it_is_when_its_first_line_ends_in_crlf(self):
        stored = b"Subject: x\r\n\r\nodd\nbody\r\n"
        path = self._file(stored)
        with messagefile.open_message(path, None) as handle:
            self.assertEqual(handle.read(), stored)
        self.assertEqual(messagefile.measure(path), (len(stored), len(stored)))

    def test_a_file_named_without_w_is_expanded_when_its_first_line_ends_in_lf(self):
        stored = b"Subject: x\n\nbody\n"
        path = self._file(stored)
        with messagefile.open_message(path, None) as handle:
            self.assertEqual(handle.seek(0, os.SEEK_END), len(stored) + 3)
            handle.seek(0)
            self.assertEqual(handle.read(), stored.replace(b"\n", b"\r\n"))
        self.assertEqual(messagefile.read_message(path, None, 1000), stored.replace(b"\n", b"\r\n"))

    def test_the_encoder_turns_crlf_split_across_pieces_into_lf(self):
        encoder = messagefile.LFEncoder()
        out = b"".join(encoder.feed(piece) for piece in (b"a\r", b"\nb\r", b"\n\r", b"\n", b"c"))
        out += encoder.close()
        self.assertEqual((out, encoder.lf, encoder.stored_size, encoder.wire_size), (b"a\nb\n\nc", True, 6, 9))

    def test_the_encoder_keeps_a_cr_before_a_crlf_as_received(self):
        self.assertEqual(messagefile.encode(b"a\r\r\nb\r\n"), (b"a\r\r\nb\r\n", False))
        self.assertEqual(messagefile.encode(b"a\r\nb\r\n"), (b"a\nb\n", True))


def _but_modseq(status: FolderStatus) -> FolderStatus:
    """A status without its HIGHESTMODSEQ: a folder indexed again starts its mod-sequences afresh (mailapp.store.modseq)."""
    return dataclasses.replace(status, highestmodseq=0)
