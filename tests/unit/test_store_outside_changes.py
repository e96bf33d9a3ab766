"""
Changes other tools make to a Maildir while the server runs: a file another
delivery agent drops into ``new/``, a file deleted or renamed behind the
store. L{MaildirFolder.refresh} takes them in and publishes them; our own
changes never make it rescan.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.store import EXPUNGED, ADDED, FLAGS_CHANGED, MaildirStore, index, outside, reconcile
from mailapp.store.names import mailbox_directory

ALICE = "alice@example.test"


def message(number: int) -> bytes:
    return b"Subject: message %d\r\n\r\nbody %d\r\n" % (number, number)


class OutsideChangeTestCase(TestCase):
    def setUp(self) -> None:
        index.reset_connections()
        self.addCleanup(index.reset_connections)
        self.root = Path(self.mktemp()) / "mail"
        self.store = MaildirStore(self.root, reactor=reactor)
        self.mailbox_dir = mailbox_directory(self.root, ALICE)
        self.events: list[tuple[str, tuple[int, ...]]] = []
        self.store.events.subscribe(ALICE, "INBOX", lambda event: self.events.append((event.kind, event.uids)))
        self.reconciles = 0
        real = reconcile.reconcile_running_folder

        def counted(*args: Any) -> Any:
            self.reconciles += 1
            self.reconciled.append(args[1])
            return real(*args)

        self.reconciled: list[str] = []

        self.patch(reconcile, "reconcile_running_folder", counted)

    @inlineCallbacks
    def deliver(self, count: int):
        for number in range(1, count + 1):
            writer = self.store.newMessage()
            yield writer.write(message(number))
            yield writer.finish()
            yield self.store.deliver(writer, [ALICE])

    @inlineCallbacks
    def inbox(self):
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        return folder

    def file_of(self, uid: int) -> Path:
        for sub in ("new", "cur"):
            for name in os.listdir(self.mailbox_dir / sub):
                parsed = index.parse_filename(name)
                if parsed is not None and parsed.uid == uid:
                    return self.mailbox_dir / sub / name
        raise AssertionError(f"no file for UID {uid}")

    @inlineCallbacks
    def test_a_file_another_agent_drops_into_new_gets_the_next_uid_at_refresh_and_is_announced(self):
        yield self.deliver(2)
        folder = yield self.inbox()
        del self.events[:]
        # What procmail or maildrop writes: tmp/ first, then a rename into new/, a name without U=.
        (self.mailbox_dir / "tmp" / "1733000000.M1P2Q3.otherhost").write_bytes(b"Subject: dropped\n\nby procmail\n")
        os.rename(self.mailbox_dir / "tmp" / "1733000000.M1P2Q3.otherhost", self.mailbox_dir / "new" / "1733000000.M1P2Q3.otherhost")

        yield folder.refresh()

        messages = yield folder.messages()
        self.assertEqual([m.uid for m in messages], [1, 2, 3])
        self.assertEqual(self.events, [(ADDED, (3,))])
        data = yield folder.readMessage(3, 10_000)
        self.assertEqual(data, b"Subject: dropped\r\n\r\nby procmail\r\n")
        status = yield folder.status()
        self.assertEqual(status.uidnext, 4)

    @inlineCallbacks
    def test_a_status_that_refreshes_counts_a_file_dropped_behind_the_store_and_announces_it(self):
        yield self.deliver(2)
        folder = yield self.inbox()
        status = yield folder.status(refresh=True)
        self.assertEqual((status.messages, self.reconciles), (2, 0))
        del self.events[:]
        (self.mailbox_dir / "new" / "1733000000.M1P2Q3.otherhost").write_bytes(b"Subject: dropped\n\nby procmail\n")
        status = yield folder.status(refresh=True)
        self.assertEqual((status.messages, status.uidnext, self.reconciles), (3, 4, 1))
        self.assertEqual(self.events, [(ADDED, (3,))])

    @inlineCallbacks
    def test_a_file_deleted_behind_the_store_is_expunged_at_refresh_and_its_uid_never_reused(self):
        yield self.deliver(3)
        folder = yield self.inbox()
        del self.events[:]
        self.file_of(3).unlink()

        yield folder.refresh()

        messages = yield folder.messages()
        self.assertEqual([m.uid for m in messages], [1, 2])
        self.assertEqual(self.events, [(EXPUNGED, (3,))])
        self.assertEqual(index.read_meta(self.mailbox_dir)["uidnext"], 4)
        yield self.deliver(1)
        messages = yield folder.messages()
        self.assertEqual([m.uid for m in messages], [1, 2, 4])

    @inlineCallbacks
    def test_a_flag_change_by_another_tool_is_taken_from_the_new_name_at_refresh(self):
        yield self.deliver(1)
        folder = yield self.inbox()
        del self.events[:]
        old = self.file_of(1)
        os.rename(old, self.mailbox_dir / "cur" / (old.name + ":2,S"))  # what mutt does when it reads it

        yield folder.refresh()

        messages = yield folder.messages()
        self.assertEqual(messages[0].flags, frozenset({"\\Seen"}))
        self.assertEqual(self.events, [(FLAGS_CHANGED, (1,))])

    @inlineCallbacks
    def test_a_copy_from_another_maildir_with_a_uid_already_given_out_gets_a_new_one(self):
        yield self.deliver(3)
        folder = yield self.inbox()
        yield folder.expunge([2])
        # Another account's message, copied in with its name (and so its U=2).
        other = self.file_of(1)
        copied = self.mailbox_dir / "new" / other.name.replace(other.name.split(",")[0], "1733000001.M9P9Q9.elsewhere").replace("U=1", "U=2")
        shutil.copy(other, copied)
        del self.events[:]

        yield folder.refresh()

        messages = yield folder.messages()
        self.assertEqual([m.uid for m in messages], [1, 3, 4])
        self.assertEqual(self.events, [(ADDED, (4,))])

    @inlineCallbacks
    def test_our_own_deliveries_flag_changes_expunges_copies_and_moves_cause_no_rescan(self):
        yield self.deliver(4)
        folder = yield self.inbox()
        trash = yield self.store.mailbox(ALICE).folder("Trash")
        # The first look at each folder in a process scans it once.
        yield folder.refresh()
        yield trash.refresh()
        del self.reconciled[:]
        yield folder.setFlags([1], ["\\Seen"], "add")
        yield folder.expunge([2])
        yield folder.copyTo([3], trash)
        yield folder.moveTo([4], trash)
        yield folder.append(message(9))
        yield self.deliver(2)
        time.sleep(outside.GRANULARITY * 2)  # the stamps settle

        for _ in range(3):
            yield folder.refresh()
            yield trash.refresh()

        self.assertEqual(self.reconciled, [])

    @inlineCallbacks
    def test_a_file_dropped_in_the_same_clock_tick_as_our_last_change_is_still_seen(self):
        yield self.deliver(2)
        folder = yield self.inbox()
        yield folder.refresh()
        new = self.mailbox_dir / "new"
        before = os.stat(new)
        (new / "1733000000.M1P2Q3.otherhost").write_bytes(b"Subject: dropped\n\nsame tick\n")
        # A coarse file-system clock: the directory's time does not move.
        os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))

        yield folder.refresh()

        messages = yield folder.messages()
        self.assertEqual([m.uid for m in messages], [1, 2, 3])

    @inlineCallbacks
    def test_refresh_of_an_unchanged_10000_message_folder_costs_two_stats_and_no_listing(self):
        count = 10_000
        cur = self.mailbox_dir / "cur"
        cur.mkdir(parents=True)
        (self.mailbox_dir / "new").mkdir()
        (self.mailbox_dir / "tmp").mkdir()
        body = b"Subject: x\n\nbody\n"
        for uid in range(1, count + 1):
            (cur / f"1733000000.M{uid}P1.host,S={len(body)},W={len(body) + 3},U={uid}:2,S").write_bytes(body)
        old = time.time() - 10
        for sub in ("cur", "new"):
            os.utime(self.mailbox_dir / sub, (old, old))
        folder = yield self.inbox()
        yield folder.refresh()
        listings = []
        real_scandir = os.scandir
        self.patch(os, "scandir", lambda *a: listings.append(a) or real_scandir(*a))

        started = time.perf_counter()
        rounds = 200
        for _ in range(rounds):
            yield folder.refresh()
        per_refresh = (time.perf_counter() - started) / rounds

        self.assertEqual((listings, self.reconciles), ([], 0))
        self.assertLess(per_refresh, 0.005)
        # The check itself, without the trip to a worker thread.
        started = time.perf_counter()
        for _ in range(1000):
            self.assertFalse(outside.changed(self.mailbox_dir, lambda: (0, count)))
        print(f"\nrefresh of an unchanged {count}-message folder: {per_refresh * 1e6:.0f} us per call,"
              f" the check alone {(time.perf_counter() - started) * 1e3:.0f} us")


class OwnChangeUnderWayTests(TestCase):
    """A look from another thread while the store's own change is half made (L{outside.own_change})."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        for sub in ("new", "cur", "tmp"):
            (self.directory / sub).mkdir(parents=True)
        outside.remember(self.directory, outside.stamp(self.directory))
        self.addCleanup(outside.forget_all)

    def test_a_look_during_our_own_change_does_not_send_the_folder_to_be_reconciled(self) -> None:
        with outside.own_change(self.directory):
            # The file is in cur/, its index row not committed yet: the counts disagree.
            (self.directory / "cur" / "1733000000.M1P1.host,S=3,W=3,U=1:2,").write_bytes(b"abc")
            assert outside.changed(self.directory, lambda: (0, 0)) is False
        # After it: the stamp is ours, and unsettled, so the next look counts names against the index.
        assert outside.changed(self.directory, lambda: (0, 1)) is False
        assert outside.changed(self.directory, lambda: (0, 0)) is True

    def test_a_change_by_another_tool_before_ours_is_still_seen_after_it(self) -> None:
        (self.directory / "new" / "1733000000.M2P2.otherhost").write_bytes(b"x")
        with outside.own_change(self.directory):
            (self.directory / "cur" / "1733000000.M1P1.host,S=3,W=3,U=1:2,").write_bytes(b"abc")
        assert outside.changed(self.directory, lambda: (0, 1)) is True
