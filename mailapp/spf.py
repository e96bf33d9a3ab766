"""
SPF (RFC 7208): is this client allowed to send mail for this domain?

The evaluation is pyspf's, the reference implementation kept by one of the
RFC's authors and tested against the OpenSPF suite, rather than ours: SPF's
macro language, the 10-lookup and 2-void-lookup limits and the many corner
cases of record selection are exactly where home-made checkers go wrong.

pyspf does its DNS in blocking calls, so a check runs on a worker thread
(L{SPFChecker.check}, which returns a Deferred), and pyspf's lookups are
routed to the server's own asynchronous resolver (twisted.names) through
L{mailapp.dnsthread.ThreadedLookup}: each query is handed to the reactor and
waited for, with a per-query timeout and a whole-check budget, so the reactor never blocks
and a hostile domain cannot hold a thread for long. pyspf's lookup hook is
a module-level function, so it is set once, and it dispatches to the lookup
of the check running on the calling thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import spf as pyspf
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

# The DNS mechanism lives in mailapp.dnsthread (DKIM and DMARC share it);
# its names stay importable from here.
from mailapp.dnsthread import CHECK_BUDGET, QUERY_TIMEOUT, LookupBudget, ThreadedLookup

__all__ = ["CHECK_BUDGET", "QUERY_TIMEOUT", "SPFChecker", "SPFResult", "ThreadedLookup", "evaluate"]

@dataclass(frozen=True)
class SPFResult:
    """
    One check's outcome: C{result} is one of RFC 7208's results (``pass``,
    ``fail``, ``softfail``, ``neutral``, ``none``, ``temperror``,
    ``permerror``), C{explanation} the domain's own text for a fail (or
    pyspf's reason), C{identity} what was checked (``mailfrom`` or ``helo``).
    """

    result: str
    explanation: str
    identity: str
    domain: str


_current = threading.local()


def _dispatch(name: str, qtype: str, strict: Any = True, timeout: float | None = None) -> list[Any]:
    lookup: Callable[..., list[Any]] | None = getattr(_current, "lookup", None)
    if lookup is None:
        raise pyspf.TempError("SPF lookups run only inside SPFChecker")
    deadline: float = _current.deadline
    if time.monotonic() > deadline:
        raise pyspf.TempError("SPF check took longer than its budget")
    return lookup(name, qtype, strict, timeout)


pyspf.DNSLookup = _dispatch


class SPFChecker:
    """
    Checks SPF for mail arriving at the MX, on a worker thread of
    C{threadpool} with DNS through C{resolver}.
    """

    def __init__(self, reactor: Any, resolver: Any, threadpool: Any, budget: float = CHECK_BUDGET) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.threadpool = threadpool
        self.budget = budget

    def check(
        self, client_ip: str, sender: str, helo: str, budget: LookupBudget | None = None, query_timeout: float = QUERY_TIMEOUT
    ) -> defer.Deferred[SPFResult]:
        """
        The result for C{sender} (the MAIL FROM address, ``""`` for the null
        sender, when the HELO name is checked instead: RFC 7208 2.4) from
        C{client_ip}; its queries also spend C{budget} (a message's).
        """
        lookup = ThreadedLookup(self.reactor, self.resolver, query_timeout, budget)
        return deferToThreadPool(self.reactor, self.threadpool, evaluate, client_ip, sender, helo, lookup, self.budget)


def evaluate(
    client_ip: str,
    sender: str,
    helo: str,
    lookup: Callable[..., list[Any]],
    budget: float = CHECK_BUDGET,
    default_explanation: str | None = None,
) -> SPFResult:
    """Blocking: one SPF evaluation with C{lookup} as its DNS (a worker thread, or a test)."""
    _current.lookup = lookup
    _current.deadline = time.monotonic() + budget
    try:
        query = pyspf.query(i=client_ip, s=sender, h=helo, timeout=budget, querytime=budget)
        if default_explanation is not None:
            query.set_default_explanation(default_explanation)
        result, _, explanation = query.check()
        domain = query.d if getattr(query, "d", None) else (sender.rpartition("@")[2] or helo)
        return SPFResult(str(result), str(explanation), query.ident, str(domain))
    finally:
        _current.lookup = None
