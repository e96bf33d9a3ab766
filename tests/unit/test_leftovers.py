"""Crash left-overs (spool files, the relay queue's temporary files) are swept every hour, not only at start."""

from __future__ import annotations

import os
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mailapp.leftovers import SWEEP_INTERVAL, LeftoverSweeper
from mailapp.relay.queue import Queue
from mailapp.store import MaildirStore


class _Counting:
    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def sweep(self):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.fail:
            raise OSError("disk went away")
        return succeed(0)


def _aged(path: Path, seconds: float) -> Path:
    path.write_bytes(b"left over")
    past = time.time() - seconds
    os.utime(path, (past, past))
    return path


class LeftoverSweeperTests(TestCase):
    def test_sweeps_at_start_then_every_hour_until_stopped_and_a_failure_does_not_stop_the_next(self) -> None:
        clock = Clock()
        good, bad = _Counting(), _Counting(fail=True)
        sweeper = LeftoverSweeper(clock, [bad, good])
        sweeper.startService()
        self.assertEqual((good.calls, bad.calls), (1, 1))
        clock.advance(SWEEP_INTERVAL - 1)
        self.assertEqual(good.calls, 1)
        clock.advance(1)
        clock.advance(SWEEP_INTERVAL)
        self.assertEqual((good.calls, bad.calls), (3, 3))
        sweeper.stopService()
        clock.advance(SWEEP_INTERVAL * 3)
        self.assertEqual(good.calls, 3)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 3)

    @inlineCallbacks
    def test_an_hourly_sweep_removes_spool_and_queue_files_older_than_an_hour_and_keeps_younger_ones(self):
        state = Path(self.mktemp())
        store = MaildirStore(state / "mail", reactor=reactor)
        queue = Queue(state / "queue", reactor)
        clock = Clock()
        sweeper = LeftoverSweeper(clock, [store, queue])
        sweeper.startService()
        yield sweeper._running_sweep
        # Left by crashes after the start: an hour later they are old.
        old_spool = _aged(store.spool_dir / "crashed.spool", 2 * 3600)
        young_spool = _aged(store.spool_dir / "receiving.spool", 60)
        old_tmp = _aged(queue.layout.tmp / "Q1.json", 2 * 3600)
        orphan = _aged(queue.layout.message("Q2"), 2 * 3600)
        named = _aged(queue.layout.message("Q3"), 2 * 3600)
        queue.layout.envelope("Q3").write_text("{}")

        clock.advance(SWEEP_INTERVAL)
        yield sweeper._running_sweep

        self.assertEqual(
            [p.exists() for p in (old_spool, young_spool, old_tmp, orphan, named)], [False, True, False, False, True]
        )
        yield sweeper.stopService()
