"""
The composition root: the one place that turns a :class:`~mailapp.config.Config`
into running parts.

:func:`makeService` builds the store, the accounts and the cred portal, then
one listening service per configured listener, each speaking the protocol
that a builder in :data:`PROTOCOL_BUILDERS` makes. Everything it needs that a
test may want to replace (reactor, store, accounts, portal) is a parameter.

Stopping is ordered so that no accepted message is cut off: stop listening
first, then wait (bounded) for the work registered with :class:`InFlight`
(for example a message commit after SMTP ``DATA``), then stop the store and
accounts.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger, LogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from mailapp import logevents, tls
from mailapp.config import Config, ListenerConfig
from mailapp.leftovers import LeftoverSweeper
from mailapp.sessions import ConnectionCounts, RefusalLog, SessionFactory

__all__ = [
    "DRAIN_TIMEOUT_SECONDS",
    "PROTOCOL_BUILDERS",
    "InFlight",
    "ListenerService",
    "MailService",
    "ProtocolBuilder",
    "ServiceContext",
    "makeService",
    "register_protocol",
]

log = Logger()

_T = TypeVar("_T")

#: How long a stopping server waits for in-flight work before giving up.
DRAIN_TIMEOUT_SECONDS = 10.0


class InFlight:
    """
    Work that must not be cut off by a shutdown, such as committing a message
    the server has already promised (or is about to promise) to keep.

    A component calls :meth:`track` with the Deferred of that work; the
    server's stop waits for :meth:`drain` before tearing down the store.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._pending: set[Deferred[Any]] = set()
        self._waiters: list[Deferred[bool]] = []

    def __len__(self) -> int:
        """How many tracked pieces of work have not finished."""
        return len(self._pending)

    def track(self, deferred: Deferred[_T]) -> Deferred[_T]:
        """
        Count ``deferred`` as in flight until it fires (either way). Returns
        it unchanged, with its result passed through, so that the call can
        wrap an expression: ``d = inflight.track(store.deliver(...))``.
        """
        self._pending.add(deferred)

        def finished(result: _T | Failure) -> _T | Failure:
            self._pending.discard(deferred)
            if not self._pending:
                waiters, self._waiters = self._waiters, []
                for waiter in waiters:
                    waiter.callback(True)
            return result

        deferred.addBoth(finished)
        return deferred

    def drain(self, timeout: float) -> Deferred[bool]:
        """
        Fire with ``True`` once nothing is in flight, or with ``False`` after
        ``timeout`` seconds if something still is. Never fails.
        """
        if not self._pending:
            return defer.succeed(True)
        waiter: Deferred[bool] = Deferred()
        self._waiters.append(waiter)

        def give_up() -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                waiter.callback(False)

        timer = self._clock.callLater(timeout, give_up)

        def cancel_timer(drained: bool) -> bool:
            if timer.active():
                timer.cancel()
            return drained

        return waiter.addCallback(cancel_timer)


@dataclass(frozen=True)
class ServiceContext:
    """
    What a protocol builder may use to build its factory: the shared parts
    that :func:`makeService` made once for every listener.

    ``tls`` is the server context factory (``None`` when no listener needs
    TLS), for ``transport.startTLS`` on STARTTLS listeners; implicit-TLS
    listeners are wrapped by the service, so their builders need not care.
    """

    config: Config
    reactor: Any
    store: Any
    accounts: Any
    portal: Portal
    tls: tls.ServerTLS | None
    inflight: InFlight
    #: The one Router every protocol that accepts mail hands it to.
    router: Any = None
    #: The one L{mailapp.abuse.AbuseGuard}: failed-login delays and bans across every protocol.
    guard: Any = None
    #: The one L{mailapp.quota.Quotas}: the Router and IMAP ask it whether a message fits.
    quotas: Any = None
    #: The relay manager (its queue), or None without a relay.
    relay: Any = None
    #: Where sessions publish per-command timings (see L{mailapp.metrics}); not the log.
    telemetry: LogPublisher | None = None
    #: The server's L{mailapp.pools.WorkerPools}: one bounded thread pool per kind of blocking work.
    pools: Any = None


