"""
ARC verification (RFC 8617): does the chain of custody on an arriving
message hold together?

A forwarder or a mailing list that changes a message breaks its DKIM
signature; if it ARC-sealed the message, it vouches for the authentication
results it saw, and a receiver that trusts the sealer may let DMARC pass on
them. This module answers the first half, whether the chain is intact:
``arc=pass|fail|none`` for the ``Authentication-Results:`` header, with what
each ARC set said (L{ARCResult}). Trusting a particular sealer is a policy
for later; nothing here lets mail through on its own.

The evaluation is dkimpy's (``arc_verify``), the implementation maintained
with the ARC test suite's authors and the one the suite's own runner uses,
rather than ours: ARC's instance ordering, header selection for the seal
and the cv= rules are where hand-written verifiers go wrong. dkimpy blocks,
so a verification runs on a worker thread, and its DNS is the C{dnsfunc}
handed in, dkimpy's ``dnsfunc(name: bytes, timeout=...) -> bytes | None``:
at the server, one that asks the reactor's own resolver from the thread;
in the tests, one that serves the suite's records.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import dkim
from twisted.internet.defer import Deferred
from mailapp.dnsthread import in_worker

__all__ = ["ARCResult", "ARCSet", "ARCVerifier", "DNSFunction", "evaluate"]

#: dkimpy's DNS hook: the TXT record at C{name} (the joined strings of the
#: first one), or None; raises C{dkim.DnsTimeoutError} when DNS fails.
DNSFunction = Callable[..., bytes | None]

#: Seconds one key lookup may take (dkimpy's own default).
QUERY_TIMEOUT = 5

#: Seconds all the key lookups of one verification may take together: a
#: chain of many sets whose name servers never answer ends as a fail then,
#: instead of holding a thread (and the forwarded message) for minutes.
BUDGET = 20.0

#: The most ARC sets a chain may have (RFC 8617 5.2 step 1: more is a fail).
MAX_SETS = 50

#: The smallest RSA key a seal or signature may use (RFC 8301 3.2: at least 1024 bits).
MIN_KEY_BITS = 1024

ChainResult = Literal["pass", "fail", "none"]


@dataclass(frozen=True)
class ARCSet:
    """What one ARC set (one instance, C{i=}) of the chain says, and whether it held."""

    instance: int
    #: The seal's chain validation status, as the sealer stamped it (``none`` for i=1).
    cv: str
    seal_domain: str
    seal_selector: str
    seal_valid: bool
    signature_domain: str
    signature_selector: str
    signature_valid: bool
    #: The sealer's ARC-Authentication-Results, after its ``i=N;`` (what it vouches for).
    authentication_results: str


@dataclass(frozen=True)
class ARCResult:
    """
    One verification's outcome: C{result} for ``arc=`` in
    Authentication-Results; C{chain} the sets, newest (highest C{i=})
    first, as far as they were checked; C{reason} dkimpy's words for a
    fail.
    """

    result: ChainResult
    chain: tuple[ARCSet, ...]
    reason: str

    @property
    def oldest_pass(self) -> int:
        """
        RFC 8617 ``header.oldest-pass``: the lowest instance from which every
        ARC-Message-Signature up to the newest still validates, or 0 when all
        of them do (the body was never changed along the chain). 0 when the
        chain did not pass.
        """
        if self.result != "pass" or not self.chain:
            return 0
        oldest = self.chain[0].instance
        for arc_set in self.chain:
            if not arc_set.signature_valid:
                break
            oldest = arc_set.instance
        return 0 if oldest == 1 else oldest

    def fragment(self) -> str:
        """The result as a resinfo of Authentication-Results (RFC 8601), e.g. ``arc=pass (i=2) header.oldest-pass=0``."""
        if self.result == "none":
            return "arc=none"
        newest = f" (i={self.chain[0].instance})" if self.chain else ""
        if self.result == "pass":
            return f"arc=pass{newest} header.oldest-pass={self.oldest_pass}"
        return f"arc=fail{newest}"


class ARCVerifier:
    """Verifies ARC chains on a worker thread of C{threadpool}, with DNS through C{dnsfunc}."""

    def __init__(self, reactor: Any, threadpool: Any, dnsfunc: DNSFunction, timeout: int = QUERY_TIMEOUT) -> None:
        self.reactor = reactor
        self.threadpool = threadpool
        self.dnsfunc = dnsfunc
        self.timeout = timeout

    def verify(self, message: bytes) -> Deferred[ARCResult]:
        """The chain's verdict for C{message} (the whole message as received, CRLF or LF line ends)."""
        return in_worker(self.reactor, self.threadpool, evaluate, message, self.dnsfunc, self.timeout)


