"""
DMARC (RFC 7489): does the domain in the From: header a reader sees
authenticate this message, and what does it ask us to do if not?

The evaluation is ours, in this module, over publicsuffixlist for the
organisational domain (RFC 7489 3.2). authheaders has a DMARC evaluator,
and was not taken: it re-reads the whole Public Suffix List from disk at
every alignment check, uses a list frozen in 2019 (publicsuffix2), ignores
``pct=``, has no temperror (a DNS failure reads as "no policy"), and
compares domains case-sensitively. publicsuffixlist is maintained, ships a
current list in its wheel and answers from memory. What is left is small
and RFC-shaped: policy discovery (6.6.3), alignment (3.1), the policy and
its sampling (6.6.4).

L{evaluate} is blocking (its DNS is a L{mailapp.dnsthread.ThreadedLookup}):
it runs on the same worker thread as the DKIM verification.
"""

from __future__ import annotations

import email.utils
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from mailapp.authentication.dkim import DKIMResult
from mailapp.dnsthread import DNSTemporaryFailure, ThreadedLookup

__all__ = ["DMARCResult", "Policy", "evaluate", "from_domains", "organizational_domain"]

_POLICIES = ("none", "quarantine", "reject")
#: RFC 7489 6.6.4: a message not sampled by pct= gets the next policy down.
_WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@lru_cache(maxsize=1)
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix plus one label (``a.b.example.co.uk`` -> ``example.co.uk``)."""
    domain = domain.lower().rstrip(".")
    return _suffixes().privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """RFC 7489 3.1: strict (``s``) is the same name; relaxed the same organisational domain."""
    identifier, from_domain = identifier.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not identifier or not from_domain:
        return False
    if mode == "s":
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


@dataclass(frozen=True)
class Policy:
    """A DMARC record as it applies: C{p=} (or C{sp=} for a subdomain), C{pct=}, the alignment modes."""

    policy: str
    percent: int = 100
    adkim: str = "r"
    aspf: str = "r"
    domain: str = ""


@dataclass(frozen=True)
class DMARCResult:
    """
    C{result}: ``pass``, ``fail``, ``none`` (no policy), ``temperror`` or
    ``permerror``. C{policy}: what the domain asks for a failure (``none``,
    ``quarantine``, ``reject``); C{disposition}: what to do with this
    message, C{pct=} sampling applied (``none`` unless it failed).
    """

    result: str
    from_domain: str
    policy: str = "none"
    disposition: str = "none"
    reason: str = ""


_HEADER = re.compile(rb"^from[ \t]*:", re.I)


def from_domains(message: bytes) -> list[str]:
    """The domains of the addresses in C{message}'s From: fields (RFC 5322 3.6.2), lower case, in order."""
    head = message.split(b"\r\n\r\n", 1)[0]
    values: list[str] = []
    current: bytes | None = None
    for line in head.split(b"\r\n"):
        if current is not None and line[:1] in (b" ", b"\t"):
            current += b" " + line.strip()
            continue
        if current is not None:
            values.append(current.decode("utf-8", "replace"))
            current = None
        if _HEADER.match(line):
            current = line.split(b":", 1)[1].strip()
    if current is not None:
        values.append(current.decode("utf-8", "replace"))
    domains = []
    for _, address in email.utils.getaddresses(values):
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if "@" in address and domain and domain not in domains:
            domains.append(domain)
    return domains


def _record(lookup: ThreadedLookup, domain: str) -> dict[str, str] | None:
    """The tags of C{domain}'s one DMARC record; None for none (or several: RFC 7489 6.6.3)."""
    found = [text for text in lookup.txt_records(f"_dmarc.{domain}") if re.match(rb"v\s*=\s*DMARC1\s*(;|$)", text)]
    if len(found) != 1:
        return None
    tags: dict[str, str] = {}
    for part in found[0].decode("utf-8", "replace").split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


def discover(lookup: ThreadedLookup, from_domain: str) -> Policy | None:
    """
    RFC 7489 6.6.3: the From domain's record, else its organisational
    domain's (whose C{sp=} then applies). Raises L{DNSTemporaryFailure}.
    """
    tags = _record(lookup, from_domain)
    subdomain = False
    if tags is None:
        organization = organizational_domain(from_domain)
        if organization == from_domain:
            return None
        tags = _record(lookup, organization)
        subdomain = True
        if tags is None:
            return None
    policy = tags.get("p", "").lower()
    if policy not in _POLICIES:
        # 6.6.3 step 6: a record with a bad p= counts as p=none if it asks for reports, else as none at all.
        if "rua" not in tags:
            return None
        policy = "none"
    if subdomain and tags.get("sp", "").lower() in _POLICIES:
        policy = tags["sp"].lower()
    try:
        percent = min(100, max(0, int(tags.get("pct", "100"))))
    except ValueError:
        percent = 100
    adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    return Policy(policy, percent, adkim, aspf, from_domain if not subdomain else organizational_domain(from_domain))


def evaluate(
    from_domain: str,
    spf_result: str,
    spf_domain: str,
    dkim: Sequence[DKIMResult],
    lookup: ThreadedLookup,
    sample: Callable[[], float] = random.random,
) -> DMARCResult:
    """
    Blocking: the DMARC result for C{from_domain}, given the SPF result of
    the identity DMARC uses (MAIL FROM, or HELO for the null sender:
    C{spf_domain} is that identity's domain) and every DKIM result.
    """
    try:
        policy = discover(lookup, from_domain)
    except DNSTemporaryFailure as e:
        return DMARCResult("temperror", from_domain, reason=str(e))
    if policy is None:
        return DMARCResult("none", from_domain)
    spf_aligned = aligned(spf_domain, from_domain, policy.aspf)
    dkim_aligned = [each for each in dkim if aligned(each.domain, from_domain, policy.adkim)]
    if (spf_result == "pass" and spf_aligned) or any(each.result == "pass" for each in dkim_aligned):
        return DMARCResult("pass", from_domain, policy.policy)
    if (spf_result == "temperror" and spf_aligned) or any(each.result == "temperror" for each in dkim_aligned):
        return DMARCResult("temperror", from_domain, policy.policy, reason="an aligned identifier could not be checked")
    disposition = policy.policy if sample() * 100 < policy.percent else _WEAKER[policy.policy]
    return DMARCResult("fail", from_domain, policy.policy, disposition)