#: Makes the protocol factory for one listener.
ProtocolBuilder = Callable[[ServiceContext, ListenerConfig], IProtocolFactory]

#: Protocol name (as in ``listeners.NAME.protocol``) -> builder. A listener
#: whose protocol has no builder is skipped with a warning.
PROTOCOL_BUILDERS: dict[str, ProtocolBuilder] = {}


def register_protocol(name: str, builder: ProtocolBuilder) -> None:
    """
    Make listeners with ``protocol = name`` speak what ``builder`` makes.

    Registering a name twice is a mistake (two modules think they own the
    protocol), so it raises ``ValueError``.
    """
    if name in PROTOCOL_BUILDERS:
        raise ValueError(f"a builder for protocol {name!r} is already registered")
    PROTOCOL_BUILDERS[name] = builder


def _register_builtin_protocols() -> None:
    """The protocols mailapp ships, one line each (imported here: the composition root may know them all)."""
    from mailapp import smtp

    register_protocol("smtp", smtp.buildFactory)
    register_protocol("submission", smtp.buildFactory)
    from mailapp import pop3

    register_protocol("pop3", pop3.buildFactory)
    from mailapp import web

    register_protocol("webmail", web.buildFactory)
    from mailapp.imap import server as imap_server

    register_protocol("imap", imap_server.buildFactory)
    from mailapp import metrics

    register_protocol("metrics", metrics.buildFactory)


class ListenerService(StreamServerEndpointService):
    """
    A :class:`StreamServerEndpointService` that says where it listens (the
    real address, which matters with port 0), and hands a failure to listen to
    ``on_failure`` instead of only logging it, so that the server can refuse
    to run half-started.
    """

    def __init__(
        self,
        listener: ListenerConfig,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        on_failure: Callable[[ListenerConfig, Failure], None],
    ) -> None:
        super().__init__(endpoint, factory)
        self.listener = listener
        self.setName(f"listener:{listener.name}")
        self._on_failure = on_failure
        #: The address actually bound, once listening.
        self.address: IAddress | None = None

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self._waitingForPort = self.endpoint.listen(self.factory)
        self._waitingForPort.addCallbacks(self._listening, self._failed)

    def whenListening(self) -> Deferred[IListeningPort | None]:
        """
        Fire with the listening port once bound (``None`` if listening
        failed). Call after start. The service's own Deferred is left
        untouched: it must keep the port for ``stopService``.
        """
        if self._waitingForPort is None:
            raise RuntimeError(f"{self.name} has not started")
        result: Deferred[IListeningPort | None] = Deferred()

        def relay(port: IListeningPort | None) -> IListeningPort | None:
            result.callback(port)
            return port

        self._waitingForPort.addCallback(relay)
        return result

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.address = port.getHost()
        log.info(
            "listener {listener} ({protocol}, tls={tls}) listening on {address}",
            log_event=logevents.LISTENING,
            listener=self.listener.name,
            protocol=self.listener.protocol,
            tls=self.listener.tls,
            address=format_address(self.address),
        )
        return port

    def _failed(self, reason: Failure) -> None:
        if reason.check(defer.CancelledError):
            return None
        where, why = describe_listen_failure(self.listener, reason)
        log.error(
            "cannot listen on {address}: {reason} (listener {listener})",
            log_event=logevents.LISTEN_FAILED,
            listener=self.listener.name,
            endpoint=self.listener.endpoint,
            address=where,
            reason=why,
        )
        self._on_failure(self.listener, reason)
        return None


_LISTEN_ERRNO_TEXT = {
    errno.EADDRINUSE: "address in use (another server, or another mailapp, already listens there)",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address",
}


