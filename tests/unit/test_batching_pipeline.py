"""
Two batches in flight (issue 21): the next batch's prepare stage runs while
the previous batch runs, and no Deferred of a later batch fires before an
earlier batch is done. A thread pool the test finishes job by job, in any
order, stands in for the worker threads.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from mailapp.store import connections, ensure_mailbox, messagefile
from mailapp.store.batching import BatchRunner
from mailapp.store.database import INDEX_NAME
from mailapp.store.committer import GroupCommitter, _Call, _Delivery, _Placement
from mailapp.testing.threads import HeldThreadPool, SynchronousReactor, SynchronousThreadPool

ALICE = "alice@example.test"
MESSAGE = b"Subject: hello\r\n\r\nbody line\r\n"


class ManualThreadPool(SynchronousThreadPool):
    """Keeps every job until the test finishes it (L{finish}), in whatever order it likes."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[tuple[Callable[[bool, Any], object] | None, Callable[..., Any], tuple[Any, ...]]] = []

    def callInThreadWithCallback(self, onResult: Any, func: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.waiting.append((onResult, func, args))

    def finish(self, index: int = 0) -> None:
        onResult, func, args = self.waiting.pop(index)
        super().callInThreadWithCallback(onResult, func, *args)


class Recorder:
    """A prepare and a run stage that record what they were given, and fail on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.fail_run: set[str] = set()
        self.fail_prepare: set[str] = set()

    def prepare(self, jobs: list[str]) -> None:
        self.calls.append(("prepare", jobs))
        if self.fail_prepare & set(jobs):
            raise OSError("prepare failed")

    def run(self, jobs: list[str]) -> list[Any]:
        self.calls.append(("run", jobs))
        if self.fail_run & set(jobs):
            raise OSError("run failed")
        return [f"done {job}" for job in jobs]


class PipelineTests(TestCase):
    def setUp(self) -> None:
        self.pool = ManualThreadPool()
        self.stages = Recorder()
        self.runner: BatchRunner[str] = BatchRunner(SynchronousReactor(Clock(), self.pool), self.pool, self.stages.run, self.stages.prepare)
        self.fired: list[tuple[str, Any]] = []

    def submit(self, job: str) -> None:
        d = self.runner.submit(job)
        d.addCallbacks(lambda result: self.fired.append((job, result)), lambda failure: self.fired.append((job, failure.value)))

    def waiting(self) -> list[tuple[str, list[str]]]:
        """The stages handed to the pool and not finished yet, as (stage, jobs)."""
        return [(func.__name__, list(args[0])) for _, func, args in self.pool.waiting]

    def test_the_next_batch_prepares_while_the_previous_one_runs(self) -> None:
        self.submit("a")
        self.pool.finish()  # a's prepare: a's run is handed to the pool
        self.submit("b")
        self.assertEqual(self.waiting(), [("run", ["a"]), ("prepare", ["b"])])

    def test_a_batch_runs_only_after_the_previous_batch_has_run(self) -> None:
        self.submit("a")
        self.pool.finish()
        self.submit("b")
        self.pool.finish(1)  # b prepared before a's run is over
        self.assertEqual(self.waiting(), [("run", ["a"])])
        self.assertEqual(self.fired, [])
        self.pool.finish()
        self.assertEqual(self.fired, [("a", "done a")])
        self.assertEqual(self.waiting(), [("run", ["b"])])
        self.pool.finish()
        self.assertEqual(self.fired, [("a", "done a"), ("b", "done b")])
        self.assertTrue(self.runner.idle())

    def test_jobs_arriving_meanwhile_wait_while_two_batches_are_in_flight(self) -> None:
        self.submit("a")
        self.pool.finish()
        self.submit("b")
        self.pool.finish(1)
        self.submit("c")
        self.submit("d")
        self.assertEqual(self.waiting(), [("run", ["a"])])
        self.pool.finish()
        self.assertEqual(self.waiting(), [("prepare", ["c", "d"]), ("run", ["b"])])
        self.assertEqual(self.runner.batches, 3)

    def test_a_failed_run_fails_its_own_batch_and_not_the_next(self) -> None:
        self.stages.fail_run = {"a"}
        self.submit("a")
        self.pool.finish()
        self.submit("b")
        self.pool.finish(1)
        self.pool.finish()  # a's run raises
        self.assertEqual([job for job, _ in self.fired], ["a"])
        self.assertIsInstance(self.fired[0][1], OSError)
        self.pool.finish()
        self.assertEqual(self.fired[1], ("b", "done b"))

    def test_a_failed_prepare_fails_its_batch_in_its_turn_without_running_it(self) -> None:
        self.stages.fail_prepare = {"b"}
        self.submit("a")
        self.pool.finish()
        self.submit("b")
        self.pool.finish(1)  # b's prepare raises while a runs
        self.assertEqual(self.fired, [])
        self.pool.finish()
        self.assertEqual(self.fired[0], ("a", "done a"))
        self.assertEqual([job for job, _ in self.fired], ["a", "b"])
        self.assertIsInstance(self.fired[1][1], OSError)
        self.assertNotIn(("run", ["b"]), self.stages.calls)
        self.assertTrue(self.runner.idle())

    def test_a_job_submitted_from_a_callback_waits_until_its_batch_has_fired(self) -> None:
        # Threads that answer at once once released: without the wait, the job submitted from
        # b's callback would form, run and fire its own batch before c (b's batch-mate) fired.
        pool = HeldThreadPool()
        self.runner = BatchRunner(SynchronousReactor(Clock(), pool), pool, self.stages.run, self.stages.prepare)
        pool.held = True
        self.submit("a")
        self.runner.submit("b").addCallback(lambda _: self.submit("x"))
        self.submit("c")
        pool.held = False
        pool.run()
        self.assertEqual([job for job, _ in self.fired], ["a", "c", "x"])
        self.assertIn(("run", ["b", "c"]), self.stages.calls)
        self.assertTrue(self.runner.idle())

    def test_without_a_prepare_stage_one_batch_is_in_flight(self) -> None:
        runner: BatchRunner[str] = BatchRunner(SynchronousReactor(Clock(), self.pool), self.pool, self.stages.run)
        runner.submit("a")
        runner.submit("b")
        runner.submit("c")
        self.assertEqual(self.waiting(), [("run", ["a"])])
        self.pool.finish()
        self.assertEqual(self.waiting(), [("run", ["b", "c"])])


class CommitterPipelineTests(TestCase):
    """The store's committer: the prepare stage writes and syncs data, and takes no UID, lock or index row."""

    def setUp(self) -> None:
        state = Path(self.mktemp())
        self.mailbox = ensure_mailbox(state, ALICE)
        self.spool = state / "mail" / ".spool"
        self.spool.mkdir()
        self.pool = ManualThreadPool()
        self.committer = GroupCommitter(SynchronousReactor(Clock(), self.pool), self.pool)
        self.addCleanup(connections.reset_connections)

    def delivery(self, name: str) -> _Delivery:
        return _Delivery(self.spool / name, name, len(MESSAGE), 0.0, [_Placement(self.mailbox, ALICE, "INBOX")], synced=False, data=MESSAGE)

    def drain(self) -> None:
        for _ in range(20):
            if not self.pool.waiting:
                return
            self.pool.finish()
        self.fail("the committer kept handing work to the pool")

    def indexed_uids(self) -> list[int]:
        with sqlite3.connect(self.mailbox / INDEX_NAME) as conn:
            return [uid for (uid,) in conn.execute("SELECT uid FROM messages WHERE folder = 'INBOX' ORDER BY uid")]

    def test_uids_follow_the_batches_order_when_the_second_is_prepared_first(self) -> None:
        results: list[tuple[str, Any]] = []
        first, second = self.delivery("first"), self.delivery("second")
        self.committer.submit(first).addCallback(lambda uids: results.append(("first", uids)))
        self.pool.finish()  # first's data written and synced
        self.committer.submit(second).addCallback(lambda uids: results.append(("second", uids)))
        self.pool.finish(1)  # second's prepare, while first's commit waits
        self.assertTrue(second.prepared)
        self.assertEqual((self.spool / "second").read_bytes(), messagefile.encode(MESSAGE)[0])
        self.assertEqual(second.uids, [])
        self.assertEqual(self.indexed_uids(), [])
        self.pool.finish()
        self.assertEqual(results, [("first", [1])])
        self.assertEqual(self.indexed_uids(), [1])
        self.pool.finish()
        self.assertEqual(results, [("first", [1]), ("second", [2])])
        self.assertEqual(self.indexed_uids(), [1, 2])
        self.assertEqual(sorted(path.name for path in self.spool.iterdir()), [])

    def test_a_change_queued_while_a_batch_commits_runs_after_it_and_before_the_next_delivery(self) -> None:
        order: list[str] = []
        self.committer.submit(self.delivery("first")).addCallback(lambda _: order.append("first delivered"))
        self.pool.finish()
        self.committer.submit(_Call(lambda: order.append("call ran"), ()))
        self.committer.submit(self.delivery("second")).addCallback(lambda _: order.append("second delivered"))
        self.assertEqual(len(self.pool.waiting), 1)  # the first batch's commit: the call waits for it
        self.assertEqual(order, [])
        self.drain()
        self.assertEqual(order, ["first delivered", "call ran", "second delivered"])
        self.assertEqual(self.indexed_uids(), [1, 2])

    def test_a_batch_of_changes_alone_goes_straight_to_its_commit_stage(self) -> None:
        ran: list[str] = []
        self.committer.submit(_Call(lambda: ran.append("flags"), ()))
        self.assertEqual(len(self.pool.waiting), 1)
        self.pool.finish()  # the first trip to a thread is the commit stage itself
        self.assertEqual(ran, ["flags"])
        self.assertEqual(self.pool.waiting, [])

    def test_a_prepare_error_reaches_only_its_own_job(self) -> None:
        self.committer.submit(self.delivery("first"))
        self.pool.finish()
        broken = self.delivery("broken")
        broken.source = self.spool / "missing-directory" / "broken"
        outcomes: list[Any] = []
        self.committer.submit(broken).addBoth(outcomes.append)
        self.committer.submit(self.delivery("second")).addBoth(outcomes.append)
        self.pool.finish(1)
        self.drain()
        self.assertIsInstance(outcomes[0], Failure)
        self.assertEqual(outcomes[1], [2])
        self.assertEqual(self.indexed_uids(), [1, 2])
