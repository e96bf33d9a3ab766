"""
The rig's authoritative name server: a subprocess, run inside the DNS host's
network namespace, serving the test's zones on port 53 (UDP and TCP) of the
given addresses.

    python dns_server.py ZONES.json ADDRESS [ADDRESS ...]

``ZONES.json`` (written by L{tests.rig.dns.DNSServer}) is::

    {"zones": {"b.test": [["b.test", "MX", 10, "mx.b.test"],
                          ["mx.b.test", "A", "192.0.2.11"], ...]},
     "servfail": ["broken.test"], "timeout": ["slow.test"], "secure": ["e.test"]}

``TLSA`` records are ``[owner, "TLSA", usage, selector, matching, "hex data"]``.
Answers for names under ``secure`` carry the AD bit, as a validating
resolver's would (the rig has no DNSSEC signatures: the bit is what the
relay's DANE trusts, see L{mailapp.relay.dane}).

Each zone is a L{twisted.names.authority.FileAuthority} (authoritative
answers, an SOA with NODATA, CNAME handling); in front of them a resolver
answers SERVFAIL for the ``servfail`` names and never answers for the
``timeout`` names (and their subdomains). A name in no zone is NXDOMAIN.
Prints ``ready`` on stdout once every socket is bound; runs until SIGTERM.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.names import authority, common, dns, error, server
from twisted.python import failure

_TYPES = {
    "A": lambda value: dns.Record_A(value),
    "AAAA": lambda value: dns.Record_AAAA(value),
    "CNAME": lambda value: dns.Record_CNAME(value),
    "TXT": lambda *values: dns.Record_TXT(*(v.encode() for v in values)),
    "NS": lambda value: dns.Record_NS(value),
}


class Record_TLSA(dns.UnknownRecord):
    """A TLSA record (RFC 6698), which twisted.names has no class for: its wire data, typed 52."""

    TYPE = 52

    def __init__(self, usage: int, selector: int, matching: int, data: str, ttl: int = 5) -> None:
        super().__init__(bytes((usage, selector, matching)) + bytes.fromhex(data), ttl)


def _record(kind: str, values: list[Any]) -> Any:
    if kind == "TLSA":
        return Record_TLSA(int(values[0]), int(values[1]), int(values[2]), str(values[3]))
    if kind == "MX":
        preference, exchange = values
        # A null MX's exchange is the root, ".": its wire form is the empty name.
        return dns.Record_MX(int(preference), b"" if exchange == "." else exchange.encode())
    if kind == "SRV":
        priority, weight, port, target = values
        # RFC 2782: the target "." says the service is not offered.
        return dns.Record_SRV(int(priority), int(weight), int(port), b"" if target in (".", "") else target.rstrip(".").encode())
    return _TYPES[kind](*values)


class DataAuthority(authority.FileAuthority):
    """An authority whose records come from data rather than a zone file."""

    def __init__(self, zone: str, records: list[list[Any]]) -> None:
        self._zone, self._data = zone, records
        super().__init__(zone)

    def loadFile(self, filename: Any) -> None:
        zone = self._zone.encode()
        self.soa = (
            zone,
            dns.Record_SOA(mname=b"ns." + zone, rname=b"hostmaster." + zone, serial=1, refresh=60, retry=60, expire=60, minimum=5, ttl=5),
        )
        self.records = {zone.lower(): [self.soa[1]]}
        for owner, kind, *values in self._data:
            record = _record(kind, values)
            record.ttl = 5
            self.records.setdefault(owner.lower().rstrip(".").encode(), []).append(record)


def _covers(names: set[bytes], name: bytes) -> bool:
    name = name.lower()
    return any(name == n or name.endswith(b"." + n) for n in names)


class FaultResolver(common.ResolverBase):
    """SERVFAIL or silence for chosen names; every other name goes on to the zones."""

    def __init__(self, servfail: list[str], timeout: list[str]) -> None:
        super().__init__()
        self.servfail = {n.lower().encode() for n in servfail}
        self.timeout = {n.lower().encode() for n in timeout}

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        if _covers(self.servfail, name):
            return defer.fail(failure.Failure(RuntimeError("scripted SERVFAIL")))
        if _covers(self.timeout, name):
            return defer.Deferred()  # never answered
        return defer.fail(failure.Failure(error.DomainError(name)))


class SecureFactory(server.DNSServerFactory):
    """Sets the AD bit on answers for names under C{secure} (and on nothing else)."""

    def __init__(self, secure: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.secure = {n.lower().encode() for n in secure}

    def _responseFromMessage(self, message: Any, **kwargs: Any) -> Any:
        response = super()._responseFromMessage(message, **kwargs)
        if message.queries and _covers(self.secure, message.queries[0].name.name):
            response.authenticData = 1
        return response


def main(path: str, addresses: list[str]) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    authorities = [FaultResolver(data.get("servfail", []), data.get("timeout", []))]
    authorities += [DataAuthority(zone, records) for zone, records in data["zones"].items()]
    factory = SecureFactory(data.get("secure", []), authorities=authorities, verbose=0)
    for address in addresses:
        reactor.listenUDP(53, dns.DNSDatagramProtocol(factory), interface=address)
        reactor.listenTCP(53, factory, interface=address)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
