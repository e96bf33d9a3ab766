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

What the builders are given is in :mod:`mailapp.context`, the listeners in
:mod:`mailapp.listeners`, the in-flight tracker in :mod:`mailapp.inflight`
and the relay's resolver in :mod:`mailapp.relay.resolver`; their names are
importable from here as well.
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import IService, MultiService, Service
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogPublisher
from twisted.python.failure import Failure

from mailapp import logevents, tls
from mailapp.config import Config, ListenerConfig
from mailapp.context import IServiceReactor, ProtocolBuilder, ServiceContext
from mailapp.dnsthread import ServiceDNS
from mailapp.inflight import InFlight
from mailapp.interfaces import IAccounts, IMessageStore
from mailapp.leftovers import LeftoverSweeper
from mailapp.listeners import ListenerService, describe_listen_failure, format_address, listen
from mailapp.relay.resolver import LazyResolver, system_resolver
from mailapp.sessions import ConnectionCounts, RefusalLog

if TYPE_CHECKING:
    from twisted.python.threadpool import ThreadPool

    from mailapp.authentication.sealing import ForwardSealer
    from mailapp.delivery import Router
    from mailapp.pools import WorkerPools
    from mailapp.reload import ReloadResult
    from mailapp.relay.manager import RelayManager
    from mailapp.workers.child import WorkerRole
    from mailapp.workers.supervisor import Supervisor

__all__ = [
    "DRAIN_TIMEOUT_SECONDS",
    "PROTOCOL_BUILDERS",
    "InFlight",
    "ListenerService",
    "MailService",
    "ProtocolBuilder",
    "ServiceContext",
    "admin_command",
    "describe_listen_failure",
    "format_address",
    "makeService",
    "register_protocol",
    "system_resolver",
]

log = Logger()

#: How long a stopping server waits for in-flight work before giving up.
DRAIN_TIMEOUT_SECONDS = 10.0

#: The relay's resolver under its older, private name (tests and the rig's clients use it).
_LazyResolver = LazyResolver

#: Listeners the parent of worker processes serves itself, handing them to
#: no worker: the metrics (counted from every worker's log and telemetry)
#: and the webmail (whose sessions live in one process's memory).
PARENTS_OWN = frozenset({"metrics", "webmail"})

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
    """
    The protocols mailapp ships, one line each. Each protocol's module is
    imported the first time a listener of it is built, not here: the
    supervising parent of C{[server] workers} builds none of the workers'
    (L{_served_by_workers}) and a worker none of the parent's
    (L{PARENTS_OWN}: klein, werkzeug, the pages), so neither pays at its
    start for imports it never uses, and every restart waits for a start.
    """
    register_protocol("smtp", _imported_when_built("mailapp.smtp"))
    register_protocol("submission", _imported_when_built("mailapp.smtp"))
    register_protocol("lmtp", _imported_when_built("mailapp.smtp", "buildLMTPFactory"))
    register_protocol("pop3", _imported_when_built("mailapp.pop3"))
    register_protocol("managesieve", _imported_when_built("mailapp.managesieve"))
    register_protocol("imap", _imported_when_built("mailapp.imap.server"))
    register_protocol("webmail", _imported_when_built("mailapp.web"))
    register_protocol("metrics", _imported_when_built("mailapp.metrics"))


def _imported_when_built(module: str, name: str = "buildFactory") -> ProtocolBuilder:
    """The builder C{name} of C{module}, imported the first time a listener of it is built."""

    def build(context: ServiceContext, listener: ListenerConfig) -> Any:
        builder: ProtocolBuilder = getattr(importlib.import_module(module), name)
        return builder(context, listener)

    return build


