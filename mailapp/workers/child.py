"""
One worker process of ``[server] workers = N``: ``python -m
mailapp.workers.child``, started only by L{mailapp.workers.supervisor}.

It builds the same service as a single-process server
(L{mailapp.service.makeService} with a L{WorkerRole}) over the same config
file, except that each listener adopts the socket the parent bound (as
``reactor.adoptStreamPort`` does, taking turns with the other workers:
L{mailapp.workers.accepting}) instead of binding, the relay queue is written but never
sent from here, and its log events, queued entries and folder changes go up
to the parent over stdout
(L{mailapp.workers.channel}). It stops on ``SIGTERM`` as the single
process does, and dies with its parent (L{mailapp.workers.parentdeath}:
killed by the kernel on Linux; elsewhere it stops when stdin closes), so
that a killed parent leaves no worker behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, cast

from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import ILogObserver, Logger, eventAsJSON, globalLogBeginner
from twisted.python.failure import Failure

from mailapp.records import FolderEvent
from mailapp.workers import channel
from mailapp.workers.accepting import Gate, SharedEndpoint, Turns
from mailapp.workers.parentdeath import die_with_parent

__all__ = ["ParentLink", "WorkerRole", "main"]

log = Logger()


class ParentLink(Protocol):
    """
    The worker's end of the channel, on its stdin and stdout: what this
    process did goes up, what the others did comes down to this store's
    event bus (L{mailapp.store.events.EventBus.wake}).
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._lines = channel.LineBuffer()
        self._events: Any = None
        self._guard: Any = None
        self._counts: Any = None
        self._passes: dict[str, Any] = {}
        self._writer: Any = None
        #: The workers ready now, as the parent last said (L{channel.ACCEPTING}).
        self.accepting: frozenset[int] = frozenset()
        #: Called after each such message (the listening ports: L{mailapp.workers.accepting.Gate}).
        self.onAccepting: list[Callable[[], None]] = []

    def connectionMade(self) -> None:
        # Kept for flush(): StandardIO forgets its writer when the reactor
        # stops, with the last log lines still in its buffer.
        self._writer = getattr(self.transport, "_writer", None)

    def counts(self) -> Any:
        """The process's open connections as attached (L{mailapp.sessions.ConnectionCounts}; None before)."""
        return self._counts

    def attach(self, events: Any, queue: Any, guard: Any = None, telemetry: Any = None, counts: Any = None) -> None:
        """
        Send this process's folder changes, queued entries (C{queue}: None
        without a relay), abuse facts (C{guard}, an
        L{mailapp.abuse.AbuseGuard}), open connections (C{counts}, the
        server's L{mailapp.sessions.ConnectionCounts}) and, when given, its
        C{telemetry} publisher's events up; learn the others' changes,
        facts and connections.
        """
        self._counts = counts
        if counts is not None:
            counts.share = lambda client, delta: self._send(channel.encode(channel.CONNECTIONS, client=client, delta=delta))
        if telemetry is not None:
            telemetry.addObserver(lambda event: self._send(channel.encode(channel.TELEMETRY, event=channel.plain_fields(event))))
        self._events = events
        self._guard = guard
        if guard is not None:
            guard.share = lambda fact, fields: self._send(channel.encode(channel.ABUSE, fact=fact, fields=fields))
        if events is not None:
            events.subscribeAll(self._changedHere)
        if queue is not None:
            queue.subscribe(lambda envelope: self._send(channel.encode(channel.QUEUED, id=envelope.id)))

    def attachPasses(self, listener: str, passes: Any) -> None:
        """Share MX listener C{listener}'s early-talker passes (a L{mailapp.postscreen.earlytalk.PassMemory}) both ways."""
        self._passes[listener] = passes
        passes.share = lambda ip, seconds: self._send(channel.encode(channel.PASSED, listener=listener, ip=ip, seconds=seconds))

    def _send(self, line: bytes) -> None:
        if self.transport is not None:
            self.transport.write(line)

    def ready(self) -> None:
        """The service has started and handles SIGHUP: the parent may pass reloads on."""
        self._send(channel.encode(channel.READY))

    def logObserver(self, event: dict[str, Any]) -> None:
        """The worker's log: each event up to the parent, which writes the one server log."""
        try:
            text = eventAsJSON(event)
        except Exception:  # an event that cannot be written must not break the code that logged it
            return
        self._send(channel.encode(channel.LOG, event=text))

    def _changedHere(self, event: FolderEvent) -> None:
        self._send(channel.encode(channel.CHANGED, event=channel.event_to_fields(event)))

    def dataReceived(self, data: bytes) -> None:
        for line in self._lines.feed(data):
            message = channel.decode(line)
            if message is None:
                continue
            if message["kind"] == channel.CHANGED and self._events is not None:
                event = channel.event_from_fields(message.get("event"))
                if event is not None:
                    self._events.wake(event)
            elif message["kind"] == channel.CONNECTIONS and self._counts is not None:
                _learn_connections(self._counts, message)
            elif message["kind"] == channel.ACCEPTING:
                numbers = message.get("workers")
                if isinstance(numbers, list) and all(isinstance(n, int) for n in numbers):
                    self.accepting = frozenset(numbers)
                    if self._counts is not None:
                        self._counts.serving = max(1, len(self.accepting))
                    for told in list(self.onAccepting):
                        told()
            elif message["kind"] == channel.PASSED:
                passes, ip, seconds = self._passes.get(str(message.get("listener"))), message.get("ip"), message.get("seconds")
                if passes is not None and isinstance(ip, str) and isinstance(seconds, (int, float)):
                    passes.learn(ip, float(seconds))
            elif message["kind"] == channel.ABUSE and self._guard is not None:
                fact, fields = message.get("fact"), message.get("fields")
                if isinstance(fact, str) and isinstance(fields, dict):
                    self._guard.learn(fact, fields)

    def flush(self) -> None:
        """
        After the reactor stopped: write what is still buffered (the last
        log lines, "mailapp stopped" among them) before the process exits,
        waiting at most a second for a parent that does not read.
        """
        writer = self._writer
        if writer is None:
            return
        pending = b"".join([writer.dataBuffer[writer.offset :], *writer._tempDataBuffer])
        deadline = time.monotonic() + 1.0
        while pending and time.monotonic() < deadline:
            try:
                written = os.write(1, pending)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            except OSError:
                return
            pending = pending[written:]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # The parent is gone (or closed our stdin): stop as SIGTERM would.
        if self.reactor.running:
            self.reactor.stop()


