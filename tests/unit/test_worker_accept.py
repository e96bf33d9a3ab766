"""
How a worker accepts on the listening socket every worker shares
(L{mailapp.workers.accepting}): one connection each time the socket is
readable, and first a short step aside when it holds more connections than
another worker, so that the workers take turns instead of the first one
awake taking a whole burst.
"""

from __future__ import annotations

import socket
from typing import Any, Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from mailapp.sessions import ConnectionCounts
from mailapp.workers import channel
from mailapp.workers.child import ParentLink, WorkerRole
from mailapp.workers.accepting import MAX_YIELDS, YIELD_SECONDS, Gate, SharedEndpoint, Turns
from mailapp.workers.supervisor import BACKOFF_FIRST, START_GRACE_SECONDS
from tests.unit.test_workers import _died, _supervisor


class _Reactor(Clock):
    """Just what a listening port and the connections it accepts ask of a reactor."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: set[Any] = set()

    def addReader(self, reader: Any) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.discard(reader)

    def addWriter(self, writer: Any) -> None:
        pass

    def removeWriter(self, writer: Any) -> None:
        pass

    def stop(self, port: Any) -> None:
        """Stop C{port}: its connectionLost is scheduled at once."""
        port.stopListening()
        self.advance(0)


def _close(factory: "_Counting") -> None:
    for protocol in factory.accepted:
        protocol.transport.socket.close()  # type: ignore[union-attr]


class _Counting(Factory):
    def __init__(self) -> None:
        self.accepted: list[Protocol] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = Protocol()
        self.accepted.append(protocol)
        return protocol


@pytest.fixture
def listening() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """A listening socket with three connections waiting in its queue (the kernel completed them)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    clients = [socket.create_connection(server.getsockname(), timeout=5) for _ in range(3)]
    try:
        yield server, clients
    finally:
        for client in clients:
            client.close()
        server.close()


def _port(reactor: _Reactor, server: socket.socket, factory: Factory, turns: Turns | None = None, gate: Gate | None = None) -> Any:
    """The worker's port on a duplicate of C{server}'s descriptor (the endpoint closes the one it is given)."""
    port = SharedEndpoint(reactor, socket.fromfd(server.fileno(), server.family, server.type).detach(), socket.AF_INET, turns, gate)
    d = port.listen(factory)
    result: list[Any] = []
    d.addCallback(result.append)
    return result[0]


def test_a_worker_accepts_one_waiting_connection_each_time_the_socket_is_readable(listening: tuple[socket.socket, list[socket.socket]]) -> None:
    server, _ = listening
    reactor, factory = _Reactor(), _Counting()
    port = _port(reactor, server, factory)
    assert port in reactor.readers
    port.doRead()
    assert len(factory.accepted) == 1
    port.doRead()
    port.doRead()
    assert len(factory.accepted) == 3
    port.doRead()  # nothing waits: no accept, no error
    assert len(factory.accepted) == 3
    _close(factory)
    reactor.stop(port)


def test_twisteds_own_port_would_take_the_whole_burst_at_one_wakeup(listening: tuple[socket.socket, list[socket.socket]]) -> None:
    """What the one-at-a-time port is for: the first worker awake took every waiting connection."""
    server, _ = listening
    reactor, factory = _Reactor(), _Counting()
    duplicate = socket.fromfd(server.fileno(), server.family, server.type)
    duplicate.setblocking(False)
    port = tcp.Port._fromListeningDescriptor(reactor, duplicate.detach(), socket.AF_INET, factory)
    port.startListening()
    port.doRead()
    assert len(factory.accepted) == 3
    _close(factory)
    reactor.stop(port)


def _counts(here: int, elsewhere: dict[str, int]) -> ConnectionCounts:
    """A process's counts with C{here} connections of its own and those the other processes reported."""
    counts = ConnectionCounts()
    for n in range(here):
        counts.add(f"192.0.2.{n + 1}")
    for origin, count in elsewhere.items():
        counts.learn(origin, "@imap", 1)  # a listener budget is not a connection
        for n in range(count):
            counts.learn(origin, f"198.51.100.{n + 1}", 1)
    return counts


@pytest.mark.parametrize(
    ("here", "elsewhere", "ready", "ahead"),
    [
        (0, {}, {1, 2}, False),
        (2, {}, {1, 2}, True),  # a ready worker that has reported nothing holds none
        (2, {"2": 1}, {1, 2}, False),  # within the slack
        (3, {"2": 1}, {1, 2}, True),
        (3, {"2": 1, "3": 5}, {1, 2, 3}, True),  # behind the least loaded other only
        (3, {"2": 4, "3": 5}, {1, 2, 3}, False),
        (5, {"2": 0}, {1}, False),  # the others are starting, or gone
        (5, {"parent": 0}, {1}, False),  # the parent never accepts
    ],
)
def test_a_worker_is_ahead_when_it_holds_more_than_the_least_loaded_ready_other_beyond_the_slack(
    here: int, elsewhere: dict[str, int], ready: set[int], ahead: bool
) -> None:
    counts = _counts(here, elsewhere)
    assert Turns(1, lambda: ready, lambda: counts).ahead() is ahead


