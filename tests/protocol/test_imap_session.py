"""
The IMAP session over StringTransport, built by L{mailapp.imap.server.buildFactory}
from a context of fakes (a L{FakeStore}, L{FakeAccounts}) with a
L{task.Clock}: every response is there when C{dataReceived} returns.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp.testing import FakeStore, HeldThreadPool, build_factory, service_context
from tests.protocol.accounts import make_accounts

MESSAGE = b"Subject: hello\r\nFrom: x@remote.test\r\n\r\nbody line\r\n"


class _RecordingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.nodelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled


class SessionTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap")

    def connect(self, factory: Any = None) -> tuple[Any, _RecordingTransport]:
        protocol = (factory or self.factory).buildProtocol(None)
        transport = _RecordingTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, None)
        return protocol, transport

    def test_tcp_nodelay_is_set_on_every_connection(self):
        _, transport = self.connect()
        self.assertTrue(transport.nodelay)

    def test_greeting_advertises_logindisabled_without_tls_or_plaintext_permission(self):
        _, transport = self.connect()
        greeting = transport.value()
        self.assertTrue(greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 "))
        self.assertIn(b" LOGINDISABLED]", greeting)
        self.assertNotIn(b"AUTH=PLAIN", greeting)

    def test_commands_before_login_are_limited_to_the_not_authenticated_set(self):
        protocol, transport = self.connect()
        transport.clear()
        protocol.dataReceived(b"a SELECT INBOX\r\nb FROB\r\nc CAPABILITY\r\n")
        lines = transport.value().split(b"\r\n")
        self.assertEqual(lines[0], b"a BAD Command not valid in this state")
        self.assertEqual(lines[1], b"b BAD Unknown command")
        self.assertEqual(lines[3], b"c OK CAPABILITY completed")

    def test_login_select_and_fetch_read_the_store_through_its_interfaces(self):
        inbox = self.successResultOf(self.store.mailbox("alice@example.test").folder("INBOX"))
        uid = self.successResultOf(inbox.append(MESSAGE))
        protocol, transport = self.connect(build_factory(self.context, "imap", allow_plaintext_auth=True))
        transport.clear()
        protocol.dataReceived(b"a LOGIN alice@example.test alice-secret\r\nb SELECT INBOX\r\nc UID FETCH 1:* (UID BODY[])\r\n")
        lines = transport.value().split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"a OK "), lines)
        self.assertIn(b"* 1 EXISTS", lines)
        self.assertIn(b"* 1 FETCH (UID %d BODY[] {%d}" % (uid, len(MESSAGE)), transport.value())
        self.assertIn(MESSAGE + b" FLAGS (\\Recent \\Seen))\r\nc OK FETCH completed\r\n", transport.value())
        self.assertEqual(self.successResultOf(inbox.messages())[0].flags, frozenset({"\\Seen"}))

    def _fetching_with_the_store_pool_held(self) -> tuple[Any, _RecordingTransport, HeldThreadPool]:
        inbox = self.successResultOf(self.store.mailbox("alice@example.test").folder("INBOX"))
        self.successResultOf(inbox.append(MESSAGE))
        pool = HeldThreadPool()
        self.context.pools.store = pool
        protocol, transport = self.connect(build_factory(self.context, "imap", allow_plaintext_auth=True))
        protocol.dataReceived(b"a LOGIN alice@example.test alice-secret\r\nb SELECT INBOX\r\n")
        transport.clear()
        pool.held = True
        protocol.dataReceived(b"c FETCH 1 BODY.PEEK[]\r\n")
        return protocol, transport, pool

    def test_fetch_reads_the_message_file_on_the_contexts_store_pool(self):
        protocol, transport, pool = self._fetching_with_the_store_pool_held()
        self.assertTrue(pool.jobs)
        self.assertNotIn(b"body line", transport.value())
        pool.run()
        self.assertTrue(transport.value().endswith(MESSAGE + b")\r\nc OK FETCH completed\r\n"), transport.value())

    def test_a_shutdown_lets_a_fetch_in_progress_finish_before_its_bye(self):
        protocol, transport, pool = self._fetching_with_the_store_pool_held()
        closed = protocol.shutdown()
        self.assertIsNotNone(closed)
        self.assertNotIn(b"BYE", transport.value())
        pool.run()
        self.assertTrue(transport.value().endswith(b"c OK FETCH completed\r\n* BYE Server shutting down\r\n"), transport.value())
        self.assertTrue(transport.disconnecting)


def test_sessions_asking_for_the_same_new_mail_share_one_store_read():
    class Folder:
        account, name = "alice@example.test", "INBOX"

        def __init__(self):
            self.reads = []

        def messagesAfter(self, uid):
            d = Deferred()
            self.reads.append((uid, d))
            return d

    factory = build_factory(service_context(), "imap")
    folder = Folder()
    results = []
    for _ in range(100):
        factory.messagesAfter(folder, 7).addCallback(results.append)
    factory.messagesAfter(folder, 3).addCallback(results.append)
    assert [uid for uid, _ in folder.reads] == [7, 3]
    folder.reads[0][1].callback(["new"])
    assert results == [["new"]] * 100
    folder.reads[1][1].callback(["older", "new"])
    assert results[-1] == ["older", "new"]
    factory.messagesAfter(folder, 7)
    assert len(folder.reads) == 3, "a read that has finished is not reused"
