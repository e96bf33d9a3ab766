"""
The LMTP listener (RFC 2033) over StringTransport with the fakes: LHLO,
who may connect, local recipients only, and one reply per recipient after
the message, each once that recipient's copy is durable.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp.abuse import address_key as guard_key
from mailapp.accounts import QuotaOverride
from mailapp.config import ListenerConfig
from mailapp.errors import StorageFull
from mailapp.testing import RecordingStore, build_factory
from tests.protocol.context import server_context
from tests.protocol.smtp_client import Session
from tests.protocol.test_smtp_chunking import bdat

ALICE = "alice@example.test"
BOB = "bob@example.test"
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


def lmtp_factory(store: RecordingStore, allowed_clients: tuple[Any, ...] = (), trusted: tuple[str, ...] = ()) -> Any:
    """An lmtp listener's factory as the server builds it: a 1 MiB size limit, 5 recipients."""
    limits = {"max_message_size": 1048576, "max_recipients": 5}
    context = server_context(store, limits=limits, trusted_networks=trusted)
    listener = ListenerConfig("lmtp", "lmtp", "tcp:0:interface=127.0.0.1", "none", False, allowed_clients=allowed_clients)
    return build_factory(context, listener)


class UnixSession(Session):
    """A session whose client came over a unix socket."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=UNIXAddress(None))
        self.proto.makeConnection(self.transport)


class LMTPTests(TestCase):
    def setUp(self) -> None:
        self.store = RecordingStore()
        self.factory = lmtp_factory(self.store)
        self.session = self.connect()

    def connect(self, peer: str = "127.0.0.1") -> Session:
        session = Session(self.factory, peer=peer)
        self.addCleanup(session.proto.connectionLost, None)
        return session

    def envelope(self, *recipients: str) -> None:
        self.session.send(b"LHLO mx.example.test\r\nMAIL FROM:<x@remote.test>\r\n")
        self.session.send(b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in recipients))

    def test_the_greeting_says_lmtp(self):
        self.assertEqual(self.session.replies(), [b"220 mail.example.test LMTP mailapp"])

    def test_lhlo_offers_chunking_and_no_auth(self):
        self.session.clear()
        self.session.send(b"LHLO mx.example.test\r\n")
        self.assertEqual(
            self.session.replies(),
            [
                b"250-mail.example.test",
                b"250-PIPELINING",
                b"250-SIZE 1048576",
                b"250-8BITMIME",
                b"250-ENHANCEDSTATUSCODES",
                b"250-SMTPUTF8",
                b"250-CHUNKING",
                b"250-BINARYMIME",
                b"250 HELP",
            ],
        )

    def test_helo_and_ehlo_get_500_use_lhlo(self):
        self.session.clear()
        self.session.send(b"HELO mx.example.test\r\nEHLO mx.example.test\r\nMAIL FROM:<>\r\n")
        self.assertEqual(
            self.session.replies(),
            [b"500 5.5.1 Error: this is LMTP: use LHLO"] * 2 + [b"503 5.5.1 Error: send HELO/EHLO first"],
        )

    def test_auth_gets_502(self):
        self.session.clear()
        self.session.send(b"LHLO mx.example.test\r\nAUTH PLAIN AGFsaWNlAHg=\r\n")
        self.assertEqual(self.session.replies()[-1], b"502 5.5.1 AUTH not available on this port")

    def test_a_remote_recipient_gets_550_even_from_a_trusted_network(self):
        self.factory = lmtp_factory(self.store, trusted=("127.0.0.0/8",))
        self.session = self.connect()
        self.session.clear()
        self.envelope("someone@remote.test")
        self.assertEqual(
            self.session.replies()[-1], b"550 5.1.2 Not a local recipient: this LMTP server delivers to local mailboxes only"
        )

    def test_after_data_each_accepted_recipient_gets_its_own_250_in_rcpt_order(self):
        self.envelope(BOB, "nobody@example.test", "team@example.test", "someone@remote.test")
        self.session.clear()
        self.session.send(b"DATA\r\n" + MESSAGE + b".\r\n")
        replies = self.session.replies()
        self.assertEqual(replies[0], b"354 End data with <CR><LF>.<CR><LF>")
        queue_id = replies[1].rsplit(b" ", 1)[1]
        self.assertEqual(
            replies[1:],
            [
                b"250 2.1.5 <bob@example.test> Ok: delivered as " + queue_id,
                b"250 2.1.5 <team@example.test> Ok: delivered as " + queue_id,
            ],
        )
        self.assertEqual(len(self.store.inbox(ALICE)), 1)
        self.assertEqual(len(self.store.inbox(BOB)), 1)

    def test_a_recipient_over_its_quota_gets_its_own_552_and_the_others_250(self):
        self.factory.router.accounts.set_quota(ALICE, QuotaOverride(bytes=100, messages=None))
        self.envelope(ALICE, BOB)
        self.session.clear()
        self.session.send(b"DATA\r\n" + MESSAGE + b"x" * 200 + b"\r\n.\r\n")
        replies = self.session.replies()
        self.assertEqual(replies[1], b"552 5.2.2 <alice@example.test> Mailbox full")
        self.assertTrue(replies[2].startswith(b"250 2.1.5 <bob@example.test> Ok"), replies)
        self.assertEqual(self.store.inbox(ALICE), [])
        self.assertEqual(len(self.store.inbox(BOB)), 1)

    def test_a_recipient_whose_mailbox_would_overflow_gets_452_and_the_others_250(self):
        self.factory.router.accounts.set_quota(ALICE, QuotaOverride(bytes=400, messages=None))
        self.envelope(ALICE, BOB)
        self.session.send(b"DATA\r\n" + MESSAGE + b".\r\n")  # alice now holds about 200 bytes
        self.session.clear()
        self.session.send(b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n")
        self.session.send(b"DATA\r\n" + MESSAGE + b"y" * 100 + b"\r\n.\r\n")
        replies = self.session.replies()
        self.assertEqual(
            replies[4], b"452 4.2.2 <alice@example.test> Mailbox full: not enough room for this message; try again later"
        )
        self.assertTrue(replies[5].startswith(b"250 2.1.5 <bob@example.test> Ok"), replies)
        self.assertEqual(len(self.store.inbox(ALICE)), 1)
        self.assertEqual(len(self.store.inbox(BOB)), 2)

    def test_every_recipient_over_its_quota_stores_nothing(self):
        self.factory.router.accounts.set_quota(ALICE, QuotaOverride(bytes=10, messages=None))
        self.envelope(ALICE)
        self.session.clear()
        self.session.send(b"DATA\r\n" + MESSAGE + b".\r\n")
        self.assertEqual(self.session.replies()[1:], [b"552 5.2.2 <alice@example.test> Mailbox full"])
        self.assertEqual(self.store.delivered, [])

    def test_the_replies_wait_until_the_copies_are_durable(self):
        self.envelope(ALICE, BOB)
        held = self.store.hold("deliver")
        self.session.clear()
        self.session.send(b"DATA\r\n" + MESSAGE + b".\r\n")
        self.assertEqual(self.session.codes(), [b"354"])
        held.callback(None)
        self.assertEqual(self.session.codes(), [b"354", b"250", b"250"])

    def test_a_store_failure_is_each_recipients_reply(self):
        self.envelope(ALICE, BOB)
        self.store.failNext("finish", StorageFull())
        self.session.clear()
        self.session.send(b"DATA\r\n" + MESSAGE + b".\r\n")
        self.assertEqual(self.session.replies()[1:], [b"452 4.3.1 Insufficient system storage"] * 2)

    def test_a_refusal_of_the_whole_message_is_repeated_for_each_recipient(self):
        self.envelope(ALICE, BOB)
        self.session.clear()
        self.session.send(b"DATA\r\nSubject: n\r\n\r\n\x00\r\n.\r\n")
        self.assertEqual(self.session.replies()[1:], [b"554 5.6.0 Message contains NUL characters"] * 2)
        self.assertEqual(self.store.delivered, [])

    def test_data_without_a_valid_recipient_gets_503(self):
        self.envelope("nobody@example.test")
        self.session.clear()
        self.session.send(b"DATA\r\n")
        self.assertEqual(self.session.replies(), [b"503 5.5.1 Error: no valid recipients"])

    def test_unknown_recipients_are_answered_at_once_and_never_close_the_session(self):
        self.session.send(b"LHLO mx.example.test\r\nMAIL FROM:<x@remote.test>\r\n")
        self.session.clear()
        self.session.send(b"RCPT TO:<nobody@example.test>\r\n" * 15 + b"NOOP\r\n")
        self.assertEqual(self.session.codes(), [b"550"] * 15 + [b"250"])

    def test_bdat_gets_one_reply_per_recipient_at_its_last_chunk(self):
        self.envelope(ALICE, BOB)
        self.session.clear()
        self.session.send(bdat(b"Subject: c\r\n\r\n") + bdat(b"chunked\r\n", last=True))
        self.assertEqual(self.session.codes(), [b"250", b"250", b"250"])
        self.assertEqual(self.session.replies()[0], b"250 2.0.0 Ok: 14 octets received")
        self.assertTrue(self.session.replies()[1].startswith(b"250 2.1.5 <alice@example.test> Ok"))
        self.assertTrue(self.store.inbox(BOB)[0].endswith(b"Subject: c\r\n\r\nchunked\r\n"))

    def test_the_received_field_says_lmtp(self):
        self.envelope(ALICE)
        self.session.send(b"DATA\r\n" + MESSAGE + b".\r\n")
        [stored] = self.store.inbox(ALICE)
        self.assertIn(b"Received: from mx.example.test ([127.0.0.1])\r\n\tby mail.example.test (mailapp) with LMTP id ", stored)

    def test_a_client_neither_loopback_nor_allowed_is_refused_at_the_greeting(self):
        session = self.connect("192.0.2.7")
        self.assertEqual(session.replies(), [b"554 5.7.1 mail.example.test LMTP is not open to your address"])
        self.assertTrue(session.transport.disconnecting)

    def test_a_ban_its_address_earned_on_another_protocol_does_not_refuse_lmtp(self):
        guard = self.factory.guard
        guard._ban(guard_key("127.0.0.1"), guard._clock(), 10)
        self.assertTrue(guard.banned("127.0.0.1"))
        self.assertEqual(self.connect("127.0.0.1").codes(), [b"220"])

    def test_a_client_in_allowed_clients_is_served(self):
        import ipaddress

        self.factory = lmtp_factory(self.store, allowed_clients=(ipaddress.ip_network("192.0.2.0/24"),))
        self.assertEqual(self.connect("192.0.2.7").codes(), [b"220"])
        self.assertEqual(self.connect("198.51.100.1").codes(), [b"554"])

    def test_a_unix_socket_client_is_served_and_named_as_local_in_the_received_field(self):
        session = UnixSession(self.factory)
        self.addCleanup(session.proto.connectionLost, None)
        session.send(b"LHLO mx.example.test\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + MESSAGE + b".\r\n")
        self.assertEqual(session.codes(), [b"220", b"250", b"250", b"250", b"354", b"250"])
        self.assertIn(b"Received: from mx.example.test (local socket)\r\n", self.store.inbox(ALICE)[0])


class LMTPMetricsTests(TestCase):
    def test_a_message_delivered_over_lmtp_counts_as_accepted_with_protocol_lmtp_and_one_refused_for_all_does_not(self):
        from mailapp import logevents
        from mailapp.metrics import Metrics

        metrics = Metrics()
        metrics({"log_event": logevents.LMTP_DELIVERED, "delivered": 2, "refused": 0, "size": 100})
        metrics({"log_event": logevents.LMTP_DELIVERED, "delivered": 0, "refused": 1, "size": 100})
        self.assertEqual(metrics.registry.get_sample_value("mailapp_messages_accepted_total", {"protocol": "lmtp"}), 1.0)


class LMTPHelpTests(TestCase):
    def test_help_names_lhlo_not_helo_or_ehlo(self):
        session = Session(lmtp_factory(RecordingStore()), peer="127.0.0.1")
        self.addCleanup(session.proto.connectionLost, None)
        session.clear()
        session.send(b"HELP\r\n")
        self.assertEqual(session.replies(), [b"214 2.0.0 Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT"])
