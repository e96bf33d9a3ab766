"""
Passwords: which a person may choose, how they are hashed, and which recent
successes need not pay the hash again.

One policy for every place a password is set, and one hasher for every
place one is checked, so that the command and the server never disagree on
either; the database and the server's accounts only store and compare.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable

from argon2 import PasswordHasher

from mailapp.errors import AccountError

__all__ = ["MIN_PASSWORD_LENGTH", "VerifiedPasswords", "check_new_password", "default_password_hasher"]

#: The shortest password a person may choose (NIST SP 800-63B 5.1.1.2: at least 8).
MIN_PASSWORD_LENGTH = 8


def check_new_password(address: str, password: str) -> None:
    """
    Raise L{AccountError} unless C{password} may be chosen for C{address}:
    at least L{MIN_PASSWORD_LENGTH} characters, and not the address or its
    local part (any case), the first guesses of anyone who knows the
    address. The one policy for every place a person sets a password
    (``mailapp user add``, ``mailapp user passwd``, and any password change
    offered later); the database below it stores what it is given.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            f"the password is too short: at least {MIN_PASSWORD_LENGTH} characters, please; nothing was changed"
        )
    local = address.rpartition("@")[0]
    folded = password.casefold()
    if folded in (address.casefold(), local.casefold()):
        raise AccountError("the password must not be the address or its local part; nothing was changed")


def default_password_hasher() -> PasswordHasher:
    """
    The production argon2id hasher: argon2-cffi's defaults (RFC 9106, low
    memory profile). Raising its parameters later is safe: hashes made with
    the old ones are upgraded at the user's next successful login.
    """
    return PasswordHasher()

class VerifiedPasswords:
    """
    Passwords verified recently, so that a client that logs in again and
    again (IMAP clients open several connections; phones reconnect all day)
    does not pay the KDF every time: Dovecot's auth cache, in short.

    Only successes are kept, so every failed guess still pays the full
    argon2id. An entry holds the stored hash it was verified against (a
    password change or reset invalidates it at once) and an HMAC-SHA256 of
    the password under a key made at random for this process, never the
    password; it expires after C{ttl} seconds. At most C{size} entries.
    """

    def __init__(self, clock: Callable[[], float], ttl: float, size: int = 10_000) -> None:
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._key = os.urandom(32)
        self._entries: OrderedDict[str, tuple[str, bytes, float]] = OrderedDict()

    def _mac(self, password: bytes) -> bytes:
        return hmac.new(self._key, password, hashlib.sha256).digest()

    def fingerprint(self, password: bytes) -> bytes:
        """The keyed HMAC of C{password} this cache compares: what may stand for it in memory."""
        return self._mac(password)

    def check(self, account: str, stored_hash: str, password: bytes) -> bool:
        entry = self._entries.get(account)
        if entry is None or self._ttl <= 0:
            return False
        hash_then, mac, expires = entry
        if expires <= self._clock() or hash_then != stored_hash:
            del self._entries[account]
            return False
        return hmac.compare_digest(mac, self._mac(password))

    def remember(self, account: str, stored_hash: str, password: bytes) -> None:
        if self._ttl <= 0:
            return
        self._entries[account] = (stored_hash, self._mac(password), self._clock() + self._ttl)
        self._entries.move_to_end(account)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

