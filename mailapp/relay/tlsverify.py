"""
Checking an outbound peer's TLS: the client side of a STARTTLS upgrade and
the checks of what the peer presented.

The handshake itself never verifies (L{ClientTLS} asks OpenSSL for no
verification); the relay checks the chain after it, before the first MAIL
FROM, with L{check_webpki} or L{mailapp.relay.dane.check_dane}. Doing it
after the handshake rather than in OpenSSL's callback gives each failure its
RFC 8460 result type and a reason to log, the same code serves the
opportunistic, verified and DANE cases, and an opportunistic session still
learns whether its peer would have verified (which a REQUIRETLS message
needs to know).

What "verified" means here (L{check_webpki}, RFC 6125 / RFC 8461 4.1):

  - the name: the certificate's DNS subject alternative names match the MX
    host name (one wildcard label at the left allowed), by
    L{service_identity}, the library Twisted itself uses for this;
  - the chain: from the leaf, through the intermediates the peer sent, to a
    certificate in the trust store (the system's bundle, or
    ``[relay] tls_ca_file``), each one valid now, by cryptography's X.509
    path validation (L{cryptography.x509.verification}), which also checks
    the extended key usage and the name constraints.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from OpenSSL import SSL
from service_identity import CertificateError as IdentityCertificateError
from service_identity import VerificationError as IdentityError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from mailapp.tls import CertificateError

__all__ = [
    "ClientTLS",
    "TLSFailure",
    "TrustStore",
    "check_webpki",
    "client_context",
    "peer_chain",
]

#: Where Debian keeps the system's CA bundle, when Python's ssl module does not say.
_DEBIAN_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class TLSFailure:
    """
    Why a peer's TLS is not good enough: C{result_type} is the RFC 8460
    section 4.3 result type (``certificate-host-mismatch``,
    ``certificate-not-trusted``, ``tlsa-invalid``, ...), C{reason} one line
    for the log and the envelope.
    """

    result_type: str
    reason: str


class TrustStore:
    """
    The CA certificates a verified peer must chain to: the file given, else
    the system's bundle. Reads the file once (at start-up: blocking I/O).
    Each certificate is read on its own, and one that cryptography refuses
    (a bundle may hold an old root with a negative serial) is left out
    rather than losing the whole bundle.

    @raise mailapp.tls.CertificateError: the configured file cannot be read
        or holds no certificate.
    """

    def __init__(self, ca_file: Path | None = None) -> None:
        path = ca_file if ca_file is not None else _system_bundle()
        self.path = path
        certificates: list[x509.Certificate] = []
        if path is not None:
            try:
                certificates = _certificates(path.read_bytes())
            except OSError as error:
                if ca_file is not None:
                    raise CertificateError(f"cannot read relay.tls_ca_file {path}: {error}") from None
            if ca_file is not None and not certificates:
                raise CertificateError(f"relay.tls_ca_file {path} holds no PEM certificate")
        self.certificates = tuple(certificates)
        self._store = Store(list(certificates)) if certificates else None

    @property
    def store(self) -> Store | None:
        """cryptography's store of the anchors (None when there is none: nothing verifies)."""
        return self._store


_PEM_END = b"-----END CERTIFICATE-----"


def _certificates(data: bytes) -> list[x509.Certificate]:
    found = []
    for block in data.split(_PEM_END)[:-1]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # cryptography's deprecation of what it will refuse next
                found.append(x509.load_pem_x509_certificate(block.strip() + b"\n" + _PEM_END + b"\n"))
        except ValueError:
            continue
    return found


def _system_bundle() -> Path | None:
    default = ssl.get_default_verify_paths().cafile
    if default and Path(default).is_file():
        return Path(default)
    return _DEBIAN_BUNDLE if _DEBIAN_BUNDLE.is_file() else None


def client_context() -> SSL.Context:
    """
    The relay's client context: TLS 1.2 at least, OpenSSL's default client
    ciphers, and no verification in the handshake (see the module docstring:
    the relay checks the chain itself, before it sends any mail).
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_verify(SSL.VERIFY_NONE, None)
    context.set_options(SSL.OP_NO_COMPRESSION)
    return context


@implementer(IOpenSSLClientConnectionCreator)
class ClientTLS:
    """
    One connection's TLS: sends C{server_name} as SNI (RFC 7672 8.1 asks
    for the MX host name, which is the name checked) and keeps the
    C{SSL.Connection}, so that the relay can read the peer's chain once the
    handshake is done.
    """

    def __init__(self, context: SSL.Context, server_name: str) -> None:
        self._context = context
        self.server_name = server_name
        self.connection: SSL.Connection | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        try:
            connection.set_tlsext_host_name(self.server_name.encode("idna"))
        except UnicodeError:
            pass  # not a name SNI can carry; the name check will say so
        connection.set_connect_state()
        connection.set_app_data(tlsProtocol)
        self.connection = connection
        return connection


def peer_chain(tls: Any) -> list[x509.Certificate]:
    """The chain the peer presented, leaf first (empty before a handshake, or without TLS)."""
    connection = getattr(tls, "connection", None)
    if connection is None:
        return []
    chain = connection.get_peer_cert_chain(as_cryptography=True)
    return list(chain or [])


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def check_name(leaf: x509.Certificate, hostname: str) -> TLSFailure | None:
    """Whether C{leaf} names C{hostname} (service_identity's RFC 6125 matching)."""
    try:
        address = _address(hostname)
        if address is not None:
            verify_certificate_ip_address(leaf, str(address))  # a next hop configured by address
        else:
            verify_certificate_hostname(leaf, hostname.rstrip("."))
    except (IdentityError, IdentityCertificateError, ValueError) as error:
        return TLSFailure("certificate-host-mismatch", f"certificate does not name {hostname}: {error}")
    return None


def check_chain(
    chain: Sequence[x509.Certificate], hostname: str, store: Store | None, now: datetime.datetime | None = None
) -> TLSFailure | None:
    """Whether C{chain} (leaf first) leads to an anchor of C{store} and is valid at C{now}."""
    if not chain:
        return TLSFailure("certificate-not-trusted", "the server sent no certificate")
    when = now or _now()
    leaf = chain[0]
    if leaf.not_valid_after_utc < when:
        return TLSFailure("certificate-expired", f"certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    if store is None:
        return TLSFailure("certificate-not-trusted", "no trust store to verify against")
    try:
        address = _address(hostname)
        subject = IPAddress(address) if address is not None else DNSName(hostname.rstrip("."))
        verifier = PolicyBuilder().store(store).time(when).build_server_verifier(subject)
        verifier.verify(leaf, list(chain[1:]))
    except (VerificationError, ValueError) as error:
        return TLSFailure("certificate-not-trusted", f"certificate chain does not verify: {error}")
    return None


def check_webpki(
    chain: Sequence[x509.Certificate], hostname: str, store: Store | None, now: datetime.datetime | None = None
) -> TLSFailure | None:
    """The verified-TLS check (see the module docstring): the name, then the chain."""
    if not chain:
        return TLSFailure("certificate-not-trusted", "the server sent no certificate")
    return check_name(chain[0], hostname) or check_chain(chain, hostname, store, now)
