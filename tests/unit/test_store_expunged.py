"""
Expunged messages stay readable for the sessions that still have them in
view (L{mailapp.store.expunged}), on the real Maildir store, and never come
back as messages.
"""

from __future__ import annotations

import time

from twisted.internet.defer import inlineCallbacks

from mailapp.errors import MailboxGone, NoSuchMessage
from mailapp.store import expunged, index, retire_mailbox
from mailapp.store.names import folder_directory, mailbox_directory
from tests.unit.test_store import ALICE, MESSAGE, StoreTestCase


class ExpungedTests(StoreTestCase):
    @inlineCallbacks
    def expunged_message(self):
        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        self.assertEqual((yield folder.expunge([1])), [1])
        return folder

    @inlineCallbacks
    def test_an_expunged_message_can_still_be_read_by_its_uid(self):
        folder = yield self.expunged_message()
        self.assertEqual((yield folder.messages()), [])
        self.assertEqual((yield self.read(ALICE, 1)), MESSAGE)
        self.assertEqual((yield folder.readMessage(1, 1_000_000)), MESSAGE)

    @inlineCallbacks
    def test_an_expunged_message_is_gone_once_held_long_enough(self):
        folder = yield self.expunged_message()
        directory = folder_directory(mailbox_directory(self.root, ALICE), "INBOX")
        self.assertEqual(expunged.purge(directory, now=time.time()), 0)
        self.assertEqual(expunged.purge(directory, now=time.time() + expunged.HOLD_SECONDS + 1), 1)
        self.assertFalse((directory / expunged.DIRECTORY_NAME).exists())
        yield self.assertFailure(folder.openMessage(1), NoSuchMessage)

    @inlineCallbacks
    def test_the_hourly_sweep_purges_what_was_held_long_enough(self):
        folder = yield self.expunged_message()
        directory = folder_directory(mailbox_directory(self.root, ALICE), "INBOX")
        yield self.store.sweep()
        held = expunged.find(directory, 1)
        assert held is not None
        uid, _, name = held.name.split(".", 2)
        held.rename(held.with_name(f"{uid}.{int(time.time()) - expunged.HOLD_SECONDS - 5}.{name}"))
        yield self.store.sweep()
        yield self.assertFailure(folder.openMessage(1), NoSuchMessage)
        self.assertEqual(list(self.store.held_expunged), [])

    @inlineCallbacks
    def test_a_hold_is_not_scanned_again_until_a_file_in_it_is_old_enough(self):
        folder = yield self.expunged_message()
        directory = folder_directory(mailbox_directory(self.root, ALICE), "INBOX")
        holds = self.store.held_expunged
        assert directory in holds
        scanned: list[object] = []
        real_scandir = expunged.os.scandir

        def counting_scandir(path):  # type: ignore[no-untyped-def]
            if str(path).endswith(expunged.DIRECTORY_NAME):
                scanned.append(path)
            return real_scandir(path)

        self.patch(expunged.os, "scandir", counting_scandir)
        now = time.time()
        for _ in range(100):
            self.assertEqual(holds.purge(directory, now=now + 1), 0)
        yield folder.refresh()
        self.assertEqual(scanned, [])
        # Once the first held file is old enough: one scan, which removes it and forgets the empty hold.
        self.assertEqual(holds.purge(directory, now=now + expunged.HOLD_SECONDS + 2), 1)
        self.assertEqual(len(scanned), 1)
        self.assertNotIn(directory, holds)
        self.assertIsNone(expunged.find(directory, 1))

    @inlineCallbacks
    def test_a_held_message_never_comes_back_after_a_restart_or_an_index_rebuild(self):
        yield self.expunged_message()
        yield self.deliver([ALICE])
        (mailbox_directory(self.root, ALICE) / index.INDEX_NAME).unlink()
        store = self.restart()
        folder = yield store.mailbox(ALICE).folder("INBOX")
        yield folder.refresh()
        self.assertEqual([m.uid for m in (yield folder.messages())], [2])

    @inlineCallbacks
    def test_deleting_the_folder_takes_its_held_messages_along(self):
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Work")
        yield self.deliver([ALICE])
        inbox = yield mailbox.folder("INBOX")
        work = yield mailbox.folder("Work")
        yield inbox.moveTo([1], work)
        yield work.expunge([1])
        directory = folder_directory(mailbox_directory(self.root, ALICE), "Work")
        self.assertIsNotNone(expunged.find(directory, 1))
        yield mailbox.deleteFolder("Work")
        self.assertFalse(directory.exists())

    @inlineCallbacks
    def test_a_retired_account_takes_its_held_messages_out_of_the_store(self):
        folder = yield self.expunged_message()
        retire_mailbox(self.root.parent, ALICE, keep=False)
        yield self.assertFailure(folder.openMessage(1), MailboxGone)

    @inlineCallbacks
    def test_what_a_restart_left_held_long_enough_is_purged_at_the_first_open(self):
        yield self.expunged_message()
        directory = folder_directory(mailbox_directory(self.root, ALICE), "INBOX")
        held = expunged.find(directory, 1)
        assert held is not None
        uid, _, name = held.name.split(".", 2)
        held.rename(held.with_name(f"{uid}.{int(time.time()) - expunged.HOLD_SECONDS - 5}.{name}"))
        store = self.restart()
        folder = yield store.mailbox(ALICE).folder("INBOX")
        yield folder.messages()
        self.assertIsNone(expunged.find(directory, 1))

    @inlineCallbacks
    def test_the_files_go_into_the_hold_before_the_expunge_is_committed(self):
        # Another process (a second worker) reconciling the folder the moment
        # the commit lands must find no file without its row: it would give
        # the file a new UID and bring the expunged message back.
        import sqlite3

        yield self.deliver([ALICE])
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        index_file = mailbox_directory(self.root, ALICE) / index.INDEX_NAME
        seen_by_others: list[bool] = []
        real_hold = expunged.hold

        def hold(directory, filename, uid, **options):  # type: ignore[no-untyped-def]
            other = sqlite3.connect(index_file)
            try:
                row = other.execute("SELECT 1 FROM messages WHERE folder = 'INBOX' AND uid = ?", (uid,)).fetchone()
            finally:
                other.close()
            seen_by_others.append(row is not None)
            return real_hold(directory, filename, uid, **options)

        self.patch(expunged, "hold", hold)
        self.assertEqual((yield folder.expunge([1])), [1])
        self.assertEqual(seen_by_others, [True])  # the row's removal was not yet visible: not committed
        directory = folder_directory(mailbox_directory(self.root, ALICE), "INBOX")
        self.assertIsNotNone(expunged.find(directory, 1))
        self.assertEqual([name for sub in ("new", "cur") for name in (directory / sub).iterdir()], [])
