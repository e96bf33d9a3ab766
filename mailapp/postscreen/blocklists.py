"""
DNS blocklists, asked natively on the reactor through the server's
asynchronous resolver (twisted.names; the service's L{LazyResolver}).

Two kinds of list (``[dnsbl.lists."zone"]``, L{mailapp.config.Blocklist}):

  - ``ip`` (Spamhaus ZEN style): the client's address under the zone,
    IPv4 as its reversed octets (``5.113.0.203.zen.test`` for 203.0.113.5),
    IPv6 as its 32 reversed nibbles (RFC 5782 2.1, 2.4);
  - ``domain`` (Spamhaus DBL style): the HELO name, the MAIL FROM domain
    and, at the end of DATA, the registrable domains of the body's URLs
    (L{mailapp.postscreen.urls}) under the zone (RFC 5782 2.3); an
    IP-literal URL is asked of the ``ip`` lists.

A listing is an A record in 127.0.0.0/8 (RFC 5782 2.1), only the configured
C{codes} if there are any. ``127.255.255.x`` is what the Spamhaus lists
answer a query over quota or through an open resolver: it is not a
listing, counts 0, and is logged once per zone and code, since it means the
operator's set-up is broken, not the client. A lookup that fails or takes
more than ``timeout_seconds`` counts 0 and is logged: a broken list must
never refuse mail.

The client's score is the sum of the weights of the zones that list it (a
zone counts once, whatever it listed); at ``threshold`` or more the client
is refused ``554 5.7.1``, naming the heaviest listing zone. The lookups run
in parallel: the client's address from connect, the HELO name from
HELO/EHLO, the sender's domain from MAIL FROM; the session asks
L{ScreenedClient.settled} (what is known now) at MAIL FROM and waits on
L{ScreenedClient.verdict} (everything started, each bounded) at RCPT.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure

from mailapp import logevents
from mailapp.config import Blocklist, DNSBLConfig
from mailapp.networks import client_address
from mailapp.postscreen.urls import UrlHosts

__all__ = ["BlocklistChecker", "Listing", "ScreenedClient", "domain_query", "ip_query"]

_log = Logger()

_LISTED = ipaddress.ip_network("127.0.0.0/8")
#: The Spamhaus error answers (over quota, public resolver, typing error): never a listing.
_ERROR_CODES = ipaddress.ip_network("127.255.255.0/24")
#: The longest name a query may have (RFC 1035 2.3.4).
_MAX_NAME = 253


def ip_query(ip: str, zone: str) -> str | None:
    """The name to look up for C{ip} under C{zone}; None for what is not an address."""
    address = client_address(ip)
    if address is None:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        labels = str(address).split(".")
    else:
        labels = list(address.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone


def domain_query(name: str, zone: str) -> str | None:
    """The name to look up for the domain C{name} under C{zone}; None for an address literal or a bad name."""
    name = name.strip().rstrip(".").lower()
    if not name or name.startswith("[") or "." not in name:
        return None
    try:
        ipaddress.ip_address(name)
        return None  # a bare address is no domain
    except ValueError:
        pass
    query = name + "." + zone
    return query if len(query) <= _MAX_NAME else None


@dataclass(frozen=True)
class Listing:
    """One zone's listing of one thing the client showed (its address, HELO name, sender domain)."""

    zone: str
    weight: int
    code: str
    #: What is listed, as the refusal says it: ``client [203.0.113.5]``, ``HELO name x.test``, ``sender domain y.test``.
    what: str


@dataclass(frozen=True)
class Refusal:
    """The client's listings weigh at least the threshold: what the 554 says and the log records."""

    score: int
    heaviest: Listing
    listings: tuple[Listing, ...]

    def reply(self) -> bytes:
        """The text after ``554``: the enhanced code, what is listed and by which zone."""
        return f"5.7.1 Service unavailable; {self.heaviest.what} blocked using {self.heaviest.zone}".encode("ascii", "replace")


