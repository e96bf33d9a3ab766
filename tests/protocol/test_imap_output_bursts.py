"""
One write per response burst (L{mailapp.imap.session.IMAPServer.flushOutput}):
a command's lines, and the replies to pipelined commands, reach the
transport in one write; a client that stops reading leaves at most one
chunk gathered in the session.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp.imap.policy import CHUNK_SIZE
from mailapp.testing import FakeStore, build_factory, service_context
from tests.protocol.accounts import make_accounts


class _CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class OutputBurstTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        self.inbox = self.successResultOf(self.store.mailbox("alice@example.test").folder("INBOX"))

    def session(self) -> tuple[Any, _CountingTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = _CountingTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, None)
        protocol.dataReceived(b"a LOGIN alice@example.test alice-secret\r\n")
        transport.clear()
        transport.writes = 0
        return protocol, transport

    def test_select_writes_its_untagged_lines_and_its_reply_at_once(self):
        for n in range(3):
            self.successResultOf(self.inbox.append(b"Subject: %d\r\n\r\nbody\r\n" % n))
        protocol, transport = self.session()
        protocol.dataReceived(b"b SELECT INBOX\r\n")
        self.assertIn(b"* 3 EXISTS\r\n", transport.value())
        self.assertTrue(transport.value().endswith(b"b OK [READ-WRITE] SELECT completed\r\n"))
        self.assertEqual(transport.writes, 1)

    def test_replies_to_pipelined_commands_go_out_in_one_write(self):
        protocol, transport = self.session()
        protocol.dataReceived(b"b NOOP\r\nc CAPABILITY\r\nd SELECT INBOX\r\ne NOOP\r\n")
        self.assertTrue(transport.value().endswith(b"e OK NOOP completed\r\n"), transport.value())
        self.assertEqual(transport.writes, 1)

    def test_a_client_that_stops_reading_leaves_at_most_a_chunk_in_the_session(self):
        for n in range(3000):
            self.inbox._add(b"Subject: %d\r\n\r\nbody\r\n" % n, (), 0.0)
        protocol, transport = self.session()
        protocol.dataReceived(b"b SELECT INBOX\r\n")
        transport.clear()
        transport.writes = 0
        protocol.flow.pauseProducing()  # as the transport does when its buffer fills
        protocol.dataReceived(b"c FETCH 1:* (FLAGS UID RFC822.SIZE)\r\n")
        sent = transport.value()
        self.assertNotIn(b"c OK", sent)
        self.assertLess(len(sent) + protocol._outputSize, 2 * CHUNK_SIZE)
        protocol.flow.resumeProducing()
        self.context.reactor.advance(0)
        sent = transport.value()
        self.assertTrue(sent.endswith(b"c OK FETCH completed\r\n"), sent[-200:])
        self.assertEqual(sent.count(b" FETCH (FLAGS"), 3000)
        # 3,000 lines in 12 batches, written a chunk at a time, not a batch or a line at a time.
        self.assertLessEqual(transport.writes, len(sent) // CHUNK_SIZE + 2)

    def test_a_fetch_of_small_messages_bodies_reads_them_in_one_store_trip_in_order_around_a_large_one(self):
        # imaptest's stress FETCHes header fields of twenty messages at a time:
        # one store read for them all (L{fetch._fetchMessages}), not an open per message.
        from mailapp.imap.commands import fetch

        for n in range(20):
            self.successResultOf(self.inbox.append(b"From: a@example.test\r\nSubject: %d\r\n\r\nbody %d\r\n" % (n, n)))
        large = b"Subject: large\r\n\r\n" + b"x" * (fetch.SMALL_MESSAGE + 10) + b"\r\n"
        self.successResultOf(self.inbox.append(large))
        self.successResultOf(self.inbox.append(b"Subject: after\r\n\r\nlast\r\n"))
        protocol, transport = self.session()
        protocol.dataReceived(b"b SELECT INBOX\r\n")
        folder = protocol.selected.folder
        reads: list[list[int]] = []
        opens: list[int] = []
        real_read, real_open = folder.readMessages, folder.openMessage
        self.patch(folder, "readMessages", lambda uids, limit: reads.append(list(uids)) or real_read(uids, limit))
        self.patch(folder, "openMessage", lambda uid: opens.append(uid) or real_open(uid))
        transport.clear()
        transport.writes = 0
        protocol.dataReceived(b"c FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)] ENVELOPE)\r\n")
        self.context.reactor.advance(0)
        sent = transport.value()
        self.assertTrue(sent.endswith(b"c OK FETCH completed\r\n"), sent[-300:])
        self.assertEqual(reads, [list(range(1, 21)), [22]])
        self.assertEqual(opens, [21])  # the large one is opened and streamed by itself
        subjects = [int(n) for n in re.findall(rb"Subject: (\d+)\r\n\r\n", sent)]
        self.assertEqual(subjects, list(range(20)))  # in order
        self.assertLess(sent.index(b"Subject: 19"), sent.index(b"Subject: large"))
        self.assertLess(sent.index(b"Subject: large"), sent.index(b"Subject: after"))
        self.assertIn(b'ENVELOPE (NIL "0" ((NIL NIL "a" "example.test"))', sent)

    def three_messages_and_their_scans(self) -> list[object]:
        """Three small messages in INBOX; from now on, each MIME scan of a FETCH, with an empty shared structure cache."""
        from mailapp.imap.commands import fetch

        for n in range(3):
            self.successResultOf(self.inbox.append(b"From: a@example.test\r\nSubject: %d\r\n\r\nbody\r\n" % n))
        scans: list[object] = []
        real_scan = fetch._scan
        self.patch(fetch, "_scan", lambda handle: scans.append(handle) or real_scan(handle))
        self.patch(fetch, "_scanned", fetch._ScannedStructures())
        return scans

    def test_a_message_scanned_for_one_session_is_not_scanned_again_for_the_next(self):
        scans = self.three_messages_and_their_scans()
        for _ in range(2):
            protocol, transport = self.session()
            protocol.dataReceived(b"b SELECT INBOX\r\nc FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)] ENVELOPE)\r\n")
            self.context.reactor.advance(0)
            self.assertIn(b"c OK FETCH completed", transport.value())
            self.assertEqual(transport.value().count(b"ENVELOPE (NIL"), 3)
        self.assertEqual(len(scans), 3)  # once per message, not once per message and session

    def test_the_structure_cache_fill_and_a_body_fetch_share_one_scan_per_message(self):
        scans = self.three_messages_and_their_scans()
        protocol, transport = self.session()
        protocol.dataReceived(b"b SELECT INBOX\r\nc FETCH 1:* (ENVELOPE)\r\nd FETCH 1:* (BODY.PEEK[HEADER] ENVELOPE)\r\n")
        self.context.reactor.advance(0)
        self.assertIn(b"d OK FETCH completed", transport.value())
        self.assertEqual(transport.value().count(b"ENVELOPE (NIL"), 6)
        self.assertEqual(len(scans), 3)