def describe_listen_failure(listener: ListenerConfig, reason: Failure) -> tuple[str, str]:
    """
    ``("127.0.0.1:10143", "address in use ...")``: where a listener could not
    bind and why, as an operator would write and read it, rather than
    Twisted's ``Couldn't listen on ...: [Errno 98]`` text.
    """
    error = reason.value
    if isinstance(error, CannotListenError):
        host = error.interface or ("*" if isinstance(error.port, int) else "")
        where = f"[{host}]:{error.port}" if ":" in host else (f"{host}:{error.port}" if host else str(error.port))
        cause = error.socketError
        number = getattr(cause, "errno", None)
        if number in _LISTEN_ERRNO_TEXT:
            return where, _LISTEN_ERRNO_TEXT[number]
        text = getattr(cause, "strerror", None) or str(cause)
        return where, text[:1].lower() + text[1:]
    return listener.endpoint, reason.getErrorMessage()


def admin_command(executable: str | None = None, search_path: str | None = None, cwd: str | None = None) -> str:
    """
    How the operator can run the admin command of this very installation:
    C{mailapp} when that is what the shell finds, else the script installed
    beside the running interpreter (a fresh clone's C{.venv/bin/mailapp},
    relative when under the working directory). Taken from the interpreter,
    not C{sys.argv}, which is twistd's.

    @param executable: the interpreter (C{sys.executable}); for tests.
    @param search_path: the shell's C{PATH} (the environment's); for tests.
    @param cwd: the working directory (the process's); for tests.
    """
    beside = os.path.join(os.path.dirname(executable or sys.executable), "mailapp")
    if not os.path.isfile(beside):
        return "mailapp"
    found = shutil.which("mailapp", path=search_path if search_path is not None else os.environ.get("PATH", ""))
    if found is not None and os.path.realpath(found) == os.path.realpath(beside):
        return "mailapp"
    relative = os.path.relpath(beside, cwd or os.getcwd())
    command = beside if relative.startswith("..") else relative
    return shlex.quote(command)


