"""
The server's thread pools: one bounded pool per kind of blocking work, so
that one kind can never starve another.

All blocking work once shared the reactor's one pool of ten threads: ten
webmail reads of a message with a megabyte header (minutes of parsing
each) made an SMTP ``RCPT`` wait 13 s for its accounts lookup, and a burst
of IMAP searches could hold up every delivery's commit. Now:

- ``store``: Maildir and index I/O, the group committer, the spool;
- ``accounts``: the accounts database (password hashing has its own pool
  in L{mailapp.accounts.Accounts});
- ``queue``: the relay queue's files;
- ``parsing``: parsing messages for display (the webmail), the work whose
  cost a sender controls;
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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

__all__ = ["DEFAULT_SIZES", "WorkerPools"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: Threads per pool. The store gets the most: every protocol reads through it.
DEFAULT_SIZES: Mapping[str, int] = {"store": 10, "accounts": 4, "queue": 4, "parsing": 2, "signing": 2, "authentication": 16, "fulltext": 1, "greylist": 1}


class WorkerPools:
    """The named pools of L{DEFAULT_SIZES}, as attributes (C{pools.store}, ...)."""

    store: ThreadPool
    accounts: ThreadPool
    queue: ThreadPool
    parsing: ThreadPool
    signing: ThreadPool
    authentication: ThreadPool
    fulltext: ThreadPool
    greylist: ThreadPool

    def __init__(self, reactor: Any, sizes: Mapping[str, int] = DEFAULT_SIZES) -> None:
        self._pools: dict[str, ThreadPool] = {}
        for name, size in {**DEFAULT_SIZES, **sizes}.items():
            pool = ThreadPool(minthreads=0, maxthreads=size, name=f"mailapp-{name}")
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