class BlocklistChecker:
    """
    The MX listener's lookups: the resolver, the reactor that bounds each
    lookup, and which error codes have been logged already (once per zone
    and code for the process, not once per client).
    """

    def __init__(self, reactor: Any, resolver: Any) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self._errorsLogged: set[tuple[str, str]] = set()

    def client(self, config: DNSBLConfig, ip: str) -> ScreenedClient:
        """A session's screen, its IP lookups started now (at connect)."""
        return ScreenedClient(self, config, ip)

    def lookup(self, zone: str, blocklist: Blocklist, name: str, what: str, timeout: float) -> defer.Deferred[Listing | None]:
        """Ask C{zone} about C{name}: a L{Listing}, or None (not listed, or the lookup failed: logged). Never fails."""
        d: defer.Deferred[Any] = self.resolver.lookupAddress(name, timeout=(timeout,))
        d.addTimeout(timeout, self.reactor)

        def answered(result: Any) -> Listing | None:
            answers = result[0]
            codes = [rr.payload.dottedQuad() for rr in answers if rr.type == dns.A]
            return self._listing(zone, blocklist, codes, what)

        def failed(reason: Failure) -> None:
            if reason.check(DNSNameError):
                return None  # NXDOMAIN: not listed
            error = "timeout" if reason.check(defer.TimeoutError, defer.CancelledError) else reason.getErrorMessage() or repr(reason.value)
            _log.warn(
                "blocklist {zone} did not answer for {name}: {error}",
                log_event=logevents.POSTSCREEN_DNSBL_FAILED,
                zone=zone,
                name=name,
                error=str(error),
            )
            return None

        return d.addCallbacks(answered, failed)

    def _listing(self, zone: str, blocklist: Blocklist, codes: Iterable[str], what: str) -> Listing | None:
        for code in codes:
            address = ipaddress.IPv4Address(code)
            if address in _ERROR_CODES:
                if (zone, code) not in self._errorsLogged:
                    self._errorsLogged.add((zone, code))
                    _log.warn(
                        "blocklist {zone} answered {code}: over quota or queried through a public resolver; counted 0",
                        log_event=logevents.POSTSCREEN_DNSBL_ERROR_CODE,
                        zone=zone,
                        code=code,
                    )
                continue
            if address not in _LISTED:
                continue  # not a blocklist answer (a resolver that answers every name): never a listing
            if blocklist.codes and code not in blocklist.codes:
                continue
            return Listing(zone, blocklist.weight, code, what)
        return None


