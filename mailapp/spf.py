"""
SPF (RFC 7208): is this client allowed to send mail for this domain?

The evaluation is pyspf's, the reference implementation kept by one of the
RFC's authors and tested against the OpenSPF suite, rather than ours: SPF's
macro language, the 10-lookup and 2-void-lookup limits and the many corner
cases of record selection are exactly where home-made checkers go wrong.

pyspf does its DNS in blocking calls, so a check runs on a worker thread
(L{SPFChecker.check}, which returns a Deferred), and pyspf's lookups are
routed to the server's own asynchronous resolver (twisted.names) through
L{ThreadedLookup}: each query is handed to the reactor and waited for, with
a per-query timeout and a whole-check budget, so the reactor never blocks
and a hostile domain cannot hold a thread for long. pyspf's lookup hook is
a module-level function, so it is set once, and it dispatches to the lookup
of the check running on the calling thread.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import spf as pyspf
from twisted.internet import defer
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.names import dns, error as dns_error

__all__ = ["SPFChecker", "SPFResult", "ThreadedLookup"]

#: Seconds one DNS query may take, and one whole check (RFC 7208 4.6.4: at
#: least 20 s overall is recommended).
QUERY_TIMEOUT = 5.0
CHECK_BUDGET = 20.0

_TYPES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "PTR": dns.PTR, "TXT": dns.TXT, "SPF": dns.SPF, "CNAME": dns.CNAME}


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


class ThreadedLookup:
    """
    pyspf's DNS function over an asynchronous resolver (anything with
    twisted.names' C{lookupAddress}, C{lookupIPV6Address},
    C{lookupMailExchange}, C{lookupPointer}, C{lookupText},
    C{lookupSenderPolicy}), for a worker thread: each call is run on the
    reactor (C{blockingCallFromThread}) and answered in pyspf's format,
    C{[((name, type), value), ...]}, CNAMEs included.
    """

    def __init__(self, reactor: Any, resolver: Any, query_timeout: float = QUERY_TIMEOUT) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.query_timeout = query_timeout
        #: How many queries this lookup has sent (what the tests count).
        self.queries = 0

    def __call__(self, name: str, qtype: str, strict: Any = True, timeout: float | None = None) -> list[tuple[tuple[str, str], Any]]:
        kind = _TYPES.get(qtype)
        if kind is None:
            return []
        self.queries += 1
        seconds = max(0.5, min(self.query_timeout, timeout or self.query_timeout))
        try:
            answers = blockingCallFromThread(self.reactor, self._query, name, kind, seconds)
        except dns_error.DNSNameError:
            return []  # NXDOMAIN: no records (a void lookup, which pyspf counts)
        except (defer.TimeoutError, dns_error.DNSQueryTimeoutError) as e:
            raise pyspf.TempError(f"DNS timeout looking up {qtype} {name}") from e
        except dns_error.DomainError as e:
            raise pyspf.TempError(f"DNS error looking up {qtype} {name}: {type(e).__name__}") from e
        return list(_convert(answers))

    def _query(self, name: str, kind: int, seconds: float) -> defer.Deferred[Any]:
        lookup = {
            dns.A: self.resolver.lookupAddress,
            dns.AAAA: self.resolver.lookupIPV6Address,
            dns.MX: self.resolver.lookupMailExchange,
            dns.PTR: self.resolver.lookupPointer,
            dns.TXT: self.resolver.lookupText,
            dns.SPF: self.resolver.lookupSenderPolicy,
            dns.CNAME: self.resolver.lookupCanonicalName,
        }[kind]
        d: defer.Deferred[Any] = defer.maybeDeferred(lookup, name, timeout=(int(max(1, seconds)),))
        d.addTimeout(seconds, self.reactor)
        return d.addCallback(lambda result: result[0])


def _convert(answers: list[Any]) -> Iterator[tuple[tuple[str, str], Any]]:
    for record in answers:
        name = record.name.name.decode("ascii", "replace").rstrip(".")
        payload = record.payload
        if record.type == dns.A:
            yield (name, "A"), payload.dottedQuad()
        elif record.type == dns.AAAA:
            yield (name, "AAAA"), socket.inet_ntop(socket.AF_INET6, payload.address)
        elif record.type == dns.MX:
            yield (name, "MX"), (payload.preference, payload.name.name.decode("ascii", "replace").rstrip("."))
        elif record.type == dns.PTR:
            yield (name, "PTR"), payload.name.name.decode("ascii", "replace").rstrip(".")
        elif record.type in (dns.TXT, dns.SPF):
            yield (name, "TXT" if record.type == dns.TXT else "SPF"), tuple(payload.data)
        elif record.type == dns.CNAME:
            yield (name, "CNAME"), payload.name.name.decode("ascii", "replace").rstrip(".")


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

    def check(self, client_ip: str, sender: str, helo: str) -> defer.Deferred[SPFResult]:
        """
        The result for C{sender} (the MAIL FROM address, ``""`` for the null
        sender, when the HELO name is checked instead: RFC 7208 2.4) from
        C{client_ip}.
        """
        lookup = ThreadedLookup(self.reactor, self.resolver)
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
