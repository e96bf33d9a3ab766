"""
How every protocol ends a connection (L{mailapp.sessions.SessionFactory.close}),
over fake transports and a fake clock: output producers are unregistered
before the close (Twisted's TLS never shuts down while one is registered,
which kept IMAPS open after LOGOUT), and a connection whose client takes
neither its last reply nor the close is cut after L{CLOSE_GRACE}.
The real-socket side is in :mod:`tests.test_tls_close`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp.imap.server import IMAPFactory, IMAPPolicy
from mailapp.sessions import CLOSE_GRACE
from tests import smtp_helpers
from tests.protocol.pop3_client import make_factory as make_pop3_factory


class StuckTransport(StringTransport):
    """
    A transport whose client never reads and never closes, with the rule
    Twisted's TLS follows: a close asked for while a producer is registered
    does not start.
    """

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.closedWithProducer: list[bool] = []
        self.aborted = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def loseConnection(self) -> None:
        self.closedWithProducer.append(self.producer is not None)
        super().loseConnection()

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class CloseTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def connect(self, factory: Any) -> tuple[Any, StuckTransport]:
        protocol = factory.buildProtocol(None)
        protocol.callLater = self.clock.callLater
        transport = StuckTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def assertCutAfterGrace(self, protocol: Any, transport: StuckTransport) -> None:
        self.clock.advance(CLOSE_GRACE - 1)
        self.assertFalse(transport.aborted)
        self.clock.advance(1)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def imap(self) -> tuple[Any, StuckTransport]:
        factory = IMAPFactory(None, None, IMAPPolicy("mail.example.test"), self.clock)
        return self.connect(factory)

    def test_imap_logout_unregisters_its_producer_before_closing(self) -> None:
        protocol, transport = self.imap()
        self.assertIsNotNone(transport.producer)
        protocol.dataReceived(b"a LOGOUT\r\n")
        self.assertEqual(transport.value().splitlines()[-2:], [b"* BYE Logging out", b"a OK LOGOUT completed"])
        self.assertEqual(transport.closedWithProducer, [False])
        self.assertIsNone(transport.producer)

    def test_imap_connection_that_never_closes_after_logout_is_cut_after_the_grace(self) -> None:
        protocol, transport = self.imap()
        protocol.dataReceived(b"a LOGOUT\r\n")
        self.assertCutAfterGrace(protocol, transport)

    def test_a_connection_that_closes_in_time_leaves_no_timer(self) -> None:
        protocol, transport = self.imap()
        protocol.dataReceived(b"a LOGOUT\r\n")
        protocol.connectionLost(None)
        self.assertEqual([call for call in self.clock.getDelayedCalls() if call.active()], [])
        self.assertFalse(transport.aborted)

    def test_pop3_connection_that_never_closes_after_quit_is_cut_after_the_grace(self) -> None:
        factory, _ = make_pop3_factory(Path(self.mktemp()), clock=self.clock)
        protocol, transport = self.connect(factory)
        protocol.dataReceived(b"QUIT\r\n")
        self.assertTrue(transport.value().splitlines()[-1].startswith(b"+OK"))
        self.assertCutAfterGrace(protocol, transport)

    def test_smtp_connection_that_never_closes_after_quit_is_cut_after_the_grace(self) -> None:
        factory = smtp_helpers.make_factory(Path(self.mktemp()), clock=self.clock)
        protocol, transport = self.connect(factory)
        protocol.dataReceived(b"QUIT\r\n")
        self.assertTrue(transport.value().splitlines()[-1].startswith(b"221"))
        self.assertCutAfterGrace(protocol, transport)

    def test_imap_client_that_stops_reading_is_timed_out_then_cut(self) -> None:
        from mailapp.imap.server import PREAUTH_TIMEOUT

        protocol, transport = self.imap()
        protocol.dataReceived(b"a CAPABILITY\r\n")
        protocol._flow.pauseProducing()  # what the transport does when its buffer is full
        protocol.dataReceived(b"b CAPABILITY\r\n")
        self.clock.advance(PREAUTH_TIMEOUT)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        self.assertCutAfterGrace(protocol, transport)

    def test_a_server_shutting_down_cuts_after_its_shorter_grace_even_a_session_already_closing(self) -> None:
        from mailapp.imap.server import SHUTDOWN_GRACE

        idle, idle_transport = self.imap()
        closing, closing_transport = self.imap()
        closing.dataReceived(b"a LOGOUT\r\n")  # its own close: cut after CLOSE_GRACE
        idle.shutdown()
        closing.shutdown()
        self.clock.advance(SHUTDOWN_GRACE)
        self.assertTrue(idle_transport.aborted)
        self.assertTrue(closing_transport.aborted)
        for protocol in (idle, closing):
            protocol.connectionLost(None)
        self.assertEqual([call for call in self.clock.getDelayedCalls() if call.active()], [])

    def test_closing_again_with_a_longer_grace_keeps_the_earlier_cut(self) -> None:
        protocol, transport = self.imap()
        protocol.shutdown()
        protocol._close()  # a later ordinary close must not postpone the shutdown's cut
        self.clock.advance(2)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(None)

    def test_pop3_and_smtp_shut_down_like_imap_with_the_shorter_grace(self) -> None:
        from mailapp.linesession import SHUTDOWN_GRACE

        pop3, _ = make_pop3_factory(Path(self.mktemp()), clock=self.clock)
        smtp = smtp_helpers.make_factory(Path(self.mktemp()), clock=self.clock)
        for factory, goodbye in ((pop3, b"-ERR [SYS/TEMP] Server shutting down; nothing deleted"), (smtp, b"421 4.3.2 mail.example.test Service shutting down")):
            protocol, transport = self.connect(factory)
            closed = protocol.shutdown()
            self.assertIsNotNone(closed)  # the service's stop waits for it
            self.assertEqual(transport.value().splitlines()[-1], goodbye)
            self.clock.advance(SHUTDOWN_GRACE)
            self.assertTrue(transport.aborted)
            fired: list[object] = []
            closed.addCallback(fired.append)
            protocol.connectionLost(None)
            self.assertEqual(fired, [None])
        self.assertEqual([call for call in self.clock.getDelayedCalls() if call.active()], [])
