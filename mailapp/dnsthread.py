"""
DNS for blocking libraries, through the server's own asynchronous resolver.

pyspf, dkimpy (DKIM and ARC) and the DMARC record lookups do their DNS in
blocking calls. They run on a worker thread, and each of their queries is
handed to the reactor's twisted.names resolver and waited for
(L{ThreadedLookup}), so that the reactor never blocks, every query uses the
name servers the server is configured with, and each one is bounded twice:
by a per-query timeout and by a L{LookupBudget}, the seconds and the number
of queries one message (or one check) may spend, so that a hostile domain
cannot hold a thread for long or make us send a thousand queries.

One lookup object speaks each library's dialect:

  - C{lookup(name, qtype)}: pyspf's C{DNSLookup}, C{[((name, type), value)]};
  - C{lookup.txt(name, timeout=5)}: dkimpy's C{dnsfunc}, the first TXT
    record's strings joined, or None when there is none;
  - C{lookup.records(name, qtype)}: the answer's L{dns.RRHeader}s.

A temporary failure (timeout, SERVFAIL, budget spent) raises
L{DNSTemporaryFailure} from C{records}; C{txt} records it in
C{lookup.failures} too, since dkimpy turns any exception into a plain
"fail" and the verifier needs to tell a temperror from a bad signature.

L{ServiceDNS} is what the service hands out (C{ServiceContext.dns}): the
resolver, the timeouts and one L{mailapp.dnscache.AnswerCache} that every
lookup shares (a cached answer is given on the worker thread, with no trip
to the reactor), and C{dnsfunc()} for code that takes a DNS function as a
parameter (DKIM signing checks, ARC).

On a reactor that takes no calls from threads (a L{twisted.internet.task.Clock}
in tests, whose L{mailapp.testing.InlineWorkerPools} run "thread" work on the
caller's thread) the query is made directly, and must have answered at once.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.names import dns, error as dns_error

from mailapp.dnscache import AnswerCache

__all__ = [
    "CHECK_BUDGET",
    "MAX_QUERIES",
    "QUERY_TIMEOUT",
    "DNSFunction",
    "DNSTemporaryFailure",
    "LookupBudget",
    "ServiceDNS",
    "ThreadedLookup",
    "in_worker",
]

#: Seconds one DNS query may take, and one whole check (RFC 7208 4.6.4: at
#: least 20 s overall is recommended).
QUERY_TIMEOUT = 5.0
CHECK_BUDGET = 20.0
#: Queries one budget allows: SPF's own limits keep a check near 30; DKIM
#: and DMARC add one or two per signature and From domain.
MAX_QUERIES = 100

#: dkimpy's DNS function: C{dnsfunc(name, timeout=5) -> bytes | None} (TXT).
DNSFunction = Callable[..., "bytes | None"]

_TYPES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "PTR": dns.PTR, "TXT": dns.TXT, "SPF": dns.SPF, "CNAME": dns.CNAME}


class DNSTemporaryFailure(Exception):
    """A query timed out, the server failed, or the budget is spent: try again later (a temperror)."""


class LookupBudget:
    """
    What one check may spend on DNS: C{seconds} from its creation, and
    C{max_queries} queries. Shared by every lookup of a message's check, from
    any thread (a query counts when it is sent).
    """

    def __init__(self, seconds: float = CHECK_BUDGET, max_queries: int = MAX_QUERIES, clock: Callable[[], float] = time.monotonic) -> None:
        self.deadline = clock() + seconds
        self.max_queries = max_queries
        self.queries = 0
        self._clock = clock
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.deadline - self._clock()

    def spend(self) -> float:
        """Count one query; return the seconds left, or raise L{DNSTemporaryFailure} when none are."""
        with self._lock:
            left = self.remaining()
            if left <= 0:
                raise DNSTemporaryFailure("the DNS budget of this check is spent (time)")
            if self.queries >= self.max_queries:
                raise DNSTemporaryFailure(f"the DNS budget of this check is spent ({self.max_queries} queries)")
            self.queries += 1
            return left


class ThreadedLookup:
    """
    DNS over an asynchronous resolver (anything with twisted.names'
    C{lookupAddress}, C{lookupIPV6Address}, C{lookupMailExchange},
    C{lookupPointer}, C{lookupText}, C{lookupSenderPolicy},
    C{lookupCanonicalName}), for a worker thread; see the module docstring.
    """

    def __init__(
        self,
        reactor: Any,
        resolver: Any,
        query_timeout: float = QUERY_TIMEOUT,
        budget: LookupBudget | None = None,
        cache: AnswerCache | None = None,
    ) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.query_timeout = query_timeout
        self.budget = budget
        #: Answers shared with the server's other lookups (L{mailapp.dnscache}); a hit costs no query and no budget.
        self.cache = cache
        #: How many queries this lookup has sent (what the tests count).
        self.queries = 0
        #: Names whose TXT lookup failed temporarily, with why (see L{txt}).
        self.failures: dict[str, str] = {}

    # -- the dialects --------------------------------------------------------------

    def __call__(self, name: str, qtype: str, strict: Any = True, timeout: float | None = None) -> list[tuple[tuple[str, str], Any]]:
        """pyspf's C{DNSLookup}: pyspf's TempError for a temporary failure, [] for NXDOMAIN."""
        import spf as pyspf

        if qtype not in _TYPES:
            return []
        try:
            return list(_convert(self.records(name, qtype, timeout)))
        except DNSTemporaryFailure as e:
            raise pyspf.TempError(str(e)) from e

    def txt(self, name: bytes | str, timeout: float | None = None) -> bytes | None:
        """
        dkimpy's C{dnsfunc}: the strings of C{name}'s first TXT record,
        joined, or None (NXDOMAIN, or no TXT record). A temporary failure is
        raised as dkimpy's C{DnsTimeoutError} and noted in C{failures}.
        """
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        text = text.rstrip(".")
        try:
            answers = self.records(text, "TXT", timeout)
        except DNSTemporaryFailure as e:
            import dkim

            self.failures[text.lower()] = str(e)
            raise dkim.DnsTimeoutError(str(e)) from e
        for record in answers:
            if record.type == dns.TXT:
                return b"".join(record.payload.data)
        return None

    def txt_records(self, name: str, timeout: float | None = None) -> list[bytes]:
        """Every TXT record of C{name}, each one's strings joined (DMARC looks at them all); [] for none."""
        return [b"".join(r.payload.data) for r in self.records(name.rstrip("."), "TXT", timeout) if r.type == dns.TXT]

    def records(self, name: str, qtype: str, timeout: float | None = None) -> list[Any]:
        """
        The answer section for C{name}/C{qtype} (CNAMEs included); [] for
        NXDOMAIN. Raises L{DNSTemporaryFailure} for a timeout, a server
        failure or a spent budget.
        """
        kind = _TYPES[qtype]
        if self.cache is not None:
            cached = self.cache.get(name, qtype)
            if cached is not None:
                return cached
        seconds = max(0.5, min(self.query_timeout, timeout or self.query_timeout))
        if self.budget is not None:
            seconds = min(seconds, max(0.1, self.budget.spend()))
        self.queries += 1
        try:
            if IReactorFromThreads.providedBy(self.reactor):
                answers: list[Any] = blockingCallFromThread(self.reactor, self._query, name, kind, seconds)
            else:
                answers = self._answeredAtOnce(name, kind, seconds)
        except dns_error.DNSNameError:
            answers = []  # NXDOMAIN: no records (a void lookup, which pyspf counts)
        except (defer.TimeoutError, dns_error.DNSQueryTimeoutError) as e:
            raise DNSTemporaryFailure(f"DNS timeout looking up {qtype} {name}") from e
        except dns_error.DomainError as e:
            raise DNSTemporaryFailure(f"DNS error looking up {qtype} {name}: {type(e).__name__}") from e
        if self.cache is not None:
            self.cache.put(name, qtype, answers)
        return answers

    # -- the reactor side --------------------------------------------------------------

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

    def _answeredAtOnce(self, name: str, kind: int, seconds: float) -> list[Any]:
        """The inline path (see the module docstring): the resolver must answer before C{_query} returns."""
        outcome: list[Any] = []
        pending = self._query(name, kind, seconds)
        pending.addBoth(outcome.append)
        if not outcome:
            pending.cancel()
            pending.addErrback(lambda _: None)
            raise DNSTemporaryFailure(f"DNS lookup of {name} did not answer at once on a reactor without threads")
        result = outcome[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        return list(result)


def _convert(answers: list[Any]) -> Iterator[tuple[tuple[str, str], Any]]:
    """Answers in pyspf's format."""
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


def in_worker(reactor: Any, threadpool: Any, function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """
    C{function(*args)} on a worker thread of C{threadpool}; on a reactor
    that takes no calls from threads (tests), at once on this one.
    """
    if IReactorFromThreads.providedBy(reactor):
        return deferToThreadPool(reactor, threadpool, function, *args)
    return defer.maybeDeferred(function, *args)


class ServiceDNS:
    """
    The server's DNS for blocking libraries (C{ServiceContext.dns}): its
    resolver on its reactor, with the configured per-query timeout.
    """

    def __init__(self, reactor: Any, resolver: Any, query_timeout: float = QUERY_TIMEOUT, cache: AnswerCache | None = None) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.query_timeout = query_timeout
        #: Every lookup's answers, shared (L{mailapp.dnscache}).
        self.cache = cache if cache is not None else AnswerCache()

    def lookup(self, budget: LookupBudget | None = None) -> ThreadedLookup:
        """A fresh L{ThreadedLookup} spending C{budget} (one per check, so its C{failures} are its own)."""
        return ThreadedLookup(self.reactor, self.resolver, self.query_timeout, budget, self.cache)

    def dnsfunc(self, budget: LookupBudget | None = None) -> DNSFunction:
        """
        dkimpy's C{dnsfunc(name, timeout=5) -> bytes | None} over this
        server's resolver, for a worker thread: what DKIM and ARC code takes
        as its DNS parameter. Give each message a fresh C{budget}
        (L{LookupBudget}) to bound what it may spend.
        """
        return self.lookup(budget).txt

    def txt(self, name: bytes | str, timeout: float | None = None) -> bytes | None:
        """
        dkimpy's C{dnsfunc} for code that keeps one for the server's whole
        life (the MX's ARC verifier, the ARC sealer, which bound their own
        time per message): each call is a fresh L{ThreadedLookup}, so that
        no failure note or query count piles up across messages, with the
        shared answer cache.
        """
        return self.lookup().txt(name, timeout)
