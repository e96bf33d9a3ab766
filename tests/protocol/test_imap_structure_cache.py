"""
ENVELOPE, BODYSTRUCTURE, BODY and header SEARCH from each message's cached
structure (L{mailapp.imap.structurecache}), over StringTransport with the
fake store: the file is read once, a stale or damaged blob is recomputed,
and the answers are the same bytes as from the file.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp.imap import structurecache
from mailapp.testing import FakeStore, build_factory, service_context
from tests.protocol.accounts import make_accounts

PLAIN = b"Subject: quarterly report\r\nFrom: Alice <alice@remote.test>\r\nTo: bob@remote.test\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n\r\nbody line\r\n"
MULTIPART = (
    b"Subject: =?UTF-8?Q?R=C3=A9sum=C3=A9?=\r\nFrom: carol@remote.test\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nquarterly text\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--b--\r\n"
)


class StructureCacheTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        self.inbox = self.successResultOf(self.store.mailbox("alice@example.test").folder("INBOX"))
        self.uids = [self.successResultOf(self.inbox.append(data)) for data in (PLAIN, MULTIPART, PLAIN.replace(b"quarterly", b"monthly"))]
        self.state = self.inbox._state

    def session(self) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, None)
        protocol.dataReceived(b"a LOGIN alice@example.test alice-secret\r\nb SELECT INBOX\r\n")
        self.assertIn(b"b OK [READ-WRITE]", transport.value())
        return protocol, transport

    def command(self, protocol: Any, transport: StringTransport, line: bytes) -> bytes:
        transport.clear()
        protocol.dataReceived(b"t " + line + b"\r\n")
        reply = transport.value()
        self.assertTrue(reply.endswith(b"t OK " + line.split()[0 if not line.startswith(b"UID") else 1] + b" completed\r\n"), reply)
        return reply

    def test_a_second_envelope_fetch_does_not_open_the_message_files(self):
        protocol, transport = self.session()
        first = self.command(protocol, transport, b"FETCH 1:* (ENVELOPE)")
        self.assertEqual(sorted(self.state.opened), self.uids)
        second = self.command(protocol, transport, b"FETCH 1:* (ENVELOPE)")
        self.assertEqual(sorted(self.state.opened), self.uids)
        self.assertEqual(first, second)
        self.assertIn(
            b'* 1 FETCH (ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" "quarterly report" (("Alice" NIL "alice" "remote.test"))', first
        )

    def test_bodystructure_and_body_from_the_cache_are_the_bytes_the_file_gives(self):
        protocol, transport = self.session()
        from_files = self.command(protocol, transport, b"FETCH 2 (BODYSTRUCTURE BODY FLAGS UID)")
        opened = len(self.state.opened)
        from_cache = self.command(protocol, transport, b"FETCH 2 (BODYSTRUCTURE BODY FLAGS UID)")
        self.assertEqual(len(self.state.opened), opened)
        self.assertEqual(from_files, from_cache)
        self.assertIn(b'BODYSTRUCTURE (("TEXT" "PLAIN" NIL NIL NIL "7BIT" 14 1 NIL NIL NIL NIL)', from_cache)

    def test_an_old_version_blob_is_recomputed_and_replaced(self):
        self.successResultOf(self.inbox.saveStructures({self.uids[0]: b"old blob"}, structurecache.STRUCTURE_VERSION - 1))
        protocol, transport = self.session()
        reply = self.command(protocol, transport, b"FETCH 1 (ENVELOPE)")
        self.assertIn(b'"quarterly report"', reply)
        self.assertEqual(self.state.opened, [self.uids[0]])
        self.assertEqual(self.state.structures[self.uids[0]][0], structurecache.STRUCTURE_VERSION)

    def test_a_damaged_blob_is_recomputed_and_replaced(self):
        protocol, transport = self.session()
        self.command(protocol, transport, b"FETCH 1 (ENVELOPE)")
        good = self.state.structures[self.uids[0]][1]
        damaged = good.replace(b"quarterly report", b"quarterly rePort")
        self.successResultOf(self.inbox.saveStructures({self.uids[0]: damaged}, structurecache.STRUCTURE_VERSION))
        self.state.opened.clear()
        reply = self.command(protocol, transport, b"FETCH 1 (ENVELOPE)")
        self.assertIn(b'"quarterly report"', reply)
        self.assertEqual(self.state.opened, [self.uids[0]])
        self.assertEqual(self.state.structures[self.uids[0]][1], good)

    def test_search_subject_and_from_after_a_fetch_open_no_file(self):
        protocol, transport = self.session()
        self.command(protocol, transport, b"FETCH 1:* (ENVELOPE)")
        self.state.opened.clear()
        reply = self.command(protocol, transport, b'UID SEARCH SUBJECT "QUARTERLY"')
        self.assertIn(b"* SEARCH %d\r\n" % self.uids[0], reply)
        reply = self.command(protocol, transport, "UID SEARCH CHARSET UTF-8 SUBJECT résumé".encode())
        self.assertIn(b"* SEARCH %d\r\n" % self.uids[1], reply)
        reply = self.command(protocol, transport, b"UID SEARCH OR FROM carol NOT TO bob")
        self.assertIn(b"* SEARCH %d\r\n" % self.uids[1], reply)
        self.assertEqual(self.state.opened, [])

    def test_search_subject_fills_the_cache_on_first_use(self):
        protocol, transport = self.session()
        self.command(protocol, transport, b"SEARCH SUBJECT quarterly")
        self.assertEqual(sorted(self.state.structures), self.uids)
        self.state.opened.clear()
        self.command(protocol, transport, b"FETCH 1:* (ENVELOPE)")
        self.assertEqual(self.state.opened, [])

    def test_search_body_and_other_header_fields_still_read_the_files(self):
        protocol, transport = self.session()
        self.command(protocol, transport, b"FETCH 1:* (ENVELOPE)")
        self.state.opened.clear()
        reply = self.command(protocol, transport, b"SEARCH BODY quarterly")
        self.assertIn(b"* SEARCH 2\r\n", reply)
        self.assertEqual(sorted(self.state.opened), self.uids)
        self.state.opened.clear()
        reply = self.command(protocol, transport, b"SEARCH HEADER Content-Type alternative")
        self.assertIn(b"* SEARCH 2\r\n", reply)
        self.assertEqual(sorted(self.state.opened), self.uids)
