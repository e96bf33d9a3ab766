"""
The Sender Rewriting Scheme (SRS), as Shevek specified it and libsrs2
implements it: how a forwarded message keeps an envelope sender that SPF
at the target accepts and that bounces can come back through.

Forwarding ``alice@c.test``'s message from our alias to a remote target
with her address as the envelope sender would make us claim to send for
``c.test`` (SPF fails at the target) and would launder a forged sender into
mail from a server the target trusts. So the forwarded copy goes out from::

    SRS0=HHHH=TT=c.test=alice@our-domain

``TT`` is the day it was made (days since 1970, two base32 characters, so
it wraps every 1024 days), ``HHHH`` the first four base64 characters of an
HMAC-SHA1, under our secret, over ``TT``, ``c.test`` and ``alice``
(lower-cased: some servers change the case of a local part, and the
checks are case-insensitive as the scheme says). A bounce to that address
is forwarded to ``alice@c.test`` only if the hash is ours and the day at
most L{MAX_AGE_DAYS} old; any other is refused, so nobody can use us to
send bounces to addresses we never forwarded for.

Re-forwarding a message whose sender is already ``SRS0`` (a chain of
forwarders) does not nest: SRS1 names the first forwarder and keeps its
SRS0 part as it is, under a new hash of ours::

    SRS0=HHHH=TT=c.test=alice@first.test  ->  SRS1=GGGG=first.test==HHHH=TT=c.test=alice@our-domain

and a bounce to that goes straight back to the first forwarder's SRS0
address. Re-forwarding an SRS1 address replaces only its hash and domain.

Why not a library: PyPI's ``pysrs`` has had no release since 2018 and is a
milter-era package; ``srslib`` is a one-author 0.x. The scheme is this
page, and having it here keeps the error type and the case rules ours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_AGE_DAYS", "SRS", "InvalidSRS", "is_srs", "load_secret"]

#: How long a rewritten sender takes bounces (libsrs2's default too).
MAX_AGE_DAYS = 21
_HASH_LENGTH = 4
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_TIME_SLOTS = 1024  # two base32 characters
_SEPARATORS = "=-+"  # after the SRS0/SRS1 tag, libsrs2 accepts any of these
_SECRET_FILE = "srs-secret"


class InvalidSRS(Exception):
    """An SRS address that is not ours, was tampered with, or is too old."""


def is_srs(local_part: str) -> bool:
    """Whether a local part claims to be an SRS address (``SRS0=``/``SRS1=``, any case, any separator)."""
    return len(local_part) > 5 and local_part[:4].upper() in ("SRS0", "SRS1") and local_part[4] in _SEPARATORS


def _timestamp(days: int) -> str:
    days %= _TIME_SLOTS
    return _BASE32[days >> 5] + _BASE32[days & 31]


def _days(timestamp: str) -> int:
    if len(timestamp) != 2:
        raise InvalidSRS("bad timestamp")
    try:
        high, low = (_BASE32.index(c) for c in timestamp.upper())
    except ValueError:
        raise InvalidSRS("bad timestamp") from None
    return high << 5 | low


@dataclass(frozen=True)
class SRS:
    """
    Rewrites and reverses with one secret. C{now} is seconds since the
    epoch, passed in so that tests (and the relay's clock) decide the day.
    """

    secret: bytes
    max_age_days: int = MAX_AGE_DAYS

    def _hash(self, *parts: str) -> str:
        data = "".join(parts).lower().encode("utf-8")
        digest = hmac.new(self.secret, data, hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")[:_HASH_LENGTH]

    def _check_hash(self, given: str, *parts: str) -> None:
        if not hmac.compare_digest(given.lower().encode(), self._hash(*parts).lower().encode()):
            raise InvalidSRS("bad hash")

    def forward(self, sender: str, our_domain: str, now: float) -> str:
        """
        The envelope sender for C{sender}'s message forwarded by
        C{our_domain}. The null sender stays null, and a sender in
        C{our_domain} needs no rewriting.
        """
        if not sender:
            return sender
        local, _, domain = sender.rpartition("@")
        if not local or domain.lower() == our_domain.lower():
            return sender
        if local[:4].upper() == "SRS1" and is_srs(local):
            # SRS1=hash=first-hop==rest: keep first-hop and rest, hash them anew.
            first_hop, separator, rest = local[5:].partition("=")[2].partition("=")
            rest = rest.lstrip(_SEPARATORS)
            if separator and first_hop and rest:
                return f"SRS1={self._hash(first_hop, rest)}={first_hop}=={rest}@{our_domain}"
        if local[:4].upper() == "SRS0" and is_srs(local):
            rest = local[5:]
            return f"SRS1={self._hash(domain, rest)}={domain}=={rest}@{our_domain}"
        timestamp = _timestamp(int(now // 86400))
        return f"SRS0={self._hash(timestamp, domain, local)}={timestamp}={domain}={local}@{our_domain}"

    def reverse(self, address: str, now: float) -> str:
        """
        Where a bounce to the SRS address C{address} goes: the original
        sender (SRS0), or the first forwarder's SRS0 address (SRS1).

        @raise InvalidSRS: not an SRS address, a hash that is not ours, or
            (SRS0) a day more than C{max_age_days} ago or in the future.
        """
        local = address.rpartition("@")[0]
        if not is_srs(local):
            raise InvalidSRS("not an SRS address")
        tag, body = local[:4].upper(), local[5:]
        if tag == "SRS1":
            given, _, rest = body.partition("=")
            first_hop, separator, srs0 = rest.partition("=")
            if not (separator and first_hop and srs0):
                raise InvalidSRS("malformed SRS1 address")
            srs0 = srs0.lstrip(_SEPARATORS)
            self._check_hash(given, first_hop, srs0)
            return f"SRS0={srs0}@{first_hop}"
        fields = body.split("=", 3)
        if len(fields) != 4 or not all(fields):
            raise InvalidSRS("malformed SRS0 address")
        given, timestamp, domain, original_local = fields
        self._check_hash(given, timestamp, domain, original_local)
        age = (int(now // 86400) - _days(timestamp)) % _TIME_SLOTS
        if age > self.max_age_days:
            raise InvalidSRS("expired")
        return f"{original_local}@{domain}"


def load_secret(state_dir: Path) -> bytes:
    """
    The HMAC secret in C{state_dir/srs-secret}, made (32 random bytes,
    mode 0600) at the first start. Keep it: a new secret refuses every
    bounce to addresses made under the old one.
    """
    path = state_dir / _SECRET_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(32).encode("ascii")
    temporary = path.with_name(f".{_SECRET_FILE}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secret + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)  # never replaces a secret another process made meanwhile
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)
    return path.read_bytes().strip()
