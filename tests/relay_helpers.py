"""
Fakes for the relay tests: a scripted network of SMTP servers, and a
harness over a real queue directory. The reactor whose "threads" run at once
(so a L{task.Clock} drives everything deterministically) and the store that
records deliveries (for DSNs) are the public ones of L{mailapp.testing},
under the names these tests know.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mailapp.config import HostPort
from mailapp.delivery import Router
from mailapp.relay.client import Reply
from mailapp.relay.manager import RelayManager, RetryPolicy
from mailapp.relay.queue import Queue
from mailapp.relay.routing import Hop, Routes
from mailapp.testing import FakeAccounts, HeldThreadPool, SynchronousReactor, SynchronousThreadPool
from mailapp.testing import RecordingStore as MemoryStore
from mailapp.testing import RecordingWriter as MemoryMessage

__all__ = [
    "B_HOP",
    "C_HOP",
    "OK",
    "TRANSPORTS",
    "FakeClient",
    "FakeNetwork",
    "Harness",
    "HeldThreadPool",
    "MemoryMessage",
    "MemoryStore",
    "SynchronousReactor",
    "SynchronousThreadPool",
]

OK = Reply(250, ("2.0.0 Ok: queued",))


class FakeClient:
    """A connected, greeted SMTP session whose replies come from C{reply(recipient)}."""

    def __init__(self, network: "FakeNetwork", hop: Hop, reply: Callable[[str], Reply]) -> None:
        self.network = network
        self.hop = hop
        self.reply = reply
        self.usable = True
        self.hold: defer.Deferred[None] | None = None

    def greet(
        self, hostname: str, tls: Any = None, require_tls: bool = False, auth: Any = None, verify: Any = None
    ) -> defer.Deferred[None]:
        return defer.succeed(None)

    @defer.inlineCallbacks
    def send(self, sender: str, recipients: list[str], source: Any, size: int) -> Any:
        data = b""
        while True:
            chunk = yield source.read(65536)
            if not chunk:
                break
            data += chunk
        self.network.open_sends += 1
        self.network.peak_sends = max(self.network.peak_sends, self.network.open_sends)
        try:
            hold = self.network.holds.get(self.hop.address, self.network.hold)
            if hold is not None:
                yield hold
        finally:
            self.network.open_sends -= 1
        replies = {r: self.reply(r) for r in recipients}
        self.network.sent.append((self.network.clock.seconds(), self.hop.address, sender, list(recipients), data, replies))
        return replies

    def quit(self) -> defer.Deferred[None]:
        self._close()
        return defer.succeed(None)

    def abort(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.usable:
            self.network.open_connections[self.hop.address] -= 1
        self.usable = False


class FakeNetwork:
    """
    Next hops by address: C{servers[address]} is a function recipient ->
    L{Reply}; an address not there refuses connections.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.servers: dict[str, Callable[[str], Reply]] = {}
        self.attempts: list[tuple[float, str]] = []
        self.sent: list[tuple[float, str, str, list[str], bytes, dict[str, Reply]]] = []
        self.hold: defer.Deferred[None] | None = None
        #: Per address, a Deferred every send there waits for (instead of C{hold}).
        self.holds: dict[str, defer.Deferred[None]] = {}
        self.open_sends = 0
        self.peak_sends = 0
        #: Connections open now, and the most ever open at once, per address.
        self.open_connections: dict[str, int] = {}
        self.peak_connections: dict[str, int] = {}

    def connect(self, hop: Hop) -> defer.Deferred[FakeClient]:
        self.attempts.append((self.clock.seconds(), hop.address))
        server = self.servers.get(hop.address)
        if server is None:
            return defer.fail(ConnectionRefusedError(hop.address))
        self.open_connections[hop.address] = self.open_connections.get(hop.address, 0) + 1
        self.peak_connections[hop.address] = max(self.peak_connections.get(hop.address, 0), self.open_connections[hop.address])
        return defer.succeed(FakeClient(self, hop, server))

    def delivered_to(self, address: str) -> list[bytes]:
        return [data for _, _, _, rcpts, data, replies in self.sent if address in rcpts and replies[address].code == 250]


B_HOP = "192.0.2.2"
C_HOP = "192.0.2.3"
TRANSPORTS = {"b.test": HostPort(B_HOP, 25), "c.test": HostPort(C_HOP, 25)}


class Harness:
    """A manager over a real queue directory, with a Clock, a fake network and a recording store."""

    def __init__(
        self,
        root: Path,
        clock: Clock | None = None,
        network: FakeNetwork | None = None,
        pool: SynchronousThreadPool | None = None,
        transports: dict[str, HostPort] | None = None,
        **policy: Any,
    ) -> None:
        self.root = root
        if clock is None:
            clock = Clock()
            clock.advance(1_700_000_000)  # a realistic epoch, for Date: headers
        self.clock = clock
        self.reactor = SynchronousReactor(self.clock, pool)
        self.network = network or FakeNetwork(self.clock)
        self.network.clock = self.clock
        self.queue = Queue(root / "queue", self.reactor, use_syncfs=False)
        self.accounts = FakeAccounts(["a.test"])
        self.accounts.add_user("alice@a.test", "secret")
        self.store = MemoryStore()
        self.router = Router(self.accounts, self.store, queue=self.queue)
        names = ("max_connections", "max_connections_per_domain", "max_connections_per_address", "connection_cache_time", "connection_reuse_time")
        limits = {k: policy.pop(k) for k in names if k in policy}
        # A connection says QUIT as soon as its work is done, unless a test of
        # the connection cache asks for one: the other tests count connections
        # and QUITs without advancing the clock past the cache's wait.
        limits.setdefault("connection_cache_time", 0)
        self.manager = RelayManager(
            self.queue,
            Routes(TRANSPORTS if transports is None else transports, None, None),
            self.network.connect,
            hostname="mail.a.test",
            clock=self.clock,
            router=self.router,
            policy=RetryPolicy(**policy),
            **limits,
        )

    def start(self) -> None:
        self.manager.startService()

    def stop(self) -> None:
        d = self.manager.stopService()
        self.clock.advance(10)
        assert d.called

    def submit(self, sender: str, recipients: list[str], body: bytes = b"Subject: hello\r\n\r\nHi.\r\n") -> str:
        transaction = self.router.start(sender, relay_allowed=True)
        for recipient in recipients:
            raise_if_failed(transaction.addRecipient(recipient), "addRecipient")
        message = transaction.open()
        message.write(body)
        return str(raise_if_failed(transaction.commit(), "commit"))

    def envelopes(self) -> list[str]:
        return sorted(p.name for p in (self.root / "queue" / "envelopes").iterdir())


def raise_if_failed(d: Any, what: str) -> Any:
    """
    The result of C{d}, which has fired; its failure raised here, and taken
    out of C{d} first, so that no "Unhandled error in Deferred" is reported
    later, in whichever test the garbage collector happens to run.
    """
    assert d.called, f"{what} did not fire"
    result = d.result
    if isinstance(result, Failure):
        d.addErrback(lambda _: None)
        result.raiseException()
    return result
