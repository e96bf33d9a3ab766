"""
Group commit, as a mechanism: jobs that arrive while a batch runs on a worker
thread wait and form the next batch, so that whatever a batch costs once (a
sync, an index commit) is shared by every job in it.

The store's committer and the relay queue's writer are both this with their
own batch function.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

Job = TypeVar("Job")


class BatchRunner(Generic[Job]):
    """
    Runs C{run(jobs)} on C{threadpool}, one batch at a time. C{run} returns
    one outcome per job, in order: an exception fails that job's Deferred,
    anything else is its result.
    """

    def __init__(self, reactor: Any, threadpool: Any, run: Callable[[list[Job]], list[Any]]) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._run = run
        self._pending: list[tuple[Job, Deferred[Any]]] = []
        self._running = False
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
        return not self._running and not self._pending

    def _kick(self) -> None:
        if self._running or not self._pending:
            return
        batch, self._pending = self._pending, []
        self._running = True
        self.batches += 1
        d = deferToThreadPool(self._reactor, self._threadpool, self._run, [job for job, _ in batch])

        def finished(results: list[Any] | Failure) -> None:
            self._running = False
            for position, (_, waiting) in enumerate(batch):
                if isinstance(results, Failure):
                    waiting.errback(results)
                elif isinstance(results[position], BaseException):
                    waiting.errback(Failure(results[position]))
                else:
                    waiting.callback(results[position])
            self._kick()

        d.addBoth(finished)
