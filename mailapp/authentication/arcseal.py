"""
ARC sealing (RFC 8617 5.1): what a forwarder adds so that the mail it
passes on keeps passing DMARC at the final destination.

When an alias of ours forwards a message to another domain, SRS rewrites
the envelope sender (so SPF at the target checks us), and the original
sender's DKIM signature may still verify, or may not (a changed header, a
relaxed-body breakage). A seal records what we saw on arrival
(ARC-Authentication-Results), signs the message as we send it
(ARC-Message-Signature) and signs the chain so far (ARC-Seal), with the
forwarding domain's DKIM key; a receiver that trusts us can then take the
original sender's results from our seal instead of its own checks.

What we vouch for is checked here, not taken on trust: the chain
validation status (cv=) of our seal is the verdict of our own verification
of the chain as it arrived (L{mailapp.authentication.arc.evaluate}), and any
``arc=`` our own ``Authentication-Results:`` header says is made to agree
with it. The rest of that header (spf, dkim, dmarc, with our authserv-id:
the results the MX stamped) is what the seal's AAR carries, consolidated as
dkimpy does it.

Two corrections to dkimpy, each matching the ARC test suite:

- A chain whose newest seal already says ``cv=fail`` gets no set of ours
  (RFC 8617 5.1 step 1: the sealer stops there).
- dkimpy copies our Authentication-Results into the AAR through authres's
  parser, which drops comments (dkimpy's own note, LP #1884044:
  ``dkim=pass (1024-bit key) ...`` becomes ``dkim=pass ...``). The AAR is
  meant to be what the header said (RFC 8617 4.1.1), so dkimpy is handed an
  authres whose parsed results print as their original text
  (L{_CommentKeepingAuthres}, set once as dkimpy's C{authres}; only
  ARC sealing uses it there).

Keys come from a L{KeySource} (domain -> L{SigningKey}); ARC signs with
rsa-sha256 only (the one algorithm RFC 8617 names, and the only one
dkimpy's ``arc_sign`` uses), so a domain with no RSA key is forwarded
unsealed, as it is with no key at all.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import authres
import dkim
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from mailapp.authentication.arc import QUERY_TIMEOUT, DNSFunction, evaluate, header_end
from mailapp.dkim.keys import RSA, KeyStore

__all__ = ["ARCSealer", "KeyDirectory", "KeySource", "SealOutcome", "SigningKey", "arc_set"]

#: The only signing algorithm ARC uses.
ARC_ALGORITHM = "rsa-sha256"


@dataclass(frozen=True)
class SigningKey:
    """One domain's DKIM key for ARC: its selector, its private key (PEM, PKCS#1 or PKCS#8) and algorithm."""

    selector: str
    private_key: bytes
    algorithm: str = ARC_ALGORITHM


class KeySource(Protocol):
    """
    Where the sealer finds a domain's key (the lead binds this to the DKIM
    key store of ``mailapp dkim keygen``). Called on a worker thread: it may
    read files. Returns the domain's rsa-sha256 key (the newest selector
    when rotating), or None when the domain has none.
    """

    def key_for(self, domain: str) -> SigningKey | None: ...


class DkimKeys:
    """
    The L{KeySource} of a running server: the DKIM key store of
    ``mailapp dkim keygen`` (L{mailapp.dkim.KeyStore}), whose active
    selector's rsa-sha256 key seals (its DNS name is that key's own
    selector, ``S-rsa``). A rotation applies to the next seal: the store
    re-reads its index when it changes.
    """

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    def key_for(self, domain: str) -> SigningKey | None:
        keys = self.store.signing_keys(domain)
        if keys is None:
            return None
        for key in keys.keys:
            if key.algorithm == RSA:
                return SigningKey(key.dns_selector, key.private_key)
        return None


