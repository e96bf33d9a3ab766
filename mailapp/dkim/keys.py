"""
The DKIM key store: per domain, selectors with an RSA 2048 and an Ed25519
key each, one of them the signing ("active") one.

Layout under ``state_dir/dkim/`` (directories 0700, files 0600)::

    keys.json                   the index: per domain, its selectors (created when) and the active one
    DOMAIN/SELECTOR.rsa.pem     the RSA private key (PEM, PKCS#1, as dkimpy reads it)
    DOMAIN/SELECTOR.ed25519     the Ed25519 private key (its 32-byte seed in base64, as dkimpy reads it)
    lock                        held (flock) by the admin command while it changes the store

A selector S is published as two DNS selectors, ``S-rsa`` and
``S-ed25519``: one name cannot carry two key records (a verifier takes the
one it finds). Key files are written (synced, renamed into place) before
the index names them, and the index is replaced atomically, so the running
server, which re-reads the index whenever it changes, only ever sees
selectors whose keys are on disk. That is also how ``mailapp dkim rotate``
reaches a running server without a reload.

L{KeyStore.signing_keys} is the read side for whatever signs (the outbound
signer here, ARC sealing): domain in, active selector with its private keys
and algorithms out.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailapp.store import durable

__all__ = [
    "ALGORITHMS",
    "ED25519",
    "RSA",
    "DkimKey",
    "KeyStore",
    "KeyStoreError",
    "SigningKeys",
    "check_domain",
    "check_selector",
]

RSA: Final = "rsa-sha256"
ED25519: Final = "ed25519-sha256"
#: Every selector has one key of each, signed in this order (RSA first: a
#: verifier that looks at one signature only most likely knows RSA).
ALGORITHMS: Final = (RSA, ED25519)
RSA_BITS: Final = 2048
_SUFFIX: Final = {RSA: "rsa", ED25519: "ed25519"}
_FILE: Final = {RSA: "{selector}.rsa.pem", ED25519: "{selector}.ed25519"}
_INDEX_VERSION: Final = 1
_LABEL: Final = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class KeyStoreError(ValueError):
    """A refused change (unknown domain or selector, a bad name) or an unreadable store; the text is for the admin."""


def check_domain(name: str) -> str:
    """C{name} lower-cased, without a final dot, if it is a host name; else L{KeyStoreError}."""
    domain = name.strip().rstrip(".").lower()
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise KeyStoreError(f"not a domain name: {name!r}")
    return domain


def check_selector(name: str) -> str:
    """A selector is one DNS label (RFC 6376 3.1), short enough to take the ``-ed25519`` suffix."""
    selector = name.strip().lower()
    if not _LABEL.match(selector) or len(selector) > 63 - len("-ed25519"):
        raise KeyStoreError(f"not a selector (letters, digits and '-', at most 55): {name!r}")
    return selector


@dataclass(frozen=True)
class DkimKey:
    """
    One key of one selector. C{private_key} is in the form dkimpy signs
    with (PEM for RSA, the base64 seed for Ed25519); C{public_key} is the
    record's ``p=`` value.
    """

    domain: str
    selector: str
    algorithm: str
    private_key: bytes
    public_key: str
    created: float
    active: bool

    @property
    def dns_selector(self) -> str:
        """The selector as published and as the signature's ``s=`` names it: C{selector}-rsa or -ed25519."""
        return f"{self.selector}-{_SUFFIX[self.algorithm]}"

    @property
    def record_name(self) -> str:
        """The TXT record's owner name, without the final dot."""
        return f"{self.dns_selector}._domainkey.{self.domain}"

    @property
    def record_text(self) -> str:
        """The TXT record's text (RFC 6376 3.6.1; ``k=ed25519`` is RFC 8463)."""
        if self.algorithm == RSA:
            return f"v=DKIM1; k=rsa; h=sha256; p={self.public_key}"
        return f"v=DKIM1; k=ed25519; p={self.public_key}"


@dataclass(frozen=True)
class SigningKeys:
    """A domain's active selector and its keys, one per algorithm of L{ALGORITHMS}."""

    domain: str
    selector: str
    keys: tuple[DkimKey, ...]


