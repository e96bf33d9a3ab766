"""
Work that would run on a worker thread, run at once on the caller's thread
instead, so that a L{task.Clock} drives a test deterministically and no
thread outlives it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mailapp.pools import DEFAULT_SIZES, WorkerPools

__all__ = ["HeldThreadPool", "InlineWorkerPools", "SynchronousReactor", "SynchronousThreadPool"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class SynchronousThreadPool(ThreadPool):
    """A L{ThreadPool} that starts no thread: each job runs at once, on the caller's thread."""

    def __init__(self) -> None:
        super().__init__(minthreads=0, maxthreads=1, name="mailapp-synchronous")

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], object] | None, func: Callable[..., Any], *args: Any, **kw: Any
    ) -> None:
        try:
            result = func(*args, **kw)
        except BaseException:
            if onResult is None:
                raise
            onResult(False, Failure())
        else:
            if onResult is not None:
                onResult(True, result)


class HeldThreadPool(SynchronousThreadPool):
    """
    Runs "thread" work at once until C{held}; then keeps it until L{run}, so
    that a test can look at the disk between a reply and the write it causes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.jobs: list[tuple[Callable[[bool, Any], object] | None, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], object] | None, func: Callable[..., Any], *args: Any, **kw: Any
    ) -> None:
        if self.held:
            self.jobs.append((onResult, func, args, kw))
        else:
            super().callInThreadWithCallback(onResult, func, *args, **kw)

    def run(self) -> None:
        """Run every job held so far, and those they hold in turn."""
        while self.jobs:
            onResult, func, args, kw = self.jobs.pop(0)
            super().callInThreadWithCallback(onResult, func, *args, **kw)


class SynchronousReactor:
    """
    Just enough reactor for code that hands work to a thread pool
    (C{deferToThreadPool}, the relay queue): time from a L{Clock}, threads
    that run at once, C{callFromThread} that calls at once.
    """

    def __init__(self, clock: Clock, pool: SynchronousThreadPool | None = None) -> None:
        self.clock = clock
        self.pool = pool or SynchronousThreadPool()

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(*args, **kwargs)

    def callFromThread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)

    def getThreadPool(self) -> SynchronousThreadPool:
        return self.pool


class InlineWorkerPools(WorkerPools):
    """
    L{WorkerPools} whose pools run their work at once (L{SynchronousThreadPool}):
    no thread, and no shutdown trigger on a reactor (a L{Clock} has none).
    A test may put a L{HeldThreadPool} in place of one (C{pools.store =
    HeldThreadPool()}) to see what waits on it.
    """

    def __init__(self) -> None:  # the base's would start real pools on a real reactor
        self._pools = {}
        for name in DEFAULT_SIZES:
            pool = SynchronousThreadPool()
            self._pools[name] = pool
            setattr(self, name, pool)

    def run(self, pool: ThreadPool, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        """
        Hand C{function} to C{pool} as L{WorkerPools.run} does, but fire the
        Deferred where the pool gives the result (at once, or when a
        L{HeldThreadPool} runs it), with no C{callFromThread}: a L{Clock} has none.
        """
        result: Deferred[_T] = Deferred()

        def settle(succeeded: bool, value: Any) -> None:
            if succeeded:
                result.callback(value)
            else:
                result.errback(value)

        pool.callInThreadWithCallback(settle, function, *args, **kwargs)
        return result

    def stop(self) -> None:
        """Nothing runs in the background; forget the pools."""
        self._pools = {}