class MailService(MultiService):
    """
    The root service. Its children are the store and accounts (when they are
    services) and one :class:`ListenerService` per built listener.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        accounts: Any,
        inflight: InFlight,
        drain_timeout: float = DRAIN_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__()
        self.config = config
        self.inflight = inflight
        self.drain_timeout = drain_timeout
        self._reactor = reactor
        self._accounts = accounts
        #: The message store, set by makeService; cleaned of stale spool files at start.
        self.store: Any = None
        #: Set by makeService: what the listeners were built from, the TLS holder, the relay manager.
        self.context: ServiceContext | None = None
        self.tls: tls.ServerTLS | None = None
        self.relay: Any = None
        self._previous_sighup: Any = None
        #: Non-zero once the server has to stop because it cannot run as configured.
        self.exit_status = 0

    def reload(self) -> Any:
        """
        Re-read the config file and apply what can change live (see
        :mod:`mailapp.reload`); a bad file is logged and changes nothing.
        What ``SIGHUP`` does. Returns a :class:`mailapp.reload.ReloadResult`.
        """
        from mailapp.reload import reload_service

        return reload_service(self)

    def _install_sighup(self) -> None:
        # A Python signal handler runs in the main thread between bytecodes;
        # callFromThread wakes the reactor and runs the reload in its loop.
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.signal(signal.SIGHUP, lambda signum, frame: self._reactor.callFromThread(self.reload))
        # None: a handler not set from Python; the default is the closest we can restore.
        self._previous_sighup = signal.SIG_DFL if previous is None else previous

    def _restore_sighup(self) -> None:
        if self._previous_sighup is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None

    def startService(self) -> None:
        log.info(
            "mailapp starting as {hostname} with {config_path}",
            log_event=logevents.STARTING,
            hostname=self.config.hostname,
            config_path=str(self.config.path),
        )
        super().startService()
        self._install_sighup()
        maybeDeferred(self._accounts.countUsers).addCallbacks(self._hint_if_no_users, self._count_failed)

    def _hint_if_no_users(self, count: int) -> None:
        if count:
            return
        domain = self.config.local_domains[0] if self.config.local_domains else "your.domain"
        log.info(
            "no users yet: add one with: {command} --config {config_path} user add you@{domain}",
            log_event=logevents.NO_USERS,
            command=admin_command(),
            config_path=str(self.config.path),
            domain=domain,
        )

    def _count_failed(self, reason: Failure) -> None:
        log.failure("could not count users", reason)

    def listener_failed(self, listener: ListenerConfig, reason: Failure) -> None:
        """
        A listener could not bind: stop the whole server rather than run
        without it, once however many listeners fail (a second
        C{reactor.stop} raises C{ReactorNotRunning}), and remember that the
        process must end in failure (L{exit_status}; C{twistd} itself always
        exits 0 after the reactor stops, see L{mailapp.tap}).
        """
        first = self.exit_status == 0
        self.exit_status = 1
        if first:
            self._reactor.callWhenRunning(self._reactor.stop)

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, then wait up to ``drain_timeout`` for in-flight work,
        then stop the other children in reverse order of starting.
        """
        log.info("mailapp stopping", log_event=logevents.STOPPING)
        self._restore_sighup()
        Service.stopService(self)
        children = list(self)[::-1]
        listeners = [child for child in children if isinstance(child, ListenerService)]
        others = [child for child in children if not isinstance(child, ListenerService)]
        stopped: Deferred[Any] = defer.gatherResults(
            [maybeDeferred(child.stopService) for child in listeners], consumeErrors=True
        )
        stopped.addErrback(lambda reason: log.failure("a listener did not stop cleanly", reason))
        stopped.addCallback(lambda _: self.inflight.drain(self.drain_timeout))
        stopped.addCallback(self._drained)
        for child in others:
            stopped.addCallback(lambda _, child=child: maybeDeferred(child.stopService))
            stopped.addErrback(lambda reason: log.failure("a component did not stop cleanly", reason))
        stopped.addCallback(lambda _: log.info("mailapp stopped", log_event=logevents.STOPPED))
        return stopped

    def _drained(self, drained: bool) -> None:
        if not drained:
            log.warn(
                "gave up waiting for {count} in-flight operations after {timeout} s",
                log_event=logevents.DRAIN_TIMEOUT,
                count=len(self.inflight),
                timeout=self.drain_timeout,
            )


