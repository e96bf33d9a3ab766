"""
service_context: a complete L{ServiceContext} of fakes, and a protocol's
factory built from it through the protocol's real builder, so that a
protocol test goes through the same wiring as the server, with no disk, no
thread and no global reactor.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.task import Clock
from twisted.logger import LogPublisher

from mailapp import config as configuration
from mailapp.abuse import AbuseGuard
from mailapp.auth import makePortal
from mailapp.config import Config, ListenerConfig
from mailapp.delivery import Router
from mailapp.quota import Quotas
from mailapp.testing.accounts import FakeAccounts
from mailapp.testing.store import FakeStore
from mailapp.testing.threads import InlineWorkerPools

if TYPE_CHECKING:
    # mailapp.service imports every protocol (and the webmail): loaded only
    # when a context is built, so that importing mailapp.testing for
    # FakeAccounts stays cheap.
    from mailapp.service import ServiceContext

__all__ = ["MINIMAL_CONFIG", "build_factory", "fake_config", "listener", "service_context"]

#: The smallest config a server accepts, with one local domain. Its state
#: directory does not exist: nothing built from it may need the disk (free
#: space is the store's to say: a FakeStore's says "cannot tell" until a
#: test sets it).
MINIMAL_CONFIG = """\
[server]
hostname = "mail.example.test"
state_dir = "/nonexistent/mailapp-testing"

[domains]
local = ["example.test"]
"""


def fake_config(text: str = MINIMAL_CONFIG) -> Config:
    """C{text} parsed as a config file is (touching no file): add sections to L{MINIMAL_CONFIG}."""
    return configuration.parse(text, Path("/nonexistent/mailapp-testing.toml"), base_dir=Path("/nonexistent"))


def service_context(*, config: Config | str | None = None, **overrides: Any) -> ServiceContext:
    """
    A L{ServiceContext} as L{mailapp.service.makeService} builds one, of fakes:
    a L{FakeStore}, L{FakeAccounts} with the config's local domains, a
    L{Clock} as the reactor, the real L{Router}, L{Quotas}, L{AbuseGuard} (on
    the clock) and portal over them, L{InlineWorkerPools} and maildrop locks
    of its own; no TLS, no relay, no DNS (so the MX checks no sender
    authentication). C{config} is a L{Config} or the text of one (L{fake_config}).

    Any field can be given instead (C{store=RecordingStore()},
    C{tls=object()}); the parts built over it (router, portal, quotas) then
    use it. Every field is passed to L{ServiceContext} by keyword.
    """
    from mailapp.pop3.maildrop import MaildropLocks
    from mailapp.service import InFlight, ServiceContext

    names = {field.name for field in fields(ServiceContext)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"ServiceContext has no field {', '.join(sorted(unknown))}")
    parsed = fake_config(config) if isinstance(config, str) else config if config is not None else fake_config()
    reactor = overrides.get("reactor") or Clock()
    store = overrides.get("store") or FakeStore()
    accounts = overrides.get("accounts") or FakeAccounts(parsed.local_domains)
    quotas = overrides.get("quotas") or Quotas.fromConfig(parsed, accounts, store)
    parts: dict[str, Any] = {
        "config": parsed,
        "reactor": reactor,
        "store": store,
        "accounts": accounts,
        "portal": makePortal(accounts, store),
        "tls": None,
        "inflight": InFlight(reactor),
        "router": Router(accounts, store, max_recipients=parsed.limits.max_recipients, quotas=quotas),
        "guard": AbuseGuard.fromConfig(parsed, reactor),
        "quotas": quotas,
        "relay": None,
        "telemetry": LogPublisher(),
        "pools": InlineWorkerPools(),
        "maildrops": MaildropLocks(),
        # No DNS: the MX checks no SPF, DKIM or DMARC unless a test gives one
        # (dns=ServiceDNS(clock, FakeResolver({...}))).
        "dns": None,
        # No greylist and no content scanner unless a test gives one.
        "greylist": None,
        "scanner": None,
    }
    parts.update(overrides)
    # Every field the context has, by keyword; one this module does not know yet keeps its default.
    return ServiceContext(**{name: parts[name] for name in names if name in parts})


def listener(
    protocol: str,
    *,
    tls: str = "none",
    allow_plaintext_auth: bool = False,
    name: str | None = None,
    max_connections: int | None = None,
    max_unauthenticated: int | None = None,
) -> ListenerConfig:
    """A listener as the config file would give it (its endpoint is never listened on)."""
    return ListenerConfig(
        name or protocol, protocol, "tcp:0", tls, allow_plaintext_auth, max_connections, max_unauthenticated
    )


def build_factory(context: ServiceContext, protocol: str | ListenerConfig, **listener_options: Any) -> IProtocolFactory:
    """
    The factory the server would run for a listener of C{protocol}
    (C{"smtp"}, C{"submission"}, C{"pop3"}, C{"imap"}, ...), through the
    builder the service registers for it; C{listener_options} as for L{listener}.
    """
    from mailapp.service import PROTOCOL_BUILDERS

    config = protocol if isinstance(protocol, ListenerConfig) else listener(protocol, **listener_options)
    return PROTOCOL_BUILDERS[config.protocol](context, config)
