"""
Mod-sequences (RFC 7162; L{mailapp.store.modseq}): raised by every change
of a message whoever makes it (this store, a Maildir tool seen at refresh),
each folder's highest, the expunged UIDs remembered (bounded, with the
point before which they are forgotten), UNCHANGEDSINCE, the migration of a
schema 3 index; and the fake store keeping the same contract.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.store import MaildirStore, index, modseq
from mailapp.store.names import mailbox_directory
from mailapp.testing import FakeStore

ALICE = "alice@example.test"


def message(number: int) -> bytes:
    return b"Subject: message %d\r\n\r\nbody %d\r\n" % (number, number)


class _Contract:
    """What both stores promise; C{self.store} is set by the subclass."""

    store: Any

    @inlineCallbacks
    def deliver(self, count: int) -> Any:
        for number in range(1, count + 1):
            writer = self.store.newMessage()
            yield writer.write(message(number))
            yield writer.finish()
            yield self.store.deliver(writer, [ALICE])

    def folder(self, name: str = "INBOX") -> Any:
        return self.store.mailbox(ALICE).folder(name)

    @inlineCallbacks
    def test_each_delivered_message_gets_a_higher_modseq_and_the_folder_its_highest(self: Any) -> Any:
        yield self.deliver(3)
        inbox = yield self.folder()
        seqs = [m.modseq for m in (yield inbox.messages())]
        self.assertEqual(seqs, sorted(set(seqs)))
        highest = yield inbox.highestModseq()
        self.assertEqual(highest, seqs[-1])
        self.assertEqual((yield inbox.status()).highestmodseq, highest)

    @inlineCallbacks
    def test_a_flag_change_raises_the_modseq_of_the_changed_messages_only(self: Any) -> Any:
        yield self.deliver(3)
        inbox = yield self.folder()
        before = {m.uid: m.modseq for m in (yield inbox.messages())}
        highest = yield inbox.highestModseq()
        change = yield inbox.changeFlags([1, 2], ["\\Seen"], "add")
        after = {m.uid: m.modseq for m in (yield inbox.messages())}
        self.assertGreater(after[1], highest)
        self.assertGreater(after[2], after[1])
        self.assertEqual(after[3], before[3])
        self.assertEqual(change.modseqs, {1: after[1], 2: after[2]})
        self.assertEqual((yield inbox.highestModseq()), after[2])
        # Flags that do not change keep the modseq.
        again = yield inbox.changeFlags([1], ["\\Seen"], "add")
        self.assertEqual(again.modseqs, {1: after[1]})
        self.assertEqual((yield inbox.highestModseq()), after[2])
        # A keyword is a flag change too.
        yield inbox.setFlags([3], ["$Label1"], "add")
        self.assertGreater([m.modseq for m in (yield inbox.messages())][2], after[2])

    @inlineCallbacks
    def test_unchanged_since_leaves_the_messages_changed_after_it_and_lists_them(self: Any) -> Any:
        yield self.deliver(3)
        inbox = yield self.folder()
        yield inbox.setFlags([2], ["\\Flagged"], "add")
        seqs = {m.uid: m.modseq for m in (yield inbox.messages())}
        change = yield inbox.changeFlags([1, 2, 3], ["\\Seen"], "add", unchangedSince=seqs[3])
        self.assertEqual(change.modified, (2,))
        flags = {m.uid: m.flags for m in (yield inbox.messages())}
        self.assertEqual(flags[2], frozenset({"\\Flagged"}))
        self.assertIn("\\Seen", flags[1])
        self.assertIn("\\Seen", flags[3])
        self.assertEqual(change.flags[2], frozenset({"\\Flagged"}))
        self.assertEqual(change.modseqs[2], seqs[2])

    @inlineCallbacks
    def test_expunges_and_moves_out_are_remembered_with_their_modseq(self: Any) -> Any:
        yield self.deliver(4)
        inbox = yield self.folder()
        archive = yield self.folder("Archive")
        start = yield inbox.highestModseq()
        yield inbox.expunge([2])
        middle = yield inbox.highestModseq()
        self.assertGreater(middle, start)
        yield inbox.moveTo([3], archive)
        self.assertEqual((yield inbox.vanishedSince(start)), [2, 3])
        self.assertEqual((yield inbox.vanishedSince(middle)), [3])
        self.assertEqual((yield inbox.vanishedSince((yield inbox.highestModseq()))), [])
        moved = yield archive.messages()
        self.assertEqual(len(moved), 1)
        self.assertEqual(moved[0].modseq, (yield archive.highestModseq()))


    @inlineCallbacks
    def test_changes_since_lists_the_changed_the_new_and_the_expunged_with_the_token(self: Any) -> Any:
        yield self.deliver(4)
        inbox = yield self.folder()
        start = yield inbox.highestModseq()
        yield inbox.setFlags([2], ["\\Seen"], "add")
        yield inbox.expunge([3])
        yield self.deliver(1)
        found = yield inbox.changesSince(start)
        self.assertEqual([m.uid for m in found.changed], [2, 5])
        self.assertEqual(found.changed[0].flags, frozenset({"\\Seen"}))
        self.assertEqual(found.vanished, [3])
        self.assertEqual(found.highestmodseq, (yield inbox.highestModseq()))
        token, uidnext, _ = yield inbox.messagesIfChanged(None)
        self.assertEqual((found.token, found.uidnext), (token, uidnext))
        nothing = yield inbox.changesSince(found.highestmodseq)
        self.assertEqual((nothing.changed, nothing.vanished), ([], []))


class MaildirModseqTests(_Contract, TestCase):
    def setUp(self) -> None:
        index.reset_connections()
        self.addCleanup(index.reset_connections)
        self.root = Path(self.mktemp()) / "mail"
        self.store = MaildirStore(self.root, reactor=reactor)
        self.mailbox_dir = mailbox_directory(self.root, ALICE)

    def index_path(self) -> Path:
        return self.mailbox_dir / index.INDEX_NAME

    @inlineCallbacks
    def test_a_flag_change_by_a_maildir_tool_raises_the_modseq_at_refresh(self) -> Any:
        yield self.deliver(2)
        inbox = yield self.folder()
        highest = yield inbox.highestModseq()
        old = next(p for p in (self.mailbox_dir / "new").iterdir() if ",U=1," in p.name or p.name.endswith(",U=1"))
        os.rename(old, self.mailbox_dir / "cur" / (old.name + ":2,S"))  # what mutt does when it reads it
        yield inbox.refresh()
        messages = yield inbox.messages()
        self.assertEqual(messages[0].flags, frozenset({"\\Seen"}))
        self.assertGreater(messages[0].modseq, highest)
        self.assertEqual(messages[1].modseq, highest)

    @inlineCallbacks
    def test_a_file_deleted_by_a_maildir_tool_is_remembered_as_vanished(self) -> Any:
        yield self.deliver(2)
        inbox = yield self.folder()
        highest = yield inbox.highestModseq()
        victim = next(p for p in (self.mailbox_dir / "new").iterdir() if ",U=2" in p.name)
        victim.unlink()
        yield inbox.refresh()
        self.assertEqual((yield inbox.vanishedSince(highest)), [2])

    @inlineCallbacks
    def test_another_process_sees_the_modseqs_through_the_index(self) -> Any:
        yield self.deliver(1)
        inbox = yield self.folder()
        yield inbox.setFlags([1], ["\\Answered"], "add")
        index.reset_connections()
        other = MaildirStore(self.root, reactor=reactor)
        again = yield other.mailbox(ALICE).folder("INBOX")
        self.assertEqual([m.modseq for m in (yield again.messages())], [m.modseq for m in (yield inbox.messages())])

    @inlineCallbacks
    def test_the_vanished_table_is_bounded_and_says_when_it_no_longer_reaches_back(self) -> Any:
        self.patch(modseq, "VANISHED_KEPT", 2)
        self.patch(modseq.prune_vanished, "__defaults__", (2,))
        yield self.deliver(5)
        inbox = yield self.folder()
        start = yield inbox.highestModseq()
        for uid in (1, 2, 3):
            yield inbox.expunge([uid])
        self.assertIsNone((yield inbox.vanishedSince(start)))
        after_first = start + 1
        self.assertEqual((yield inbox.vanishedSince(after_first)), [2, 3])

    @inlineCallbacks
    def test_a_schema_3_index_is_migrated_with_every_message_at_modseq_1(self) -> Any:
        yield self.deliver(3)
        index.reset_connections()
        conn = sqlite3.connect(self.index_path())
        try:
            for trigger in ("modseq_after_insert", "modseq_after_flags", "modseq_after_delete",
                            "modseq_folder_renamed", "modseq_folder_deleted"):
                conn.execute(f"DROP TRIGGER {trigger}")
            conn.execute("DROP TABLE vanished")
            conn.execute("DROP INDEX messages_modseq")
            conn.execute("ALTER TABLE folders DROP COLUMN highestmodseq")
            conn.execute("ALTER TABLE folders DROP COLUMN vanished_before")
            conn.execute("ALTER TABLE messages DROP COLUMN modseq")
            conn.execute("PRAGMA user_version = 3")
            conn.commit()
        finally:
            conn.close()
        self.store = MaildirStore(self.root, reactor=reactor)
        inbox = yield self.folder()
        self.assertEqual([m.modseq for m in (yield inbox.messages())], [1, 1, 1])
        self.assertEqual((yield inbox.highestModseq()), 1)
        yield inbox.setFlags([2], ["\\Seen"], "add")
        self.assertEqual([m.modseq for m in (yield inbox.messages())], [1, 2, 1])
        yield inbox.expunge([1])
        self.assertEqual((yield inbox.vanishedSince(1)), [1])
        conn = sqlite3.connect(self.index_path())
        try:
            self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], index.SCHEMA_VERSION)
        finally:
            conn.close()


class FakeModseqTests(_Contract, TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()

    @inlineCallbacks
    def test_the_fake_forgets_old_expunges_as_told(self) -> Any:
        yield self.deliver(3)
        inbox = yield self.folder()
        start = yield inbox.highestModseq()
        yield inbox.expunge([1, 2])
        inbox._state.forgetVanished(1)
        self.assertIsNone((yield inbox.vanishedSince(start)))
        self.assertEqual((yield inbox.vanishedSince(start + 1)), [2])