class ScreenedClient:
    """
    One MX session's blocklist lookups: the client's address (from connect),
    its HELO name, and the current sender's domain, each list asked in
    parallel, each lookup bounded by the config's timeout.
    """

    def __init__(self, checker: BlocklistChecker, config: DNSBLConfig, ip: str) -> None:
        self._checker = checker
        self._config = config
        self._ip = ip
        self._client = self._start("ip", lambda zone: ip_query(ip, zone), f"client [{ip}]")
        self._helo: list[defer.Deferred[Listing | None]] = []
        self._sender: list[defer.Deferred[Listing | None]] = []

    def _start(self, kind: str, query: Callable[[str], str | None], what: str) -> list[defer.Deferred[Listing | None]]:
        started: list[defer.Deferred[Listing | None]] = []
        for zone, blocklist in self._config.lists.items():
            name = query(zone) if blocklist.kind == kind else None
            if name is not None:
                started.append(self._checker.lookup(zone, blocklist, name, what, self._config.timeout_seconds))
        return started

    def helo(self, name: str) -> None:
        """The client named itself (HELO/EHLO): ask the domain lists about the name (a new name replaces the old)."""
        self._helo = self._start("domain", lambda zone: domain_query(name, zone), f"HELO name {name.lower()}")

    def sender(self, address: str) -> None:
        """A transaction's MAIL FROM: ask the domain lists about its domain (the null sender has none)."""
        domain = address.rpartition("@")[2] if "@" in address else ""
        self._sender = self._start("domain", lambda zone: domain_query(domain, zone), f"sender domain {domain.lower()}") if domain else []

    def _lookups(self) -> list[defer.Deferred[Listing | None]]:
        return self._client + self._helo + self._sender

    def settled(self) -> Refusal | None:
        """
        The refusal that the client's address and HELO name call for, from the
        lookups answered so far, without waiting for the others (at MAIL FROM:
        the previous transaction's sender is not held against the next one).
        """
        return self._judge(_answer(d) for d in self._client + self._helo if _answered(d))

    def verdict(self) -> defer.Deferred[Refusal | None]:
        """Once every lookup started has answered or timed out: the refusal, or None."""
        lookups = self._lookups()
        if all(_answered(d) for d in lookups):
            return defer.succeed(self._judge(_answer(d) for d in lookups))
        # Chained onto copies: the session may ask again (another RCPT) and read .result of the originals.
        waits = [_copy(d) for d in lookups]
        return defer.gatherResults(waits).addCallback(self._judge)

    def urls(self, hosts: UrlHosts) -> defer.Deferred[Refusal | None]:
        """
        At the end of DATA: ask the domain lists about the URL domains and the
        IP lists about the IP-literal URLs, in parallel, each bounded. The
        refusal weighs them with this transaction's other listings (address,
        HELO name, sender domain: all answered by then, RCPT waited), each
        zone once, and names the heaviest URL listing; None when no URL is
        listed or the total stays under the threshold.
        """
        lookups: list[defer.Deferred[Listing | None]] = []
        for domain in hosts.domains:
            lookups += self._start("domain", partial(domain_query, domain), f"URL domain {domain}")
        for address in hosts.addresses:
            lookups += self._start("ip", partial(ip_query, address), f"URL address [{address}]")
        before = [_answer(d) for d in self._lookups() if _answered(d)]

        def judged(found: list[Listing | None]) -> Refusal | None:
            listed = [listing for listing in found if listing is not None]
            refusal = self._judge(before + found)
            if refusal is None or not listed:
                return None
            heaviest = max(listed, key=lambda listing: listing.weight)
            return Refusal(refusal.score, heaviest, refusal.listings)

        return defer.gatherResults(lookups).addCallback(judged)

    def _judge(self, results: Iterable[Listing | None]) -> Refusal | None:
        heaviest: dict[str, Listing] = {}
        for listing in results:
            if listing is not None and (listing.zone not in heaviest or listing.weight > heaviest[listing.zone].weight):
                heaviest[listing.zone] = listing
        score = sum(listing.weight for listing in heaviest.values())
        if not heaviest or score < self._config.threshold:
            return None
        listings = tuple(sorted(heaviest.values(), key=lambda listing: -listing.weight))
        return Refusal(score, listings[0], listings)


def _answered(d: defer.Deferred[Listing | None]) -> bool:
    """
    Whether the lookup C{d} has its answer. Not C{d.called} alone: the
    server's resolver is a chain (/etc/hosts, a cache, the name servers)
    whose Deferred fires at once with the next resolver's Deferred and waits
    on it, called but without an answer.
    """
    return d.called and not isinstance(d.result, defer.Deferred)


def _answer(d: defer.Deferred[Listing | None]) -> Listing | None:
    """The answer of a lookup that L{_answered}."""
    return cast("Listing | None", d.result)


def _copy(d: defer.Deferred[Listing | None]) -> defer.Deferred[Listing | None]:
    """A Deferred that fires with C{d}'s result, leaving C{d}'s own result in place for L{ScreenedClient.settled}."""
    copy: defer.Deferred[Listing | None] = defer.Deferred()

    def passOn(result: Listing | None) -> Listing | None:
        copy.callback(result)
        return result

    d.addCallback(passOn)
    return copy
