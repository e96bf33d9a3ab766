"""
IMAP's \\Recent as the store keeps it (L{mailapp.store.recent},
L{mailapp.interfaces.IFolder.claimRecent} and C{firstRecent}): each UID is
handed to one claim, whoever asks and from whichever connection (two
connections to the index are what two worker processes are), reading claims
nothing, the claim outlives a restart and moves with a RENAME, a folder
made again starts unclaimed, and a schema 5 index is migrated with every
message unclaimed. The fake store keeps the same contract.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.errors import NoSuchFolder
from mailapp.store import MaildirStore, index
from mailapp.store.names import mailbox_directory
from mailapp.store.recent import claim_recent
from mailapp.testing import FakeStore
from tests.index_schema import make_older, migrated_in_place

ALICE = "alice@example.test"
MESSAGE = b"Subject: hello\r\n\r\nbody line\r\n"


class _Contract:
    """What both stores promise; C{self.store} is set by the subclass."""

    store: Any

    @inlineCallbacks
    def deliver(self, count: int = 1) -> Any:
        for _ in range(count):
            writer = self.store.newMessage()
            yield writer.write(MESSAGE)
            yield writer.finish()
            yield self.store.deliver(writer, [ALICE])

    def folder(self, name: str = "INBOX") -> Any:
        return self.store.mailbox(ALICE).folder(name)

    @inlineCallbacks
    def test_a_claim_owns_the_unclaimed_uids_up_to_its_own_and_the_next_only_what_is_newer(self: Any) -> Any:
        yield self.deliver(3)
        inbox = yield self.folder()
        self.assertEqual((yield inbox.firstRecent()), 1)
        self.assertEqual((yield inbox.claimRecent(2)), range(1, 3))
        self.assertEqual((yield inbox.claimRecent(2)), range(3, 3))
        self.assertEqual((yield inbox.claimRecent(1)), range(3, 3))
        self.assertEqual((yield inbox.claimRecent(3)), range(3, 4))
        self.assertEqual((yield inbox.firstRecent()), 4)

    @inlineCallbacks
    def test_reading_the_first_recent_uid_claims_nothing(self: Any) -> Any:
        yield self.deliver(2)
        inbox = yield self.folder()
        for _ in range(3):
            self.assertEqual((yield inbox.firstRecent()), 1)
        self.assertEqual((yield inbox.claimRecent(2)), range(1, 3))

    @inlineCallbacks
    def test_a_renamed_folder_keeps_its_claim_and_a_folder_made_again_starts_unclaimed(self: Any) -> Any:
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Work")
        work = yield self.folder("Work")
        yield work.append(MESSAGE)
        yield work.append(MESSAGE)
        self.assertEqual((yield work.claimRecent(2)), range(1, 3))
        yield mailbox.renameFolder("Work", "Done")
        self.assertEqual((yield (yield self.folder("Done")).firstRecent()), 3)
        yield mailbox.deleteFolder("Done")
        yield mailbox.createFolder("Done")
        again = yield self.folder("Done")
        yield again.append(MESSAGE)
        self.assertEqual((yield again.claimRecent(1)), range(1, 2))

    @inlineCallbacks
    def test_claiming_or_reading_in_a_deleted_folder_fails_with_no_such_folder(self: Any) -> Any:
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Gone")
        gone = yield self.folder("Gone")
        yield mailbox.deleteFolder("Gone")
        yield self.assertFailure(gone.claimRecent(1), NoSuchFolder)
        yield self.assertFailure(gone.firstRecent(), NoSuchFolder)


class MaildirRecentTests(_Contract, TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "mail"
        self.store = MaildirStore(self.root, reactor=reactor)
        self.mailbox_dir = mailbox_directory(self.root, ALICE)

    def restart(self) -> None:
        index.reset_connections()
        self.store = MaildirStore(self.root, reactor=reactor)

    @inlineCallbacks
    def test_a_claim_outlives_a_restart(self) -> Any:
        yield self.deliver(2)
        self.assertEqual((yield (yield self.folder()).claimRecent(2)), range(1, 3))
        self.restart()
        yield self.deliver()
        inbox = yield self.folder()
        self.assertEqual((yield inbox.firstRecent()), 3)
        self.assertEqual((yield inbox.claimRecent(3)), range(3, 4))

    @inlineCallbacks
    def test_two_connections_claiming_at_once_never_own_the_same_uid(self) -> None:
        yield self.deliver()  # the index and INBOX exist
        path = self.mailbox_dir / index.INDEX_NAME
        owned: list[list[range]] = [[], []]
        errors: list[BaseException] = []
        claims = 200  # per connection, each one UID further: bounded in count, and in time by the join

        def claimer(mine: list[range]) -> None:
            conn = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
            try:
                for uid in range(1, claims + 1):
                    got = claim_recent(conn, "INBOX", uid)
                    assert got is not None
                    mine.append(got)
            except BaseException as e:  # reported below, on the test's thread
                errors.append(e)
            finally:
                conn.close()

        threads = [threading.Thread(target=claimer, args=(mine,)) for mine in owned]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertFalse(any(thread.is_alive() for thread in threads))
        self.assertEqual(errors, [])
        every = [uid for mine in owned for claim in mine for uid in claim]
        # Each UID from 1 to the last claimed went to exactly one claim, whichever connection made it.
        self.assertEqual(sorted(every), list(range(1, claims + 1)))

    @inlineCallbacks
    def test_a_schema_5_index_is_migrated_with_every_message_unclaimed(self) -> Any:
        yield self.deliver(2)
        make_older(self.mailbox_dir, 5, "ALTER TABLE folders DROP COLUMN first_recent_uid")
        self.store = MaildirStore(self.root, reactor=reactor)
        inbox = yield self.folder()
        self.assertEqual((yield inbox.firstRecent()), 1)
        self.assertEqual((yield inbox.claimRecent(2)), range(1, 3))
        self.assertTrue(migrated_in_place(self.mailbox_dir))


class FakeRecentTests(_Contract, TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
