"""
TLS material: the server's certificate and the context every listener uses.

One certificate serves every protocol (STARTTLS and implicit TLS alike). In
development :func:`ensure_certificate` makes a self-signed one so that
``make run`` works on a fresh clone; in production the files come from an
ACME client and the config says ``generate_self_signed = false``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger

from mailapp import logevents
from mailapp.config import TLSConfig

__all__ = ["CertificateError", "ensure_certificate", "server_context_factory"]

log = Logger()

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
    Build the server-side TLS context from the PEM files: TLS 1.2 at least,
    Twisted's default cipher choice, and any intermediates in the certificate
    file (after the server certificate) sent as the chain.

    Reads files: call it at start-up, not per connection.

    @raise CertificateError: a file is missing or unreadable, or the key does
        not match the certificate.
    """
    try:
        chain = x509.load_pem_x509_certificates(tls_config.cert.read_bytes())
    except (OSError, ValueError) as error:
        raise CertificateError(f"cannot load certificate {tls_config.cert}: {error}") from None
    key = _load_private_key(tls_config.key)
    if chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CertificateError(f"key {tls_config.key} does not belong to certificate {tls_config.cert}")
    # pyOpenSSL takes cryptography objects directly and deprecates its own
    # X509/PKey wrappers; CertificateOptions only hands them on to it.
    return CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=list(chain[1:]),  # type: ignore[arg-type]
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


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
    now = datetime.datetime.now(datetime.timezone.utc)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key),  # type: ignore[arg-type]
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