def _served_by_workers(context: ServiceContext, listener: ListenerConfig) -> Factory:
    """
    The supervising parent's factory on a listener its workers serve: the
    parent binds the socket and hands it over but never accepts on it
    (L{mailapp.listeners.ListenerService} with C{accepting} false), so it
    needs no session of the protocol, and no import of it.
    """
    return Factory.forProtocol(Protocol)


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
    services) and one :class:`ListenerService` per built listener; it keeps
    the L{ServiceContext} they were built from, which a reload replaces.
    """

    def __init__(self, context: ServiceContext, drain_timeout: float = DRAIN_TIMEOUT_SECONDS) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's services are untyped
        #: What the listeners were built from; a reload swaps in one with the new config.
        self.context = context
        self.config = context.config
        self.inflight = context.inflight
        self.drain_timeout = drain_timeout
        self._reactor = context.reactor
        self._accounts = context.accounts
        #: The message store; cleaned of stale spool files at start.
        self.store = context.store
        #: The TLS holder (None without a TLS listener) and the relay manager (None without a relay).
        self.tls = context.tls
        self.relay = context.relay
        self._previous_sighup: Any = None
        #: Non-zero once the server has to stop because it cannot run as configured.
        self.exit_status = 0
        #: The worker processes' supervisor, in the parent of C{[server] workers} > 1.
        self.supervisor: Supervisor | None = None
        #: The file a reload re-reads: C{config.path}, except in a worker,
        #: which reads the parent's copy of the config the parent runs
        #: (L{mailapp.workers.configcopy}), never a file being edited.
        self.config_file: Path = self.config.path

    def reload(self) -> ReloadResult:
        """
        Re-read the config file and apply what can change live (see
        :mod:`mailapp.reload`); a bad file is logged and changes nothing.
        What ``SIGHUP`` does.
        """
        from mailapp.reload import reload_service

        result = reload_service(self)
        if self.supervisor is not None and result.ok:
            # Each worker re-reads the parent's copy of what it now runs; a
            # bad file changed nothing here, so the workers keep theirs.
            self.supervisor.reload(self.config)
        return result

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
        super().startService()  # type: ignore[no-untyped-call]
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
            stopped.addCallback(_stop, child)
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


def _stop(_: object, child: IService) -> Deferred[Any]:
    return maybeDeferred(child.stopService)


def makeService(
    config: Config,
    reactor: IServiceReactor | None = None,
    store: IMessageStore | None = None,
    accounts: IAccounts | None = None,
    portal: Portal | None = None,
    relay: bool | None = None,
    worker: WorkerRole | None = None,
) -> MailService:
    """
    Build the whole server from ``config``; nothing listens until the
    returned service starts.

    With C{config.workers} above 1 this is the supervising parent
    (L{mailapp.workers}): its listeners bind but never accept, and a
    L{mailapp.workers.supervisor.Supervisor} starts the workers. C{worker}
    makes one of those: its listeners adopt the parent's sockets, and its
    relay queue is written here but sent by the parent.

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

        # The module stands for whichever reactor is installed.
        reactor = cast(IServiceReactor, global_reactor)
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
        from mailapp.imap.structurecache import CODEC
        from mailapp.store.maildir import MaildirStore
        from mailapp.store.structures import register_codec

        # The index rebuild computes IMAP's cached structures as it reads each file;
        # the store itself never imports a protocol.
        register_codec(CODEC)
        store = MaildirStore(
            config.state_dir / "mail",
            reactor=reactor,
            threadpool=pools.store,
            batch_sync=config.sync == "filesystem",
            fulltext_pool=pools.fulltext,
            writer_pool=pools.writer,
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
    from mailapp.pop3.maildrop import MaildropLocks
    from mailapp.quota import Quotas

    quotas = Quotas.fromConfig(config, accounts, store)
    router = Router(accounts, store, max_recipients=config.limits.max_recipients, quotas=quotas)
    router.hostname = config.hostname
    router.sieve = _build_sieve(config, reactor, pools)
    from mailapp.dkim import DkimSigner, KeyStore
    from mailapp.dkim.process import SigningProcess

    # Built even when dkim.sign is off, so that a reload can turn it on; its
    # process starts only when a first message needs a signature.
    signer = DkimSigner(
        KeyStore(config.state_dir),
        reactor,
        pools.signing,
        enabled=config.dkim.sign,
        process=SigningProcess(reactor, config.state_dir) if config.dkim.signing_process else None,
    )
    router.signer = signer
    # DNS for blocking libraries (the MX's SPF, DKIM and DMARC; dns.dnsfunc()
    # for DKIM and ARC code): the name servers the relay asks.
    dns = ServiceDNS(reactor, LazyResolver(reactor, config.relay.nameservers), config.authentication.dns_query_timeout)
    manager = (
        _build_relay(config, reactor, router, pools.queue, sealing_pool=pools.filtering, dns=dns, deliver=worker is None)
        if relay
        else None
    )
    from mailapp.postscreen.greylist import Greylist

    # Built even when greylisting is off (it opens no file until used), so that a reload can turn it on.
    greylist = Greylist(config.state_dir / "greylist.sqlite3", reactor, pools, pools.greylist)
    from mailapp.spam import ContentScanner, JunkLearner
    from mailapp.spam.client import RspamdClient

    # Built even when [spam] is off, so that a reload can turn scanning and learning on.
    rspamd = RspamdClient(reactor)
    context = ServiceContext(
        config=config,
        reactor=reactor,
        store=store,
        accounts=accounts,
        portal=portal,
        tls=context_factory,
        inflight=InFlight(reactor),
        router=router,
        guard=AbuseGuard.fromConfig(config, reactor),
        quotas=quotas,
        telemetry=LogPublisher(),
        pools=pools,
        # Worker processes keep each other off a maildrop with lock files.
        maildrops=MaildropLocks(_lock_directory(config.state_dir / "pop3-locks") if config.workers > 1 else None),
        relay=manager,
        dns=dns,
        greylist=greylist,
        scanner=ContentScanner(rspamd),
    )
    root = MailService(context)
    JunkLearner(store, rspamd, config.spam).setServiceParent(root)  # type: ignore[no-untyped-call]
    for component in (store, accounts, signer, manager, router.sieve.presence):
        if IService.providedBy(component):
            IService(component).setServiceParent(root)
    # Crash left-overs (spool files, the queue's temporary files), at start and every hour.
    # And the greylist's old triplets.
    # A worker sweeps only its store (the expunged messages it holds); the parent the rest.
    shared = (manager.queue if manager is not None else None, greylist) if worker is None else ()
    sweepables = [part for part in (store, *shared) if hasattr(part, "sweep")]
    if sweepables:
        LeftoverSweeper(reactor, sweepables).setServiceParent(root)  # type: ignore[no-untyped-call]

    supervising = worker is None and config.workers > 1
    counts = ConnectionCounts()
    if config.workers > 1:
        # Logins in progress per address, and the aliases' forwards, across the processes.
        context.guard.attemptCounts = counts
        if router.forwarding is not None:
            context.guard.shareForwardingRate(router.forwarding.rate)
    refusals = RefusalLog(reactor)
    listeners: list[ListenerService] = []
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
        # The metrics and webmail listeners are the parent's own (PARENTS_OWN).
        parents_own = listener.protocol in PARENTS_OWN
        if worker is not None and parents_own:
            continue
        endpoint = worker.endpoint(reactor, listener.name) if worker is not None else None
        accepting = not supervising or parents_own
        if not accepting:
            builder = _served_by_workers
        listening = listen(context, listener, builder, counts, refusals, root.listener_failed, endpoint, accepting=accepting)
        listening.setServiceParent(root)  # type: ignore[no-untyped-call]
        postscreen = getattr(listening.factory, "postscreen", None)
        if worker is not None and postscreen is not None:
            worker.link.attachPasses(listener.name, postscreen.passes)
        if not parents_own:
            listeners.append(listening)
    if worker is not None and worker.config_file is not None:
        root.config_file = worker.config_file
    if worker is not None:
        metrics = any(listener.protocol == "metrics" for listener in config.listeners)
        worker.link.attach(getattr(store, "events", None), router.queue, context.guard, context.telemetry if metrics else None, counts)
    if supervising:
        from mailapp.workers.configcopy import ConfigCopy
        from mailapp.workers.supervisor import Supervisor

        # The last child: the first the root stops after its listeners, so
        # the workers drain while the parent's store and relay still run.
        root.supervisor = Supervisor(
            reactor,
            config.path.absolute(),
            config.workers,
            listeners,
            queue=manager.queue if manager is not None else None,
            events=getattr(store, "events", None),
            drain_timeout=root.drain_timeout,
            telemetry=context.telemetry,
            guard=context.guard,
            counts=counts,
            config=config,
            config_copy=ConfigCopy(config.state_dir / "workers-config.toml"),
        )
        root.supervisor.setServiceParent(root)  # type: ignore[no-untyped-call]
    return root


def _lock_directory(path: Path) -> Path:
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _forward_sealer(config: Config, reactor: IServiceReactor, threadpool: ThreadPool | None, dns: ServiceDNS) -> ForwardSealer:
    """
    ARC sealing of forwarded copies with the alias domain's DKIM key
    (``mailapp dkim keygen``: its active selector's rsa-sha256 key; a domain
    without one forwards unsealed), our hostname as the authserv-id, key
    lookups through the server's DNS for blocking libraries.
    """
    from mailapp.authentication import sealing
    from mailapp.authentication.arcseal import ARCSealer, DkimKeys
    from mailapp.dkim import KeyStore

    keys = DkimKeys(KeyStore(config.state_dir))
    return sealing.ForwardSealer(ARCSealer(reactor, threadpool, keys, config.hostname, dns.txt))


def _build_relay(
    config: Config,
    reactor: IServiceReactor,
    router: Router,
    threadpool: ThreadPool | None = None,
    sealing_pool: ThreadPool | None = None,
    dns: ServiceDNS | None = None,
    deliver: bool = True,
) -> RelayManager | None:
    """
    The outbound queue and its manager, wired to ``router``: remote copies
    go into the queue, and DSNs come back through the router. Forwarded
    copies are ARC-sealed on C{sealing_pool} (a sender controls their cost).
    Without C{deliver} (a worker process) only the queue, which the parent's
    manager sends.
    """
    from mailapp.relay.manager import RelayManager, RetryPolicy, tcp_connector
    from mailapp.relay.queue import Queue
    from mailapp.relay.routing import MXResolver, Myself, Routes
    from mailapp.relay.tlspolicy import build_tls_policies

    from mailapp.forwarding import Forwarding, ForwardingRate
    from mailapp.srs import SRS, load_secret

    relay = config.relay
    queue = Queue(config.state_dir / "queue", reactor, threadpool=threadpool, use_syncfs=config.sync == "filesystem")
    # Forwarding to other domains needs the relay; so do SRS and its bounces.
    router.forwarding = Forwarding(
        SRS(load_secret(config.state_dir)),
        reactor,
        ForwardingRate(reactor, burst=relay.forward_burst, per_hour=relay.forward_per_hour),
        sealer=_forward_sealer(
            config, reactor, sealing_pool or threadpool, dns or ServiceDNS(reactor, LazyResolver(reactor, relay.nameservers))
        ),
    )
    if not deliver:
        router.queue = queue
        return None
    myself = Myself(
        config.hostname,
        [address for listener in config.listeners if listener.protocol == "smtp" and (address := listener.tcp_address)],
    )
    resolver = LazyResolver(reactor, relay.nameservers)
    routes = Routes(relay.transports, relay.smarthost, MXResolver(resolver, myself=myself))
    # The config reader lets neither come without the other.
    username, password = relay.smarthost_username, relay.smarthost_password
    auth = (username, password) if username is not None and password is not None else None
    tls_policies = build_tls_policies(relay, config.state_dir, reactor, resolver, routes, queue.run)
    manager = RelayManager(
        queue,
        routes,
        tcp_connector(reactor, config.hostname, relay.command_timeout, relay.session_timeout, relay.connect_timeout),
        hostname=config.hostname,
        clock=reactor,
        router=router,
        policy=RetryPolicy(relay.retry_schedule, relay.max_lifetime, relay.delay_warning),
        tls_policies=tls_policies,
        tls_reports=_tls_reports(config, reactor, router, resolver, routes, queue.run, tls_policies),
        require_tls=relay.require_tls,
        smarthost_auth=auth,
        smarthost_require_tls=relay.smarthost_require_tls,
        max_connections=relay.max_connections,
        max_connections_per_domain=relay.max_connections_per_domain,
        max_connections_per_address=relay.max_connections_per_address,
        connection_cache_time=relay.connection_cache_time,
        connection_reuse_time=relay.connection_reuse_time,
    )
    router.queue = queue
    return manager


def _tls_reports(config: Config, reactor: IServiceReactor, router: Router, resolver: Any, routes: Any, run: Any, tls_policies: Any) -> Any:
    """The TLS-RPT report files, and their sending through C{router} and the relay's resolver and trust root."""
    from mailapp.relay.tlsrpt import TLSReports
    from mailapp.relay.tlsrptsend import ReportSender, https_agent, sender_settings

    reports = TLSReports(config.state_dir / "tls-rpt", reactor, run)
    if routes.mx is not None:
        agent = https_agent(reactor, routes.mx.addresses, tls_policies.trust)
        reports.sender = ReportSender(
            reactor, resolver, router, run, config.state_dir / "tls-rpt" / "reports", agent, **sender_settings(config)
        )
    return reports


def _build_sieve(config: Config, reactor: Any, pools: WorkerPools) -> Any:
    """Users' Sieve scripts under C{state_dir/sieve}, run at local delivery on the filtering pool (a sender controls what they read)."""
    from mailapp.sieve import SieveLimits
    from mailapp.sieve.filter import SieveFilter
    from mailapp.sieve.scripts import ScriptStore, sieve_directory

    limits = config.limits
    scripts = ScriptStore(sieve_directory(config.state_dir), limits.sieve_max_scripts, limits.sieve_max_script_size)
    filtering = lambda function, *args: pools.run(pools.filtering, function, *args)  # noqa: E731
    return SieveFilter(
        scripts,
        filtering,
        reactor,
        SieveLimits(max_steps=limits.sieve_max_steps, max_redirects=limits.sieve_max_redirects),
        max_vacation_per_day=limits.sieve_max_vacation_replies_per_day,
        presence=_script_presence(scripts, reactor, filtering),
    )


def _script_presence(scripts: Any, reactor: Any, run_blocking: Any) -> Any:
    """
    What lets a delivery whose recipients have no script skip the filtering
    pool (L{mailapp.sieve.presence}): Linux's inotify only, read by a reactor
    that watches file descriptors and takes results back from threads (not a
    test's memory reactor).
    """
    from twisted.internet.interfaces import IReactorFDSet, IReactorThreads

    if not (IReactorFDSet.providedBy(reactor) and IReactorThreads.providedBy(reactor)):
        return None
    try:
        from twisted.internet import inotify  # noqa: F401
    except ImportError:
        return None
    from mailapp.sieve.presence import ScriptPresence

    return ScriptPresence(scripts, reactor, run_blocking)


_register_builtin_protocols()
