"""
BDAT (RFC 3030 CHUNKING and BINARYMIME) on the MX, over StringTransport
with the fakes: chunks read as exactly their announced octets, one reply
per BDAT, the same spool path, limits and end of message as DATA.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from mailapp.errors import StorageFull
from mailapp.testing import RecordingStore
from tests.protocol.smtp_client import Session
from tests.protocol.test_smtp_session import ALICE, make_factory

BOB = "bob@example.test"
ENVELOPE = b"EHLO c.test\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"


def bdat(chunk: bytes, last: bool = False) -> bytes:
    """A BDAT command with its chunk."""
    return b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk


def body_of(stored: bytes) -> bytes:
    """What follows our trace fields (Return-Path, Delivered-To, Received) in a stored message."""
    received = stored.index(b"Received: ")
    end = stored.index(b"\r\n", stored.index(b";\r\n\t", received) + 3)
    return stored[end + 2 :]


class ChunkingTests(TestCase):
    def setUp(self) -> None:
        self.store = RecordingStore()
        self.factory = make_factory(self.store)
        self.session = Session(self.factory)

    def tearDown(self) -> None:
        self.session.proto.connectionLost(None)

    def transaction(self, mail: bytes = b"MAIL FROM:<x@remote.test>") -> None:
        self.session.send(b"EHLO c.test\r\n" + mail + b"\r\nRCPT TO:<alice@example.test>\r\n")
        self.session.clear()

    def test_a_chunk_is_stored_as_sent_with_no_unstuffing_and_its_line_ends_kept(self):
        self.transaction(b"MAIL FROM:<x@remote.test> BODY=BINARYMIME")
        chunk = b"Subject: raw\r\n\r\n.leading dot\n\r\n.\r\nbare\rCR\x80\xff"
        self.session.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        [reply] = self.session.replies()
        self.assertTrue(reply.startswith(b"250 2.0.0 Ok: queued as "), reply)
        [stored] = self.store.inbox(ALICE)
        self.assertEqual(body_of(stored), chunk)

    def test_pipelined_bdats_in_one_packet_each_get_their_own_reply_in_order(self):
        self.transaction()
        self.session.send(bdat(b"Subject: a") + bdat(b"\r\n\r\n") + bdat(b"body\r\n", last=True) + b"NOOP\r\n")
        replies = self.session.replies()
        self.assertEqual(replies[:2], [b"250 2.0.0 Ok: 10 octets received", b"250 2.0.0 Ok: 4 octets received"])
        self.assertTrue(replies[2].startswith(b"250 2.0.0 Ok: queued as "), replies)
        self.assertEqual(replies[3], b"250 2.0.0 Ok")
        [stored] = self.store.inbox(ALICE)
        self.assertEqual(body_of(stored), b"Subject: a\r\n\r\nbody\r\n")

    def test_a_chunk_split_across_packets_is_taken_whole_and_a_command_inside_it_is_data(self):
        self.transaction()
        for piece in (b"BDAT 32 LA", b"ST\r\nSubject: a\r\n\r\nQU", b"IT\r\nRSET\r\n1234", b"56QUIT\r\n"):
            self.session.send(piece)
        self.assertEqual(self.session.codes()[0], b"250")
        self.assertEqual(self.session.codes()[1], b"221")
        [stored] = self.store.inbox(ALICE)
        self.assertEqual(body_of(stored), b"Subject: a\r\n\r\nQUIT\r\nRSET\r\n123456")

    def test_bdat_0_last_ends_the_message_with_the_chunks_before_it(self):
        self.transaction()
        self.session.send(bdat(b"Subject: z\r\n\r\nhi\r\n") + b"BDAT 0 LAST\r\n")
        self.assertEqual(self.session.codes(), [b"250", b"250"])
        self.assertIn(b"queued as", self.session.replies()[1])
        [stored] = self.store.inbox(ALICE)
        self.assertEqual(body_of(stored), b"Subject: z\r\n\r\nhi\r\n")

    def test_bdat_without_mail_gets_503_once_its_octets_are_read_and_they_never_run(self):
        self.session.send(b"EHLO c.test\r\n")
        self.session.clear()
        self.session.send(b"BDAT 6\r\nQUIT\r\nNOOP\r\n")
        self.assertEqual(self.session.replies(), [b"503 5.5.1 Error: need MAIL command", b"250 2.0.0 Ok"])

    def test_bdat_after_mail_without_rcpt_gets_503_once_its_octets_are_read(self):
        self.session.send(b"EHLO c.test\r\nMAIL FROM:<x@remote.test>\r\n")
        self.session.clear()
        self.session.send(b"BDAT 12 LAST\r\nRSET\r\nQUIT\r\nNOOP\r\n")
        self.assertEqual(self.session.replies(), [b"503 5.5.1 Error: need RCPT command", b"250 2.0.0 Ok"])
        self.assertEqual(self.store.delivered, [])

    def test_a_chunk_past_the_size_limit_gets_552_its_octets_are_read_and_the_transaction_ends(self):
        self.transaction()
        chunk = b"x" * 1048000
        self.session.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        self.session.send(b"BDAT 1000\r\n" + b"y" * 1000)
        self.session.send(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
        self.assertEqual(
            self.session.replies(),
            [
                b"250 2.0.0 Ok: 1048000 octets received",
                b"552 5.3.4 Message size exceeds fixed maximum message size",
                b"503 5.5.1 Error: need MAIL command",
                b"250 2.0.0 Ok",
            ],
        )
        self.assertEqual(self.store.delivered, [])
        self.session.clear()
        self.session.send(b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n" + bdat(b"Subject: k\r\n\r\n", last=True))
        self.assertEqual(self.session.codes(), [b"250", b"250", b"250"])
        self.assertEqual(len(self.store.inbox(ALICE)), 1)

    def test_chunks_pipelined_behind_a_refused_one_get_503_and_never_close_the_session(self):
        self.transaction()
        self.session.send(b"BDAT 2000000\r\n" + b"x" * 2000000 + bdat(b"more") * 12 + b"NOOP\r\n")
        self.assertEqual(self.session.codes(), [b"552"] + [b"503"] * 12 + [b"250"])
        self.assertFalse(self.session.transport.disconnecting)

    def test_data_after_bdat_in_the_same_transaction_gets_503(self):
        self.transaction()
        self.session.send(bdat(b"Subject: k\r\n\r\n") + b"DATA\r\n")
        self.assertEqual(self.session.replies()[1], b"503 5.5.1 Error: DATA after BDAT in the same transaction")

    def test_data_after_mail_with_body_binarymime_gets_503_5_5_1(self):
        self.transaction(b"MAIL FROM:<> BODY=BINARYMIME")
        self.session.send(b"DATA\r\n")
        self.assertEqual(self.session.replies(), [b"503 5.5.1 Error: BODY=BINARYMIME requires BDAT"])

    def test_rset_between_chunks_discards_the_partial_message(self):
        self.transaction()
        self.session.send(bdat(b"Subject: k\r\n\r\n"))
        writer = self.session.proto._chunks.message
        self.session.send(b"RSET\r\n" + bdat(b"abc", last=True))
        self.assertEqual(self.session.codes(), [b"250", b"250", b"503"])
        self.assertTrue(writer.discarded)
        self.assertEqual(self.store.delivered, [])

    def test_a_connection_lost_mid_chunk_discards_the_spool_file(self):
        self.transaction()
        self.session.send(b"BDAT 100 LAST\r\nSubject: k\r\n\r\nhalf")
        writer = self.session.proto._chunks.message
        self.session.proto.connectionLost(None)
        self.assertTrue(writer.discarded)
        self.assertEqual(self.store.delivered, [])

    def test_reading_a_chunk_pauses_while_the_spool_is_behind_and_its_250_waits_for_the_spool(self):
        self.transaction()
        held = self.store.hold("write")
        chunk = b"Subject: k\r\n\r\n" + b"z" * 200000
        self.session.send(b"BDAT %d\r\n" % len(chunk) + chunk[:100000])
        self.assertEqual(self.session.transport.producerState, "paused")
        held.callback(None)
        self.assertEqual(self.session.transport.producerState, "producing")
        second = self.store.hold("write")
        self.session.send(chunk[100000:] + bdat(b"ok", last=True))
        self.assertEqual(self.session.replies(), [])
        second.callback(None)
        self.assertEqual(self.session.replies()[0], b"250 2.0.0 Ok: %d octets received" % len(chunk))
        self.assertEqual(self.session.codes()[1], b"250")
        self.assertTrue(body_of(self.store.inbox(ALICE)[0]).endswith(b"zzok"))

    def test_the_reply_to_the_last_chunk_waits_until_the_message_is_durable(self):
        self.transaction()
        held = self.store.hold("deliver")
        self.session.send(bdat(b"Subject: k\r\n\r\n", last=True))
        self.assertEqual(self.session.replies(), [])
        held.callback(None)
        self.assertTrue(self.session.replies()[0].startswith(b"250 2.0.0 Ok: queued as "))

    def test_a_store_failure_at_the_last_chunk_is_its_reply(self):
        self.transaction()
        self.store.failNext("finish", StorageFull())
        self.session.send(bdat(b"Subject: k\r\n\r\n", last=True))
        self.assertEqual(self.session.replies(), [b"452 4.3.1 Insufficient system storage"])

    def test_bdat_with_a_bad_size_gets_501(self):
        self.transaction()
        self.session.send(b"BDAT ten\r\nBDAT 5 FIRST\r\nBDAT\r\n")
        self.assertEqual(self.session.codes(), [b"501", b"501", b"501"])

    def test_a_nul_in_a_chunk_is_refused_at_the_last_chunk_as_after_data(self):
        self.transaction(b"MAIL FROM:<x@remote.test> BODY=BINARYMIME")
        self.session.send(bdat(b"Subject: k\r\n\r\n\x00", last=True))
        self.assertEqual(self.session.replies(), [b"554 5.6.0 Message contains NUL characters"])
        self.assertEqual(self.store.delivered, [])

    def test_a_binarymime_message_for_a_remote_recipient_is_refused_554_5_6_3(self):
        factory = make_factory(self.store, trusted=("192.0.2.0/24",))
        session = Session(factory)
        self.addCleanup(session.proto.connectionLost, None)
        session.send(b"EHLO c.test\r\nMAIL FROM:<x@remote.test> BODY=BINARYMIME\r\nRCPT TO:<y@elsewhere.test>\r\n")
        self.assertEqual(
            session.replies()[-1],
            b"554 5.6.3 Conversion required but not supported: BINARYMIME is delivered to local mailboxes only",
        )

    def test_a_shutdown_between_chunks_closes_and_drops_the_partial_message(self):
        self.transaction()
        self.session.send(bdat(b"Subject: k\r\n\r\n"))
        writer = self.session.proto._chunks.message
        self.session.proto.shutdown()
        self.assertEqual(self.session.replies()[-1], b"421 4.3.2 mail.example.test Service shutting down")
        self.session.proto.connectionLost(None)
        self.assertTrue(writer.discarded)


class SubmissionChunkingTests(TestCase):
    def test_a_message_submitted_in_chunks_gets_message_id_and_date_added_as_with_data(self):
        import base64

        store = RecordingStore()
        session = Session(make_factory(store, submission=True, allow_plaintext_auth=True))
        self.addCleanup(session.proto.connectionLost, None)
        token = base64.b64encode(b"\x00alice@example.test\x00alice-secret")
        session.send(b"EHLO c\r\nAUTH PLAIN " + token + b"\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n")
        # The header block ends inside the second chunk.
        session.send(bdat(b"Subject: no ids\r") + bdat(b"\n\r\nhello\r\n", last=True))
        self.assertEqual(session.codes()[-2:], [b"250", b"250"])
        [stored] = store.inbox(BOB)
        headers = stored.split(b"\r\n\r\n")[0]
        self.assertIn(b"\r\nDate: ", headers)
        self.assertIn(b"\r\nMessage-ID: <", headers)
        self.assertIn(b"with ESMTPA id", headers)
        self.assertTrue(stored.endswith(b"Subject: no ids\r\n\r\nhello\r\n"))
