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
directories unreadable or moved away) nothing is known and every delivery
takes the trip, and the watch is made again every few seconds until it
works.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from mailapp.deadlines import cancel_call
from mailapp.sieve.scripts import SUFFIX, ScriptStore

__all__ = ["ScriptPresence"]

_log = Logger()

#: Seconds before watching again after the watch was lost or could not be made, or a scan failed.
RETRY_SECONDS = 5.0
#: Seconds between two passes that give hand-made C{active} files their entries.
REMARK_SECONDS = 3600.0

#: The global scripts that run around every user's (their presence alone makes every delivery filtered).
_AROUND = ("before" + SUFFIX, "after" + SUFFIX)


class ScriptPresence(Service):
    """
    See the module docstring. C{run_blocking(function)} runs C{function} on a
    worker thread; C{reactor} provides inotify's file descriptor reading.
    """

    name = "sieve-presence"

    def __init__(
        self, scripts: ScriptStore, reactor: Any, run_blocking: Callable[..., Deferred[Any]], retry_seconds: float = RETRY_SECONDS
    ) -> None:
        self.scripts = scripts
        self.retry_seconds = retry_seconds
        self._retry: Any = None
        self._closer: Any = None
        self._closing: list[Any] = []
        self._remarking: LoopingCall | None = None
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
        self._arm()
        self._remarking = LoopingCall(self._remark)
        self._remarking.clock = self.reactor
        self._remarking.start(REMARK_SECONDS, now=False).addErrback(lambda reason: _log.failure("sieve re-marking stopped", reason))

    def _arm(self) -> None:
        """Make sure both directories exist (on a thread), then watch them and scan; retried until it works."""
        self._retry = None
        if not self.running:
            return
        prepared = maybeDeferred(self.run_blocking, self._prepare)
        prepared.addCallback(lambda _: self._watch())
        prepared.addErrback(self._unknowable)

    def _prepare(self) -> None:
        """On a thread: both watched directories exist, and every active script has its entry."""
        self.scripts.global_directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.scripts.mark_active_accounts()

    def _remark(self) -> None:
        """Hourly: an C{active} file made by hand gets its entry (whose event then makes a rescan)."""
        if self.running:
            maybeDeferred(self.run_blocking, self.scripts.mark_active_accounts).addErrback(
                lambda reason: _log.failure("could not mark the accounts with Sieve scripts", reason)
            )

    def _watch(self) -> None:
        if not self.running:
            return
        from twisted.internet import inotify

        notifier = inotify.INotify(self.reactor)
        # IN_DELETE_SELF is added by Twisted. A directory moved away or
        # unmounted leaves the watch on what is no longer the directory:
        # watched too, to start again. (An overflow reaches no callback:
        # Twisted drops its event, but the events still queued force a rescan.)
        mask = (
            inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO
            | inotify.IN_MOVE_SELF | inotify.IN_UNMOUNT
        )  # fmt: skip
        try:
            for directory in (self.scripts.markers, self.scripts.global_directory):
                notifier.watch(FilePath(str(directory)), mask=mask, callbacks=[self._changed])
        except Exception:
            notifier.connectionLost(Failure(ConnectionDone()))
            raise
        notifier.startReading()
        self._notifier = notifier
        self._generation += 1
        self._rescan()

    def _unknowable(self, reason: Failure) -> None:
        _log.failure("cannot watch the Sieve scripts; every delivery reads them until this works", reason)
        self._drop()
        if not self.whenKnown.called:
            self.whenKnown.callback(None)
        if self.running and self._retry is None:
            self._retry = self.reactor.callLater(self.retry_seconds, self._arm)

    def _drop(self) -> None:
        """Know nothing any more: the notifier closed (after Twisted's own handling of the event in progress)."""
        self._fresh = False
        self._generation += 1
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            self._closing.append(notifier)
            if self._closer is None:
                self._closer = self.reactor.callLater(0, self._close)

    def _close(self) -> None:
        self._closer = None
        closing, self._closing = self._closing, []
        for notifier in closing:
            if notifier.connected:
                notifier.connectionLost(Failure(ConnectionDone()))

    def stopService(self) -> None:
        Service.stopService(self)
        self._drop()
        # At once, not at the reactor's next turn: the service may be stopping with the reactor.
        self._closer = cancel_call(self._closer)
        self._close()
        self._retry = cancel_call(self._retry)
        if self._remarking is not None and self._remarking.running:
            self._remarking.stop()

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
        try:
            notifier.doRead()
        except Exception:
            self._unknowable(Failure())  # logged there
            return True
        # Twisted's INotify closes itself when a watched directory is removed.
        if self._notifier is not notifier or not notifier.connected or notifier.disconnecting or not self._fresh:
            return True
        return self._around or any(ScriptStore.directory_name(account) in self._marked for account in accounts)

    # -- keeping it current ------------------------------------------------------------

    def _changed(self, ignored: object, path: FilePath[Any], mask: int) -> None:
        from twisted.internet import inotify

        if mask & (inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_UNMOUNT | inotify.IN_IGNORED):
            _log.warn("{path} was removed or moved; watching the Sieve scripts again", path=path.path.decode("utf-8", "replace"))
            self._drop()
            if self.running and self._retry is None:
                self._retry = self.reactor.callLater(self.retry_seconds, self._arm)
            return
        self._generation += 1
        self._fresh = False
        self._rescan()

    def _rescan(self) -> None:
        if self._scanning or not self.running:
            return
        self._scanning = True
        generation = self._generation
        scanned = maybeDeferred(self.run_blocking, self._scan)

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
            if self.running and self._notifier is not None and self._retry is None:
                self._retry = self.reactor.callLater(self.retry_seconds, self._rescanAgain)

        scanned.addCallbacks(found, failed)

    def _rescanAgain(self) -> None:
        self._retry = None
        self._rescan()

    def _scan(self) -> tuple[frozenset[str], bool]:
        """On a thread: the marked account directory names, and whether a global before/after script exists."""
        marked = frozenset(os.listdir(self.scripts.markers))
        around = any(os.path.exists(self.scripts.global_directory / name) for name in _AROUND)
        return marked, around
