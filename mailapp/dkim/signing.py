"""
Outbound DKIM signatures (RFC 6376, Ed25519 from RFC 8463), as dkimpy makes them.

Every message gets one signature per key of its From: domain's active
selector (L{mailapp.dkim.keys.ALGORITHMS}: rsa-sha256 and ed25519-sha256),
relaxed/relaxed, with ``t=``, signing the header fields RFC 6376 5.4.1
recommends and I{oversigning} From, To, Subject, Date and Message-ID: each
is named once more than it occurs, so that nobody can add one (a second
From: shown instead of the signed one) without breaking the signature.

The signatures are dkimpy's, byte for byte (a test compares them with
C{dkim.DKIM.sign}'s: PKCS#1 v1.5 and Ed25519 signatures are both
deterministic), made from dkimpy's own parts (its header parser,
canonicalisation, header hashing, folding and b= removal) with less work
around them. Calling C{dkim.DKIM.sign} once per key cost about 1.2 ms of
CPU per message for both signatures, most of it Python holding the GIL
(which the reactor then waits for): it parses the message and
canonicalises the body once per signature, parses the RSA key's PEM with
its pure-Python ASN.1 reader every time (0.4 ms), and signs RSA in pure
Python (12 ms; an earlier version of this module already handed that to
OpenSSL). Here the message is parsed, its header block canonicalised and
its body hashed once for both signatures (they share ``bh=``), each key
is parsed once per process, and both private-key operations run in
OpenSSL through ``cryptography``, which releases the GIL while it signs.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import threading
import time
from typing import Any, Final

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy

from mailapp.dkim.keys import RSA, DkimKey, SigningKeys

__all__ = ["OVERSIGNED", "dkimpy_sign_one", "from_domain", "sign_message", "sign_one"]

#: Header fields signed once more than they occur (RFC 6376 8.15).
OVERSIGNED: Final = (b"from", b"to", b"subject", b"date", b"message-id")
_HEADER_LIMIT: Final = 256 * 1024
_RELAXED: Final = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
#: What dkimpy's signer signs of those present (its C{should_sign}), and ours.
_SIGNED: Final = frozenset(dkim.DKIM.SHOULD) | frozenset(OVERSIGNED)
_FIELD: Final = b"DKIM-Signature"

_PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_private_keys: dict[tuple[str, bytes], _PrivateKey] = {}
_private_keys_lock = threading.Lock()


def _private_key(key: DkimKey) -> _PrivateKey:
    """C{key}'s private key for OpenSSL, parsed once per process (a PEM parse costs more than a signature)."""
    cache_key = (key.algorithm, key.private_key)
    with _private_keys_lock:
        found = _private_keys.get(cache_key)
    if found is not None:
        return found
    parsed: _PrivateKey
    if key.algorithm == RSA:
        loaded = serialization.load_pem_private_key(key.private_key, password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ValueError(f"{key.dns_selector}: not an RSA private key")
        parsed = loaded
    else:
        # dkimpy's form: the 32-byte seed in base64 (PyNaCl's SigningKey takes the same).
        parsed = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(key.private_key, validate=True))
    with _private_keys_lock:
        _private_keys[cache_key] = parsed
    return parsed


def _headers_to_sign(headers: list[list[bytes]]) -> tuple[bytes, ...]:
    """Every present field dkimpy recommends signing, in order, then each of L{OVERSIGNED} once more."""
    present = [name.lower() for name, _ in headers if name.lower() in _SIGNED]
    return tuple(present + list(OVERSIGNED))


def _signature(key: DkimKey, canonical_headers: Any, include: tuple[bytes, ...], body_hash: bytes, timestamp: bytes) -> bytes:
    """
    One DKIM-Signature field, as C{dkim.DKIM.sign} then C{gen_header} build
    it (same tags in the same order, the same two foldings, the b= value
    removed for hashing as dkimpy removes it).
    """
    domain = key.domain.encode("ascii")
    fields = [
        (b"v", b"1"),
        (b"a", key.algorithm.encode("ascii")),
        (b"c", b"relaxed/relaxed"),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", key.dns_selector.encode("ascii")),
        (b"t", timestamp),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        # dkimpy's placeholder: b= folds onto its own line, so that folding
        # again with the real value leaves the hashed tags as they were.
        (b"b", b"0" * 60),
    ]
    value = dkim.fold(b"; ".join(b"=".join(field) for field in fields), namelen=len(_FIELD), linesep=b"\r\n")
    value = dkim.RE_BTAG.sub(b"\\1", value)
    digest = hashlib.sha256()
    dkim.hash_headers(digest, _RELAXED, canonical_headers, include, (_FIELD, b" " + value), dict(fields))
    private = _private_key(key)
    if isinstance(private, rsa.RSAPrivateKey):
        signature = private.sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    else:
        # RFC 8463 3: Ed25519 signs the SHA-256 hash of the header, as dkimpy does.
        signature = private.sign(digest.digest())
    fields[-1] = (b"b", base64.b64encode(signature))
    folded: bytes = dkim.fold(b"; ".join(b"=".join(field) for field in fields) + b"\r\n", namelen=len(_FIELD), linesep=b"\r\n")
    return _FIELD + b": " + folded


def _signatures(message: bytes, keys: tuple[DkimKey, ...], now: float | None) -> list[bytes]:
    """The fields of C{keys} over C{message}: the message parsed, canonicalised and its body hashed once for all."""
    headers, body = dkim.rfc822_parse(message)
    include = _headers_to_sign(headers)
    body_hash = base64.b64encode(hashlib.sha256(_RELAXED.canonicalize_body(body)).digest())
    canonical_headers = _RELAXED.canonicalize_headers(headers)
    timestamp = str(int(time.time() if now is None else now)).encode("ascii")
    return [_signature(key, canonical_headers, include, body_hash, timestamp) for key in keys]


def sign_one(message: bytes, key: DkimKey, *, now: float | None = None) -> bytes:
    """The DKIM-Signature field (ending in CRLF) of C{key} over C{message} (CRLF line ends)."""
    return _signatures(message, (key,), now)[0]


def sign_message(message: bytes, keys: SigningKeys, *, now: float | None = None) -> bytes:
    """Every signature of C{keys} over C{message}, in L{ALGORITHMS} order: the fields to prepend."""
    return b"".join(_signatures(message, keys.keys, now))


def dkimpy_sign_one(message: bytes, key: DkimKey) -> bytes:
    """
    The same signature made by C{dkim.DKIM.sign} itself (its pure-Python
    RSA, PyNaCl's Ed25519): the reference L{sign_one} is checked against,
    and the cost the bench compares with. Not for the server.
    """
    signer = dkim.DKIM(message, signature_algorithm=key.algorithm.encode("ascii"), linesep=b"\r\n")
    field: bytes = signer.sign(
        key.dns_selector.encode("ascii"),
        key.domain.encode("ascii"),
        key.private_key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=list(_headers_to_sign(signer.headers)),
    )
    return field


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
