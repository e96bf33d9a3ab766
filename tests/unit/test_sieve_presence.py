"""
L{mailapp.sieve.presence}: a delivery whose recipients have no Sieve script
is answered without a thread trip, and one whose recipient has a script,
activated by any process before the delivery asked, is always filtered.
Real inotify on a temporary directory; the thread trips are counted.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from mailapp.sieve import Envelope
from mailapp.sieve.filter import SieveFilter
from mailapp.sieve.presence import ScriptPresence
from mailapp.sieve.scripts import ScriptStore

ALICE, BOB = "alice@example.test", "Bob@Example.test"
MESSAGE = b"From: dave@example.net\r\nSubject: hello\r\n\r\nhi\r\n"
FILE_IT = 'require "fileinto"; fileinto "Filed";'


class Held:
    """A finished message held in memory, as the Maildir writer holds a small one."""

    def __init__(self, data: bytes) -> None:
        self.pending = data


class Trips:
    """A run_blocking that runs at once and counts the trips it stands for."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, function: Any, *args: Any) -> Any:
        self.count += 1
        return maybeDeferred(function, *args)


class ScriptPresenceTests(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.scripts = ScriptStore(self.root)
        #: Another process's view of the same directory (ManageSieve on another worker, the CLI).
        self.elsewhere = ScriptStore(self.root)
        self.trips = Trips()

    def start(self, retry_seconds: float = 5.0) -> ScriptPresence:
        # Its own rescans run at once, uncounted: only the filter's trips are.
        presence = ScriptPresence(self.scripts, reactor, maybeDeferred, retry_seconds=retry_seconds)
        presence.startService()
        self.addCleanup(presence.stopService)
        self.assertTrue(presence.whenKnown.called)
        return presence

    def delivered(self, presence: ScriptPresence, accounts: list[str]) -> tuple[Any, int]:
        """What the filter answered for C{accounts}, and the thread trips it took."""
        sieve = SieveFilter(self.scripts, self.trips, reactor, presence=presence)
        before = self.trips.count
        results: list[Any] = []
        sieve.filter(
            accounts, {a: Envelope("dave@example.net", a, False) for a in accounts}, Held(MESSAGE), {a: "INBOX" for a in accounts}
        ).addCallback(results.append)
        return results[0], self.trips.count - before

    def test_a_delivery_to_accounts_without_scripts_takes_no_trip(self) -> None:
        presence = self.start()
        self.assertEqual(self.delivered(presence, [ALICE, BOB]), (None, 0))

    def test_a_script_activated_elsewhere_is_seen_by_the_very_next_delivery(self) -> None:
        presence = self.start()
        self.elsewhere.put(ALICE, "main", FILE_IT)
        self.elsewhere.activate(ALICE, "main")
        # No turn of the reactor in between: the pending events are read first.
        filtered, trips = self.delivered(presence, [ALICE])
        self.assertEqual(trips, 1)
        self.assertEqual(filtered.outcomes[ALICE].placements[0].folder, "Filed")
        # Bob has none: still answered at once.
        self.assertEqual(self.delivered(presence, [BOB]), (None, 0))

    def test_an_address_is_matched_whatever_its_case(self) -> None:
        self.scripts.put(BOB, "main", FILE_IT)
        self.scripts.activate(BOB, "main")
        presence = self.start()
        self.assertTrue(presence.may_filter(["bob@example.test"]))

    def test_deactivating_lets_deliveries_skip_the_trip_again(self) -> None:
        self.scripts.put(ALICE, "main", FILE_IT)
        self.scripts.activate(ALICE, "main")
        presence = self.start()
        self.assertTrue(presence.may_filter([ALICE]))
        self.elsewhere.activate(ALICE, None)
        self.assertEqual(self.delivered(presence, [ALICE]), (None, 0))

    def test_a_global_before_script_makes_every_delivery_filtered(self) -> None:
        presence = self.start()
        self.elsewhere.put_global("before", 'require "fileinto"; fileinto "Everyone";')
        filtered, trips = self.delivered(presence, [BOB])
        self.assertEqual(trips, 1)
        self.assertEqual(filtered.outcomes[BOB].placements[0].folder, "Everyone")

    def test_an_active_file_written_without_its_entry_is_marked_at_start(self) -> None:
        # A script activated by an older version, or by hand: an active file and no entry.
        directory = self.scripts.directory(ALICE)
        (directory / "scripts").mkdir(parents=True)
        (directory / "scripts" / "main.sieve").write_text(FILE_IT)
        (directory / "active").write_text("main")
        presence = self.start()
        self.assertTrue(presence.may_filter([ALICE]))
        self.assertFalse(presence.may_filter([BOB]))

    @inlineCallbacks
    def test_a_watched_directory_removed_or_replaced_is_watched_again(self) -> Any:
        presence = self.start(retry_seconds=0.05)
        self.assertFalse(presence.may_filter([BOB]))
        shutil.rmtree(self.scripts.markers)
        self.assertTrue(presence.may_filter([BOB]))
        self.assertTrue(presence.may_filter([BOB]))
        yield deferLater(reactor, 0.2, lambda: None)
        # Made again and watched: Bob has no script, and Alice's new one is seen at once.
        self.assertFalse(presence.may_filter([BOB]))
        self.elsewhere.put(ALICE, "main", FILE_IT)
        self.elsewhere.activate(ALICE, "main")
        self.assertTrue(presence.may_filter([ALICE]))
        # A directory moved away and another put in its place (a restore from a backup).
        self.scripts.markers.rename(self.root / "old-markers")
        self.scripts.markers.mkdir()
        self.assertTrue(presence.may_filter([ALICE]))
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertTrue(presence.may_filter([ALICE]))  # the start marked its active file again
        self.assertFalse(presence.may_filter([BOB]))
        self.flushLoggedErrors(FileNotFoundError)

    def test_a_deactivation_racing_with_an_activation_leaves_the_entry_of_the_active_script(self) -> None:
        self.scripts.put(ALICE, "main", FILE_IT)
        unmark = self.scripts._unmark

        def activated_meanwhile(account: str) -> None:
            # Another process's activate() runs between our unlink and our removal of the entry.
            self.elsewhere.activate(account, "main")
            unmark(account)

        self.scripts._unmark = activated_meanwhile  # type: ignore[method-assign]
        self.scripts.activate(ALICE, None)
        self.assertEqual(self.scripts.active_name(ALICE), "main")
        self.assertTrue((self.scripts.markers / ScriptStore.directory_name(ALICE)).exists())

    def test_before_it_has_looked_every_delivery_takes_the_trip(self) -> None:
        presence = ScriptPresence(self.scripts, reactor, self.trips)
        self.assertTrue(presence.may_filter([BOB]))
