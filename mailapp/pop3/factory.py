"""
A POP3 listener's factory (L{POP3Factory}) and the builder the service
registers for the ``pop3`` protocol (110 with STLS, 995 with implicit TLS).
"""

from __future__ import annotations

from typing import IO, Any, Callable

from twisted.internet import defer

from mailapp.config import ListenerConfig
from mailapp.context import ServiceContext
from mailapp.pop3.maildrop import MaildropLocks
from mailapp.pop3.policy import POP3Policy
from mailapp.pop3.session import POP3Server
from mailapp.sessions import SessionFactory, session_limits

__all__ = ["POP3Factory", "buildFactory"]


class POP3Factory(SessionFactory):
    """
    Builds sessions for one listener and keeps its connection counts (total
    and per client address), so a flood gets C{-ERR [SYS/TEMP]} instead of
    our memory.
    """

    policy: POP3Policy

    def __init__(
        self,
        portal: Any,
        policy: POP3Policy,
        reactor: Any,
        tls: Any = None,
        inflight: Any = None,
        locks: MaildropLocks | None = None,
        readChunk: Callable[[IO[bytes], int], defer.Deferred[bytes]] | None = None,
        guard: Any = None,
    ) -> None:
        super().__init__(inflight, guard, portal=portal, policy=policy, reactor=reactor, tls=tls)
        self.locks = locks if locks is not None else MaildropLocks()
        #: Reads the next chunk of an open message file: on the server's store
        #: pool (L{buildFactory}). Without one (a factory built by hand in a
        #: unit test) the read happens at once, on the caller's thread.
        self.readChunk = readChunk or (lambda file, size: defer.maybeDeferred(file.read, size))

    # Twisted types a factory's protocols through a generic Factory[P] whose P
    # reads .factory back as Factory[P]; a session's factory is its own listener's.
    def buildProtocol(self, addr: Any) -> POP3Server:  # type: ignore[override]
        return POP3Server(self)


def buildFactory(context: ServiceContext, listener: ListenerConfig) -> POP3Factory:
    """The builder the service registers for the ``pop3`` protocol (110 with STLS, 995 implicit)."""
    config = context.config
    limits = config.limits
    policy = POP3Policy(
        hostname=config.hostname,
        timeout=limits.pop3_timeout_seconds,
        **session_limits(config, listener),
    )
    pools = context.pools

    def readChunk(file: IO[bytes], size: int) -> defer.Deferred[bytes]:
        # A message file opened through IFolder.openMessage is read where the
        # store's other disk work runs, never on the reactor's own pool.
        return pools.run(pools.store, file.read, size)

    return POP3Factory(
        context.portal,
        policy,
        context.reactor,
        tls=context.tls if listener.tls == "starttls" else None,
        inflight=context.inflight,
        locks=context.maildrops,
        readChunk=readChunk,
        guard=context.guard,
    )