def _learn_connections(counts: Any, message: dict[str, Any]) -> None:
    origin, client, delta = message.get("origin"), message.get("client"), message.get("delta")
    if not isinstance(origin, str):
        return
    if message.get("forget") is True:
        counts.forget(origin)
    elif isinstance(client, str) and delta in (1, -1):
        counts.learn(origin, client, delta)


class WorkerRole:
    """What makes a worker's service differ from a single process's (L{mailapp.service.makeService})."""

    def __init__(self, number: int, sockets: dict[str, tuple[int, int]], link: ParentLink, config_file: Path | None = None) -> None:
        self.number = number
        #: Listener name -> (file descriptor, address family), as the parent passed them.
        self.sockets = sockets
        self.link = link
        #: The listening ports wait for the parent's word that this worker may accept.
        self.gate = Gate(lambda: number in link.accepting)
        link.onAccepting.append(self.gate.check)
        #: The parent's copy of the config it runs (L{mailapp.workers.configcopy}),
        #: which this worker reads at start and at every reload; None: C{Config.path} itself.
        self.config_file = config_file

    def endpoint(self, reactor: Any, listener: str) -> IStreamServerEndpoint:
        fd, family = self.sockets[listener]
        return SharedEndpoint(reactor, fd, family, Turns(self.number, lambda: self.link.accepting, self.link.counts), self.gate)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A mailapp worker process (started by the server, not by hand).")
    parser.add_argument("--config", required=True, help="the parent's copy of the config it runs")
    parser.add_argument("--config-name", help="the config file the operator edits (in messages, and Config.path)")
    parser.add_argument("--number", type=int, required=True)
    parser.add_argument("--sockets", required=True, help="JSON: [[listener name, fd, address family], ...]")
    parser.add_argument("--parent", type=int, help="the supervisor's process id: this worker dies with it")
    arguments = parser.parse_args(argv)
    if arguments.parent is not None:
        die_with_parent(arguments.parent)
    # A SIGHUP passed on while this worker starts (a certbot hook, an operator
    # right after a restart) must not kill it with the default action before
    # the service installs its handler: remember it, and reload once running.
    early_sighups: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: early_sighups.append(signum))

    from twisted.internet import reactor, stdio

    from mailapp.config import ConfigError, load
    from mailapp.service import makeService

    link = ParentLink(reactor)
    stdio.StandardIO(link)
    globalLogBeginner.beginLoggingTo([cast(ILogObserver, link.logObserver)], redirectStandardIO=False)
    sockets = {name: (int(fd), int(family)) for name, fd, family in json.loads(arguments.sockets)}
    try:
        copy = Path(arguments.config)
        config = load(copy)
        if arguments.config_name:
            config = dataclasses.replace(config, path=Path(arguments.config_name))
        service = makeService(config, worker=WorkerRole(arguments.number, sockets, link, config_file=copy))
    except ConfigError as error:
        sys.stderr.write(f"{error}\n")
        raise SystemExit(1) from None
    except Exception:
        # On stderr, which the parent logs line by line: the log channel
        # only flushes once the reactor runs, and it never will.
        traceback.print_exc()
        raise SystemExit(1) from None
    service.privilegedStartService()  # type: ignore[no-untyped-call]  # Twisted's services are untyped
    service.startService()
    if early_sighups:
        # The parent's copy may have changed after this worker read it.
        reactor.callWhenRunning(service.reload)
    reactor.callWhenRunning(link.ready)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    link.flush()
    sys.exit(getattr(service, "exit_status", 0))


if __name__ == "__main__":
    main()
