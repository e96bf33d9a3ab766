"""
Reloading the config file in a running server (``SIGHUP``, or
:meth:`mailapp.service.MailService.reload`).

The new file is checked completely first; a file with any problem, or a
certificate that cannot be loaded, is logged and changes nothing: the server
goes on with the config it had. A good file is applied where that can be done
live, and every other difference is named in one log line saying it needs a
restart.

Live: ``[tls]`` (certificates, SNI names, minimum version: new handshakes
get them, open sessions keep theirs), ``[limits]`` and each listener's
``max_connections`` and ``max_unauthenticated`` (new connections are
admitted by them; open ones stay), ``[domains] local``,
``relay.trusted_networks`` and the relay policy (transports, smarthost and
its credentials, retry schedule, lifetime, TLS requirements and policies,
connection limits), ``[authentication]`` (carried by the SMTP listeners' policies: new
transactions are checked by it), ``[dnsbl]``, ``[greylisting]`` and ``[postscreen]`` (the same way:
new sessions), and anything a component applies itself through a
``reconfigure(config)`` method (``[security]``, ``dkim.sign``).

Restart: ``[server]`` (hostname, state_dir, sync, log_format), the
listeners' sockets (added, removed, or a changed protocol, endpoint or TLS
mode), the relay's timeouts and name servers, its CA file and its DNSSEC AD-bit trust.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailapp import logevents, tls
from mailapp.config import Config, ConfigError, ListenerConfig, load
from mailapp.context import ServiceContext
from mailapp.listeners import ListenerService

if TYPE_CHECKING:
    from mailapp.relay.manager import RelayManager
    from mailapp.service import MailService

__all__ = ["ReloadResult", "reload_service"]

log = Logger()


@dataclass
class ReloadResult:
    """What a reload did: ``ok`` false when the new config was refused (``problems`` says why)."""

    ok: bool
    applied: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def reload_service(service: MailService) -> ReloadResult:
    """
    Re-read ``service.config.path`` and apply it to ``service`` (a
    :class:`mailapp.service.MailService`). Never raises for a bad config.
    """
    old: Config = service.config
    try:
        # Relative paths resolve against the working directory, as at start.
        new = load(service.config_file)
    except ConfigError as error:
        return _refused(old, error.problems)
    if new.path != old.path:
        # A worker read the parent's copy (mailapp.workers.configcopy): it still runs the operator's file.
        new = dataclasses.replace(new, path=old.path)

    applied: list[str] = []
    needs_restart = _needs_restart(old, new)

    holder = service.tls
    if new.needs_tls and holder is None:
        needs_restart.append("tls (no listener used TLS at start)")
    elif holder is not None:
        # Always re-read: certbot renews the same paths in place.
        try:
            if new.tls.generate_self_signed:
                tls.ensure_certificate(new.tls, old.hostname)
            holder.reload(new.tls)
        except (tls.CertificateError, OSError) as error:
            return _refused(old, [str(error)])
        applied.append("tls")
        log.info(
            "TLS certificates reloaded: {names}",
            log_event=logevents.TLS_RELOADED,
            names=", ".join(name or old.hostname for name in holder.certificates()),
        )

    service.context = context = dataclasses.replace(service.context, config=new)
    new_listeners = {listener.name: listener for listener in new.listeners}
    for listener_service, factory in _listener_factories(service):
        fresh = new_listeners.get(listener_service.listener.name)
        if fresh is not None and fresh.same_socket(listener_service.listener):
            # Only its budgets may differ: those apply live.
            listener_service.listener = fresh
        _refresh_policy(factory, context, listener_service.listener)
    if new.limits != old.limits:
        applied.append("limits")
        # The Router's own copy of a limit (it outlives every listener's policy).
        context.router.max_recipients = new.limits.max_recipients
    if new.authentication != old.authentication:
        applied.append("authentication")
    if new.dnsbl != old.dnsbl:
        applied.append("dnsbl")
    if new.postscreen != old.postscreen:
        applied.append("postscreen")
    if new.greylisting != old.greylisting:
        applied.append("greylisting")
    if new.spam != old.spam:
        applied.append("spam")
    if _budgets(old) != _budgets(new):
        applied.append("listener budgets")
    if new.local_domains != old.local_domains:
        accounts = context.accounts
        # The real accounts take the config's domains; a fake may not.
        if hasattr(accounts, "set_config_domains"):
            accounts.set_config_domains(new.local_domains)
            applied.append("domains")
        else:
            needs_restart.append("domains.local")
    if new.relay != old.relay:
        _apply_relay(service.relay, old, new, applied, needs_restart)
    for component in _reconfigurable(service, context):
        component.reconfigure(new)

    service.config = new
    log.info(
        "config {config_path} reloaded; applied: {applied}",
        log_event=logevents.RELOADED,
        config_path=str(new.path),
        applied=", ".join(applied) or "nothing changed",
        needs_restart=needs_restart,
    )
    if needs_restart:
        log.warn(
            "config {config_path}: these changes need a restart: {changes}",
            log_event=logevents.RELOAD_NEEDS_RESTART,
            config_path=str(new.path),
            changes=", ".join(needs_restart),
        )
    return ReloadResult(True, applied, needs_restart)


def _refused(old: Config, problems: list[str]) -> ReloadResult:
    log.error(
        "config {config_path} not reloaded, still running with the previous one: {problems}",
        log_event=logevents.RELOAD_FAILED,
        config_path=str(old.path),
        problems="; ".join(problems),
    )
    return ReloadResult(False, problems=list(problems))


def _budgets(config: Config) -> list[tuple[str, int | None, int | None]]:
    return [(listener.name, listener.max_connections, listener.max_unauthenticated) for listener in config.listeners]


def _needs_restart(old: Config, new: Config) -> list[str]:
    changes = [
        f"server.{name}"
        for name in ("hostname", "state_dir", "sync", "log_format", "workers")
        if getattr(old, name) != getattr(new, name)
    ]
    if len(old.listeners) != len(new.listeners) or not all(
        before.same_socket(after) for before, after in zip(old.listeners, new.listeners)
    ):
        changes.append("listeners")
    for name in ("connect_timeout", "command_timeout", "session_timeout", "nameservers", "tls_ca_file", "dnssec_ad_trust"):
        if getattr(old.relay, name) != getattr(new.relay, name):
            changes.append(f"relay.{name}")
    return changes


def _listener_factories(service: MailService) -> list[tuple[ListenerService, IProtocolFactory]]:
    found = []
    for child in service:
        if isinstance(child, ListenerService):
            factory = child.factory
            if isinstance(factory, TLSMemoryBIOFactory):
                factory = factory.wrappedFactory
            found.append((child, factory))
    return found


def _refresh_policy(factory: IProtocolFactory, context: ServiceContext, listener: ListenerConfig) -> None:
    """
    New sessions of this listener get the new limits: the listener's builder
    makes a factory from the new config, and its ``policy`` (a frozen record
    of what the listener allows) replaces the running one. Sessions already
    open keep the policy they started with.
    """
    from mailapp.service import PROTOCOL_BUILDERS

    # The webmail's Site keeps its connection policy on its SessionFactory.
    target: Any = getattr(factory, "connections", factory)
    if not hasattr(target, "policy"):
        return
    builder = PROTOCOL_BUILDERS.get(listener.protocol)
    if builder is None:
        return
    fresh: Any = builder(context, listener)
    target.policy = getattr(fresh, "connections", fresh).policy


def _apply_relay(manager: RelayManager | None, old: Config, new: Config, applied: list[str], needs_restart: list[str]) -> None:
    if manager is None:
        return
    from mailapp.relay.manager import RetryPolicy
    from mailapp.relay.routing import Routes

    relay = new.relay
    if (relay.transports, relay.smarthost) != (old.relay.transports, old.relay.smarthost):
        manager.routes = Routes(relay.transports, relay.smarthost, manager.routes.mx)
    manager.policy = RetryPolicy(relay.retry_schedule, relay.max_lifetime, relay.delay_warning)
    manager.require_tls = relay.require_tls
    manager.tls_policies.reconfigure(relay)
    if manager.tls_reports is not None and manager.tls_reports.sender is not None:
        manager.tls_reports.sender.reconfigure(new)
    # The config reader lets neither come without the other.
    username, password = relay.smarthost_username, relay.smarthost_password
    manager.smarthost_auth = (username, password) if username is not None and password is not None else None
    manager.smarthost_require_tls = relay.smarthost_require_tls
    manager.max_connections = relay.max_connections
    manager.max_connections_per_domain = relay.max_connections_per_domain
    manager.max_connections_per_address = relay.max_connections_per_address
    manager.connection_cache_time = relay.connection_cache_time
    manager.connection_reuse_time = relay.connection_reuse_time
    # A cached connection was opened under the old routes and TLS policies: the next message gets a new one.
    manager.closeIdleConnections()
    if manager.router is not None and manager.router.forwarding is not None:
        manager.router.forwarding.rate.burst = relay.forward_burst
        manager.router.forwarding.rate.per_hour = relay.forward_per_hour
    applied.append("relay")


def _reconfigurable(service: MailService, context: ServiceContext) -> list[Any]:
    """Components that apply a new config themselves: they have ``reconfigure(config)``."""
    router = context.router
    candidates: list[object] = [*service, context.guard, context.quotas, getattr(router, "signer", None), getattr(router, "sieve", None)]
    seen: list[Any] = []
    for candidate in candidates:
        if candidate is not None and callable(getattr(candidate, "reconfigure", None)) and candidate not in seen:
            seen.append(candidate)
    return seen