_ARC_FIELD = re.compile(rb"^arc-(?:seal|message-signature|authentication-results)[ \t]*:", re.IGNORECASE | re.MULTILINE)


_EMPTY_LINE = re.compile(rb"\r?\n\r?\n")


def header_end(message: bytes) -> int:
    """Where the header section ends (the empty line included in neither part), or the whole message."""
    found = _EMPTY_LINE.search(message)
    return message.index(b"\n", found.start()) + 1 if found else len(message)


_INSTANCE = re.compile(rb"^\s*i\s*=\s*\d+\s*;\s*", re.IGNORECASE)


def evaluate(message: bytes, dnsfunc: DNSFunction, timeout: int = QUERY_TIMEOUT, budget: float = BUDGET) -> ARCResult:
    """
    Blocking: verify the ARC chain of C{message} with C{dnsfunc} as its DNS
    (for a worker thread, or a test). Never raises for a malformed message
    or a DNS failure: those are a ``fail`` with the reason (RFC 8617 5.2: a
    chain that cannot be validated is not valid); nor does it look keys up
    for longer than C{budget} seconds in all.
    """

    if not _ARC_FIELD.search(message, 0, header_end(message)):
        # Most mail: no chain, and dkimpy need not copy and split the whole message to say so.
        return ARCResult("none", (), "Message is not ARC signed")
    deadline = time.monotonic() + budget

    def lookup(name: bytes, timeout: int = timeout) -> bytes | None:
        if time.monotonic() > deadline:
            raise dkim.DnsTimeoutError(f"the ARC check took longer than its {budget:g} s budget")
        return dnsfunc(name, timeout=timeout)

    try:
        verifier = dkim.ARC(message, minkey=MIN_KEY_BITS, timeout=timeout)
        newest, _ = verifier.sorted_arc_headers()
        if newest > MAX_SETS:
            # Before any lookup: a hostile chain costs no DNS.
            return ARCResult("fail", (), f"{newest} ARC sets: more than {MAX_SETS}")
        cv, sets, reason = verifier.verify(dnsfunc=lookup)
    except dkim.DKIMException as e:
        return ARCResult("fail", (), str(e))
    except Exception as e:  # dkimpy's parser on hostile input: a chain we cannot read does not hold.
        return ARCResult("fail", (), f"{type(e).__name__}: {e}")
    chain = tuple(_arc_set(found) for found in sets)
    if cv == dkim.CV_Pass:
        return ARCResult("pass", chain, str(reason))
    if cv == dkim.CV_None:
        return ARCResult("none", chain, str(reason))
    # CV_Fail, or None: a set sealed with cv=fail ended the chain (RFC 8617 5.2 step 2).
    return ARCResult("fail", chain, str(reason))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _arc_set(found: dict[str, Any]) -> ARCSet:
    return ARCSet(
        instance=int(found["instance"]),
        cv=_text(found.get("cv", b"")).lower(),
        seal_domain=_text(found.get("as-domain", b"")),
        seal_selector=_text(found.get("as-selector", b"")),
        seal_valid=bool(found.get("as-valid", False)),
        signature_domain=_text(found.get("ams-domain", b"")),
        signature_selector=_text(found.get("ams-selector", b"")),
        signature_valid=bool(found.get("ams-valid", False)),
        authentication_results=_text(_INSTANCE.sub(b"", found.get("aar-value", b""), count=1)).strip(),
    )
