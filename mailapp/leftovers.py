"""
Crash left-overs swept while the server runs, not only at its start.

A receive cut short (a client gone mid-DATA, a worker killed, a full disk)
can leave a spool file in ``mail/.spool/``, and a queue write cut short a
temporary file in ``queue/tmp/`` or a message file no envelope names. None
of them is visible anywhere, but a server that runs for months would keep
them all: the store and the relay queue each remove theirs that nobody has
written to for an hour, once at start and then every hour.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mailapp import logevents

#: Seconds between two sweeps.
SWEEP_INTERVAL = 3600.0

_log = Logger()


class LeftoverSweeper(Service):
    """
    Calls C{sweep()} on each of C{sweepables} (the store's spool, the relay
    queue) at start and every L{SWEEP_INTERVAL} seconds of C{clock}. Each
    C{sweep} removes only files older than its own limit and fires with the
    number removed; a failure is logged and the next sweep runs on time.
    """

    def __init__(self, clock: Any, sweepables: list[Any], interval: float = SWEEP_INTERVAL) -> None:
        self.clock = clock
        self.sweepables = sweepables
        self.interval = interval
        self._loop: LoopingCall | None = None
        self._running_sweep: Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._sweep)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        # A sweep on a worker thread is let finish: the pools stop after us.
        return self._running_sweep

    def _sweep(self) -> Deferred[Any]:
        def one(sweepable: Any) -> Deferred[Any]:
            d = maybeDeferred(sweepable.sweep)
            d.addErrback(
                lambda reason: _log.failure(
                    "left-over sweep failed in {what}", reason, log_event=logevents.SWEEP_FAILED, what=type(sweepable).__name__
                )
            )
            return d

        done: Deferred[Any] = DeferredList([one(s) for s in self.sweepables])

        def finished(result: Any) -> None:
            self._running_sweep = None

        done.addCallback(finished)
        self._running_sweep = done if not done.called else None
        return done
