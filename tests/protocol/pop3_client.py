"""A POP3 server session on a StringTransport, what its client has been told, the factory it comes from, and the test case base over a FakeStore."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from zope.interface import alsoProvides

from mailapp.pop3 import POP3Factory
from mailapp.service import ServiceContext
from mailapp.testing import FakeStore, build_factory
from tests.protocol.context import server_context


def pop3_context(
    store: FakeStore,
    clock: Clock | None = None,
    tls: Any = None,
    accounts: Any = None,
    auth_failure_delay: float = 0.01,
    max_connections_per_ip: int | None = None,
) -> ServiceContext:
    """A server's context over C{store}: failed logins answered after C{auth_failure_delay} (doubling)."""
    limits = {} if max_connections_per_ip is None else {"max_connections_per_ip": max_connections_per_ip}
    return server_context(store, clock, tls, accounts, limits=limits, security={"auth_failure_delay": auth_failure_delay})


def make_factory(
    store: FakeStore | Path | None = None,
    clock: Clock | None = None,
    tls: Any = None,
    accounts: Any = None,
    allow_plaintext_auth: bool = True,
    **options: Any,
) -> tuple[POP3Factory, FakeStore]:
    """
    The factory of a POP3 listener as the server builds it, over C{store}
    (plaintext logins allowed unless told). A directory, as tests written
    for the Maildir store pass, gets a new L{FakeStore}: no session test
    needs the disk.
    """
    store = store if isinstance(store, FakeStore) else FakeStore()
    context = pop3_context(store, clock, tls, accounts, **options)
    factory = build_factory(context, "pop3", tls="starttls" if tls is not None else "none", allow_plaintext_auth=allow_plaintext_auth)
    return factory, store  # type: ignore[return-value]


class Session:
    """One server protocol on a StringTransport, with helpers to talk to it."""

    def __init__(self, factory: POP3Factory, peer: str = "192.0.2.7") -> None:
        self.factory = factory
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.tls_started: list[bytes] = []
        self.transport.startTLS = self._start_tls  # type: ignore[method-assign]
        self.proto.makeConnection(self.transport)

    def _start_tls(self, context: Any) -> None:
        self.tls_started.append(self.transport.value())
        alsoProvides(self.transport, ISSLTransport)

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def output(self) -> bytes:
        return self.transport.value()

    def lines(self) -> list[bytes]:
        return self.output().split(b"\r\n")[:-1]

    def statuses(self) -> list[bytes]:
        """The first word of every status line (multi-line bodies skipped)."""
        found, body = [], False
        for line in self.lines():
            if body:
                body = line != b"."
                continue
            if line.startswith((b"+OK", b"-ERR")):
                found.append(line.split(b" ")[0])
        return found

    def clear(self) -> None:
        self.transport.clear()

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def drop(self) -> None:
        if self.proto._connected:
            self.proto.connectionLost(None)


ALICE = "alice@example.test"
BOB = "bob@example.test"
ALICE_PLAIN = base64.b64encode(b"\x00alice@example.test\x00alice-secret")

FIRST = b"Subject: one\r\nFrom: x@remote.test\r\n\r\nline 1\r\n.starts with a dot\r\nline 3\r\n"
SECOND = b"Subject: two\r\n\r\n" + b"b" * 5000 + b"\r\n"
THIRD = b"Subject: three\r\n\r\nno final newline"


class POP3TestCase(TestCase):
    def setUp(self) -> None:
        self.factory, self.store = make_factory(FakeStore())

    def session(self, factory: POP3Factory | None = None, **kwargs: Any) -> Session:
        session = Session(factory or self.factory, **kwargs)
        self.addCleanup(session.drop)
        return session

    @inlineCallbacks
    def inbox(self, account: str = ALICE) -> Any:
        folder = yield self.store.mailbox(account).folder("INBOX")
        return folder

    @inlineCallbacks
    def deliver(self, *messages: bytes, account: str = ALICE) -> Any:
        folder = yield self.inbox(account)
        uids = []
        for message in messages:
            uid = yield folder.append(message)
            uids.append(uid)
        return uids

    def logged_in(self, session: Session | None = None, password: bytes = b"alice-secret") -> Any:
        session = session or self.session()
        session.send(b"USER alice@example.test\r\nPASS " + password + b"\r\n")
        self.assertGreaterEqual(len(session.statuses()), 3)
        self.assertEqual(session.statuses()[-1], b"+OK", session.lines())
        session.clear()
        return session

    def reply(self, session: Session, command: bytes, count: int = 1) -> Any:
        """Send C{command}: C{count} status lines (and any multi-line body) are there when it returns."""
        session.clear()
        session.send(command)
        self.assertTrue(len(session.statuses()) >= count and not session.proto._busy, session.lines())
        return session.output()

    @inlineCallbacks
    def uids(self, account: str = ALICE) -> Any:
        folder = yield self.inbox(account)
        messages = yield folder.messages()
        return [info.uid for info in messages]
