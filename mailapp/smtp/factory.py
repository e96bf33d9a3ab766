"""
An SMTP listener's factory (L{SMTPFactory}) and the builder the service
registers for the ``smtp`` (the MX, port 25) and ``submission`` (587 with
STARTTLS, 465 with implicit TLS) protocols.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from mailapp.delivery import Router
from mailapp.sessions import SessionFactory, session_limits
from mailapp.smtp.policy import SMTPPolicy
from mailapp.smtp.transaction import ESMTPServer
from mailapp.store.freespace import FreeSpace

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
        freeSpace: FreeSpace | None = None,
    ) -> None:
        super().__init__(inflight, guard)
        self.router = router
        self.portal = portal
        self.policy = policy
        self.reactor = reactor
        self.tls = tls
        #: The store's disk, checked at MAIL FROM against policy.min_free_disk (None: never refused).
        self.freeSpace = freeSpace

    # Twisted types a factory's protocols through a generic Factory[P] whose P
    # reads .factory back as Factory[P]; a session's factory is its own listener's.
    def buildProtocol(self, addr: Any) -> ESMTPServer:  # type: ignore[override]
        return ESMTPServer(self)

    def trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 client on a dual-stack listener
        return any(address in network for network in self.policy.trusted_networks)



def buildFactory(context: Any, listener: Any) -> SMTPFactory:
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
    )
    router = getattr(context, "router", None) or Router(
        context.accounts, context.store, limits.max_recipients, quotas=getattr(context, "quotas", None)
    )
    tls = context.tls if listener.tls == "starttls" else None
    return SMTPFactory(
        router,
        context.portal,
        policy,
        context.reactor,
        tls=tls,
        inflight=context.inflight,
        guard=getattr(context, "guard", None),
        freeSpace=FreeSpace(config.state_dir, context.reactor),
    )
