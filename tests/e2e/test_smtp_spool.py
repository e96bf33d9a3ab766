"""
What an SMTP session leaves on the disk of the real Maildir store: nothing
in the spool after a client drops mid-message, and no message after the one
being committed when it dropped. (The protocol behaviour itself is in
C{tests/protocol/test_smtp_session.py}, over fakes.)
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from tests.smtp_helpers import make_factory, stored_messages, wait_for

ALICE = "alice@example.test"


class Session:
    """One server protocol on a StringTransport, with helpers to talk to it."""

    def __init__(self, factory, peer: str = "192.0.2.7") -> None:
        self.factory = factory
        self.proto = factory.buildProtocol(None)
        address = IPv6Address if ":" in peer else IPv4Address
        self.transport = StringTransport(peerAddress=address("TCP", peer, 40000))
        self.tls_started = []
        self.transport.startTLS = lambda ctx: self.tls_started.append(self.transport.value())
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def replies(self) -> list[bytes]:
        lines = self.transport.value().split(b"\r\n")
        return [line for line in lines if line]

    def codes(self) -> list[bytes]:
        return [line[:3] for line in self.replies() if line[3:4] == b" "]

    def clear(self) -> None:
        self.transport.clear()


class SpoolTests(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.factory = make_factory(self.root)
        self.session = Session(self.factory)

    def tearDown(self) -> None:
        self.session.proto.connectionLost(None)

    @inlineCallbacks
    def test_client_dropping_mid_data_leaves_nothing_behind(self):
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        yield wait_for(lambda: b"354" in self.session.codes())
        self.session.send(b"Subject: s\r\n\r\n" + b"z" * 200_000)
        self.session.proto.connectionLost(None)
        spool = self.factory.router.store.spool_dir
        yield wait_for(lambda: list(spool.iterdir()) == [])
        self.assertEqual(stored_messages(self.root, ALICE), [])

    @inlineCallbacks
    def test_commands_pipelined_before_a_drop_never_run(self):
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        yield wait_for(lambda: b"354" in self.session.codes())
        self.session.clear()
        # The end of one message, the next transaction and a large body, then the client goes away
        # while the first commit is still in flight.
        self.session.send(
            b"Subject: one\r\n\r\nfirst\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" + b"z" * 200_000
        )
        self.session.proto.connectionLost(None)
        spool = self.factory.router.store.spool_dir
        yield wait_for(lambda: len(stored_messages(self.root, ALICE)) == 1)
        yield wait_for(lambda: list(spool.iterdir()) == [])
        # Only the first message's own answer (written into the void); nothing after it ran.
        self.assertEqual(self.session.codes(), [b"250"])
        self.assertEqual(stored_messages(self.root, "bob@example.test"), [])
