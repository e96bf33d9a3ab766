"""
Work a shutdown must wait for: the promise behind an SMTP ``250``, a POP3
``UPDATE``, a webmail send.

Made once by the composition root (L{mailapp.service.makeService}), handed
to every protocol through L{mailapp.context.ServiceContext}, and drained by
the root service's stop between closing the listeners and stopping the store.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

__all__ = ["InFlight"]

_T = TypeVar("_T")


class InFlight:
    """
    Work that must not be cut off by a shutdown, such as committing a message
    the server has already promised (or is about to promise) to keep.

    A component calls :meth:`track` with the Deferred of that work; the
    server's stop waits for :meth:`drain` before tearing down the store.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._pending: set[Deferred[Any]] = set()
        self._waiters: list[Deferred[bool]] = []

    def __len__(self) -> int:
        """How many tracked pieces of work have not finished."""
        return len(self._pending)

    def track(self, deferred: Deferred[_T]) -> Deferred[_T]:
        """
        Count ``deferred`` as in flight until it fires (either way). Returns
        it unchanged, with its result passed through, so that the call can
        wrap an expression: ``d = inflight.track(store.deliver(...))``.
        """
        self._pending.add(deferred)

        def finished(result: _T | Failure) -> _T | Failure:
            self._pending.discard(deferred)
            if not self._pending:
                waiters, self._waiters = self._waiters, []
                for waiter in waiters:
                    waiter.callback(True)
            return result

        deferred.addBoth(finished)
        return deferred

    def drain(self, timeout: float) -> Deferred[bool]:
        """
        Fire with ``True`` once nothing is in flight, or with ``False`` after
        ``timeout`` seconds if something still is. Never fails.
        """
        if not self._pending:
            return defer.succeed(True)
        waiter: Deferred[bool] = Deferred()
        self._waiters.append(waiter)

        def give_up() -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                waiter.callback(False)

        timer = self._clock.callLater(timeout, give_up)

        def cancel_timer(drained: bool) -> bool:
            if timer.active():
                timer.cancel()
            return drained

        return waiter.addCallback(cancel_timer)