def _public_key(algorithm: str, private_key: bytes) -> str:
    if algorithm == RSA:
        loaded = serialization.load_pem_private_key(private_key, password=None)
        der = loaded.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode("ascii")
    seed = base64.b64decode(private_key)
    public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode("ascii")


def _new_private_key(algorithm: str) -> bytes:
    if algorithm == RSA:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(seed)


class KeyStore:
    """
    The keys under C{state_dir/dkim}. Reading is safe from any thread and
    while the admin command changes the store; changing takes the store's
    lock (one admin command at a time).
    """

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "dkim"
        self._cache_lock = threading.Lock()
        self._cached: tuple[tuple[int, int, int], dict[str, Any]] | None = None
        self._key_cache: dict[tuple[str, str, str], DkimKey] = {}

    @property
    def index_path(self) -> Path:
        return self.root / "keys.json"

    # -- reading ---------------------------------------------------------------

    def _index(self) -> dict[str, Any]:
        """The index as on disk now, re-read only when the file changed (one stat per call)."""
        try:
            status = os.stat(self.index_path)
        except FileNotFoundError:
            return {"version": _INDEX_VERSION, "domains": {}}
        stamp = (status.st_ino, status.st_mtime_ns, status.st_size)
        with self._cache_lock:
            if self._cached is not None and self._cached[0] == stamp:
                return self._cached[1]
        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise KeyStoreError(f"{self.index_path}: unreadable: {error}") from None
        if not isinstance(index, dict) or index.get("version") != _INDEX_VERSION or not isinstance(index.get("domains"), dict):
            raise KeyStoreError(f"{self.index_path}: not a DKIM key index of version {_INDEX_VERSION}")
        with self._cache_lock:
            self._cached = (stamp, index)
            # Any change may have replaced a key under a selector's old name (del, then keygen).
            self._key_cache = {}
        return index

    def _key(self, domain: str, selector: str, algorithm: str, created: float, active: bool) -> DkimKey:
        cache_key = (domain, selector, algorithm)
        cached = self._key_cache.get(cache_key)
        if cached is not None and cached.active == active:
            return cached
        path = self.root / domain / _FILE[algorithm].format(selector=selector)
        try:
            private_key = path.read_bytes()
        except OSError as error:
            raise KeyStoreError(f"{path}: unreadable: {error.strerror or error}") from None
        key = DkimKey(domain, selector, algorithm, private_key, _public_key(algorithm, private_key), created, active)
        self._key_cache[cache_key] = key
        return key

    def domains(self) -> list[str]:
        """Every domain with keys, sorted."""
        return sorted(self._index()["domains"])

    def keys(self, domain: str | None = None) -> list[DkimKey]:
        """Every key (of C{domain}, if given), by domain, then selector age, then algorithm."""
        index = self._index()["domains"]
        names = [check_domain(domain)] if domain is not None else sorted(index)
        found: list[DkimKey] = []
        for name in names:
            entry = index.get(name)
            if entry is None:
                continue
            selectors = sorted(entry["selectors"].items(), key=lambda item: (item[1]["created"], item[0]))
            for selector, info in selectors:
                for algorithm in ALGORITHMS:
                    found.append(self._key(name, selector, algorithm, float(info["created"]), selector == entry["active"]))
        return found

    def signing_keys(self, domain: str) -> SigningKeys | None:
        """C{domain}'s active selector and its keys; None when the domain has none."""
        entry = self._index()["domains"].get(domain.rstrip(".").lower())
        if entry is None or entry.get("active") not in entry.get("selectors", {}):
            return None
        selector = entry["active"]
        created = float(entry["selectors"][selector]["created"])
        keys = tuple(self._key(domain.lower(), selector, algorithm, created, True) for algorithm in ALGORITHMS)
        return SigningKeys(domain.lower(), selector, keys)

    def signing_keys_for(self, domain: str) -> SigningKeys | None:
        """
        The keys for mail from C{domain}: its own, else its nearest parent's
        (mail from ``MAILER-DAEMON@mail.example.org`` is signed with
        ``d=example.org``, which DMARC's relaxed alignment accepts).
        """
        labels = domain.rstrip(".").lower().split(".")
        for start in range(len(labels) - 1):
            keys = self.signing_keys(".".join(labels[start:]))
            if keys is not None:
                return keys
        return None

    # -- changing (the admin command) --------------------------------------------

    @contextmanager
    def _changing(self) -> Iterator[dict[str, Any]]:
        """Hold the lock, hand out the index to change, and write it back durably."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._cache_lock:
                self._cached = None
            index = json.loads(json.dumps(self._index()))
            yield index
            self._write_file(self.root, "keys.json", (json.dumps(index, indent=1, sort_keys=True) + "\n").encode("utf-8"))
        finally:
            os.close(fd)

    def _write_file(self, directory: Path, name: str, data: bytes) -> None:
        """Write C{data} under a temporary name (0600), sync it, rename it into place, sync the directory."""
        temporary = directory / f".{name}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            durable.write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._give_to_owner(temporary)
        os.replace(temporary, directory / name)
        durable.fsync_directory(directory)

    def _give_to_owner(self, path: Path) -> None:
        """Run as root over a server's state directory, a new file belongs to the server's user, not root."""
        if os.geteuid() != 0:
            return
        owner = os.stat(self.root.parent)
        if owner.st_uid != 0:
            os.chown(path, owner.st_uid, owner.st_gid)

    def _new_selector(self, entry: dict[str, Any], now: float) -> str:
        base = "s" + time.strftime("%Y%m%d", time.gmtime(now))
        selector, number = base, 1
        while selector in entry["selectors"]:
            number += 1
            selector = f"{base}n{number}"
        return selector

    def generate(self, domain: str, selector: str | None = None, *, now: float | None = None) -> tuple[str, bool]:
        """
        Make the keys of a new selector of C{domain} (named from today's date
        unless given). The domain's first selector becomes the signing one;
        a later one is only staged, for L{rotate} to activate once its records
        are published. Returns the selector and whether it is active.
        """
        domain = check_domain(domain)
        now = time.time() if now is None else now
        with self._changing() as index:
            entry = index["domains"].setdefault(domain, {"active": None, "selectors": {}})
            name = check_selector(selector) if selector is not None else self._new_selector(entry, now)
            if name in entry["selectors"]:
                raise KeyStoreError(f"{domain} already has a selector {name}")
            directory = self.root / domain
            directory.mkdir(mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
            self._give_to_owner(directory)
            for algorithm in ALGORITHMS:
                self._write_file(directory, _FILE[algorithm].format(selector=name), _new_private_key(algorithm))
            entry["selectors"][name] = {"created": now}
            if entry["active"] is None:
                entry["active"] = name
            return name, entry["active"] == name

    def rotate(self, domain: str, selector: str | None = None, *, now: float | None = None) -> tuple[str, str | None]:
        """
        Make C{selector} (a staged one, or a new one made now) C{domain}'s
        signing selector. Returns it and the one it replaces, whose keys stay
        (and must stay published) until the admin deletes them (``mailapp dkim del``).
        """
        domain = check_domain(domain)
        known = self._index()["domains"].get(domain)
        if known is None:
            raise KeyStoreError(f"{domain} has no DKIM keys: run 'mailapp dkim keygen {domain}' first")
        if selector is None or check_selector(selector) not in known["selectors"]:
            selector, _ = self.generate(domain, selector, now=now)
        selector = check_selector(selector)
        with self._changing() as index:
            entry = index["domains"][domain]
            previous: str | None = entry["active"]
            if previous == selector:
                raise KeyStoreError(f"{selector} is already {domain}'s signing selector")
            entry["active"] = selector
            return selector, previous

    def remove(self, domain: str, selector: str) -> None:
        """Delete a selector that no longer signs (its DNS records should go first)."""
        domain, selector = check_domain(domain), check_selector(selector)
        with self._changing() as index:
            entry = index["domains"].get(domain)
            if entry is None or selector not in entry["selectors"]:
                raise KeyStoreError(f"{domain} has no selector {selector}")
            if entry["active"] == selector:
                raise KeyStoreError(f"{selector} is {domain}'s signing selector: rotate to another first")
            del entry["selectors"][selector]
            for algorithm in ALGORITHMS:
                (self.root / domain / _FILE[algorithm].format(selector=selector)).unlink(missing_ok=True)
            for algorithm in ALGORITHMS:
                self._key_cache.pop((domain, selector, algorithm), None)
