"""
DANE for SMTP (RFC 7672): TLSA records of ``_25._tcp.MXHOST``, and the
check of a peer's chain against them.

What is trusted. A TLSA answer counts only when it is DNSSEC-validated, and
mailapp validates nothing itself: it asks its resolver with the AD bit set
(RFC 6840 5.7) and believes the AD bit of the answer according to
``[relay] dnssec_ad_trust``:

  - ``"loopback"`` (the default): only when every name server the relay
    asks is on a loopback address (127.0.0.0/8, ::1). The AD bit is not
    signed; it is only as good as the path from the validating resolver to
    us, and on loopback nobody else is on that path. This is what Postfix
    asks for (a local validating resolver, such as unbound on 127.0.0.1).
  - ``"any"``: from whatever name server answers. For a validating resolver
    across a network the operator trusts (or the test rig); anyone on the
    path could forge the bit.
  - ``"never"``: DANE is never used; a domain whose policy is ``dane``
    then always waits.

An answer without a trusted AD bit is as if there were no TLSA records: the
destination falls back to its other policy (RFC 7672 2.2). A lookup that
fails (SERVFAIL, a timeout) on a trusted path may be an attack on a signed
zone, so that hop is not used now (RFC 7672 2.2.1), and the message waits.

Matching (RFC 7672 3): DANE-EE(3) records match the leaf, and then neither
its names nor its dates matter (3.1.1); DANE-TA(2) records match a
certificate the peer sent, which the leaf must chain to, with the MX host
name checked (3.1.2). PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP
(3.1.3). Selector 0 is the whole certificate, 1 its SubjectPublicKeyInfo;
matching type 0 the data itself, 1 SHA-256, 2 SHA-512. Records that exist
but none usable make TLS mandatory without authentication (2.2).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import Store
from twisted.internet import defer
from twisted.names import client, dns
from twisted.names import error as dns_error

from mailapp.relay.tlsverify import TLSFailure, check_chain, check_name

__all__ = [
    "AD_TRUST",
    "AuthenticatedResolver",
    "TLSA",
    "TLSALookup",
    "TLSA_TYPE",
    "check_dane",
    "lookup_tlsa",
    "tlsa_name",
]

#: The TLSA record type (RFC 6698); twisted.names has no record class for it.
TLSA_TYPE = 52
AD_TRUST = ("loopback", "any", "never")

DANE_TA = 2
DANE_EE = 3
_DIGESTS = {1: hashlib.sha256, 2: hashlib.sha512}


@dataclass(frozen=True)
class TLSA:
    """One TLSA record: certificate usage, selector, matching type and data."""

    usage: int
    selector: int
    matching: int
    data: bytes

    @classmethod
    def from_rdata(cls, rdata: bytes) -> TLSA | None:
        """Parse the record's wire data; None when it is too short to be one."""
        if len(rdata) < 3:
            return None
        return cls(rdata[0], rdata[1], rdata[2], bytes(rdata[3:]))

    def to_rdata(self) -> bytes:
        return bytes((self.usage, self.selector, self.matching)) + self.data

    @property
    def usable(self) -> bool:
        """Whether RFC 7672 lets SMTP use it: DANE-TA or DANE-EE, a known selector and matching type."""
        return self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1) and self.matching in (0, 1, 2)

    def matches(self, certificate: x509.Certificate) -> bool:
        if self.selector == 0:
            selected = certificate.public_bytes(serialization.Encoding.DER)
        else:
            selected = certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        if self.matching == 0:
            return selected == self.data
        return _DIGESTS[self.matching](selected).digest() == self.data

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.matching} {self.data.hex()}"


@dataclass(frozen=True)
class TLSALookup:
    """
    The outcome of one TLSA lookup: C{records} (all of them, usable or not)
    from a trusted validated answer, else empty; C{secure} says whether the
    answer (or its absence) was validated and trusted.
    """

    records: tuple[TLSA, ...] = ()
    secure: bool = False

    @property
    def usable(self) -> tuple[TLSA, ...]:
        return tuple(record for record in self.records if record.usable)


def tlsa_name(host: str, port: int = 25) -> str:
    return f"_{port}._tcp.{host.rstrip('.').lower()}"


class TLSALookupFailed(Exception):
    """The TLSA lookup failed on a trusted path: the hop may be under attack, so it is not used now."""


