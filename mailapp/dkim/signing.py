"""
Outbound DKIM signatures (RFC 6376, Ed25519 from RFC 8463) made with dkimpy.

Every message gets one signature per key of its From: domain's active
selector (L{mailapp.dkim.keys.ALGORITHMS}: rsa-sha256 and ed25519-sha256),
relaxed/relaxed, with ``t=``, signing the header fields RFC 6376 5.4.1
recommends and I{oversigning} From, To, Subject, Date and Message-ID: each
is named once more than it occurs, so that nobody can add one (a second
From: shown instead of the signed one) without breaking the signature.

dkimpy does the canonicalisation, hashing, header building and folding.
Its RSA private-key operation is pure Python, though: about 12 ms of
interpreter time per signature, holding the GIL, which every reactor tick
would wait for. L{_DKIM} hands that one operation (RSASSA-PKCS1-v1_5 over
the digest dkimpy computed) to OpenSSL through ``cryptography`` instead,
about 1 ms; the result is byte for byte what dkimpy's own code gives
(PKCS#1 v1.5 signatures are deterministic, and a test compares them).
"""

from __future__ import annotations

import email.utils
import threading
from dataclasses import dataclass
from typing import Any, Final

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from mailapp.dkim.keys import ED25519, RSA, DkimKey, SigningKeys

__all__ = ["OVERSIGNED", "from_domain", "sign_message"]

#: Header fields signed once more than they occur (RFC 6376 8.15).
OVERSIGNED: Final = (b"from", b"to", b"subject", b"date", b"message-id")
_HEADER_LIMIT: Final = 256 * 1024


@dataclass(frozen=True)
class _Signature:
    """What dkimpy reads off the result of C{pk.sign(digest)} (PyNaCl's SignedMessage)."""

    signature: bytes


class _OpenSSLRSA:
    """An RSA key with the one method dkimpy calls on a signing key object: C{sign(digest)}."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key

    def sign(self, digest: bytes) -> _Signature:
        return _Signature(self._key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())))


class _DKIM(dkim.DKIM):  # type: ignore[misc]  # dkimpy is untyped
    """
    dkimpy's signer with the RSA operation done by OpenSSL (see the module
    docstring). dkimpy signs an Ed25519 digest with C{pk.sign(digest)}; for
    rsa-sha256 (same hash, sha256, already chosen by C{sign}), this presents
    the OpenSSL key through that same call. The ``a=`` tag is already in
    C{fields} by then, so the header says rsa-sha256.
    """

    openssl_key: rsa.RSAPrivateKey | None = None
    signature_algorithm: bytes

    def gen_header(self, fields: Any, include_headers: Any, canon_policy: Any, header_name: Any, pk: Any, standardize: bool = False) -> Any:
        if self.openssl_key is None or self.signature_algorithm != RSA.encode("ascii"):
            return super().gen_header(fields, include_headers, canon_policy, header_name, pk, standardize)
        self.signature_algorithm = ED25519.encode("ascii")
        try:
            return super().gen_header(fields, include_headers, canon_policy, header_name, _OpenSSLRSA(self.openssl_key), standardize)
        finally:
            self.signature_algorithm = RSA.encode("ascii")


_openssl_keys: dict[bytes, rsa.RSAPrivateKey] = {}
_openssl_lock = threading.Lock()


def _openssl_key(pem: bytes) -> rsa.RSAPrivateKey:
    """The parsed key, parsed once per process (a PEM parse costs more than a signature)."""
    with _openssl_lock:
        key = _openssl_keys.get(pem)
    if key is None:
        loaded = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ValueError("not an RSA private key")
        key = loaded
        with _openssl_lock:
            _openssl_keys[pem] = key
    return key


def _headers_to_sign(signer: dkim.DKIM) -> list[bytes]:
    """Every present field dkimpy recommends signing, then each of L{OVERSIGNED} once more."""
    wanted = signer.should_sign | set(OVERSIGNED)
    present = [name.lower() for name, _ in signer.headers if name.lower() in wanted]
    return present + list(OVERSIGNED)


def sign_one(message: bytes, key: DkimKey, *, use_openssl: bool = True) -> bytes:
    """The DKIM-Signature field (ending in CRLF) of C{key} over C{message} (CRLF line ends)."""
    signer = _DKIM(message, signature_algorithm=key.algorithm.encode("ascii"), linesep=b"\r\n")
    if key.algorithm == RSA and use_openssl:
        signer.openssl_key = _openssl_key(key.private_key)
    field: bytes = signer.sign(
        key.dns_selector.encode("ascii"),
        key.domain.encode("ascii"),
        key.private_key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=_headers_to_sign(signer),
    )
    return field


def sign_message(message: bytes, keys: SigningKeys) -> bytes:
    """Every signature of C{keys} over C{message}, in L{ALGORITHMS} order: the fields to prepend."""
    return b"".join(sign_one(message, key) for key in keys.keys)


def from_domain(message: bytes) -> str | None:
    """
    The domain of the From: address, lower-cased; None without one, or with
    From: fields naming more than one domain (nothing to sign for then).
    """
    end = message.find(b"\r\n\r\n")
    head = message[: end if end >= 0 else _HEADER_LIMIT][:_HEADER_LIMIT]
    fields: list[list[bytes]] = []
    in_from = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if in_from:
                fields[-1].append(line)
            continue
        name, colon, value = line.partition(b":")
        in_from = bool(colon) and name.strip().lower() == b"from"
        if in_from:
            fields.append([value])
    texts = [b"".join(parts).decode("utf-8", "replace") for parts in fields]
    domains = {
        address.rpartition("@")[2].strip().rstrip(".").lower()
        for _, address in email.utils.getaddresses(texts)
        if "@" in address
    }
    return domains.pop() if len(domains) == 1 else None
