"""
An SMTP listener's factory (L{SMTPFactory}) and the builder the service
registers for the ``smtp`` (the MX, port 25) and ``submission`` (587 with
STARTTLS, 465 with implicit TLS) protocols.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from mailapp.config import ListenerConfig
from mailapp.context import ServiceContext
from mailapp.authentication.arc import ARCVerifier
from mailapp.authentication.checks import InboundChecks
from mailapp.authentication.results import arc_clause
from mailapp.delivery import Router
from mailapp.networks import in_networks
from mailapp.postscreen import Postscreen
from mailapp.postscreen.greylist import Greylist
from mailapp.spam.scanner import ContentScanner
from mailapp.sessions import SessionFactory, session_limits
from mailapp.smtp.policy import SMTPPolicy
from mailapp.smtp.chunking import ChunkingServer
from mailapp.interfaces import IFreeSpace

__all__ = ["SMTPFactory", "buildFactory"]


class SMTPFactory(SessionFactory):
    """
    Builds sessions for one listener and keeps its connection counts (total
    and per client address) so a flood gets ``421`` instead of our memory.
    """

    policy: SMTPPolicy

    def __init__(
        self,
        router: Router,
        portal: Any,
        policy: SMTPPolicy,
        reactor: Any,
        tls: Any = None,
        inflight: Any = None,
        guard: Any = None,
        freeSpace: IFreeSpace | None = None,
        inbound: InboundChecks | None = None,
        postscreen: Postscreen | None = None,
        greylist: Greylist | None = None,
        scanner: ContentScanner | None = None,
    ) -> None:
        super().__init__(inflight, guard, portal=portal, policy=policy, reactor=reactor, tls=tls)
        self.router = router
        #: The store's free space (its C{freeSpace}), checked at MAIL FROM
        #: against policy.min_free_disk (None: never refused).
        self.freeSpace = freeSpace
        #: On the MX: SPF, DKIM and DMARC, called at MAIL FROM and at the end of DATA (None: not checked).
        self.inbound = inbound
        #: On the MX: the checks before DATA (blocklists, early talkers), which this factory's policy configures.
        self.postscreen = postscreen
        #: On the MX: the greylist (the policy's C{greylisting} says whether it is used).
        self.greylist = greylist
        #: The content scan at the end of DATA, after the checks (None: nothing is scanned; see policy.spam).
        self.scanner = scanner

    # Twisted types a factory's protocols through a generic Factory[P] whose P
    # reads .factory back as Factory[P]; a session's factory is its own listener's.
    def buildProtocol(self, addr: Any) -> ChunkingServer:  # type: ignore[override]
        return ChunkingServer(self)

    def trusted(self, ip: str) -> bool:
        return in_networks(ip, self.policy.trusted_networks)


def buildFactory(context: ServiceContext, listener: ListenerConfig) -> SMTPFactory:
    """The builder the service registers for the ``smtp`` and ``submission`` protocols."""
    config = context.config
    limits = config.limits
    policy = SMTPPolicy(
        hostname=config.hostname,
        submission=listener.protocol == "submission",
        max_message_size=limits.max_message_size,
        timeout=limits.smtp_timeout_seconds,
        trusted_networks=tuple(ipaddress.ip_network(n) for n in config.relay.trusted_networks),
        **session_limits(config, listener),
        postmaster=f"postmaster@{config.local_domains[0]}" if config.local_domains else "",
        refuse_local_senders=config.security.mx_refuse_local_senders,
        min_free_disk=limits.min_free_disk,
        authentication=config.authentication,
        dnsbl=config.dnsbl,
        greylisting=config.greylisting,
        postscreen=config.postscreen,
        spam=config.spam,
    )
    tls = context.tls if listener.tls == "starttls" else None
    dns = context.dns
    inbound = None
    if listener.protocol == "smtp" and dns is not None:
        # ARC (RFC 8617) is verified beside SPF, DKIM and DMARC, on the same pool and
        # DNS, and reported as the header's arc= clause (it does not change DMARC's verdict).
        verifier = ARCVerifier(context.reactor, context.pools.authentication, dns.txt)
        inbound = InboundChecks(
            context.reactor,
            dns,
            context.pools.authentication,
            config.hostname,
            arc=lambda message: verifier.verify(message).addCallback(arc_clause),
        )
    return SMTPFactory(
        context.router,
        context.portal,
        policy,
        context.reactor,
        tls=tls,
        inflight=context.inflight,
        guard=context.guard,
        freeSpace=context.store.freeSpace,
        inbound=inbound,
        postscreen=Postscreen(context.reactor, dns.resolver if dns is not None else None, context.pools) if listener.protocol == "smtp" else None,
        greylist=context.greylist if listener.protocol == "smtp" else None,
        scanner=context.scanner,
    )
