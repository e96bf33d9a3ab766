"""
DKIM verification (RFC 6376; Ed25519, RFC 8463) of every signature of a
message, by dkimpy.

dkimpy is the verifier and signer kept with the RFCs (its author wrote
RFC 8463's Ed25519 support and ARC's reference code); it covers both key
types, the canonicalisations and the tag checks that a home-made verifier
gets wrong. It is blocking, so L{verify_signatures} runs on a worker thread,
and its DNS is a L{mailapp.dnsthread.ThreadedLookup} (the server's own
resolver, within the message's budget).

dkimpy answers a verification with True or False; the verifier turns that
into RFC 8601's results by looking at what the key lookup gave: a DNS
failure is ``temperror`` (the sender should be asked again later), no key or
a key that does not parse is ``permerror``, a key that does not verify the
signature is ``fail``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from mailapp.dnsthread import ThreadedLookup

__all__ = ["DKIMResult", "verify_signatures"]

#: dkimpy's own messages about each failure are ours to log, not its.
_quiet = logging.getLogger("mailapp.authentication.dkim")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False

_TEMPORARY = object()


@dataclass(frozen=True)
class DKIMResult:
    """
    One signature's outcome: C{result} is ``pass``, ``fail``, ``neutral``,
    ``temperror`` or ``permerror`` (RFC 8601 2.7.1); C{domain} its C{d=},
    C{selector} its C{s=}, C{algorithm} its C{a=}, C{signature} the start of
    its C{b=} (RFC 6008's ``header.b``, to tell signatures apart), and
    C{reason} why it did not pass.
    """

    result: str
    domain: str
    selector: str = ""
    algorithm: str = ""
    signature: str = ""
    reason: str = ""


def _text(value: bytes | None) -> str:
    return value.decode("ascii", "replace") if value else ""


def verify_signatures(message: bytes, lookup: ThreadedLookup, max_signatures: int = 10) -> list[DKIMResult]:
    """
    Blocking: verify each of the first C{max_signatures} DKIM-Signature
    fields of C{message} (wire form, CRLF), with C{lookup}'s DNS. An
    unsigned message gives [].
    """
    try:
        verifier = dkim.DKIM(message, logger=_quiet, minkey=1024, timeout=int(lookup.query_timeout))
    except dkim.DKIMException as e:
        return [DKIMResult("permerror", "", reason=f"message not parsable: {e}")]
    signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    answers: dict[str, Any] = {}

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = (name.decode("ascii", "replace") if isinstance(name, bytes) else name).rstrip(".").lower()
        try:
            value = lookup.txt(name, timeout)
        except dkim.DnsTimeoutError:
            answers[key] = _TEMPORARY
            raise
        answers[key] = value
        return value

    results = []
    for index, value in enumerate(signatures[:max_signatures]):
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList as e:
            results.append(DKIMResult("permerror", "", reason=f"bad signature syntax: {e}"))
            continue
        domain, selector = _text(tags.get(b"d")), _text(tags.get(b"s"))
        algorithm = _text(tags.get(b"a"))
        signature = "".join(_text(tags.get(b"b")).split())[:12]
        result, reason = _verify_one(verifier, index, dnsfunc, answers, f"{selector}._domainkey.{domain}".lower())
        results.append(DKIMResult(result, domain, selector, algorithm, signature, reason))
    return results


def _verify_one(verifier: dkim.DKIM, index: int, dnsfunc: Any, answers: dict[str, Any], key_name: str) -> tuple[str, str]:
    try:
        if verifier.verify(idx=index, dnsfunc=dnsfunc):
            return "pass", ""
    except dkim.DKIMException as e:
        if "body hash mismatch" in str(e):
            return "fail", "body hash did not verify"  # the body changed after signing
        # A signature that breaks the rules (a missing tag, an expired x=, h= without From).
        return "permerror", str(e)[:200]
    except Exception as e:  # dkimpy raises plain errors for some malformed input
        return "permerror", f"{type(e).__name__}: {e}"[:200]
    answer = answers.get(key_name)
    if answer is _TEMPORARY:
        return "temperror", "key lookup failed"
    if key_name not in answers:
        return "permerror", "signature not verifiable"
    if answer is None:
        return "permerror", "no key"
    try:
        dkim.evaluate_pk(key_name.encode("ascii", "replace"), answer)
    except Exception as e:
        return "permerror", f"bad key: {e}"[:200]
    return "fail", "signature did not verify"
