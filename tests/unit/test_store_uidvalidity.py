"""
UIDVALIDITY is new for every folder made, whichever process makes it: a
name deleted and made again, or renamed onto, never shows a UIDVALIDITY it
had (RFC 3501 2.3.1.1), even when two store objects (two worker
processes) make folders within one second, or after a restart.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.store import MaildirStore, index, uidvalidity
from mailapp.store.names import mailbox_directory
from tests.index_schema import make_older, migrated_in_place

ALICE = "alice@example.test"

#: One process's loop: make folder C{name}, read its UIDVALIDITY, delete it;
#: bounded in count (argv[3]); prints the UIDVALIDITYs as JSON.
_CHURN = """
import json, sys
from pathlib import Path
from twisted.internet import task
from mailapp.store import MaildirStore

async def churn(reactor, root, name, count):
    mailbox = MaildirStore(Path(root), reactor=reactor).mailbox("alice@example.test")
    seen = []
    for _ in range(count):
        await mailbox.createFolder(name)
        seen.append((await (await mailbox.folder(name)).status()).uidvalidity)
        await mailbox.deleteFolder(name)
    print(json.dumps(seen))

task.react(lambda reactor: __import__("twisted.internet.defer", fromlist=["Deferred"]).Deferred.fromCoroutine(
    churn(reactor, sys.argv[1], sys.argv[2], int(sys.argv[3]))))
"""


class UIDValidityTests(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "mail"
        self.mailbox_dir = mailbox_directory(self.root, ALICE)

    def tearDown(self) -> None:
        index.reset_connections()

    def store(self) -> MaildirStore:
        return MaildirStore(self.root, reactor=reactor)

    @inlineCallbacks
    def validity(self, store: MaildirStore, name: str) -> Any:
        return (yield (yield store.mailbox(ALICE).folder(name)).status()).uidvalidity

    @inlineCallbacks
    def test_two_stores_remaking_one_name_in_a_frozen_second_never_repeat_a_uidvalidity(self) -> Any:
        first, second = self.store(), self.store()
        yield first.mailbox(ALICE).createFolder("Warm")  # the index and the default folders exist
        seen = []
        with mock.patch.object(uidvalidity.time, "time", return_value=1_700_000_000.0):
            for _ in range(25):  # bounded: 25 rounds of two creates and two deletes
                for store in (first, second):
                    yield store.mailbox(ALICE).createFolder("Again")
                    seen.append((yield self.validity(store, "Again")))
                    yield store.mailbox(ALICE).deleteFolder("Again")
        self.assertEqual(len(set(seen)), len(seen))
        self.assertEqual(seen, sorted(seen))

    @inlineCallbacks
    def test_two_stores_making_folders_at_once_never_share_a_uidvalidity(self) -> Any:
        first, second = self.store(), self.store()
        yield first.mailbox(ALICE).createFolder("Warm")
        with mock.patch.object(uidvalidity.time, "time", return_value=1_700_000_000.0):
            yield gatherResults(
                [store.mailbox(ALICE).createFolder(f"{label}{n}") for n in range(20) for label, store in (("A", first), ("B", second))]
            )
            seen = yield gatherResults([self.validity(first, f"{label}{n}") for n in range(20) for label in "AB"])
        self.assertEqual(len(set(seen)), 40)

    def test_two_processes_remaking_folders_within_a_second_never_repeat_a_uidvalidity(self) -> None:
        rounds = 40  # per process, each a CREATE, a STATUS and a DELETE: about a second's work, bounded by the timeout
        processes = [
            subprocess.Popen([sys.executable, "-c", _CHURN, str(self.root), name, str(rounds)], stdout=subprocess.PIPE)
            for name in ("Again", "Once more")
        ]
        seen: list[int] = []
        for process in processes:
            out, _ = process.communicate(timeout=120)
            self.assertEqual(process.returncode, 0)
            seen.extend(json.loads(out))
        self.assertEqual(len(seen), 2 * rounds)
        self.assertEqual(len(set(seen)), len(seen))

    @inlineCallbacks
    def test_a_name_made_again_after_a_restart_with_the_clock_behind_gets_a_new_uidvalidity(self) -> Any:
        store = self.store()
        yield store.mailbox(ALICE).createFolder("Again")
        before = yield self.validity(store, "Again")
        yield store.mailbox(ALICE).deleteFolder("Again")
        index.reset_connections()
        with mock.patch.object(uidvalidity.time, "time", return_value=before - 3600.0):
            store = self.store()
            yield store.mailbox(ALICE).createFolder("Again")
            after = yield self.validity(store, "Again")
        self.assertGreater(after, before)

    @inlineCallbacks
    def test_a_folder_renamed_onto_a_deleted_name_never_shows_that_names_uidvalidity(self) -> Any:
        first, second = self.store(), self.store()
        with mock.patch.object(uidvalidity.time, "time", return_value=1_700_000_000.0):
            yield first.mailbox(ALICE).createFolder("Target")
            gone = yield self.validity(first, "Target")
            yield first.mailbox(ALICE).deleteFolder("Target")
            yield second.mailbox(ALICE).createFolder("Source")
            yield second.mailbox(ALICE).renameFolder("Source", "Target")
            now = yield self.validity(first, "Target")
        self.assertNotEqual(now, gone)

    @inlineCallbacks
    def test_a_schema_6_index_is_migrated_and_new_folders_go_above_every_listed_uidvalidity(self) -> Any:
        store = self.store()
        yield store.mailbox(ALICE).createFolder("Old")
        old = yield self.validity(store, "Old")
        make_older(self.mailbox_dir, 6, "DROP TABLE uidvalidity")
        with mock.patch.object(uidvalidity.time, "time", return_value=old - 3600.0):
            store = self.store()
            yield store.mailbox(ALICE).createFolder("New")
            new = yield self.validity(store, "New")
        self.assertEqual(new, old + 1)
        self.assertTrue(migrated_in_place(self.mailbox_dir))

    def test_a_uidvalidity_is_taken_only_inside_the_write_transaction(self) -> None:
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.execute("CREATE TABLE folders (name TEXT PRIMARY KEY, uidvalidity INTEGER NOT NULL)")
        uidvalidity.add_uidvalidity_table(conn)
        self.assertRaises(RuntimeError, uidvalidity.next_uidvalidity, conn)
        conn.execute("BEGIN IMMEDIATE")
        taken = uidvalidity.next_uidvalidity(conn)
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        self.assertGreater(uidvalidity.next_uidvalidity(conn), taken)
        conn.execute("ROLLBACK")
        # Recorded with the commit, forgotten with the rollback, as the folder rows they were for.
        self.assertEqual(conn.execute("SELECT last FROM uidvalidity").fetchone()[0], taken)