@defer.inlineCallbacks
def lookup_tlsa(resolver: Any, host: str, port: int = 25, timeout: tuple[int, ...] = (1, 3, 11)) -> Any:
    """
    Fire with a L{TLSALookup} for C{host}'s SMTP port, through C{resolver}'s
    C{lookupAuthenticated(name, type, timeout)} (which fires with
    ``(answers, trusted AD bit)``). NXDOMAIN or no records: no TLSA. Fails
    with L{TLSALookupFailed} when the lookup fails.
    """
    name = tlsa_name(host, port)
    try:
        answers, secure = yield resolver.lookupAuthenticated(name, TLSA_TYPE, timeout)
    except dns_error.DNSNameError:
        return TLSALookup((), False)
    except Exception as error:
        raise TLSALookupFailed(f"TLSA lookup for {name} failed: {type(error).__name__}") from error
    if not secure:
        return TLSALookup((), False)
    records = []
    for answer in answers:
        if answer.type != TLSA_TYPE or answer.name.name.decode("ascii", "replace").lower().rstrip(".") != name:
            continue
        record = TLSA.from_rdata(_rdata(answer.payload))
        if record is not None:
            records.append(record)
    return TLSALookup(tuple(records), True)


def _rdata(payload: Any) -> bytes:
    data = getattr(payload, "data", b"")
    return bytes(data)


def check_dane(records: Sequence[TLSA], chain: Sequence[x509.Certificate], hostname: str) -> TLSFailure | None:
    """Whether the peer's C{chain} (leaf first) matches one of the usable C{records} (see the module docstring)."""
    usable = [record for record in records if record.usable]
    if not usable:
        return None  # TLS was required; there is nothing to authenticate against (RFC 7672 2.2)
    if not chain:
        return TLSFailure("validation-failure", "the server sent no certificate")
    leaf = chain[0]
    for record in usable:
        if record.usage == DANE_EE and record.matches(leaf):
            return None
    for record in usable:
        if record.usage != DANE_TA:
            continue
        for index, certificate in enumerate(chain):
            if index == 0 or not record.matches(certificate):
                continue
            failure = check_name(leaf, hostname) or check_chain(chain[:index], hostname, Store([certificate]))
            if failure is None:
                return None
    return TLSFailure("validation-failure", f"no TLSA record of {tlsa_name(hostname)} matches the certificate")


class AuthenticatedResolver:
    """
    Queries with the AD bit set, to the relay's name servers (the configured
    ``[relay] nameservers``, else resolv.conf's), made on first use; offers
    C{lookupAuthenticated} (see L{lookup_tlsa}), believing the answer's AD
    bit by C{trust} (one of L{AD_TRUST}; see the module docstring).
    """

    def __init__(self, reactor: Any, nameservers: Iterable[tuple[str, int]], trust: str, resolv_conf: str = "/etc/resolv.conf") -> None:
        self._reactor = reactor
        self._nameservers = list(nameservers)
        self._resolv_conf = resolv_conf
        self.trust = trust
        # twisted.names.client is untyped: the resolver is Any here.
        self._resolver: Any = None

    def _get(self) -> Any:
        if self._resolver is None:
            made: Any = _ADResolver
            if self._nameservers:
                self._resolver = made(servers=self._nameservers, reactor=self._reactor)
            else:
                self._resolver = made(resolv=self._resolv_conf, reactor=self._reactor)
        return self._resolver

    def trusted(self, servers: Iterable[tuple[str, int]]) -> bool:
        """Whether an AD bit from C{servers} is believed."""
        if self.trust == "any":
            return True
        if self.trust == "never":
            return False
        found = list(servers)
        return bool(found) and all(_loopback(address) for address, _ in found)

    @defer.inlineCallbacks
    def lookupAuthenticated(self, name: str, type: int, timeout: tuple[int, ...] = (1, 3, 11)) -> Any:
        if self.trust == "never":
            return [], False
        resolver = self._get()
        if not self.trusted(resolver.servers + list(resolver.dynServers)):
            # An AD bit from here would not be believed: no query, so that a
            # resolver that mishandles TLSA can never hold mail up (RFC 7672 2.2.1
            # asks senders that do not do DANE to carry on as before).
            return [], False
        message = yield resolver.queryUDP([dns.Query(name, type, dns.IN)], timeout)
        if message.trunc:
            message = yield resolver.queryTCP(message.queries)
        if message.rCode != dns.OK:
            raise resolver.exceptionForCode(message.rCode)(message)
        secure = bool(message.authenticData) and self.trusted(resolver.servers + list(resolver.dynServers))
        return list(message.answers), secure

    def close(self) -> None:
        parse = getattr(self._resolver, "_parseCall", None)
        if parse is not None and parse.active():
            parse.cancel()


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class _ADResolver(client.Resolver):
    """A twisted.names client that sets the AD bit in its queries (RFC 6840 5.7), so that a validating resolver reports it."""

    def _connectedProtocol(self, interface: str = "") -> Any:
        protocol = super()._connectedProtocol(interface)  # type: ignore[no-untyped-call]  # twisted.names.client is untyped
        write = protocol.writeMessage

        def writeMessage(message: dns.Message, address: Any) -> None:
            message.authenticData = 1
            write(message, address)

        protocol.writeMessage = writeMessage
        return protocol
