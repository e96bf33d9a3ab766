"""
The server's thread pools: one bounded pool per kind of blocking work, so
that one kind can never starve another.

All blocking work once shared the reactor's one pool of ten threads: ten
webmail reads of a message with a megabyte header (minutes of parsing
each) made an SMTP ``RCPT`` wait 13 s for its accounts lookup, and a burst
of IMAP searches could hold up every delivery's commit. Now:

- ``store``: Maildir and index reads, the spool;
- ``writer``: the store's group committer: one batch committing and the
  next one writing its data, so two threads; no commit waits for a
  thread behind reads (a burst of IMAP searches), and no read for a
  thread behind a commit's syncs;
- ``accounts``: the accounts database (password hashing has its own pool
  in L{mailapp.accounts.Accounts});
- ``queue``: the relay queue's files;
- ``parsing``: parsing messages for display (the webmail), the work whose
  cost a sender controls;
- ``filtering``: what a delivery waits for that reads its message: the
  recipients' Sieve scripts, the URI blocklists' scan of its URLs, the ARC
  seal of a copy an alias forwards. Their cost is a sender's too, but
  bounded by the Sieve, ``[dnsbl]`` and sealing limits, and they once
  shared ``parsing``: two webmail reads of hostile messages held every
  delivery at its Sieve check;
- ``signing``: DKIM signatures of outbound mail: CPU work, so few threads
  (the RSA step releases the GIL, and two let one message's Python run
  while another's RSA signs).
- ``authentication``: the MX's SPF, DKIM and DMARC checks, whose threads
  mostly wait for DNS (L{mailapp.dnsthread}): more of them than cores, two
  per message from MAIL FROM on (SPF for HELO and for MAIL FROM). A check
  queued behind the others spends its DNS budget waiting, and ends in a
  temperror rather than hold the queue.
- ``fulltext``: the full-text indexer (L{mailapp.store.fulltext}): one
  thread, paced, so that indexing text never holds up a delivery batch;
- ``greylist``: the greylist's SQLite file (L{mailapp.postscreen.greylist}):
  one thread, since its one connection is used under a lock anyway.

Each pool starts no thread until work arrives (``minthreads=0``) and is
stopped when the reactor shuts down, after the service has drained.

The pools are L{LeanThreadPool}s: Twisted's L{ThreadPool} hands every job
through a coordinator (a lock worker) to a worker's own queue and back, and
under imaptest's stress those hand-offs were a quarter of the reactor's GIL
time. One C-level queue shared by the pool's threads does the same job at a
third of the cost per trip.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from queue import SimpleQueue
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

__all__ = ["DEFAULT_SIZES", "LeanThreadPool", "WorkerPools"]

_log = Logger()

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: Threads per pool. The store gets the most: every protocol reads through it.
DEFAULT_SIZES: Mapping[str, int] = {"store": 10, "writer": 2, "accounts": 4, "queue": 4, "parsing": 2, "filtering": 2, "signing": 2, "authentication": 16, "fulltext": 1, "greylist": 1}


_Job = tuple[Callable[[bool, Any], object] | None, Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class LeanThreadPool(ThreadPool):
    """
    A L{ThreadPool} (what C{deferToThreadPool} and everything typed for
    Twisted's pool takes) whose threads share one L{SimpleQueue}: a job is
    one C{put}, and an idle thread takes it straight from there. Threads
    start as work arrives, up to C{maxthreads}, and then stay until
    L{stop}, which lets the queued work finish first. Twisted's own pool
    also runs each job in its caller's legacy log context; nothing of ours
    logs through that (L{mailapp.logformat} ignores C{log_system}), so this
    one does not.
    """

    def __init__(self, minthreads: int = 0, maxthreads: int = 10, name: str | None = None) -> None:
        super().__init__(minthreads, maxthreads, name)
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        #: Jobs put and not yet taken, and threads waiting to take one.
        self._queued = 0
        self._idle = 0

    @property
    def workers(self) -> int:
        return len(self._threads)

    @property
    def working(self) -> list[None]:
        return [None] * (len(self._threads) - self._idle)

    @property
    def waiters(self) -> list[None]:
        return [None] * self._idle

    def start(self) -> None:
        self.joined = False
        self.started = True
        with self._lock:
            self._grow(max(self.min, self._queued))

    def callInThread(self, func: Callable[..., object], *args: Any, **kw: Any) -> None:
        self.callInThreadWithCallback(None, func, *args, **kw)

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], object] | None, func: Callable[..., Any], *args: Any, **kw: Any) -> None:
        if self.joined:
            return
        with self._lock:
            self._queued += 1
            if self.started and self._queued > self._idle:
                self._grow(len(self._threads) + 1)
        self._jobs.put((onResult, func, args, kw))

    def _grow(self, count: int) -> None:
        """Start threads up to C{count} (at most C{max}); called under C{_lock}."""
        while len(self._threads) < min(count, self.max):
            thread = threading.Thread(target=self._work, name=f"{self.name or 'pool'}-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        jobs, lock = self._jobs, self._lock
        with lock:
            self._idle += 1
        while True:
            job = jobs.get()
            with lock:
                self._idle -= 1
                self._queued -= job is not None
            if job is None:
                return
            onResult, func, args, kw = job
            del job
            try:
                result = func(*args, **kw)
                ok = True
            except BaseException:
                result = Failure()
                ok = False
            del func, args, kw
            with lock:
                # Idle before the result is handed back: a job submitted in
                # answer to it finds this thread, rather than starting another.
                self._idle += 1
            if onResult is None:
                if not ok:
                    _log.failure("work on {pool} failed", result, pool=self.name)
                continue
            try:
                onResult(ok, result)
            except BaseException:
                _log.failure("a result callback on {pool} failed", pool=self.name)
            del onResult, result

    def stop(self) -> None:
        """Stop taking work, let what is queued finish, and join every thread."""
        self.joined = True
        self.started = False
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join()

    def adjustPoolsize(self, minthreads: int | None = None, maxthreads: int | None = None) -> None:
        self.min = self.min if minthreads is None else minthreads
        self.max = self.max if maxthreads is None else maxthreads
        if self.started:
            with self._lock:
                self._grow(self.min)


class WorkerPools:
    """The named pools of L{DEFAULT_SIZES}, as attributes (C{pools.store}, ...)."""

    store: ThreadPool
    writer: ThreadPool
    accounts: ThreadPool
    queue: ThreadPool
    parsing: ThreadPool
    filtering: ThreadPool
    signing: ThreadPool
    authentication: ThreadPool
    fulltext: ThreadPool
    greylist: ThreadPool

    def __init__(self, reactor: Any, sizes: Mapping[str, int] = DEFAULT_SIZES) -> None:
        self._pools: dict[str, ThreadPool] = {}
        for name, size in {**DEFAULT_SIZES, **sizes}.items():
            pool = LeanThreadPool(minthreads=0, maxthreads=size, name=f"mailapp-{name}")
            pool.start()
            self._pools[name] = pool
            setattr(self, name, pool)
        self._trigger = IReactorCore(reactor).addSystemEventTrigger("during", "shutdown", self.stop)
        self._reactor = reactor

    def run(self, pool: ThreadPool, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        """
        Run C{function} on one of C{pool}'s threads (C{pools.store}, ...);
        the Deferred fires on the reactor thread with its result. What a
        protocol uses for blocking work of its own, such as reading the next
        chunk of an open message file, so that the work runs where its kind
        belongs and a test's pools can run it at once.
        """
        return deferToThreadPool(self._reactor, pool, function, *args, **kwargs)

    def stop(self) -> None:
        """Stop every pool, waiting for the work in progress. Idempotent."""
        pools, self._pools = self._pools, {}
        if not pools:
            return
        try:
            IReactorCore(self._reactor).removeSystemEventTrigger(self._trigger)
        except (ValueError, KeyError):
            pass  # fired already: we are being called by the trigger
        for pool in pools.values():
            pool.stop()
