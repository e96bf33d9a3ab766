"""
Greylisting (``[greylisting]``, off by default), as postgrey does it: a
real MTA retries a temporary failure, most spam software does not.

The first attempt of a triplet (the client's network: its /24 for IPv4, its
/64 for IPv6, since a big sender retries from another address of its pool;
the envelope sender; the recipient) is answered ``451 4.7.1`` at RCPT.
A retry once ``delay`` seconds have passed, and before ``retry_window``
ends, passes, and whitelists the client's network for ``whitelist_days``
(each message renews it), so that a known sender is delayed once, not once
per new recipient. A retry that comes too late starts over.

The triplets are in ``state_dir/greylist.sqlite3``, read and written on
the greylist's own worker pool (never on the reactor), with one connection
behind a lock. Losing its last writes in a crash costs a sender one more
retry, nothing else, so it is not synced at every write (``synchronous =
NORMAL``). A failure of the database lets the mail through (and is
logged): greylisting is a filter, and never worth losing mail for. Old
triplets and whitelist entries are removed by the hourly sweep
(L{mailapp.leftovers}, through L{Greylist.sweep}).
"""

from __future__ import annotations

import enum
import ipaddress
import sqlite3
import threading
from pathlib import Path
from typing import Any, Final

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mailapp import logevents
from mailapp.config import GreylistingConfig
from mailapp.networks import client_address
from mailapp.pools import WorkerPools

__all__ = ["GREYLISTED", "Greylist", "Verdict", "client_network"]

#: The reply to a greylisted RCPT (after ``451``).
GREYLISTED: Final = b"4.7.1 Greylisted: please try again later"

_log = Logger()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplets (
    network TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,
    first_seen REAL NOT NULL, passed REAL,
    PRIMARY KEY (network, sender, recipient)
);
CREATE TABLE IF NOT EXISTS whitelist (network TEXT PRIMARY KEY, until REAL NOT NULL);
"""


class Verdict(enum.Enum):
    """What a triplet gets: GREYLISTED is a 451; the others go on to the recipient's checks."""

    GREYLISTED = "greylisted"
    PASSED = "passed"
    WHITELISTED = "whitelisted"


def client_network(ip: str) -> str:
    """The network a client is greylisted by: its /24 (IPv4, an IPv4-mapped address too) or its /64 (IPv6)."""
    address = client_address(ip)
    if address is None:
        return ip
    prefix = 24 if isinstance(address, ipaddress.IPv4Address) else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


class Greylist:
    """
    The triplets of one server (C{context.greylist}), in the SQLite file at
    C{path} (``":memory:"`` for tests), opened at the first use, so that a
    server with greylisting off never creates it.
    """

    def __init__(self, path: Path | str, reactor: Any, pools: WorkerPools, pool: ThreadPool) -> None:
        self._path = path
        self._reactor = reactor
        self._pools = pools
        self._pool = pool
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        #: The settings the last check used (the sweep's ages).
        self._config: GreylistingConfig | None = None

    def check(self, config: GreylistingConfig, ip: str, sender: str, recipient: str) -> defer.Deferred[Verdict]:
        """The triplet's verdict, now (on the pool); a database failure is logged and passes."""
        self._config = config
        network = client_network(ip)
        now = self._reactor.seconds()
        sender = sender.lower() or "<>"
        recipient = recipient.lower()
        d = self._pools.run(self._pool, self._check, config, network, sender, recipient, now)

        def logged(verdict: Verdict) -> Verdict:
            if verdict is not Verdict.WHITELISTED:
                greylisted = verdict is Verdict.GREYLISTED
                _log.info(
                    "{verdict} {client} from=<{sender}> to=<{recipient}>",
                    log_event=logevents.POSTSCREEN_GREYLISTED if greylisted else logevents.POSTSCREEN_GREYLIST_PASSED,
                    verdict=verdict.value,
                    action="tempfail" if greylisted else "accept",
                    reason="greylist",
                    client=ip,
                    network=network,
                    sender=sender,
                    recipient=recipient,
                )
            return verdict

        def failed(reason: Failure) -> Verdict:
            _log.failure(
                "greylist failed for {client}; passed", reason, log_event=logevents.POSTSCREEN_GREYLIST_FAILED, client=ip
            )
            return Verdict.PASSED

        return d.addCallbacks(logged, failed)

    def sweep(self) -> defer.Deferred[int]:
        """Remove triplets past their window and whitelist entries past their days (the hourly sweep); fires with how many."""
        if self._config is None and not self._exists():
            return defer.succeed(0)
        config = self._config or GreylistingConfig()
        return self._pools.run(self._pool, self._sweep, config, self._reactor.seconds())

    def close(self) -> None:
        """Close the database (tests; a running server keeps it till exit)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- on the pool ------------------------------------------------------------------

    def _exists(self) -> bool:
        return self._connection is not None or (str(self._path) != ":memory:" and Path(self._path).exists())

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False, timeout=5)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.executescript(_SCHEMA)
            self._connection = connection
        return self._connection

    def _check(self, config: GreylistingConfig, network: str, sender: str, recipient: str, now: float) -> Verdict:
        with self._lock:
            db = self._open()
            whitelist_seconds = config.whitelist_days * 86400
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT until FROM whitelist WHERE network = ?", (network,)).fetchone()
                if row is not None and row[0] > now:
                    db.execute("UPDATE whitelist SET until = ? WHERE network = ?", (now + whitelist_seconds, network))
                    verdict = Verdict.WHITELISTED
                else:
                    verdict = self._triplet(db, config, network, sender, recipient, now)
                    if verdict is Verdict.PASSED:
                        db.execute(
                            "INSERT OR REPLACE INTO whitelist (network, until) VALUES (?, ?)", (network, now + whitelist_seconds)
                        )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return verdict

    @staticmethod
    def _triplet(db: sqlite3.Connection, config: GreylistingConfig, network: str, sender: str, recipient: str, now: float) -> Verdict:
        key = (network, sender, recipient)
        row = db.execute(
            "SELECT first_seen, passed FROM triplets WHERE network = ? AND sender = ? AND recipient = ?", key
        ).fetchone()
        if row is None or (row[1] is None and now - row[0] > config.retry_window):
            # New, or retried too late: the delay starts (again) now.
            db.execute("INSERT OR REPLACE INTO triplets (network, sender, recipient, first_seen, passed) VALUES (?, ?, ?, ?, NULL)", (*key, now))
            return Verdict.GREYLISTED
        if row[1] is None and now - row[0] < config.delay:
            return Verdict.GREYLISTED
        db.execute("UPDATE triplets SET passed = ? WHERE network = ? AND sender = ? AND recipient = ?", (now, *key))
        return Verdict.PASSED

    def _sweep(self, config: GreylistingConfig, now: float) -> int:
        with self._lock:
            db = self._open()
            removed = db.execute(
                "DELETE FROM triplets WHERE (passed IS NULL AND first_seen < ?) OR (passed IS NOT NULL AND passed < ?)",
                (now - config.retry_window, now - config.whitelist_days * 86400),
            ).rowcount
            removed += db.execute("DELETE FROM whitelist WHERE until < ?", (now,)).rowcount
            return removed
