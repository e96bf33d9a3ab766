"""
Whether a delivery's recipients have any Sieve script to run, known on the
reactor thread without reading a file.

Every local delivery asked the filtering pool whether its recipients had
scripts, even on a server where nobody has one: a thread trip per message,
about 1 ms of the 2-core machine's CPU (the trip's futex wakes and GIL
hand-offs, three file lookups) out of the 4-5 ms an SMTP message costs
(BENCHMARKS.md, 2026-12-03 evening).

L{ScriptPresence} keeps, in memory, the names in C{sieve/active-accounts/}
(one per account that may have an active script, kept by
L{mailapp.sieve.scripts.ScriptStore.activate}) and whether a global
C{before} or C{after} script exists, and watches both directories with
inotify. Any change there (by this process, another worker, ManageSieve,
the CLI, an admin's editor) makes what it knows stale until a rescan on a
worker thread; while stale, every delivery takes the trip, as before.

Before each answer the watch's pending events are read at once (a
non-blocking C{read(2)} of the inotify descriptor, no disk): a script
activated before the delivery asked is always seen, whichever process
activated it. Without inotify (another OS, the watch limit reached, the
directories unreadable) nothing is known and every delivery takes the trip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from mailapp.sieve.scripts import SUFFIX, ScriptStore

__all__ = ["ScriptPresence"]

_log = Logger()

#: The global scripts that run around every user's (their presence alone makes every delivery filtered).
_AROUND = ("before" + SUFFIX, "after" + SUFFIX)


class ScriptPresence(Service):
    """
    See the module docstring. C{run_blocking(function)} runs C{function} on a
    worker thread; C{reactor} provides inotify's file descriptor reading.
    """

    name = "sieve-presence"

    def __init__(self, scripts: ScriptStore, reactor: Any, run_blocking: Callable[..., Deferred[Any]]) -> None:
        self.scripts = scripts
        self.reactor = reactor
        self.run_blocking = run_blocking
        self._notifier: Any = None
        #: What the last scan found: the marked account directory names, and whether a global script runs around them.
        self._marked: frozenset[str] = frozenset()
        self._around = False
        #: False until a scan has finished with no change seen during it.
        self._fresh = False
        #: Changes seen so far: a scan is current only if none came while it ran.
        self._generation = 0
        self._scanning = False
        #: Fires after the first scan (for the tests and the start).
        self.whenKnown: Deferred[None] = Deferred()

    # -- lifecycle ------------------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        prepared = self.run_blocking(self._prepare)
        prepared.addCallback(lambda _: self._watch())
        prepared.addErrback(self._unknowable)

    def _prepare(self) -> None:
        """On a thread: both watched directories exist, and every active script has its entry."""
        (self.scripts.root / "global").mkdir(parents=True, exist_ok=True, mode=0o700)
        self.scripts.mark_active_accounts()

    def _watch(self) -> None:
        if not self.running:
            return
        from twisted.internet import inotify

        notifier = inotify.INotify(self.reactor)
        mask = inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO | inotify.IN_Q_OVERFLOW
        try:
            for directory in (self.scripts.markers, self.scripts.root / "global"):
                notifier.watch(FilePath(str(directory)), mask=mask, callbacks=[self._changed])
        except Exception:
            notifier.connectionLost(Failure(ConnectionDone()))
            raise
        notifier.startReading()
        self._notifier = notifier
        self._rescan()

    def _unknowable(self, reason: Failure) -> None:
        _log.failure("cannot watch the Sieve scripts; every delivery reads them", reason)
        self._notifier = None
        if not self.whenKnown.called:
            self.whenKnown.callback(None)

    def stopService(self) -> None:
        Service.stopService(self)
        notifier, self._notifier = self._notifier, None
        self._fresh = False
        if notifier is not None and notifier.connected:
            # At once, not at the reactor's next turn: the service may be stopping with the reactor.
            notifier.connectionLost(Failure(ConnectionDone()))

    # -- what a delivery asks ----------------------------------------------------------

    def may_filter(self, accounts: Iterable[str]) -> bool:
        """
        False only when none of C{accounts} has a script to run and no
        global script runs around theirs, as known after every change made
        before this call (the pending events are read first).
        """
        notifier = self._notifier
        if notifier is None or not notifier.connected:
            return True
        notifier.doRead()
        # Twisted's INotify closes itself when a watched directory is
        # removed: then nothing is known any more.
        if notifier.disconnecting or not notifier.connected or not self._fresh:
            return True
        return self._around or any(ScriptStore.directory_name(account) in self._marked for account in accounts)

    # -- keeping it current ------------------------------------------------------------

    def _changed(self, ignored: object, path: FilePath[Any], mask: int) -> None:
        self._generation += 1
        self._fresh = False
        self._rescan()

    def _rescan(self) -> None:
        if self._scanning or not self.running:
            return
        self._scanning = True
        generation = self._generation
        scanned = self.run_blocking(self._scan)

        def found(result: tuple[frozenset[str], bool]) -> None:
            self._scanning = False
            self._marked, self._around = result
            if self._generation == generation:
                self._fresh = self._notifier is not None
            else:
                self._rescan()
            if not self.whenKnown.called:
                self.whenKnown.callback(None)

        def failed(reason: Failure) -> None:
            self._scanning = False
            _log.failure("could not list the accounts with Sieve scripts; deliveries read them", reason)
            if not self.whenKnown.called:
                self.whenKnown.callback(None)

        scanned.addCallbacks(found, failed)

    def _scan(self) -> tuple[frozenset[str], bool]:
        """On a thread: the marked account directory names, and whether a global before/after script exists."""
        marked = frozenset(os.listdir(self.scripts.markers))
        around = any(os.path.exists(self.scripts.root / "global" / name) for name in _AROUND)
        return marked, around
