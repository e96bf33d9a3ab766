"""
The MX's checks of one message, from MAIL FROM to the end of DATA.

L{InboundChecks} is what the SMTP listener's factory carries; the session
calls it at two points, and that is the whole hook:

  - at MAIL FROM, L{InboundChecks.start}: the SPF checks of the HELO name
    and the MAIL FROM address begin on worker threads, so that their DNS
    runs while the RCPTs and the data come in;
  - at the end of DATA, L{MessageCheck.finish} with the message's bytes:
    the SPF results are collected, every DKIM signature is verified and the
    From domain's DMARC policy evaluated (on a worker thread, within the
    message's DNS budget), and it fires with a L{Verdict}: the
    Authentication-Results field to prepend, the message with any forged
    field of ours removed, the folder (INBOX, or Junk for a quarantine),
    or the refusal to answer instead of storing it (``550 5.7.1`` for
    DMARC ``p=reject``, ``451 4.7.1`` for a DNS failure that leaves DMARC
    undecided). Refused at the end of DATA, never bounced: the sender of
    a forgery is not who the envelope says (no backscatter).

The results are logged once per message (C{authentication.checked}), which
is also where the metrics count them. Authenticated submission and the
exempt networks are never checked and get no header (RFC 8601 leaves that
to the receiver; our own users' mail is authenticated by their login).

An ARC check (L{ARCCheck}: C{message -> Deferred[Clause or None]}; the ARC
module's C{ARCVerifier.verify} through L{results.arc_clause}) can be
handed in; its clause goes between DKIM and DMARC in the header.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailapp import logevents
from mailapp.authentication.dkim import DKIMResult, verify_signatures
from mailapp.authentication.dmarc import DMARCResult, evaluate, from_domains
from mailapp.authentication.results import Clause, authentication_results, dkim_clause, dmarc_clause, remove_ours, spf_clause
from mailapp.config.authentication import AuthenticationConfig
from mailapp.dnsthread import LookupBudget, ServiceDNS, in_worker
from mailapp.errors import MailError
from mailapp.networks import in_networks
from mailapp.records import INBOX
from mailapp.spf import SPFResult, evaluate as evaluate_spf

__all__ = ["ARCCheck", "DMARCRejected", "DMARCUndecided", "InboundChecks", "MessageCheck", "Verdict"]

_log = Logger()

#: The folder a DMARC quarantine goes to (one of L{mailapp.records.SPECIAL_FOLDERS}).
JUNK = "Junk"

#: Fires with the ``arc=`` clause for a message, or None (the ARC verifier, wired in by the service).
ARCCheck = Callable[[bytes], "defer.Deferred[Clause | None]"]


class DMARCRejected(MailError):
    """The From domain publishes p=reject and the message does not authenticate as it."""

    code, enhanced, text = 550, "5.7.1", "Message rejected: it fails the DMARC policy of its From: domain"


class DMARCUndecided(MailError):
    """DMARC could not be evaluated for a DNS failure: the sender should try again."""

    code, enhanced, text = 451, "4.7.1", "Cannot check the sender's domain now (DNS); try again later"


@dataclass(frozen=True)
class Verdict:
    """What to do with a checked message; see the module docstring."""

    header: bytes
    message: bytes
    folder: str = INBOX
    refusal: MailError | None = None
    action: str = "deliver"
    #: SPF passed for MAIL FROM: the envelope sender is the domain's to use
    #: from this client, so a notice sent back to it is no backscatter.
    sender_verified: bool = False


@dataclass
class _Results:
    spf_helo: SPFResult | None = None
    spf_mailfrom: SPFResult | None = None
    dkim: list[DKIMResult] = field(default_factory=list)
    dmarc: DMARCResult | None = None
    arc: Clause | None = None


class InboundChecks:
    """
    The checks of the MX listener (see the module docstring): DNS through
    C{dns} (L{ServiceDNS}), blocking work on C{threadpool}, results under
    the authserv-id C{hostname}.
    """

    def __init__(self, reactor: Any, dns: ServiceDNS, threadpool: Any, hostname: str, arc: ARCCheck | None = None) -> None:
        self.reactor = reactor
        self.dns = dns
        self.threadpool = threadpool
        self.hostname = hostname.lower()
        self.arc = arc
        #: Where DMARC's pct= sampling draws from (tests make it certain).
        self.sample: Callable[[], float] | None = None

    @staticmethod
    def exempt(settings: AuthenticationConfig, client_ip: str) -> bool:
        """Whether mail from C{client_ip} goes unchecked (C{exempt_networks})."""
        return in_networks(client_ip, settings.exempt_networks)

    def start(self, settings: AuthenticationConfig, client_ip: str, helo: str, sender: str) -> MessageCheck:
        """At MAIL FROM: begin the checks of one message (SPF starts now)."""
        return MessageCheck(self, settings, client_ip, helo, sender)


class MessageCheck:
    """One message's checks, begun at MAIL FROM (see L{InboundChecks.start})."""

    def __init__(self, checks: InboundChecks, settings: AuthenticationConfig, client_ip: str, helo: str, sender: str) -> None:
        self.checks = checks
        self.settings = settings
        self.client_ip = client_ip
        self.helo = helo
        self.sender = sender
        self.started = time.monotonic()
        #: Both SPF results (HELO, MAIL FROM; None where not checked), from one job on a worker thread.
        self._spf: defer.Deferred[tuple[SPFResult | None, SPFResult | None]] | None = None
        if settings.spf and ((helo and not helo.startswith("[")) or sender):
            d = in_worker(checks.reactor, checks.threadpool, self._checkSPF, LookupBudget(settings.dns_budget_seconds))
            self._spf = d.addErrback(self._spfFailed)

    def _checkSPF(self, budget: LookupBudget) -> tuple[SPFResult | None, SPFResult | None]:
        """
        Blocking: SPF for the HELO name (an address literal has none), then
        for MAIL FROM, in one hop to the pool (most answers come from the
        DNS cache; one hop per message costs less than two), spending the
        message's C{budget}.
        """
        settings = self.settings
        seconds = float(settings.dns_budget_seconds)

        def check(sender: str) -> SPFResult:
            lookup = self.checks.dns.lookup(budget)
            lookup.query_timeout = float(settings.dns_query_timeout)
            return evaluate_spf(self.client_ip, sender, self.helo, lookup, seconds)

        helo = check("") if self.helo and not self.helo.startswith("[") else None
        return helo, check(self.sender) if self.sender else None

    def _spfFailed(self, reason: Any) -> tuple[SPFResult | None, SPFResult | None]:
        """An unexpected error is a temperror for both identities (and logged), never a lost Deferred error."""
        _log.failure("spf check failed", reason, log_event=logevents.AUTHENTICATION_FAILED)
        helo = SPFResult("temperror", "internal error", "helo", self.helo) if self.helo and not self.helo.startswith("[") else None
        mailfrom = SPFResult("temperror", "internal error", "mailfrom", self.sender.rpartition("@")[2]) if self.sender else None
        return helo, mailfrom

    @defer.inlineCallbacks
    def finish(self, message: bytes, queue_id: str = "") -> Any:
        """
        At the end of DATA, with the message as received (wire form, without
        our own trace fields): fires with its L{Verdict}.
        """
        results = _Results()
        if self._spf is not None:
            results.spf_helo, results.spf_mailfrom = yield self._spf
        checks, settings = self.checks, self.settings
        lookup = checks.dns.lookup(LookupBudget(settings.dns_budget_seconds))
        lookup.query_timeout = float(settings.dns_query_timeout)
        verified = time.monotonic()
        # SPF's identity for DMARC is MAIL FROM, or HELO for the null sender (RFC 7489 3.1.2).
        spf = results.spf_mailfrom or results.spf_helo
        results.dkim, results.dmarc, cleaned, removed = yield in_worker(
            checks.reactor, checks.threadpool, self._verify, message, lookup, spf
        )
        seconds = time.monotonic() - verified
        if checks.arc is not None:
            try:
                results.arc = yield checks.arc(message)
            except Exception:
                _log.failure("arc verification failed", log_event=logevents.AUTHENTICATION_FAILED)
        verdict = self._decide(results, cleaned)
        _log.info(
            "authentication {queue_id} spf={spf} dkim={dkim} dmarc={dmarc} from={from_domain} action={action} client={client}",
            log_event=logevents.AUTHENTICATION_CHECKED,
            queue_id=queue_id,
            client=self.client_ip,
            spf=results.spf_mailfrom.result if results.spf_mailfrom else "none",
            spf_helo=results.spf_helo.result if results.spf_helo else "none",
            dkim=",".join(each.result for each in results.dkim) or "none",
            dkim_domains=",".join(each.domain for each in results.dkim),
            dmarc=results.dmarc.result if results.dmarc else "none",
            from_domain=results.dmarc.from_domain if results.dmarc else "",
            policy=results.dmarc.policy if results.dmarc else "none",
            arc=results.arc.result if results.arc else "none",
            action=verdict.action,
            forged_headers_removed=removed,
            verify_seconds=round(seconds, 6),
        )
        return verdict

    def _verify(
        self, message: bytes, lookup: Any, spf: SPFResult | None
    ) -> tuple[list[DKIMResult], DMARCResult | None, bytes, int]:
        """
        Blocking, on a worker thread: every DKIM signature, then DMARC, then
        the message without the fields that forge ours (a pass over what
        may be megabytes, kept off the reactor too).
        """
        settings = self.settings
        dkim = verify_signatures(message, lookup, settings.max_dkim_signatures) if settings.dkim else []
        dmarc = self._dmarc(message, lookup, spf, dkim) if settings.dmarc else None
        cleaned, removed = remove_ours(message, self.checks.hostname)
        return dkim, dmarc, cleaned, removed

    def _dmarc(self, message: bytes, lookup: Any, spf: SPFResult | None, dkim: list[DKIMResult]) -> DMARCResult | None:
        domains = from_domains(message)
        if not domains:
            return None
        spf_result, spf_domain = (spf.result, spf.domain) if spf is not None else ("none", "")
        sample = {"sample": self.checks.sample} if self.checks.sample else {}
        outcomes = [evaluate(domain, spf_result, spf_domain, dkim, lookup, **sample) for domain in domains]
        # Several From domains: the strictest outcome stands (RFC 7489 6.6.1).
        return min(outcomes, key=_severity)

    def _decide(self, results: _Results, message: bytes) -> Verdict:
        clauses: list[Clause] = []
        if results.spf_helo is not None:
            clauses.append(spf_clause(results.spf_helo.result, "helo", self.helo))
        if results.spf_mailfrom is not None:
            clauses.append(spf_clause(results.spf_mailfrom.result, "mailfrom", results.spf_mailfrom.domain))
        clauses.extend(dkim_clause(each) for each in results.dkim)
        if self.settings.dkim and not results.dkim:
            clauses.append(Clause("dkim", "none"))
        if results.arc is not None:
            clauses.append(results.arc)
        if results.dmarc is not None:
            clauses.append(dmarc_clause(results.dmarc))
        header = authentication_results(self.checks.hostname, clauses)
        dmarc = results.dmarc
        settings = self.settings
        if dmarc is not None and dmarc.result == "temperror" and settings.temperror == "tempfail":
            return Verdict(header, message, refusal=DMARCUndecided(), action="tempfail")
        if dmarc is not None and dmarc.result == "fail":
            wanted = {"reject": settings.dmarc_reject, "quarantine": settings.dmarc_quarantine}.get(dmarc.disposition, "deliver")
            if wanted == "reject":
                return Verdict(header, message, refusal=DMARCRejected(), action="reject")
            if wanted == "junk":
                return Verdict(header, message, folder=JUNK, action="junk")
        verified = results.spf_mailfrom is not None and results.spf_mailfrom.result == "pass"
        return Verdict(header, message, sender_verified=verified)


def _severity(outcome: DMARCResult) -> int:
    """How strict an outcome is, strictest first: a reject, a quarantine, undecided, the rest."""
    if outcome.result == "fail":
        return {"reject": 0, "quarantine": 1}.get(outcome.disposition, 3)
    return {"temperror": 2, "permerror": 4, "pass": 5}.get(outcome.result, 6)


class HeldMessage:
    """
    The message of a checked transaction, kept in memory until the end of
    DATA: the Authentication-Results field goes above it, and is known
    only once every byte is in (DKIM's body hash). Bounded by the
    listener's C{max_message_size}, which the data receiver enforces
    (dkimpy needs the whole message in memory to verify it anyway).
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> defer.Deferred[None]:
        self._parts.append(data)
        self.size += len(data)
        return defer.succeed(None)

    def data(self) -> bytes:
        joined = b"".join(self._parts)
        self._parts = [joined]
        return joined
