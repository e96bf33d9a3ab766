"""
Which TLS each destination gets: ``[relay] tls_policy`` (the default) and
``[relay.tls_policies]`` (per domain), one of L{LEVELS}:

  ``none``           never STARTTLS; plain text.
  ``opportunistic``  (the default) STARTTLS whenever offered, the
                     certificate not checked (RFC 7435; a failed handshake
                     is tried again in plain text), *and* the policies
                     the destination publishes honoured: DANE when its MX
                     hosts have DNSSEC-validated TLSA records, else MTA-STS
                     when it publishes a policy (RFC 8461 2: DANE wins).
                     This is Postfix's ``smtp_tls_security_level = dane``
                     with an MTA-STS policy server beside it.
  ``verify``         STARTTLS required, the chain verified against the trust
                     store and the MX host name matched (WebPKI); the MX
                     host is the name that must match, as with MTA-STS.
  ``dane``           DANE required: the MX host needs validated TLSA
                     records, and the peer must match them; without them
                     the mail waits.
  ``mta-sts``        an MTA-STS policy required: without one the mail waits;
                     with one it applies as published (``testing`` reports
                     and delivers, ``enforce`` refuses).

A failure of a required check is temporary (4.7.5): the hop is skipped, the
next one tried, and the message retried later; it is logged with the reason
(``relay.tls_failed``) and recorded for TLS-RPT. The policies apply to
deliveries by MX; a ``[relay] transports`` entry or the smarthost is not
the domain's MX, so only an explicit ``verify`` (against that host's name)
applies to them, and DANE and MTA-STS do not.

L{TLSPolicies.for_domain} decides a domain's policy once per connection
attempt (L{DomainPolicy}); L{TLSPolicies.for_hop} what one next hop must
satisfy (L{HopCheck}), and L{HopCheck.check} checks the session after its
STARTTLS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from OpenSSL import SSL
from twisted.internet import defer
from twisted.logger import Logger

from mailapp import logevents
from mailapp.relay.client import Reply, local_reply
from mailapp.config import RelayConfig
from mailapp.relay.dane import TLSA, AuthenticatedResolver, TLSALookupFailed, check_dane, lookup_tlsa
from mailapp.relay.mtasts import MTASTS, Policy, PolicyError
from mailapp.relay.routing import Hop
from mailapp.relay.tlsverify import ClientTLS, TLSFailure, TrustStore, check_webpki, client_context, peer_chain

__all__ = ["LEVELS", "DomainPolicy", "HopCheck", "TLSPolicies", "build_tls_policies"]

_log = Logger(namespace="mailapp.relay.manager")

NONE: Final = "none"
OPPORTUNISTIC: Final = "opportunistic"
VERIFY: Final = "verify"
DANE: Final = "dane"
MTA_STS: Final = "mta-sts"
LEVELS: Final = (NONE, OPPORTUNISTIC, VERIFY, DANE, MTA_STS)
#: The modes a hop can get besides the levels: TLS required but not
#: authenticated, and a published MTA-STS policy.
ENCRYPT: Final = "encrypt"
STS: Final = "sts"


@dataclass(frozen=True)
class DomainPolicy:
    """
    A destination's TLS policy for one attempt: C{level} as configured,
    C{sts} its MTA-STS policy (if any, and if it applies), C{refusal} a
    reply that stops the attempt before any connection (a required policy
    missing), C{sts_failure} what went wrong finding the MTA-STS policy.
    """

    domain: str
    level: str
    by_mx: bool
    sts: Policy | None = None
    refusal: Reply | None = None
    sts_failure: PolicyError | None = None


@dataclass
class HopCheck:
    """
    What one next hop's session must satisfy. C{mode} is what applies after
    the lookups: ``none``, ``opportunistic``, ``encrypt`` (TLS, unchecked:
    ``require_tls``, or TLSA records none of which is usable), ``verify``,
    ``dane``, or ``sts`` (C{enforce} false: testing, which reports and
    delivers). C{policy_type} and C{policy_strings} are what TLS-RPT says.
    """

    domain: str
    hop: Hop
    mode: str
    tlsa: tuple[TLSA, ...] = ()
    enforce: bool = True
    policy_type: str = "no-policy-found"
    policy_strings: tuple[str, ...] = ()
    mx_patterns: tuple[str, ...] = ()
    tls: ClientTLS | None = None
    #: After L{check}: whether the peer passed WebPKI or DANE (REQUIRETLS needs it).
    verified: bool = False
    failure: TLSFailure | None = field(default=None)
    #: Set before any connection when the hop must not be used at all (an MX host the enforced policy does not list).
    refusal: Reply | None = None

    @property
    def wants_tls(self) -> bool:
        return self.mode != NONE

    @property
    def requires_tls(self) -> bool:
        return self.mode in (ENCRYPT, VERIFY, DANE) or (self.mode == STS and self.enforce)

    def check(self, client: Any, store: Any) -> Reply | None:
        """
        After STARTTLS (or its absence): None to go on, else the reply that
        ends this session (a temporary 4.7.5: the message is retried).
        Sets C{verified} and C{failure}.
        """
        secure = bool(getattr(client, "secure", False))
        if not secure:
            self.verified = False
            if self.requires_tls or self.mode == STS:
                self.failure = TLSFailure("starttls-not-supported", "the server did not offer STARTTLS")
        else:
            chain = peer_chain(self.tls)
            if self.mode == DANE:
                found = check_dane(self.tlsa, chain, self.hop.name)
            else:
                found = check_webpki(chain, self.hop.name, store)
            self.verified = found is None
            if self.mode in (VERIFY, DANE, STS):
                self.failure = self.failure or found
        if self.failure is None or not self.requires_tls:
            return None
        return local_reply(451, f"4.7.5 TLS to {self.hop} refused by the {self.mode} policy: {self.failure.reason}")


class TLSPolicies:
    """
    The relay's TLS policies; see the module docstring.

    @param default: the level for domains without their own.
    @param per_domain: (lower-case) domain -> level.
    @param store: the L{TrustStore} that verified peers chain to.
    @param dane_resolver: offers C{lookupAuthenticated} (L{mailapp.relay.dane}); None: no DANE.
    @param mta_sts: the L{MTASTS} policy source; None: no MTA-STS.
    """

    def __init__(
        self,
        default: str = OPPORTUNISTIC,
        per_domain: Mapping[str, str] | None = None,
        store: TrustStore | None = None,
        dane_resolver: Any = None,
        mta_sts: MTASTS | None = None,
        context: SSL.Context | None = None,
    ) -> None:
        self.default = default
        self.per_domain = dict(per_domain or {})
        self.store = store
        self.dane_resolver = dane_resolver
        self.mta_sts = mta_sts
        self.context = context if context is not None else client_context()
        #: The trust root (a Twisted C{IOpenSSLTrustRoot}) of the policy hosts; TLS-RPT's https reports use it too.
        self.trust: Any = None

    def reconfigure(self, relay: RelayConfig) -> None:
        """SIGHUP: the levels apply to the next connection attempt (the trust store and DNSSEC trust need a restart)."""
        self.default = relay.tls_policy
        self.per_domain = dict(relay.tls_policies)

    def level(self, domain: str) -> str:
        return self.per_domain.get(domain.lower(), self.default)

    @defer.inlineCallbacks
    def for_domain(self, domain: str, by_mx: bool) -> Any:
        """Fire with the L{DomainPolicy} of C{domain} (C{by_mx}: its hops are its MX hosts)."""
        level = self.level(domain)
        if not by_mx or level in (NONE, VERIFY, DANE) or self.mta_sts is None:
            if level == MTA_STS and (not by_mx or self.mta_sts is None):
                refusal = local_reply(451, f"4.7.5 no MTA-STS policy can apply to {domain} (not delivered by MX)")
                return DomainPolicy(domain, level, by_mx, refusal=refusal)
            return DomainPolicy(domain, level, by_mx)
        sts, failure = yield self.mta_sts.policy(domain)
        if level == MTA_STS and sts is None:
            reason = failure.reason if failure is not None else "it publishes none"
            return DomainPolicy(
                domain, level, by_mx, refusal=local_reply(451, f"4.7.5 no MTA-STS policy for {domain}: {reason}"), sts_failure=failure
            )
        return DomainPolicy(domain, level, by_mx, sts=sts, sts_failure=failure)

    @defer.inlineCallbacks
    def for_hop(self, policy: DomainPolicy, hop: Hop, require_tls: bool) -> Any:
        """
        Fire with the L{HopCheck} for C{hop} (its C{refusal} set for an MX
        host the enforced MTA-STS policy does not list), or with a L{Reply}
        saying why the hop must not be used (a TLSA lookup failure, no TLSA
        under the ``dane`` policy).
        """
        level = policy.level
        check = HopCheck(policy.domain, hop, OPPORTUNISTIC)
        if level == NONE:
            check.mode = NONE
            return check
        check.tls = ClientTLS(self.context, hop.name)
        if level == VERIFY:
            check.mode = VERIFY
            return check
        if policy.by_mx and level in (OPPORTUNISTIC, DANE) and self.dane_resolver is not None:
            try:
                found = yield lookup_tlsa(self.dane_resolver, hop.name, hop.port)
            except TLSALookupFailed as error:
                return local_reply(451, f"4.7.5 not using {hop}: {error}")
            if found.secure and found.records:
                check.mode = DANE if found.usable else ENCRYPT
                check.tlsa = found.records
                check.policy_type = "tlsa"
                check.policy_strings = tuple(str(record) for record in found.records)
                return check
        if level == DANE:
            return local_reply(451, f"4.7.5 the dane policy needs DNSSEC-validated TLSA records for {hop.name}")
        if policy.sts is not None:
            sts = policy.sts
            check.mode = STS
            check.enforce = sts.mode == "enforce"
            check.policy_type = "sts"
            check.policy_strings = sts.lines
            check.mx_patterns = sts.mx
            if not sts.allows(hop.name):
                check.failure = TLSFailure("validation-failure", f"{hop.name} is not an MX host of the MTA-STS policy of {policy.domain}")
                if check.enforce:
                    check.refusal = local_reply(451, f"4.7.5 not using {hop}: {check.failure.reason}")
            return check
        if require_tls:
            check.mode = ENCRYPT
        return check

    @staticmethod
    def log_session(check: HopCheck, client: Any, reply: Reply | None) -> None:
        """
        One line per checked session (debug; the metrics count them): the
        policy that applied and what came of it (C{verified}, C{unverified}
        TLS, C{plaintext}, or the RFC 8460 result type of its failure).
        """
        if check.failure is not None and check.mode not in (NONE, OPPORTUNISTIC):
            result = check.failure.result_type
        elif check.verified:
            result = "verified"
        else:
            result = "unverified" if getattr(client, "secure", False) else "plaintext"
        _log.debug(
            "TLS session with {hop} for {domain}: {policy} {result}",
            log_event=logevents.RELAY_TLS_SESSION,
            hop=str(check.hop),
            domain=check.domain,
            policy=check.mode if check.enforce else "sts-testing",
            policy_type=check.policy_type,
            result=result,
            refused=reply is not None,
        )

    def log_failure(self, check: HopCheck, reply: Reply | None) -> None:
        """Log a failure that a policy cares about (an unverified opportunistic peer is no failure)."""
        if check.failure is None or check.mode in (NONE, OPPORTUNISTIC):
            return
        _log.info(
            "TLS to {hop} for {domain} under {mode} ({outcome}): {result_type}: {reason}",
            log_event=logevents.RELAY_TLS_FAILED,
            hop=str(check.hop),
            domain=check.domain,
            mode=check.mode if check.enforce else "sts testing",
            outcome="refused" if reply is not None else "delivering anyway",
            result_type=check.failure.result_type,
            reason=check.failure.reason,
        )


def build_tls_policies(
    relay: RelayConfig, state_dir: Path, reactor: Any, resolver: Any, routes: Any, run: Callable[..., Any]
) -> TLSPolicies:
    """
    The relay's policies from its config: the trust store (read now: start-up
    I/O), DANE through an AD-bit resolver over the same name servers as the
    MX lookups, MTA-STS through C{resolver} with its cache under
    ``state_dir/mta-sts``.
    """
    from twisted.internet import ssl

    store = TrustStore(relay.tls_ca_file)
    if relay.tls_ca_file is not None:
        trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(_pem(c)) for c in store.certificates])
    else:
        trust = ssl.platformTrust()
    nameservers = [(server.host, server.port) for server in relay.nameservers]
    dane = AuthenticatedResolver(reactor, nameservers, relay.dnssec_ad_trust) if relay.dnssec_ad_trust != "never" else None
    sts = MTASTS(reactor, resolver, routes.mx.addresses, trust, state_dir / "mta-sts", run) if routes.mx is not None else None
    policies = TLSPolicies(relay.tls_policy, relay.tls_policies, store, dane, sts)
    policies.trust = trust
    return policies


def _pem(certificate: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    pem: bytes = certificate.public_bytes(serialization.Encoding.PEM)
    return pem
