"""
TLS material: the server's certificates and the one context holder every
listener consults.

One certificate serves every protocol (STARTTLS and implicit TLS alike), with
optional others chosen by SNI (``[tls.sni]``). In development
:func:`ensure_certificate` makes a self-signed one so that ``make run`` works
on a fresh clone; in production the files come from an ACME client and the
config says ``generate_self_signed = false``.

:class:`ServerTLS` is the holder: every implicit-TLS listener and every
STARTTLS upgrade asks it for a new ``SSL.Connection`` per connection, so
:meth:`ServerTLS.reload` (on ``SIGHUP``, after a certbot renewal) changes
what new handshakes get while sessions already open keep theirs.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from zope.interface import implementer

from mailapp import logevents
from mailapp.config import TLSConfig

__all__ = ["MODERN_CIPHERS", "CertificateError", "ServerTLS", "ensure_certificate", "server_context_factory"]

log = Logger()

#: TLS 1.2 cipher suites: forward secrecy and AEAD only (Mozilla's
#: "intermediate" list without finite-field DHE, which needs DH parameters).
#: TLS 1.3 suites are OpenSSL's own defaults, all of them modern.
MODERN_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

_MINIMUM_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}

#: Self-signed development certificates live a little over two years, the
#: longest that some clients accept for a leaf certificate.
_VALIDITY = datetime.timedelta(days=825)


class CertificateError(Exception):
    """The certificate or key is missing, unreadable, or they do not belong together."""


def ensure_certificate(tls_config: TLSConfig, hostname: str) -> None:
    """
    Make sure the certificate and key files exist.

    When either is missing and ``generate_self_signed`` is set, write a
    self-signed certificate for ``hostname`` (plus ``localhost``, 127.0.0.1
    and ::1, so that local clients can check it). An existing key is kept and
    reused: a key is never overwritten. The key file is created 0600 and the
    directories 0700. Blocking file I/O: call it before the reactor runs.

    @raise CertificateError: a file is missing and nothing may generate it.
    """
    cert_path, key_path = tls_config.cert, tls_config.key
    if cert_path.is_file() and key_path.is_file():
        return
    if not tls_config.generate_self_signed:
        missing = ", ".join(str(path) for path in (cert_path, key_path) if not path.is_file())
        raise CertificateError(f"TLS file missing and tls.generate_self_signed is false: {missing}")
    if key_path.is_file():
        key = _load_private_key(key_path)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_atomically(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            mode=0o600,
        )
    certificate = _self_signed(key, hostname)
    _write_atomically(cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info(
        "generated a self-signed certificate for {hostname} in {cert} (development only)",
        log_event=logevents.CERTIFICATE_GENERATED,
        hostname=hostname,
        cert=str(cert_path),
    )


def server_context_factory(tls_config: TLSConfig) -> CertificateOptions:
    """
    Build the server-side TLS context of the main certificate from the PEM
    files: ``tls.min_version`` (TLS 1.2) at least, :data:`MODERN_CIPHERS`,
    and any intermediates in the certificate file (after the server
    certificate) sent as the chain.

    Reads files: call it at start-up or on reload, not per connection.

    @raise CertificateError: a file is missing or unreadable, or the key does
        not match the certificate.
    """
    return _certificate_options(tls_config.cert, tls_config.key, tls_config.min_version)[0]


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The server's TLS contexts behind one stable object, the thing every
    listener is given: the main certificate, and one per ``[tls.sni]`` name.

    It is a connection creator (:class:`TLSMemoryBIOFactory` and
    ``transport.startTLS`` both take it) that builds each new connection on
    the contexts current at that moment. :meth:`reload` swaps them all at
    once; connections already made keep the context they began with, so a
    swap affects new handshakes only and never drops a session.
    """

    def __init__(self, tls_config: TLSConfig) -> None:
        self._contexts = _Contexts.load(tls_config)

    def reload(self, tls_config: TLSConfig) -> None:
        """
        Read the files again (blocking I/O, small files) and serve them to
        new connections. On any problem nothing changes.

        @raise CertificateError: a file is missing or unreadable, or a key
            does not match its certificate.
        """
        self._contexts = _Contexts.load(tls_config)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._contexts.default, None)

    def getContext(self) -> SSL.Context:
        """The main certificate's context, for APIs that want an old-style context factory."""
        return self._contexts.default

    def certificates(self) -> dict[str, x509.Certificate]:
        """Each served leaf certificate by name (``""`` for the main one), e.g. for expiry metrics."""
        return dict(self._contexts.leaves)


class _Contexts:
    """One immutable generation of contexts: the default one and the SNI ones by name."""

    def __init__(
        self, default: SSL.Context, by_name: dict[str, SSL.Context], leaves: dict[str, x509.Certificate]
    ) -> None:
        self.default = default
        self.by_name = by_name
        self.leaves = leaves
        if by_name:
            default.set_tlsext_servername_callback(self._choose)

    @classmethod
    def load(cls, tls_config: TLSConfig) -> _Contexts:
        options, leaf = _certificate_options(tls_config.cert, tls_config.key, tls_config.min_version)
        leaves = {"": leaf}
        by_name: dict[str, SSL.Context] = {}
        for name, pair in tls_config.sni.items():
            sni_options, sni_leaf = _certificate_options(pair.cert, pair.key, tls_config.min_version)
            by_name[name] = sni_options.getContext()
            leaves[name] = sni_leaf
        return cls(options.getContext(), by_name, leaves)

    def _choose(self, connection: SSL.Connection) -> None:
        # Called by OpenSSL during the handshake, with the ClientHello's name.
        requested = connection.get_servername()
        if not requested:
            return
        name = requested.decode("ascii", "replace").lower().rstrip(".")
        context = self.by_name.get(name)
        if context is None and "." in name:
            context = self.by_name.get("*." + name.split(".", 1)[1])
        if context is not None:
            connection.set_context(context)


def _certificate_options(cert_path: Path, key_path: Path, min_version: str) -> tuple[CertificateOptions, x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
    except (OSError, ValueError) as error:
        raise CertificateError(f"cannot load certificate {cert_path}: {error}") from None
    key = _load_private_key(key_path)
    if chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CertificateError(f"key {key_path} does not belong to certificate {cert_path}")
    # pyOpenSSL takes cryptography objects directly and deprecates its own
    # X509/PKey wrappers; CertificateOptions only hands them on to it.
    options = CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=list(chain[1:]),  # type: ignore[arg-type]
        raiseMinimumTo=_MINIMUM_VERSIONS[min_version],
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(MODERN_CIPHERS),
    )
    try:
        options.getContext()  # build it now, so that a bad file fails here and not at a handshake
    except SSL.Error as error:
        raise CertificateError(f"cannot use certificate {cert_path} with key {key_path}: {error}") from None
    return options, chain[0]


def _load_private_key(path: Path) -> CertificateIssuerPrivateKeyTypes:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise CertificateError(f"cannot load private key {path}: {error}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CertificateError(f"private key {path} is of an unsupported type for a server: {type(key).__name__}")
    return key


def _self_signed(key: CertificateIssuerPrivateKeyTypes, hostname: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alternative_names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        alternative_names.append(x509.DNSName("localhost"))
    alternative_names += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not isinstance(key, ec.EllipticCurvePrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a crash never leaves half a key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.unlink()
    except FileNotFoundError:
        pass
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
