"""
When a line session's replies reach the client's socket: a POP3 session
(and an IMAP one, whose replies gather in the session first) on
Twisted's own TCP transport over a real loopback connection, with a reactor
that never polls (a L{MemoryReactor}, which only records the readers and
writers). What the command loop wrote is on the socket when the command
returns, rather than on the reactor's next turn; the replies to commands
pipelined in one read leave in one send; what the socket cannot take yet
stays with the transport, whose writer the reactor then serves.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import TestCase

from mailapp.testing import FakeStore, build_factory, service_context
from tests.protocol.accounts import make_accounts
from tests.protocol.pop3_client import make_factory


def _served(test: TestCase, factory: Any) -> tuple[Any, tcp.Server, socket.socket, MemoryReactor]:
    """
    A session of C{factory} on a L{tcp.Server} over a loopback connection,
    with a reactor that never polls: the session, its transport, the
    client's socket and the reactor; all closed at C{test}'s cleanup.
    """
    with socket.create_server(("127.0.0.1", 0)) as listening:
        client = socket.create_connection(listening.getsockname(), timeout=5)
        server, address = listening.accept()
    server.setblocking(False)  # as the reactor keeps it
    test.addCleanup(client.close)
    test.addCleanup(server.close)
    reactor = MemoryReactor()
    protocol = factory.buildProtocol(None)
    transport = tcp.Server(server, protocol, address, None, 1, reactor)
    return protocol, transport, client, reactor


class RepliesLeaveWithTheirCommandTests(TestCase):
    def setUp(self) -> None:
        self.protocol, self.transport, self.client, self.reactor = _served(self, make_factory()[0])
        self.sends: list[int] = []
        #: At most this many bytes a send (the room in a full socket buffer), or None.
        self.room: int | None = None
        send = self.transport.writeSomeData

        def counted(data: Any) -> Any:
            sent = send(data if self.room is None else data[: self.room])
            self.sends.append(sent)
            return sent

        self.transport.writeSomeData = counted  # type: ignore[method-assign]
        self.protocol.makeConnection(self.transport)
        self.addCleanup(self.protocol.connectionLost, None)

    def received(self) -> bytes:
        """What the client's socket holds now, without waiting."""
        self.client.setblocking(False)
        chunks = []
        try:
            while chunk := self.client.recv(1 << 20):
                chunks.append(chunk)
        except BlockingIOError:
            pass
        return b"".join(chunks)

    def test_a_reply_is_on_the_socket_when_its_command_returns(self) -> None:
        self.protocol.dataReceived(b"CAPA\r\n")
        received = self.received()
        # The greeting was still buffered (no reactor turn since): it leaves with the reply.
        self.assertTrue(received.startswith(b"+OK mail.example.test POP3 mailapp ready\r\n+OK Capability list follows\r\n"), received)
        self.assertTrue(received.endswith(b"\r\n.\r\n"), received)
        self.assertNotIn(self.transport, self.reactor.getWriters())

    def test_replies_to_pipelined_commands_leave_in_one_send(self) -> None:
        self.protocol.dataReceived(b"CAPA\r\nNOOP\r\nCAPA\r\n")
        self.assertEqual(len(self.sends), 1, self.sends)
        self.assertEqual(self.received().count(b"+OK Capability list follows"), 2)

    def test_what_the_socket_cannot_take_waits_for_the_reactor(self) -> None:
        # A socket whose buffer is full but for 10 bytes: the rest stays with the transport.
        self.room = 10
        self.protocol.dataReceived(b"CAPA\r\n")
        self.assertEqual(self.sends, [10])
        self.assertEqual(self.received(), b"+OK mail.e")
        self.assertIn(self.transport, self.reactor.getWriters())
        self.room = None
        self.transport.doWrite()  # the reactor's turn, once the socket is writable
        self.assertTrue(self.received().endswith(b"\r\n.\r\n"))
        self.assertNotIn(self.transport, self.reactor.getWriters())


class IMAPRepliesLeaveWithTheirCommandTests(TestCase):
    """The same for IMAP, whose session gathers a burst's replies before it gives them to the transport."""

    def setUp(self) -> None:
        factory = build_factory(service_context(store=FakeStore(), accounts=make_accounts()), "imap", allow_plaintext_auth=True)
        self.protocol, self.transport, self.client, self.reactor = _served(self, factory)
        self.protocol.makeConnection(self.transport)
        self.addCleanup(self.protocol.connectionLost, None)

    def test_a_reply_is_on_the_socket_when_its_command_returns(self) -> None:
        self.protocol.dataReceived(b"a CAPABILITY\r\nb NOOP\r\n")
        self.client.setblocking(False)
        received = self.client.recv(1 << 20)
        self.assertTrue(received.startswith(b"* OK"), received)
        self.assertTrue(received.endswith(b"b OK NOOP completed\r\n"), received)
        self.assertNotIn(self.transport, self.reactor.getWriters())