def test_before_the_service_counts_connections_a_worker_is_never_ahead() -> None:
    assert not Turns(1, lambda: {1, 2}, lambda: None).ahead()


def test_a_worker_ahead_steps_aside_then_takes_the_connection_if_nobody_did(listening: tuple[socket.socket, list[socket.socket]]) -> None:
    server, _ = listening
    reactor, factory = _Reactor(), _Counting()
    counts = _counts(4, {"2": 0})
    port = _port(reactor, server, factory, Turns(1, lambda: {1, 2}, lambda: counts))
    for step in range(MAX_YIELDS):
        port.doRead()
        assert factory.accepted == [] and port not in reactor.readers, step
        reactor.advance(YIELD_SECONDS)
        assert port in reactor.readers
    port.doRead()  # the other worker left it waiting: taken, one
    assert len(factory.accepted) == 1
    port.doRead()  # a new wait begins
    assert len(factory.accepted) == 1 and port not in reactor.readers
    _close(factory)
    reactor.stop(port)
    assert reactor.getDelayedCalls() == []  # the pending return to reading went with the port


def test_a_worker_not_ahead_never_steps_aside(listening: tuple[socket.socket, list[socket.socket]]) -> None:
    server, _ = listening
    reactor, factory = _Reactor(), _Counting()
    counts = _counts(1, {"2": 1})
    port = _port(reactor, server, factory, Turns(1, lambda: {1, 2}, lambda: counts))
    port.doRead()
    assert len(factory.accepted) == 1 and reactor.getDelayedCalls() == []
    _close(factory)
    reactor.stop(port)


def _accepting(protocol: Any) -> list[list[int]]:
    """The ready workers the parent told this worker, in order."""
    told = []
    for data in protocol.transport.written:
        for line in data.splitlines():
            message = channel.decode(line)
            if message is not None and message["kind"] == channel.ACCEPTING:
                told.append(message["workers"])
    return told


def test_at_the_first_start_the_parent_lets_no_worker_accept_before_every_worker_is_ready() -> None:
    supervisor, reactor = _supervisor(count=2)
    first, second = (protocol for protocol, _, _ in reactor.spawned)
    first.childDataReceived(1, channel.encode(channel.READY))
    assert _accepting(first) == _accepting(second) == []
    second.childDataReceived(1, channel.encode(channel.READY))
    assert _accepting(first) == _accepting(second) == [[1, 2]]
    _died(second)
    assert _accepting(first) == [[1, 2], [1]]  # not waited for while it restarts
    reactor.advance(BACKOFF_FIRST)
    restarted = reactor.spawned[-1][0]
    restarted.childDataReceived(1, channel.encode(channel.READY))
    assert _accepting(first) == [[1, 2], [1], [1, 2]]  # a restarted worker accepts once ready: the others already do
    assert _accepting(restarted) == [[1, 2]]
    assert reactor.getDelayedCalls() == []  # the first start's grace went once every worker was ready


def test_a_worker_slow_to_start_is_waited_for_only_so_long() -> None:
    supervisor, reactor = _supervisor(count=2)
    first, second = (protocol for protocol, _, _ in reactor.spawned)
    first.childDataReceived(1, channel.encode(channel.READY))
    reactor.advance(START_GRACE_SECONDS - 0.1)
    assert _accepting(first) == []
    reactor.advance(0.1)
    assert _accepting(first) == _accepting(second) == [[1]]
    second.childDataReceived(1, channel.encode(channel.READY))
    assert _accepting(first) == [[1], [1, 2]]


def test_a_workers_ports_accept_only_once_the_parent_names_it_among_the_ready(listening: tuple[socket.socket, list[socket.socket]]) -> None:
    server, _ = listening
    link = ParentLink(Clock())
    role = WorkerRole(2, {}, link)
    reactor, factory = _Reactor(), _Counting()
    port = _port(reactor, server, factory, gate=role.gate)
    assert port not in reactor.readers
    link.dataReceived(channel.encode(channel.ACCEPTING, workers=[1]) + b"\n")
    assert port not in reactor.readers
    link.dataReceived(channel.encode(channel.ACCEPTING, workers=[1, 2]) + b"\n")
    assert port in reactor.readers
    link.dataReceived(channel.encode(channel.ACCEPTING, workers=[1]) + b"\n")  # once open, it stays open
    assert port in reactor.readers
    reactor.stop(port)


def test_a_worker_takes_turns_with_the_workers_its_parent_says_are_ready() -> None:
    link = ParentLink(Clock())
    counts = ConnectionCounts()
    link.attach(None, None, counts=counts)
    role = WorkerRole(1, {"imap": (-1, socket.AF_INET)}, link)
    for n in range(3):
        counts.add(f"192.0.2.{n + 1}")
    turns = role.endpoint(Clock(), "imap").turns  # type: ignore[attr-defined]
    assert not turns.ahead()
    link.dataReceived(channel.encode(channel.ACCEPTING, workers=[1, 2]) + b"\n")
    assert turns.ahead()
