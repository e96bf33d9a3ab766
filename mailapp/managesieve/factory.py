"""A ManageSieve listener's factory and the builder the service registers for ``managesieve``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from mailapp.config import ListenerConfig
from mailapp.context import ServiceContext
from mailapp.sessions import SessionFactory, SessionLimits, session_limits
from mailapp.sieve.scripts import ScriptStore, sieve_directory

__all__ = ["ManageSieveFactory", "ManageSievePolicy", "buildFactory"]

#: Idle seconds after login: a script editor is a short visit (RFC 5804 sets no figure).
IDLE_TIMEOUT = 600.0


@dataclass(frozen=True)
class ManageSievePolicy(SessionLimits):
    hostname: str = "localhost"
    timeout: float = IDLE_TIMEOUT
    max_auth_failures: int = 3
    #: RFC 5804 1.7 MAXREDIRECTS, as the interpreter bounds them.
    max_redirects: int = 4


class ManageSieveFactory(SessionFactory):
    policy: ManageSievePolicy

    def __init__(
        self,
        portal: Any,
        policy: ManageSievePolicy,
        reactor: Any,
        scripts: ScriptStore,
        run: Callable[..., Deferred[Any]],
        tls: Any = None,
        inflight: Any = None,
        guard: Any = None,
    ) -> None:
        super().__init__(
            inflight, guard, portal=portal, policy=policy, reactor=reactor, tls=tls
        )
        self.scripts = scripts
        #: Runs a script operation (small files, a parse) off the reactor: the store's pool.
        self.run = run

    def buildProtocol(self, addr: Any) -> Any:
        from mailapp.managesieve.session import ManageSieveServer

        return ManageSieveServer(self)


def buildFactory(
    context: ServiceContext, listener: ListenerConfig
) -> ManageSieveFactory:
    """The builder the service registers for the ``managesieve`` protocol (4190, STARTTLS)."""
    config = context.config
    limits = config.limits
    policy = ManageSievePolicy(
        hostname=config.hostname,
        max_redirects=limits.sieve_max_redirects,
        **session_limits(config, listener),
    )
    sieve = getattr(context.router, "sieve", None)
    scripts = (
        sieve.scripts
        if sieve is not None
        else ScriptStore(
            sieve_directory(config.state_dir),
            limits.sieve_max_scripts,
            limits.sieve_max_script_size,
        )
    )
    pools = context.pools
    return ManageSieveFactory(
        context.portal,
        policy,
        context.reactor,
        scripts,
        lambda function, *args: pools.run(pools.store, function, *args),
        tls=context.tls if listener.tls == "starttls" else None,
        inflight=context.inflight,
        guard=context.guard,
    )
