"""
Group commit, as a mechanism: jobs that arrive while a batch runs on a worker
thread wait and form the next batch, so that whatever a batch costs once (a
sync, an index commit) is shared by every job in it.

With a C{prepare} stage, batches are pipelined two deep: a batch's
C{prepare} (work on its own jobs' data only, such as writing and syncing
their new files) runs while the batch before it is still in C{run}, so that
one batch's data sync overlaps the other's commit and the throughput follows
the disk and the cores rather than one batch's latency. C{run} stays
strictly serial, in the order the batches formed, and a job's Deferred fires
only after its own batch's C{run} and after every earlier batch's Deferreds:
nothing a later batch does is announced before an earlier batch is done.

The store's committer (prepare: write and sync the data; run: lock, link,
index) and the relay queue's writer (run only) are both this with their own
batch functions.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

Job = TypeVar("Job")


class _Batch(Generic[Job]):
    """One batch in flight: its jobs with their Deferreds, and where it is."""

    def __init__(self, entries: list[tuple[Job, Deferred[Any]]]) -> None:
        self.entries = entries
        #: None while C{prepare} runs; True once it returned; its Failure if it raised.
        self.prepared: bool | Failure | None = None
        self.running = False

    @property
    def jobs(self) -> list[Job]:
        return [job for job, _ in self.entries]


class BatchRunner(Generic[Job]):
    """
    Runs C{run(jobs)} on C{threadpool}, one batch at a time. C{run} returns
    one outcome per job, in order: an exception fails that job's Deferred,
    anything else is its result.

    With C{prepare}: each batch first runs C{prepare(jobs)} on C{threadpool},
    one batch at a time, while the batch before it may still be in C{run}
    (at most two batches in flight). C{prepare} must touch only its own
    jobs' data, never what C{run} serializes (locks, UIDs, indexes); if it
    raises, every job of its batch fails with that, in its turn, and C{run}
    is not called for it. A batch none of whose jobs C{needs_prepare}
    skips the stage (and its trip to a thread).
    """

    #: Batches in flight at most with a C{prepare} stage: one preparing while one runs.
    DEPTH = 2

    def __init__(
        self,
        reactor: Any,
        threadpool: Any,
        run: Callable[[list[Job]], list[Any]],
        prepare: Callable[[list[Job]], None] | None = None,
        needs_prepare: Callable[[Job], bool] = lambda job: True,
    ) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._run = run
        self._prepare = prepare
        self._needs_prepare = needs_prepare
        self._pending: list[tuple[Job, Deferred[Any]]] = []
        #: The batches formed and not yet answered, oldest first.
        self._inflight: deque[_Batch[Job]] = deque()
        #: Deferreds being fired: a job submitted from their callbacks waits for the loop to end.
        self._firing = False
        #: Batches run and jobs submitted so far (how well batching works).
        self.batches = 0
        self.jobs = 0

    def submit(self, job: Job) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._pending.append((job, d))
        self.jobs += 1
        self._kick()
        return d

    def idle(self) -> bool:
        return not self._inflight and not self._pending

    def _kick(self) -> None:
        if self._firing:
            return
        depth = 1 if self._prepare is None else self.DEPTH
        preparing = any(batch.prepared is None for batch in self._inflight)
        if self._pending and not preparing and len(self._inflight) < depth:
            self._form()
        if self._inflight:
            head = self._inflight[0]
            if head.prepared is not None and not head.running:
                self._start(head)

    def _form(self) -> None:
        batch = _Batch(self._pending)
        self._pending = []
        self._inflight.append(batch)
        self.batches += 1
        if self._prepare is None or not any(self._needs_prepare(job) for job in batch.jobs):
            batch.prepared = True  # nothing to prepare: no trip to a thread and back
            return

        def prepared(outcome: object) -> None:
            batch.prepared = outcome if isinstance(outcome, Failure) else True
            self._kick()

        deferToThreadPool(self._reactor, self._threadpool, self._prepare, batch.jobs).addBoth(prepared)

    def _start(self, batch: _Batch[Job]) -> None:
        batch.running = True
        if isinstance(batch.prepared, Failure):
            self._finished(batch, batch.prepared)
            return
        d = deferToThreadPool(self._reactor, self._threadpool, self._run, batch.jobs)
        d.addBoth(lambda results: self._finished(batch, results))

    def _finished(self, batch: _Batch[Job], results: list[Any] | Failure) -> None:
        assert self._inflight[0] is batch
        self._inflight.popleft()
        self._firing = True
        try:
            for position, (_, waiting) in enumerate(batch.entries):
                if isinstance(results, Failure):
                    waiting.errback(results)
                elif isinstance(results[position], BaseException):
                    waiting.errback(Failure(results[position]))
                else:
                    waiting.callback(results[position])
        finally:
            self._firing = False
        self._kick()
