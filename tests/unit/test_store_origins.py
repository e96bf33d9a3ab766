"""
What RFC 8474 and RFC 8514 need of the Maildir store (L{mailapp.store.origins},
L{mailapp.store.folders}): a message's EMAILID is its file's, the same in
every folder it is copied or moved to, through flag changes, restarts and
a rebuilt index; its save date is when it was saved into its folder, lost
only with the index; a folder's MAILBOXID lives in its record, through
RENAME, expunges and rebuilds, and a folder made again gets a new one.
Also the migration of a schema 4 index, and the fake store's same contract.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.records import FolderPlacement
from mailapp.store import MaildirStore, index
from mailapp.store.folders import META_NAME
from mailapp.store.names import folder_directory, mailbox_directory
from mailapp.store.origins import email_id
from mailapp.testing import FakeStore
from tests.index_schema import make_older, migrated_in_place

ALICE = "alice@example.test"
MESSAGE = b"Subject: hello\r\n\r\nbody line\r\n"


class _Contract:
    """What both stores promise; C{self.store} is set by the subclass."""

    store: Any

    @inlineCallbacks
    def deliver(self, data: bytes = MESSAGE) -> Any:
        writer = self.store.newMessage()
        yield writer.write(data)
        yield writer.finish()
        uids = yield self.store.deliver(writer, [ALICE])
        return uids[ALICE]

    def folder(self, name: str = "INBOX") -> Any:
        return self.store.mailbox(ALICE).folder(name)

    @inlineCallbacks
    def test_copies_and_moves_keep_the_emailid_and_two_deliveries_of_the_same_bytes_differ(self: Any) -> Any:
        yield self.deliver()
        yield self.deliver()
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Copies")
        yield mailbox.createFolder("Moved")
        inbox, copies, moved = (yield self.folder()), (yield self.folder("Copies")), (yield self.folder("Moved"))
        first = yield inbox.origins([1, 2])
        self.assertNotEqual(first[1].emailid, first[2].emailid)
        yield inbox.copyTo([1], copies)
        yield inbox.moveTo([2], moved)
        self.assertEqual((yield copies.origins([1]))[1].emailid, first[1].emailid)
        self.assertEqual((yield moved.origins([1]))[1].emailid, first[2].emailid)
        self.assertEqual(list((yield inbox.origins([1, 2]))), [1])

    @inlineCallbacks
    def test_one_delivery_into_two_folders_is_one_emailid_in_both(self: Any) -> Any:
        yield self.store.mailbox(ALICE).createFolder("Work")
        writer = self.store.newMessage()
        yield writer.write(MESSAGE)
        yield writer.finish()
        uids = yield self.store.deliverPlacements(writer, [FolderPlacement(ALICE), FolderPlacement(ALICE, "Work")])
        inbox, work = (yield self.folder()), (yield self.folder("Work"))
        self.assertEqual((yield inbox.origins([uids[0]]))[uids[0]].emailid, (yield work.origins([uids[1]]))[uids[1]].emailid)
        yield self.deliver()
        self.assertEqual(len({o.emailid for o in (yield inbox.origins([1, 2])).values()}), 2)

    @inlineCallbacks
    def test_the_save_date_is_when_the_message_was_saved_into_the_folder(self: Any) -> Any:
        before = time.time()
        yield self.deliver()
        yield self.store.mailbox(ALICE).createFolder("Later")
        inbox, later = (yield self.folder()), (yield self.folder("Later"))
        yield inbox.copyTo([1], later)
        saved = (yield inbox.origins([1]))[1].savedate
        copied = (yield later.origins([1]))[1].savedate
        self.assertLessEqual(before - 1, saved)
        self.assertLessEqual(saved, copied)
        self.assertLessEqual(copied, time.time() + 1)

    @inlineCallbacks
    def test_rename_keeps_the_mailboxid_and_a_folder_made_again_gets_another(self: Any) -> Any:
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Old")
        first = yield (yield self.folder("Old")).mailboxId()
        self.assertRegex(first, r"^[A-Za-z0-9_-]{1,255}$")
        yield mailbox.renameFolder("Old", "New")
        self.assertEqual((yield (yield self.folder("New")).mailboxId()), first)
        yield mailbox.deleteFolder("New")
        yield mailbox.createFolder("New")
        again = yield (yield self.folder("New")).mailboxId()
        self.assertNotEqual(again, first)
        self.assertNotEqual((yield (yield self.folder()).mailboxId()), again)


class MaildirOriginTests(_Contract, TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "mail"
        self.store = MaildirStore(self.root, reactor=reactor)
        self.mailbox_dir = mailbox_directory(self.root, ALICE)

    def restart(self, lose_index: bool = False) -> None:
        index.reset_connections()
        if lose_index:
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.mailbox_dir / index.INDEX_NAME) + suffix).unlink(missing_ok=True)
        self.store = MaildirStore(self.root, reactor=reactor)

    def test_the_emailid_is_a_hash_of_the_files_base_whatever_its_flags_and_sizes(self) -> None:
        base = email_id("new/1733000000.M1P2Q3.host,S=10,W=12,U=1")
        self.assertEqual(email_id("cur/1733000000.M1P2Q3.host,S=10,W=12,U=7:2,FS"), base)
        self.assertNotEqual(email_id("new/1733000000.M1P2Q4.host,S=10,W=12,U=1"), base)
        self.assertRegex(base, r"^M[0-9a-f]{24}$")

    @inlineCallbacks
    def test_a_flag_change_a_restart_and_a_lost_index_keep_the_emailid_and_forget_only_the_save_date(self) -> Any:
        yield self.deliver()
        yield self.store.mailbox(ALICE).createFolder("Work")
        inbox, work = (yield self.folder()), (yield self.folder("Work"))
        yield inbox.copyTo([1], work)
        yield work.setFlags([1], ["\\Seen", "$Label"], "add")
        before = (yield inbox.origins([1]))[1]
        box_id = yield work.mailboxId()
        self.assertIsNotNone(before.savedate)
        self.restart()
        self.assertEqual((yield (yield self.folder()).origins([1]))[1], before)
        self.restart(lose_index=True)
        inbox, work = (yield self.folder()), (yield self.folder("Work"))
        self.assertEqual((yield inbox.origins([1]))[1].emailid, before.emailid)
        self.assertEqual((yield work.origins([1]))[1].emailid, before.emailid)
        self.assertIsNone((yield work.origins([1]))[1].savedate)
        self.assertEqual((yield work.mailboxId()), box_id)

    @inlineCallbacks
    def test_a_message_expunged_moments_ago_keeps_its_emailid_while_it_is_held(self) -> Any:
        yield self.deliver()
        inbox = yield self.folder()
        before = (yield inbox.origins([1]))[1]
        yield inbox.expunge([1])
        self.assertEqual((yield inbox.origins([1, 2])), {1: dataclasses.replace(before, savedate=None)})
        for held in (self.mailbox_dir / "mailapp-expunged").iterdir():
            held.unlink()
        self.assertEqual((yield inbox.origins([1])), {})

    @inlineCallbacks
    def test_an_expunge_and_a_move_out_rewrite_the_folder_record_keeping_its_mailboxid(self) -> Any:
        yield self.deliver()
        yield self.deliver()
        yield self.store.mailbox(ALICE).createFolder("Elsewhere")
        inbox = yield self.folder()
        box_id = yield inbox.mailboxId()
        yield inbox.setFlags([1], ["\\Deleted"], "add")
        yield inbox.expunge([1])
        yield inbox.moveTo([2], (yield self.folder("Elsewhere")))
        record = json.loads((self.mailbox_dir / META_NAME).read_text())
        self.assertEqual(record["mailboxid"], box_id)
        self.assertEqual(record["uidnext"], 3)

    @inlineCallbacks
    def test_a_folder_recorded_before_mailboxids_gets_one_once_and_keeps_it(self) -> Any:
        yield self.store.mailbox(ALICE).createFolder("Old")
        directory = folder_directory(self.mailbox_dir, "Old")
        record = json.loads((directory / META_NAME).read_text())
        del record["mailboxid"]
        (directory / META_NAME).write_text(json.dumps(record))
        first = yield (yield self.folder("Old")).mailboxId()
        self.restart()
        self.assertEqual((yield (yield self.folder("Old")).mailboxId()), first)
        self.assertEqual(json.loads((directory / META_NAME).read_text())["uidvalidity"], record["uidvalidity"])

    @inlineCallbacks
    def test_a_schema_4_index_is_migrated_with_every_save_date_unknown(self) -> Any:
        yield self.deliver()
        make_older(self.mailbox_dir, 4, "ALTER TABLE messages DROP COLUMN savedate")
        self.store = MaildirStore(self.root, reactor=reactor)
        inbox = yield self.folder()
        self.assertIsNone((yield inbox.origins([1]))[1].savedate)
        yield self.deliver()
        self.assertIsNotNone((yield inbox.origins([2]))[2].savedate)
        # Migrated in place, not rebuilt (a rebuild would forget the same save dates, and more).
        self.assertTrue(migrated_in_place(self.mailbox_dir))


class FakeOriginTests(_Contract, TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
