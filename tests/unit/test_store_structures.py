"""
Each message's cached structure in the index (L{mailapp.store.structures}):
kept opaque with its version, gone with its message, filled by a rebuild
through the registered codec, migrated into an index of schema 2, bounded
in size; and each folder's change counter, the token of a warm SELECT.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import IO, Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.imap import structurecache
from mailapp.store import MaildirStore, index, structures
from mailapp.store.names import mailbox_directory
from tests.index_faults import damage_messages_page

ALICE = "alice@example.test"


def message(number: int) -> bytes:
    return b"Subject: message %d\r\nFrom: a@remote.test\r\n\r\nbody %d\r\n" % (number, number)


class _Codec:
    version = 7

    def __init__(self) -> None:
        self.computed = 0

    def compute(self, handle: IO[bytes]) -> bytes | None:
        self.computed += 1
        return b"blob of " + handle.read().split(b"\r\n", 1)[0]


class StructuresTestCase(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "mail"
        self.store = MaildirStore(self.root, reactor=reactor)
        self.mailbox_dir = mailbox_directory(self.root, ALICE)
        self.addCleanup(index.reset_connections)
        self.addCleanup(structures.register_codec, None)

    def restart(self) -> None:
        index.reset_connections()
        self.store = MaildirStore(self.root, reactor=reactor)

    @inlineCallbacks
    def deliver(self, count: int, start: int = 1) -> Any:
        for number in range(start, start + count):
            writer = self.store.newMessage()
            yield writer.write(message(number))
            yield writer.finish()
            yield self.store.deliver(writer, [ALICE])

    def folder(self, name: str = "INBOX") -> Any:
        return self.store.mailbox(ALICE).folder(name)

    def rows(self) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.mailbox_dir / index.INDEX_NAME)
        try:
            return conn.execute("SELECT folder, uid, version FROM structures ORDER BY folder, uid").fetchall()
        finally:
            conn.close()


class StructureRowTests(StructuresTestCase):
    @inlineCallbacks
    def test_saved_blobs_are_read_back_only_in_their_own_version(self):
        yield self.deliver(3)
        inbox = yield self.folder()
        yield inbox.saveStructures({1: b"one", 2: b"two"}, 5)
        self.assertEqual((yield inbox.cachedStructures([1, 2, 3], 5)), {1: b"one", 2: b"two"})
        self.assertEqual((yield inbox.cachedStructures([1, 2, 3], 6)), {})
        yield inbox.saveStructures({1: b"newer"}, 6)
        self.assertEqual((yield inbox.cachedStructures([1, 2], 6)), {1: b"newer"})
        self.assertEqual((yield inbox.cachedStructures([1, 2], 5)), {2: b"two"})

    @inlineCallbacks
    def test_a_blob_for_a_message_that_is_gone_is_not_kept(self):
        yield self.deliver(1)
        inbox = yield self.folder()
        yield inbox.saveStructures({1: b"one", 99: b"none"}, 1)
        self.assertEqual(self.rows(), [("INBOX", 1, 1)])

    @inlineCallbacks
    def test_a_blob_over_the_size_bound_is_not_kept(self):
        yield self.deliver(2)
        inbox = yield self.folder()
        yield inbox.saveStructures({1: b"x" * (structures.MAX_BLOB + 1), 2: b"small"}, 1)
        self.assertEqual((yield inbox.cachedStructures([1, 2], 1)), {2: b"small"})

    @inlineCallbacks
    def test_an_expunge_a_move_and_a_deleted_folder_drop_the_blobs_of_their_messages(self):
        yield self.deliver(4)
        inbox = yield self.folder()
        archive = yield self.folder("Archive")
        yield inbox.saveStructures({1: b"1", 2: b"2", 3: b"3", 4: b"4"}, 1)
        yield inbox.expunge([1])
        moved = yield inbox.moveTo([2], archive)
        self.assertEqual(self.rows(), [("INBOX", 3, 1), ("INBOX", 4, 1)])
        self.assertEqual((yield archive.cachedStructures(list(moved.values()), 1)), {})
        yield self.store.mailbox(ALICE).createFolder("Old")
        old = yield self.folder("Old")
        yield inbox.copyTo([3], old)
        yield old.saveStructures({1: b"old"}, 1)
        yield self.store.mailbox(ALICE).deleteFolder("Old")
        yield self.store.mailbox(ALICE).createFolder("Old")
        old = yield self.folder("Old")
        yield inbox.copyTo([4], old)
        self.assertEqual((yield old.cachedStructures([1], 1)), {})


class StructureRebuildTests(StructuresTestCase):
    @inlineCallbacks
    def test_an_index_rebuilt_after_damage_fills_each_message_blob_with_the_registered_codec(self):
        yield self.deliver(20)
        inbox = yield self.folder()
        yield inbox.saveStructures({1: b"stale"}, 1)
        codec = _Codec()
        structures.register_codec(codec)
        index.reset_connections()
        damage_messages_page(self.mailbox_dir / index.INDEX_NAME)
        self.restart()
        inbox = yield self.folder()
        found = yield inbox.cachedStructures(list(range(1, 21)), codec.version)
        self.assertEqual(found, {n: b"blob of Subject: message %d" % n for n in range(1, 21)})
        self.assertEqual((yield inbox.cachedStructures([1], 1)), {})
        self.assertTrue(any(".damaged-" in p.name for p in self.mailbox_dir.iterdir()))

    @inlineCallbacks
    def test_a_rebuild_fills_blobs_newest_first_and_stops_at_its_time_bound(self):
        yield self.deliver(5)
        codec = _Codec()
        structures.register_codec(codec)
        self.patch(structures, "REBUILD_FILL_SECONDS", -1.0)
        index.reset_connections()
        damage_messages_page(self.mailbox_dir / index.INDEX_NAME)
        self.restart()
        inbox = yield self.folder()
        self.assertEqual((yield inbox.cachedStructures(list(range(1, 6)), codec.version)), {})
        self.assertEqual(len((yield inbox.messages())), 5)

    @inlineCallbacks
    def test_the_imap_codec_fills_what_the_imap_layer_reads_back(self):
        yield self.deliver(2)
        structures.register_codec(structurecache.CODEC)
        index.reset_connections()
        damage_messages_page(self.mailbox_dir / index.INDEX_NAME)
        self.restart()
        inbox = yield self.folder()
        found = yield inbox.cachedStructures([1, 2], structurecache.STRUCTURE_VERSION)
        decoded = structurecache.decode(found[2])
        assert decoded is not None
        self.assertEqual(decoded[0], b'ENVELOPE (NIL "message 2" ((NIL NIL "a" "remote.test")) ((NIL NIL "a" "remote.test")) ((NIL NIL "a" "remote.test")) NIL NIL NIL NIL NIL)')
        loaded = structurecache.content(decoded[3])
        assert loaded is not None
        self.assertEqual(loaded.headers["subject"], ["message 2"])


class StructureMigrationTests(StructuresTestCase):
    @inlineCallbacks
    def test_a_version_2_index_is_migrated_with_an_empty_structures_table_and_change_counters(self):
        yield self.deliver(3)
        index.reset_connections()
        conn = sqlite3.connect(self.mailbox_dir / index.INDEX_NAME)
        try:
            for trigger in (
                "structures_after_delete", "structures_after_move", "structures_after_insert", "folders_changes_start",
                "folders_changes_after_insert", "folders_changes_after_delete", "folders_changes_after_update",
            ):
                conn.execute(f"DROP TRIGGER {trigger}")
            conn.execute("DROP TABLE structures")
            conn.execute("ALTER TABLE folders DROP COLUMN changes")
            conn.execute("PRAGMA user_version = 2")
            conn.commit()
        finally:
            conn.close()
        self.restart()
        inbox = yield self.folder()
        self.assertEqual((yield inbox.cachedStructures([1, 2, 3], 1)), {})
        yield inbox.saveStructures({2: b"two"}, 1)
        self.assertEqual((yield inbox.cachedStructures([1, 2, 3], 1)), {2: b"two"})
        self.assertEqual(len((yield inbox.messages())), 3)
        token, _, _ = yield inbox.messagesIfChanged(None)
        yield inbox.setFlags([1], ["\\Seen"], "add")
        self.assertIsNotNone((yield inbox.messagesIfChanged(token))[2])
        conn = sqlite3.connect(self.mailbox_dir / index.INDEX_NAME)
        try:
            self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], 3)
        finally:
            conn.close()


class ChangeCounterTests(StructuresTestCase):
    """Each folder's token (L{mailapp.store.changes}): the same while nothing changed, new after any change, by any process."""

    @inlineCallbacks
    def test_an_unchanged_folder_answers_its_token_without_its_messages(self):
        yield self.deliver(3)
        inbox = yield self.folder()
        token, uidnext, messages = yield inbox.messagesIfChanged(None)
        self.assertEqual([m.uid for m in messages], [1, 2, 3])
        self.assertEqual(uidnext, 4)
        again = yield inbox.messagesIfChanged(token)
        self.assertEqual(again, (token, 4, None))

    @inlineCallbacks
    def test_a_delivery_a_flag_change_an_expunge_and_a_move_each_change_the_token(self):
        yield self.deliver(3)
        inbox = yield self.folder()
        archive = yield self.folder("Archive")
        seen = set()
        token, _, _ = yield inbox.messagesIfChanged(None)
        seen.add(token)
        for change in (
            lambda: self.deliver(1, start=4),
            lambda: inbox.setFlags([1], ["\\Seen"], "add"),
            lambda: inbox.expunge([2]),
            lambda: inbox.moveTo([3], archive),
        ):
            yield change()
            token, _, messages = yield inbox.messagesIfChanged(token)
            self.assertIsNotNone(messages)
            self.assertNotIn(token, seen)
            seen.add(token)
        self.assertEqual([(m.uid, m.flags) for m in messages], [(1, frozenset({"\\Seen"})), (4, frozenset())])

    @inlineCallbacks
    def test_a_change_another_process_commits_changes_the_token(self):
        yield self.deliver(2)
        inbox = yield self.folder()
        token, _, _ = yield inbox.messagesIfChanged(None)
        conn = sqlite3.connect(self.mailbox_dir / index.INDEX_NAME)
        try:
            conn.execute(
                "UPDATE messages SET flags = ? WHERE folder = 'INBOX' AND uid = 2", (index.encode_flags(frozenset({"\\Flagged"})),)
            )
            conn.commit()
        finally:
            conn.close()
        changed, _, messages = yield inbox.messagesIfChanged(token)
        self.assertNotEqual(changed, token)
        self.assertEqual(messages[1].flags, frozenset({"\\Flagged"}))

    @inlineCallbacks
    def test_a_folder_made_again_or_rebuilt_never_shows_an_old_token(self):
        yield self.store.mailbox(ALICE).createFolder("Old")
        old = yield self.folder("Old")
        first, _, _ = yield old.messagesIfChanged(None)
        yield self.store.mailbox(ALICE).deleteFolder("Old")
        yield self.store.mailbox(ALICE).createFolder("Old")
        old = yield self.folder("Old")
        second, _, _ = yield old.messagesIfChanged(None)
        self.assertNotEqual(first, second)
        inbox = yield self.folder()
        before, _, _ = yield inbox.messagesIfChanged(None)
        index.reset_connections()
        damage_messages_page(self.mailbox_dir / index.INDEX_NAME)
        self.restart()
        inbox = yield self.folder()
        after, _, _ = yield inbox.messagesIfChanged(before)
        self.assertEqual(after[0], before[0])
        self.assertNotEqual(after, before)
