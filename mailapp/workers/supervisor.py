"""
The parent side of ``[server] workers = N`` (N > 1): start N worker
processes over the listening sockets the parent bound, restart one that
dies (with back-off), pass ``SIGTERM`` and ``SIGHUP`` on, and carry what
must cross processes (see L{mailapp.workers.channel}).

The parent accepts no connection itself, but on the listeners only one
process may serve (L{mailapp.service.PARENTS_OWN}: the metrics, the
webmail). It owns what must have exactly one owner: the relay queue (its L{mailapp.relay.manager.RelayManager}
sends what any worker queued, told by a ``queued`` line) and the sweeps of
crash left-overs. It is also the hub of the change feed: a worker's
``changed`` line goes to every other worker, and the parent's own changes
(a DSN delivered by its relay) to every worker.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

import mailapp
from mailapp import logevents
from mailapp.config import Config
from mailapp.deadlines import cancel_call
from mailapp.listeners import ListenerService
from mailapp.records import FolderEvent
from mailapp.workers import channel
from mailapp.workers.configcopy import ConfigCopy

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "STEADY_SECONDS", "Supervisor"]

log = Logger()

#: Seconds before a dead worker's first restart, doubling at each death
#: within L{STEADY_SECONDS} of its start, up to L{BACKOFF_MAX}: a worker
#: that cannot start (a broken disk, a bad file) does not spin the CPU.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: A worker that ran this long died of something new: back to the first delay.
STEADY_SECONDS = 60.0
#: At the first start, how long the ready workers wait for the others
#: before accepting (a worker starts in about a second on an idle machine).
START_GRACE_SECONDS = 5.0


class _WorkerProcess(ProcessProtocol):
    """One worker process as the supervisor sees it: its lines in, its exit."""

    def __init__(self, supervisor: Supervisor, number: int, started: float) -> None:
        self.supervisor = supervisor
        self.number = number
        self.started = started
        #: Whether its service has started and handles SIGHUP (its C{ready} line).
        self.ready = False
        #: A reload came before it was ready: SIGHUP once it is.
        self.reload_pending = False
        self._out = channel.LineBuffer()
        self._err = channel.LineBuffer(64 * 1024)
        #: The process id, kept once the process is gone (for the log).
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            for line in self._out.feed(data):
                self.supervisor.received(self, line)
        elif childFD == 2:
            for line in self._err.feed(data):
                log.warn(
                    "worker {worker} stderr: {line}",
                    log_event=logevents.WORKER_STDERR,
                    worker=self.number,
                    line=line.decode("utf-8", "replace"),
                )

    def send(self, line: bytes) -> None:
        if self.transport is not None:
            self.transport.write(line)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except (ProcessExitedAlready, AttributeError, OSError):
            pass

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.ended(self, reason)


class Supervisor(Service):
    """
    The worker processes of the server (a child of the root service, named
    ``workers``). They start once every listener is bound, each given every
    listening socket; privileges were dropped by then, so they run as the
    parent does.

    @param listeners: the parent's listeners (bound, not accepting).
    @param queue: the relay queue whose subscribers (the relay manager) learn
        of the workers' entries; None without a relay.
    @param events: the parent store's event bus (its own changes go to the workers).
    @param telemetry: the parent's telemetry publisher, given the workers' per-command events.
    @param guard: the parent's L{mailapp.abuse.AbuseGuard}, sharing facts with the workers'.
    @param counts: the parent's L{mailapp.sessions.ConnectionCounts}, sharing connections with the workers'.
    @param drain_timeout: how long a stopping worker may take (its own drain, then its exit).
    """

    name = "workers"

    def __init__(
        self,
        reactor: Any,
        config_path: Path,
        count: int,
        listeners: list[ListenerService],
        queue: Any = None,
        events: Any = None,
        drain_timeout: float = 10.0,
        publish_log: Callable[[dict[str, Any]], None] = globalLogPublisher,
        telemetry: Callable[[dict[str, Any]], None] | None = None,
        guard: Any = None,
        counts: Any = None,
        config: Config | None = None,
        config_copy: ConfigCopy | None = None,
    ) -> None:
        self.reactor = reactor
        self.config_path = config_path
        #: The config the parent runs, and the copy of it the workers read (L{mailapp.workers.configcopy}).
        self.config = config
        self.config_copy = config_copy
        self.count = count
        self.listeners = listeners
        self.queue = queue
        self.events = events
        self.stop_timeout = drain_timeout + 10.0
        self.publish_log = publish_log
        #: The parent's telemetry publisher (its metrics listener observes it).
        self.telemetry = telemetry
        #: The parent's abuse guard (its webmail's sign-ins): it learns the workers' facts and tells them its own.
        self.guard = guard
        #: The parent's L{mailapp.sessions.ConnectionCounts}: its own connections and every worker's.
        self.counts = counts
        #: Live workers by number.
        self.workers: dict[int, _WorkerProcess] = {}
        self._failures: dict[int, int] = {}
        self._restarts: dict[int, Any] = {}
        self._sockets: list[tuple[str, int, int]] = []
        self._stopping = False
        self._stopped: Deferred[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        #: Fires once every worker has been started the first time (for tests and the announcement).
        self.whenStarted: Deferred[None] = Deferred()
        #: Pending while the first start waits for every worker to be ready
        #: before any accepts (at most L{START_GRACE_SECONDS}): L{_announceAccepting}.
        self._grace: Any = None
        #: Fires once every worker has said it serves (its C{ready} line) the
        #: first time: only then does the server answer on its listeners, which
        #: until then only queue connections in the kernel's backlog.
        self.whenReady: Deferred[None] = Deferred()
        self._never_ready: set[int] = set()

    # -- lifecycle ------------------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        self._stopping = False
        if self.events is not None:
            self._unsubscribe = self.events.subscribeAll(self._changedHere)
        if self.guard is not None:
            self.guard.share = self._abuseHere
        if self.counts is not None:
            self.counts.share = self._connectionHere
        bound: Deferred[Any] = defer.gatherResults([listener.whenListening() for listener in self.listeners])
        bound.addCallback(self._bound)
        bound.addErrback(lambda reason: log.failure("could not start the workers", reason))

    def _bound(self, ports: list[IListeningPort | None]) -> None:
        if not self.running or any(port is None for port in ports):
            return  # a listener failed: the root service is stopping the server
        self._sockets = []
        for listener, port in zip(self.listeners, ports):
            socket = port.socket  # type: ignore[union-attr]  # every stream port has its socket
            self._sockets.append((listener.listener.name, socket.fileno(), socket.family))
        if self.config_copy is not None and self.config is not None:
            self.config_copy.update(self.config)
        self._never_ready = set(range(1, self.count + 1))
        for number in range(1, self.count + 1):
            self._spawn(number)
        self._grace = self.reactor.callLater(START_GRACE_SECONDS, self._endGrace)
        self.whenStarted.callback(None)

    def _endGrace(self) -> None:
        """A worker is slow to start: the ready ones accept without it."""
        self._grace = None
        if any(worker.ready for worker in self.workers.values()):
            self._announceAccepting()

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        if self._stopping:
            return
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        sockets = []
        for index, (name, fd, family) in enumerate(self._sockets):
            child_fds[3 + index] = fd
            sockets.append([name, 3 + index, int(family)])
        if self.config_copy is not None and self.config_copy.made:
            config = ["--config", str(self.config_copy.path), "--config-name", str(self.config_path)]
        else:
            config = ["--config", str(self.config_path)]
        arguments = [
            sys.executable, "-m", "mailapp.workers.child",
            *config, "--number", str(number), "--sockets", json.dumps(sockets), "--parent", str(os.getpid()),
        ]  # fmt: skip
        worker = _WorkerProcess(self, number, self.reactor.seconds())
        self.reactor.spawnProcess(worker, sys.executable, arguments, env=_environment(), childFDs=child_fds)
        self.workers[number] = worker
        self._sendConnections(worker)
        log.info("worker {worker} started (pid {pid})", log_event=logevents.WORKER_STARTED, worker=number, pid=worker.pid)

    def ended(self, worker: _WorkerProcess, reason: Failure) -> None:
        """A worker process ended: restart it (after its back-off) unless the server is stopping."""
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        if self.counts is not None:
            # Its connections died with it.
            self.counts.forget(str(worker.number))
            line = channel.encode(channel.CONNECTIONS, origin=str(worker.number), forget=True)
            for other in list(self.workers.values()):
                other.send(line)
        if worker.ready:
            self._announceAccepting()
        ran = self.reactor.seconds() - worker.started
        status = getattr(reason.value, "exitCode", None)
        if status is None:
            status = f"signal {getattr(reason.value, 'signal', '?')}"
        delay: float | None = None
        if not self._stopping:
            failures = 1 if ran >= STEADY_SECONDS else self._failures.get(worker.number, 0) + 1
            self._failures[worker.number] = failures
            delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
            self._restarts[worker.number] = self.reactor.callLater(delay, self._spawn, worker.number)
        log.info(
            "worker {worker} (pid {pid}) ended ({status}) after {ran_seconds:.1f} s; restart in {restart_in} s",
            log_event=logevents.WORKER_ENDED,
            worker=worker.number,
            pid=worker.pid,
            status=status,
            ran_seconds=ran,
            restart_in=delay,
        )
        if self._stopping and not self.workers and self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    def reload(self, config: Config | None = None) -> None:
        """
        The parent now runs C{config}: it becomes the workers' copy, and every
        worker re-reads it (``SIGHUP``); a worker still starting gets its
        SIGHUP once it is ready, since before that the signal would kill it.
        """
        if config is not None:
            self.config = config
            if self.config_copy is not None:
                self.config_copy.update(config)
        for worker in list(self.workers.values()):
            if worker.ready:
                worker.signal("HUP")
            else:
                worker.reload_pending = True

    def stopService(self) -> Deferred[None]:
        """
        ``SIGTERM`` to every worker, which stops as a single-process server
        does (stop accepting, finish its sessions' work, bounded); ``SIGKILL``
        to any still there after L{stop_timeout}.
        """
        self._grace = cancel_call(self._grace)
        Service.stopService(self)
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.guard is not None:
            self.guard.share = None
        if self.counts is not None:
            self.counts.share = None
        for timer in self._restarts.values():
            if timer.active():
                timer.cancel()
        self._restarts.clear()
        if not self.workers:
            return defer.succeed(None)
        self._stopped = Deferred()
        for worker in list(self.workers.values()):
            worker.signal("TERM")
        killer = self.reactor.callLater(self.stop_timeout, self._kill)

        def done(result: None) -> None:
            if killer.active():
                killer.cancel()

        self._stopped.addCallback(done)
        return self._stopped

    def _kill(self) -> None:
        for worker in list(self.workers.values()):
            worker.signal("KILL")

    # -- what crosses processes ----------------------------------------------------------

    def received(self, worker: _WorkerProcess, line: bytes) -> None:
        message = channel.decode(line)
        if message is None:
            return
        kind = message["kind"]
        if kind == channel.LOG:
            self._log(worker, message.get("event"))
        elif kind == channel.READY:
            worker.ready = True
            if worker.number in self._never_ready:
                self._never_ready.discard(worker.number)
                if not self._never_ready and not self.whenReady.called:
                    self.whenReady.callback(None)
            self._announceAccepting()
            if worker.reload_pending:
                worker.reload_pending = False
                worker.signal("HUP")
        elif kind == channel.QUEUED:
            entry_id = message.get("id")
            if self.queue is not None and isinstance(entry_id, str):
                self.queue.publishedElsewhere(entry_id).addErrback(
                    lambda reason: log.failure("could not take over queue entry {queue_id}", reason, queue_id=entry_id)
                )
        elif kind == channel.TELEMETRY:
            event = message.get("event")
            if self.telemetry is not None and isinstance(event, dict):
                self.telemetry({**event, "worker": worker.number})
        elif kind == channel.CONNECTIONS:
            client, delta = message.get("client"), message.get("delta")
            if self.counts is not None and isinstance(client, str) and delta in (1, -1):
                origin = str(worker.number)
                self.counts.learn(origin, client, delta)
                line = channel.encode(channel.CONNECTIONS, client=client, delta=delta, origin=origin)
                for other in list(self.workers.values()):
                    if other is not worker:
                        other.send(line)
        elif kind in channel.FANNED_OUT:
            for other in list(self.workers.values()):
                if other is not worker:
                    other.send(line + b"\n")
            if kind == channel.ABUSE and self.guard is not None:
                fact, fields = message.get("fact"), message.get("fields")
                if isinstance(fact, str) and isinstance(fields, dict):
                    self.guard.learn(fact, fields)

    def _log(self, worker: _WorkerProcess, text: Any) -> None:
        if not isinstance(text, str):
            return
        try:
            event = eventFromJSON(text)
        except ValueError:
            return
        # The worker goes in a field of its own, never in the system: a text
        # line must read as one process's does (``[mailapp.abuse#info] auth
        # failed ...``), or the fail2ban filter an operator copied, and any
        # other reader of the log, stops matching the day workers start.
        event["worker"] = worker.number
        self.publish_log(event)

    def _announceAccepting(self) -> None:
        """
        Tell every worker which workers are ready (accepting), after that
        changed. At the first start, not before every worker is ready: the
        first one ready would otherwise take every connection that waited
        for the server (clients reconnecting after a restart), and
        long-lived ones stay where they land. A worker accepts only once it
        is told it is among them (L{mailapp.workers.accepting}).
        """
        if self._grace is not None:
            if self._never_ready:
                return
            self._grace = cancel_call(self._grace)
        line = channel.encode(channel.ACCEPTING, workers=sorted(n for n, w in self.workers.items() if w.ready))
        for worker in list(self.workers.values()):
            worker.send(line)

    def _connectionHere(self, client: str, delta: int) -> None:
        line = channel.encode(channel.CONNECTIONS, client=client, delta=delta, origin="parent")
        for worker in list(self.workers.values()):
            worker.send(line)

    def _sendConnections(self, worker: _WorkerProcess) -> None:
        """A new worker starts with what the parent knows: every other process's open connections."""
        if self.counts is None:
            return
        views = {origin: dict(table) for origin, table in self.counts.elsewhere.items() if origin != str(worker.number)}
        own = dict(self.counts.perIP)
        for table in self.counts.elsewhere.values():
            for client, count in table.items():
                own[client] = own.get(client, 0) - count
        views["parent"] = {client: count for client, count in own.items() if count > 0}
        for origin, table in views.items():
            for client, count in table.items():
                line = channel.encode(channel.CONNECTIONS, client=client, delta=1, origin=origin)
                worker.send(line * count)

    def _abuseHere(self, fact: str, fields: dict[str, Any]) -> None:
        line = channel.encode(channel.ABUSE, fact=fact, fields=fields)
        for worker in list(self.workers.values()):
            worker.send(line)

    def _changedHere(self, event: FolderEvent) -> None:
        line = channel.encode(channel.CHANGED, event=channel.event_to_fields(event))
        for worker in list(self.workers.values()):
            worker.send(line)


def _environment() -> dict[str, str]:
    """The parent's environment, with this mailapp importable whatever way the parent found it."""
    environment = dict(os.environ)
    here = str(Path(mailapp.__file__).resolve().parent.parent)
    environment["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [environment.get("PYTHONPATH")])])
    return environment