class KeyDirectory:
    """
    A L{KeySource} over a directory: ``<root>/<domain>/<selector>.pem``,
    RSA private keys readable by the owner only (mode 0600; a key that
    others can read is not used). With several selectors, the one whose
    name sorts last (dated selectors: the newest).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def key_for(self, domain: str) -> SigningKey | None:
        folder = self.root / domain.lower().rstrip(".")
        if "/" in domain or domain.startswith(".") or not folder.is_dir():
            return None
        for path in sorted(folder.glob("*.pem"), reverse=True):
            if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
                continue
            return SigningKey(path.stem, path.read_bytes())
        return None


@dataclass(frozen=True)
class SealOutcome:
    """
    What sealing did: C{headers} the ARC set to put on top of the message
    (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results, each a
    CRLF-terminated header line), empty when the message goes unsealed,
    and C{reason} why not; C{cv} the chain status we sealed with.
    """

    headers: tuple[bytes, ...]
    cv: str
    reason: str

    @property
    def sealed(self) -> bool:
        return bool(self.headers)


class ARCSealer:
    """
    Seals forwarded mail on a worker thread of C{threadpool} (None: the
    reactor's): keys from
    C{keys}, our authserv-id C{authserv_id} (the one our
    Authentication-Results header carries), the chain's DNS through
    C{dnsfunc}. C{clock} (the reactor when None) gives the seals' t=;
    C{headers} and C{standardize} are L{arc_set}'s.
    """

    def __init__(
        self,
        reactor: Any,
        threadpool: Any,
        keys: KeySource,
        authserv_id: str,
        dnsfunc: DNSFunction,
        timeout: int = QUERY_TIMEOUT,
        clock: Any = None,
        headers: Sequence[str] | None = None,
        standardize: bool = False,
    ) -> None:
        self.reactor = reactor
        self.threadpool = threadpool
        self.keys = keys
        self.authserv_id = authserv_id
        self.dnsfunc = dnsfunc
        self.timeout = timeout
        self.clock = reactor if clock is None else clock
        self.headers = headers
        self.standardize = standardize

    def seal(self, message: bytes, domain: str) -> Deferred[SealOutcome]:
        """The ARC set C{domain} adds to C{message} (in wire form), or why none."""
        return deferToThreadPool(self.reactor, self.pool(), self._seal, message, domain)

    def pool(self) -> Any:
        """The thread pool sealing runs on (the reactor's when none was given)."""
        return self.threadpool if self.threadpool is not None else self.reactor.getThreadPool()

    def _seal(self, message: bytes, domain: str) -> SealOutcome:
        key = self.keys.key_for(domain)
        if key is None:
            return SealOutcome((), "", f"no DKIM key for {domain}")
        if key.algorithm.lower() != ARC_ALGORITHM:
            return SealOutcome((), "", f"the key for {domain} is {key.algorithm}: ARC signs with {ARC_ALGORITHM} only")
        return arc_set(
            message,
            domain,
            key,
            self.authserv_id,
            self.dnsfunc,
            timestamp=int(self.clock.seconds()),
            headers=self.headers,
            standardize=self.standardize,
            timeout=self.timeout,
        )


def arc_set(
    message: bytes,
    domain: str,
    key: SigningKey,
    authserv_id: str,
    dnsfunc: DNSFunction,
    timestamp: int | None = None,
    headers: Sequence[str] | None = None,
    standardize: bool = False,
    timeout: int = QUERY_TIMEOUT,
) -> SealOutcome:
    """
    Blocking: the next ARC set for C{message}, sealed by C{domain} with
    C{key}, its cv= from our own verification of the chain (DNS through
    C{dnsfunc}). C{headers} are the header fields the AMS signs (dkimpy's
    default set when None); C{standardize} writes the tags in the ARC test
    suite's normalised form instead of folding them. Never raises for a
    bad message or key: the outcome is then unsealed, with the reason.
    """
    authserv_id = authserv_id.lower()  # as authres reads it
    verdict = evaluate(message, dnsfunc, timeout)
    if verdict.chain and verdict.chain[0].cv == "fail":
        return SealOutcome((), verdict.result, f"ARC-Seal i={verdict.chain[0].instance} says cv=fail: the chain ended there")
    try:
        private_key = _pkcs1(key.private_key)
        signed = _with_arc_result(message, authserv_id, verdict.result)
        found = dkim.arc_sign(
            signed,
            key.selector.encode("ascii"),
            domain.encode("ascii"),
            private_key,
            authserv_id.encode("utf-8"),
            include_headers=[name.encode("ascii") for name in headers] if headers else None,
            timestamp=timestamp,
            standardize=standardize,
        )
    except (dkim.DKIMException, ValueError, UnicodeError) as e:
        return SealOutcome((), verdict.result, f"{type(e).__name__}: {e}")
    if not found:
        return SealOutcome((), verdict.result, "dkimpy ended the chain (no results of ours to seal)")
    return SealOutcome(tuple(_crlf(line) for line in found), verdict.result, "sealed")


def _pkcs1(pem: bytes) -> bytes:
    """dkimpy reads PKCS#1 (``BEGIN RSA PRIVATE KEY``) only: convert a PKCS#8 key."""
    if b"BEGIN RSA PRIVATE KEY" in pem:
        return pem
    loaded = serialization.load_pem_private_key(pem, password=None)
    return loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def _crlf(line: bytes) -> bytes:
    return line.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").rstrip(b"\r\n") + b"\r\n"


def _with_arc_result(message: bytes, authserv_id: str, cv: str) -> bytes:
    """
    The copy of C{message} dkimpy seals from: our own results (the
    Authentication-Results fields with C{authserv_id} above the first
    ``Received:`` field, where the MX puts its one field) with their
    ``arc=`` made to say C{cv}; any field with our authserv-id below a
    ``Received:`` field came from outside and is left out, so that we
    never vouch for results we did not find (the MX removes such fields
    too). Unchanged when it has none such and exactly one ``arc=`` of ours
    that says C{cv} already; else every ``arc=`` of ours is dropped and
    ``Authentication-Results: authserv_id; arc=cv`` put on top. Only the
    copy dkimpy reads changes: Authentication-Results is never signed
    (dkimpy leaves it out, as RFC 8617 4.1.2 advises), so the message that
    leaves keeps its own header.
    """
    end = header_end(message)
    head, body = message[:end], message[end:]
    fields = _fields(head)
    ours: list[tuple[int, Any]] = []
    outside: list[int] = []
    below_received = False
    for number, field in enumerate(fields):
        name, _, value = field.partition(b":")
        name = name.strip().lower()
        if name == b"received":
            below_received = True
        if name != b"authentication-results":
            continue
        try:
            parsed = _CommentKeepingHeader.parse("Authentication-Results: " + value.decode("utf-8").strip())
        except (authres.core.SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if parsed.authserv_id != authserv_id:
            continue
        if below_received:
            outside.append(number)
        else:
            ours.append((number, parsed))
    arc_results = [result for _, parsed in ours for result in parsed.results if result.method == "arc"]
    if not outside and len(arc_results) == 1 and str(arc_results[0].result).lower() == cv:
        return message
    for number, parsed in ours:
        if any(result.method == "arc" for result in parsed.results):
            parsed.results = [result for result in parsed.results if result.method != "arc"]
            fields[number] = str(parsed).encode("utf-8") + b"\r\n"
    kept = [field for number, field in enumerate(fields) if number not in outside]
    stamp = f"Authentication-Results: {authserv_id}; arc={cv}\r\n".encode("utf-8")
    return stamp + b"".join(kept) + body


def _fields(head: bytes) -> list[bytes]:
    """The header fields of C{head}, each with its continuation lines and line ends."""
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _resinfo_texts(value: str) -> list[str]:
    """
    The ``;``-separated parts of an Authentication-Results value (the
    authserv-id, then each resinfo) as written, comments included, with
    runs of white space made one space; ``;`` inside a comment or a quoted
    string does not separate.
    """
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == '"' and not depth:
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif char == ";" and not depth:
            parts.append(" ".join("".join(current).split()))
            current = []
            continue
        current.append(char)
    parts.append(" ".join("".join(current).split()))
    return [part for part in parts if part]


@dataclass(frozen=True)
class _WrittenResult:
    """An authres result as dkimpy consolidates it, printing as it was written."""

    method: str
    result: str
    text: str

    def __str__(self) -> str:
        return self.text


class _CommentKeepingHeader:
    """authres's C{AuthenticationResultsHeader} for dkimpy: C{parse} keeps each resinfo's text."""

    @staticmethod
    def parse(header: str) -> Any:
        parsed = authres.AuthenticationResultsHeader.parse(header)
        texts = _resinfo_texts(header.partition(":")[2])[1:]
        if texts == ["none"]:
            texts = []
        if len(texts) == len(parsed.results):
            parsed.results = [
                _WrittenResult(result.method, str(result.result), text) for result, text in zip(parsed.results, texts)
            ]
        return parsed


class _CommentKeepingAuthres:
    """The authres module as dkimpy sees it, but for L{_CommentKeepingHeader}."""

    AuthenticationResultsHeader = _CommentKeepingHeader

    def __getattr__(self, name: str) -> Any:
        return getattr(authres, name)


dkim.authres = _CommentKeepingAuthres()
