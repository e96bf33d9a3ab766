"""
Where mail for a remote domain goes: the next hops, in the order to try them.

The order of precedence is the config's ``[relay] transports`` entry for the
domain, then ``smarthost``, then DNS (RFC 5321 section 5.1) through
L{twisted.names} (never the system resolver, never blocking):

  - MX records in preference order, equal preferences shuffled;
  - no MX records: the domain itself, as an implicit MX of preference 0;
  - a null MX (a single ``0 .``, RFC 7505): permanent failure, 5.1.10;
  - NXDOMAIN: permanent failure, 5.1.2;
  - SERVFAIL, a timeout, a refused query: temporary failure, retried;
  - a CNAME is followed (up to L{MAX_CNAME_CHAIN} links).

Each host is resolved to its IPv4 then IPv6 addresses; the result is a list
of L{Hop}s, one per address.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.names import dns, error as dns_error

from mailapp.config import HostPort

__all__ = ["Hop", "MAX_CNAME_CHAIN", "Myself", "RouteError", "MXResolver", "Routes"]

MAX_CNAME_CHAIN = 8
SMTP_PORT = 25


class RouteError(Exception):
    """
    No next hop now. C{permanent} failures bounce; the others are retried.
    C{reply} is what goes into the envelope and a DSN (code, enhanced, text).
    """

    def __init__(self, reply: str, permanent: bool) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent


@dataclass(frozen=True)
class Hop:
    """One address to connect to. C{name} is the host name (for logs and the DSN's Remote-MTA)."""

    name: str
    address: str
    port: int
    preference: int = 0

    def __str__(self) -> str:
        """``mx.example[192.0.2.1]:25``, ``mx.example[2001:db8::1]:25``: the brackets already set an IPv6 address apart."""
        return f"{self.name}[{self.address}]:{self.port}"


class Myself:
    """
    Whether a next hop is this server: its name is our ``[server] hostname``,
    or its address and port are where one of our MX listeners accepts (for a
    listener on every interface, any address of this machine). Sending there
    would loop the message back to ourselves (RFC 5321 5.1).

    @param listening: ``(interface, port)`` of each MX listener, ``""`` for
        every interface.
    """

    def __init__(self, hostname: str, listening: Iterable[tuple[str, int]]) -> None:
        self.hostname = hostname.rstrip(".").lower()
        self.listening = tuple(listening)

    def __call__(self, hop: Hop) -> bool:
        if hop.name.rstrip(".").lower() == self.hostname:
            return True
        for interface, port in self.listening:
            if port != hop.port:
                continue
            if interface and interface not in ("0.0.0.0", "::"):
                if interface == hop.address:
                    return True
            elif _is_local_address(hop.address):
                return True
        return False


def _is_local_address(address: str) -> bool:
    """Whether this machine has C{address}: binding a socket to it succeeds (no packet is sent)."""
    import socket

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class MXResolver:
    """
    Turns a domain into L{Hop}s with an L{twisted.names} resolver (anything
    with C{lookupMailExchange}, C{lookupAddress}, C{lookupIPV6Address}).

    @param shuffle: shuffles a list in place (tests pass a deterministic one).
    """

    def __init__(
        self,
        resolver: Any,
        port: int = SMTP_PORT,
        shuffle: Callable[[list[Any]], None] = random.shuffle,
        timeout: tuple[int, ...] = (1, 3, 11),
        myself: Callable[[Hop], bool] | None = None,
    ) -> None:
        self.resolver = resolver
        self.port = port
        self.shuffle = shuffle
        self.timeout = timeout
        self.myself = myself

    @defer.inlineCallbacks
    def resolve(self, domain: str) -> Any:
        """Fire with a non-empty list of L{Hop}s, or fail with L{RouteError}."""
        exchanges = yield self._exchanges(domain)
        hops: list[Hop] = []
        unresolved = []
        for preference, host in exchanges:
            addresses = yield self._addresses(host)
            if not addresses:
                unresolved.append(host)
            hops.extend(Hop(host, address, self.port, preference) for address in addresses)
        if not hops:
            if exchanges == [(0, domain)]:
                # No MX and no address: nothing will ever accept mail for it.
                raise RouteError(f"550 5.1.2 {domain} has no mail servers (no MX, A or AAAA records)", True)
            raise RouteError(f"451 4.4.4 no address for the mail servers of {domain}: {', '.join(unresolved)}", False)
        return self._before_myself(domain, hops)

    def _before_myself(self, domain: str, hops: list[Hop]) -> list[Hop]:
        """
        Only the hops preferred to ourselves (as Postfix does): when we are
        one of a domain's MX hosts, the ones after us are backups of ours,
        and when we are the best, the mail loops back to us (5.4.6).
        """
        if self.myself is None:
            return hops
        mine = [hop.preference for hop in hops if self.myself(hop)]
        if not mine:
            return hops
        preferred = [hop for hop in hops if hop.preference < min(mine)]
        if not preferred:
            raise RouteError(f"554 5.4.6 mail for {domain} loops back to myself (its best MX is this server)", True)
        return preferred

    @defer.inlineCallbacks
    def _exchanges(self, domain: str) -> Any:
        """[(preference, host)] in the order to try, or the implicit MX."""
        name = domain
        for _ in range(MAX_CNAME_CHAIN):
            try:
                answers, _, _ = yield self.resolver.lookupMailExchange(name, timeout=self.timeout)
            except Exception as e:
                raise _dns_failure(domain, e) from e
            records = [r for r in answers if r.type == dns.MX and r.name.name.decode("ascii").lower() == name.lower()]
            if records:
                return self._order(domain, [(r.payload.preference, r.payload.name.name.decode("ascii")) for r in records])
            target = _cname_target(answers, name)
            if target is None:
                return [(0, domain)]
            name = target
        raise RouteError(f"451 4.4.3 too many CNAME links resolving {domain}", False)

    def _order(self, domain: str, records: list[tuple[int, str]]) -> list[tuple[int, str]]:
        real = [(preference, host.rstrip(".").lower()) for preference, host in records if host.rstrip(".")]
        if not real:
            # RFC 7505: the domain says it accepts no mail.
            raise RouteError(f"556 5.1.10 {domain} does not accept mail (null MX)", True)
        ordered: list[tuple[int, str]] = []
        for preference in sorted({p for p, _ in real}):
            group = [item for item in real if item[0] == preference]
            self.shuffle(group)
            ordered.extend(group)
        return ordered

    def addresses(self, host: str) -> Any:
        """Fire with C{host}'s IPv4 then IPv6 addresses (empty when it has none), through the relay's resolver."""
        return self._addresses(host)

    @defer.inlineCallbacks
    def _addresses(self, host: str) -> Any:
        if _is_ip(host):
            return []  # an MX must name a host, never an address (RFC 5321 5.1)
        found: list[str] = []
        for lookup, kind in ((self.resolver.lookupAddress, dns.A), (self.resolver.lookupIPV6Address, dns.AAAA)):
            try:
                answers, _, _ = yield lookup(host, timeout=self.timeout)
            except Exception:
                continue
            for record in answers:
                if record.type == kind:
                    address = record.payload.dottedQuad() if kind == dns.A else _ipv6(record.payload)
                    if address not in found:
                        found.append(address)
        return found


def _ipv6(payload: Any) -> str:
    import socket

    return socket.inet_ntop(socket.AF_INET6, payload.address)


def _cname_target(answers: list[Any], name: str) -> str | None:
    for record in answers:
        if record.type == dns.CNAME and record.name.name.decode("ascii").lower() == name.lower():
            target: bytes = record.payload.name.name
            return target.decode("ascii")
    return None


def _dns_failure(domain: str, failure: Exception) -> RouteError:
    if isinstance(failure, dns_error.DNSNameError):
        return RouteError(f"550 5.1.2 domain {domain} does not exist (NXDOMAIN)", True)
    if isinstance(failure, dns_error.DNSServerError):
        return RouteError(f"451 4.4.3 DNS server failure looking up {domain}", False)
    if isinstance(failure, (defer.TimeoutError, dns_error.DNSQueryTimeoutError)):
        return RouteError(f"451 4.4.3 DNS timeout looking up {domain}", False)
    return RouteError(f"451 4.4.3 DNS error looking up {domain}: {type(failure).__name__}", False)


class Routes:
    """
    The next hops for a domain: a configured transport, the smarthost, or
    its MX. C{resolve(domain)} fires with L{Hop}s or fails with L{RouteError}.
    """

    def __init__(
        self,
        transports: Mapping[str, HostPort],
        smarthost: HostPort | None,
        mx: MXResolver | None,
    ) -> None:
        self.transports = transports
        self.smarthost = smarthost
        self.mx = mx

    def fixed(self, domain: str) -> HostPort | None:
        """The configured next hop for C{domain}, if any (transport, then smarthost)."""
        return self.transports.get(domain.lower()) or self.smarthost

    @defer.inlineCallbacks
    def resolve(self, domain: str) -> Any:
        fixed = self.fixed(domain)
        if fixed is not None:
            if _is_ip(fixed.host):
                return [Hop(fixed.host, fixed.host, fixed.port)]
            if self.mx is None:
                raise RouteError(f"451 4.4.3 no resolver for {fixed.host}", False)
            addresses = yield self.mx._addresses(fixed.host)
            if not addresses:
                raise RouteError(f"451 4.4.4 no address for the next hop {fixed.host}", False)
            return [Hop(fixed.host, address, fixed.port) for address in addresses]
        if self.mx is None:
            raise RouteError(f"451 4.4.3 no resolver configured for {domain}", False)
        hops = yield self.mx.resolve(domain)
        return hops
