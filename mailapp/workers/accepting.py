"""
How a worker accepts on the listening sockets every worker shares: taking
turns, so that connections spread over the workers instead of piling up
on whichever is awake first.

Every worker's reactor watches the same socket (the parent bound it and
handed it over), and the kernel wakes them all when a connection comes.
Twisted's port then accepts up to a hundred connections a wakeup
(C{numberAccepts}), so the first worker awake took a whole burst: measured
with imaptest's ten clients and two workers, one worker got nine and ran
a full core while the other idled, and two workers were slower than one.
Long-lived connections (IDLE, imaptest's ``logout=0``) stay where they
landed, so the imbalance lasted.

Here a worker accepts one connection a wakeup, and a worker that already
holds more connections than the least loaded of the others (L{Turns},
from the counts the workers share through the parent) first steps aside
for L{YIELD_SECONDS}, at most L{MAX_YIELDS} times in a row, so that a
worker that is stuck or slow to wake delays a connection by a few
milliseconds but never refuses it. Only the workers the parent says are
ready are compared (L{mailapp.workers.channel.ACCEPTING}): one that is
starting or died is not waited for.

And a worker accepts nothing before the parent has named it among the
ready workers (L{Gate}), which at the first start it does only once every
worker is ready: otherwise the first worker up would take every
connection that waited for the server, such as clients reconnecting after
a restart.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Collection

from twisted.internet import fdesc, tcp, unix
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from mailapp.deadlines import cancel_call
from mailapp.sessions import ConnectionCounts

__all__ = ["MAX_YIELDS", "YIELD_SECONDS", "Gate", "SharedEndpoint", "Turns"]

#: How long a worker ahead of the others leaves a waiting connection to them.
YIELD_SECONDS = 0.005
#: How many times in a row it does so before it takes the connection itself.
MAX_YIELDS = 2
#: How many connections a worker may hold beyond the least loaded other before it steps aside.
SLACK = 1


class Turns:
    """
    Whether worker C{number} should leave the next connection to another:
    it holds more than L{SLACK} connections beyond the least loaded of the
    other workers ready now (C{ready()}, their numbers). C{counts()} is the
    process's L{ConnectionCounts} (None until the service made it), which
    holds what the others reported.
    """

    def __init__(self, number: int, ready: Callable[[], Collection[int]], counts: Callable[[], ConnectionCounts | None]) -> None:
        self.number = number
        self._ready = ready
        self._counts = counts

    def ahead(self) -> bool:
        counts = self._counts()
        if counts is None:
            return False
        others = [counts.open_in(str(n)) for n in self._ready() if n != self.number]
        return bool(others) and counts.open_here() > min(others) + SLACK


class Gate:
    """
    The listening ports of a worker, held (not reading) until C{allowed()}
    says yes; L{check} is called whenever that may have changed. Once open
    it stays open.
    """

    def __init__(self, allowed: Callable[[], bool]) -> None:
        self._allowed = allowed
        self.open = False
        self._held: list[Any] = []

    def hold(self, port: Any) -> None:
        """C{port} has started listening: stop its reading until the gate opens."""
        if not self.open:
            port.stopReading()
            self._held.append(port)

    def check(self) -> None:
        if self.open or not self._allowed():
            return
        self.open = True
        held, self._held = self._held, []
        for port in held:
            if port.connected:
                port.startReading()


class _TakingTurns:
    """A listening port that accepts one connection a wakeup, after stepping aside while L{Turns} says so."""

    numberAccepts: int
    reactor: Any
    turns: Turns | None = None
    _yields = 0
    _resuming: IDelayedCall | None = None

    def doRead(self) -> None:
        if self.turns is not None and self._yields < MAX_YIELDS and self.turns.ahead():
            self._yields += 1
            self.stopReading()  # type: ignore[attr-defined]  # the port this is mixed into
            self._resuming = self.reactor.callLater(YIELD_SECONDS, self._resume)
            return
        self._yields = 0
        self.numberAccepts = 1
        super().doRead()  # type: ignore[misc]

    def _resume(self) -> None:
        self._resuming = None
        if self.connected:  # type: ignore[attr-defined]
            self.startReading()  # type: ignore[attr-defined]

    def _stopResuming(self) -> None:
        """The port stops: no step aside may start it reading again."""
        self._resuming = cancel_call(self._resuming)


class _SharedTCPPort(_TakingTurns, tcp.Port):
    """A TCP socket the parent bound (an adopted TCP port already only closes its descriptor)."""

    def connectionLost(self, reason: Failure) -> None:
        self._stopResuming()
        tcp.Port.connectionLost(self, reason)


class _SharedUNIXPort(_TakingTurns, unix.Port):
    """
    A unix socket the parent bound: its path is the parent's, which removes
    it when the whole server stops. A worker stopping alone (and started
    again by the supervisor) must leave it, or every other process would go
    on accepting on a socket nobody can reach; Twisted's adopted unix port
    removes it. Nor may it shut the socket down, which would end it for
    every process.
    """

    _shouldShutdown = False

    def connectionLost(self, reason: Failure) -> None:
        self._stopResuming()
        tcp.Port.connectionLost(self, reason)


@implementer(IStreamServerEndpoint)
class SharedEndpoint:
    """
    Twisted's adopted endpoint (C{reactor.adoptStreamPort} on the socket
    C{fd} of C{family}), with ports that take turns (L{Turns}; None: one
    connection a wakeup, no stepping aside) and wait at C{gate} (None: they
    accept at once).
    """

    def __init__(self, reactor: Any, fd: int, family: int, turns: Turns | None = None, gate: Gate | None = None) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family
        self.turns = turns
        self.gate = gate

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            fdesc.setNonBlocking(self.fd)
            port: Any
            if self.family == socket.AF_UNIX:
                port = _SharedUNIXPort._fromListeningDescriptor(self.reactor, self.fd, factory)  # type: ignore[no-untyped-call]  # what adoptStreamPort calls
            else:
                port = _SharedTCPPort._fromListeningDescriptor(self.reactor, self.fd, self.family, factory)  # type: ignore[no-untyped-call]
            port.turns = self.turns
            port.startListening()
            if self.gate is not None:
                self.gate.hold(port)
            os.close(self.fd)  # the port holds its own duplicate, as adoptStreamPort's does
        except Exception:
            return fail()
        return succeed(port)