def makeService(
    config: Config,
    reactor: Any = None,
    store: Any = None,
    accounts: Any = None,
    portal: Any = None,
    relay: bool | None = None,
) -> MailService:
    """
    Build the whole server from ``config``; nothing listens until the
    returned service starts.

    Creates ``state_dir`` (0700) and, when a listener needs TLS, the
    certificate (if it is to be generated). The default store, accounts and
    portal are imported here, not at module level, so that this module loads
    (and tests run with fakes) whatever state those modules are in.

    The relay (the outbound queue under ``state_dir/queue`` and the
    L{mailapp.relay.manager.RelayManager} that empties it) is built when
    ``relay`` is true, or when it is ``None`` and the default store is used:
    a test that hands in a fake store gets no relay unless it asks, and its
    Router answers remote recipients with a temporary failure.

    @raise mailapp.tls.CertificateError: TLS is needed and the certificate
        cannot be loaded or made.
    @raise OSError: ``state_dir`` cannot be created.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    from mailapp.stateformat import check_state_format

    check_state_format(config.state_dir)

    context_factory: tls.ServerTLS | None = None
    if config.needs_tls:
        tls.ensure_certificate(config.tls, config.hostname)
        context_factory = tls.ServerTLS(config.tls)

    from mailapp.pools import WorkerPools

    pools = WorkerPools(reactor)
    if relay is None:
        relay = store is None
    if store is None:
        from mailapp.store import MaildirStore

        store = MaildirStore(
            config.state_dir / "mail", reactor=reactor, threadpool=pools.store, batch_sync=config.sync == "filesystem"
        )
    if accounts is None:
        from mailapp.accounts import Accounts

        accounts = Accounts(
            config.state_dir / "accounts.sqlite3",
            config.local_domains,
            reactor=reactor,
            threadpool=pools.accounts,
            auth_cache_seconds=config.security.auth_cache_seconds,
        )
    if portal is None:
        from mailapp.auth import makePortal

        portal = makePortal(accounts, store)

    from mailapp.abuse import AbuseGuard
    from mailapp.delivery import Router
    from mailapp.quota import Quotas

    quotas = Quotas.fromConfig(config, accounts, store)
    router = Router(accounts, store, max_recipients=config.limits.max_recipients, quotas=quotas)
    manager = _build_relay(config, reactor, router, pools.queue) if relay else None
    inflight = InFlight(reactor)
    context = ServiceContext(
        router=router,
        config=config,
        reactor=reactor,
        store=store,
        accounts=accounts,
        portal=portal,
        tls=context_factory,
        inflight=inflight,
        relay=manager,
        telemetry=LogPublisher(),
        guard=AbuseGuard.fromConfig(config, reactor),
        quotas=quotas,
        pools=pools,
    )
    root = MailService(config, reactor, accounts, inflight)
    root.store = store
    root.context = context
    root.tls = context_factory
    root.relay = manager
    for component in (store, accounts, manager):
        if IService.providedBy(component):
            component.setServiceParent(root)
    # Crash left-overs (spool files, the queue's temporary files), at start and every hour.
    sweepables = [part for part in (store, getattr(manager, "queue", None)) if hasattr(part, "sweep")]
    if sweepables:
        LeftoverSweeper(reactor, sweepables).setServiceParent(root)

    connection_counts = ConnectionCounts()
    refusal_log = RefusalLog(reactor)
    for listener in config.listeners:
        builder = PROTOCOL_BUILDERS.get(listener.protocol)
        if builder is None:
            log.warn(
                "listener {listener} skipped: the {protocol} protocol is not built yet ({endpoint} stays closed)",
                log_event=logevents.LISTENER_SKIPPED,
                listener=listener.name,
                protocol=listener.protocol,
                endpoint=listener.endpoint,
            )
            continue
        factory = builder(context, listener)
        # Our "listener ... listening on" line says it all; Twisted's own
        # "Starting factory <... at 0x...>" and "Stopping factory" would
        # repeat it for every listener.
        factory.noisy = False
        # The webmail's twisted.web Site keeps its SessionFactory beside it.
        sessions = factory if isinstance(factory, SessionFactory) else getattr(factory, "connections", None)
        if isinstance(sessions, SessionFactory):
            sessions.protocol_name, sessions.listener_name = listener.protocol, listener.name
            sessions.telemetry = context.telemetry
            # One count for the whole server: limits.max_connections (the
            # ceiling) and max_connections_per_ip hold across every listener;
            # each listener's own budget is counted by its factory.
            sessions.counts = connection_counts
            # One log of refused connections: one line per client a minute, whichever listener.
            sessions.refusals = refusal_log
        if listener.tls == "implicit":
            factory = TLSMemoryBIOFactory(context_factory, False, factory)
        endpoint = serverFromString(reactor, listener.endpoint)
        ListenerService(listener, endpoint, factory, root.listener_failed).setServiceParent(root)
    return root


def _build_relay(config: Config, reactor: Any, router: Any, threadpool: Any = None) -> Any:
    """
    The outbound queue and its manager, wired to ``router``: remote copies
    go into the queue, and DSNs come back through the router.
    """
    from twisted.internet.ssl import CertificateOptions, TLSVersion

    from mailapp.relay.manager import RelayManager, RetryPolicy, tcp_connector
    from mailapp.relay.queue import Queue
    from mailapp.relay.routing import MXResolver, Myself, Routes

    from mailapp.forwarding import Forwarding, ForwardingRate
    from mailapp.srs import SRS, load_secret

    relay = config.relay
    queue = Queue(config.state_dir / "queue", reactor, threadpool=threadpool, use_syncfs=config.sync == "filesystem")
    # Forwarding to other domains needs the relay; so do SRS and its bounces.
    router.forwarding = Forwarding(
        SRS(load_secret(config.state_dir)),
        reactor,
        ForwardingRate(reactor, burst=relay.forward_burst, per_hour=relay.forward_per_hour),
    )
    myself = Myself(
        config.hostname,
        [address for listener in config.listeners if listener.protocol == "smtp" and (address := listener.tcp_address)],
    )
    routes = Routes(relay.transports, relay.smarthost, MXResolver(_LazyResolver(reactor, relay.nameservers), myself=myself))
    auth = (relay.smarthost_username, relay.smarthost_password) if relay.smarthost_username is not None else None
    manager = RelayManager(
        queue,
        routes,
        tcp_connector(reactor, config.hostname, relay.command_timeout, relay.session_timeout, relay.connect_timeout),
        hostname=config.hostname,
        clock=reactor,
        router=router,
        policy=RetryPolicy(relay.retry_schedule, relay.max_lifetime, relay.delay_warning),
        # Opportunistic STARTTLS: encrypt whenever offered, without checking the
        # certificate (RFC 7435); most MX certificates would not verify anyway.
        tls=CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_2),
        require_tls=relay.require_tls,
        smarthost_auth=auth,
        smarthost_require_tls=relay.smarthost_require_tls,
        max_connections=relay.max_connections,
        max_connections_per_domain=relay.max_connections_per_domain,
        max_connections_per_address=relay.max_connections_per_address,
    )
    router.queue = queue
    return manager


class _LazyResolver:
    """
    A L{twisted.names} resolver made on first use (reading resolv.conf, or
    the configured ``[relay] nameservers``), so that building the service
    touches no DNS configuration.
    """

    def __init__(self, reactor: Any, nameservers: Any, resolv_conf: str = "/etc/resolv.conf", hosts_file: str = "/etc/hosts") -> None:
        self._reactor = reactor
        self._nameservers = tuple(nameservers)
        self._resolv_conf = resolv_conf
        self._hosts_file = hosts_file
        self._resolver: Any = None

    def close(self) -> None:
        """Cancel the resolver's periodic re-reading of resolv.conf (for tests: a running server keeps it till exit)."""
        for resolver in getattr(self._resolver, "resolvers", [self._resolver]):
            parse = getattr(resolver, "_parseCall", None)
            if parse is not None and parse.active():
                parse.cancel()

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("lookup"):
            raise AttributeError(name)
        if self._resolver is None:
            from twisted.names import client

            if self._nameservers:
                servers = [(hop.host, hop.port) for hop in self._nameservers]
                self._resolver = client.Resolver(servers=servers, reactor=self._reactor)
            else:
                self._resolver = system_resolver(self._reactor, self._resolv_conf, self._hosts_file)
        return getattr(self._resolver, name)


def system_resolver(reactor: Any, resolv_conf: str = "/etc/resolv.conf", hosts_file: str = "/etc/hosts") -> Any:
    """
    What L{twisted.names.client.createResolver} builds (``/etc/hosts``, a
    cache, then the name servers of ``resolv.conf``), but on C{reactor}:
    C{createResolver} takes no reactor argument, and calling it with one made
    every MX lookup of the default configuration fail with C{TypeError}.
    """
    from twisted.names import cache, client, hosts, resolve

    return resolve.ResolverChain(
        [
            hosts.Resolver(file=hosts_file.encode()),
            cache.CacheResolver(reactor=reactor),
            client.Resolver(resolv=resolv_conf, reactor=reactor),
        ]
    )


def format_address(address: IAddress | None) -> str:
    """``127.0.0.1:10025``, ``[::1]:10025`` or a socket path: how an operator writes it."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    if name is not None:
        return str(name)
    return str(address)


_register_builtin_protocols()
