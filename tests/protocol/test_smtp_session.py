"""
The SMTP session driven byte by byte over StringTransport, built by
L{mailapp.smtp.buildFactory} from a context of fakes with a L{task.Clock}:
every reply is there when C{dataReceived} returns, or when the clock has
moved past a delay.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mailapp.testing import RecordingStore, build_factory
from tests.protocol.context import server_context
from tests.protocol.smtp_client import Session

ALICE = "alice@example.test"


def make_factory(
    store: RecordingStore,
    submission: bool = False,
    tls: Any = None,
    allow_plaintext_auth: bool = False,
    trusted: tuple[str, ...] = (),
    clock: Clock | None = None,
    max_connections_per_ip: int | None = None,
) -> Any:
    """
    The factory of an MX (or submission) listener as the server builds it,
    over C{store}: a 1 MiB message size limit, 5 recipients, failed logins
    answered after 0.01 s (doubling), no MX rate limits.
    """
    limits = {"max_message_size": 1048576, "max_recipients": 5, "mx_messages_per_minute": 0, "mx_bytes_per_minute": 0}
    if max_connections_per_ip is not None:
        limits["max_connections_per_ip"] = max_connections_per_ip
    context = server_context(store, clock, tls, limits=limits, security={"auth_failure_delay": 0.01}, trusted_networks=trusted)
    protocol = "submission" if submission else "smtp"
    return build_factory(context, protocol, tls="starttls" if tls is not None else "none", allow_plaintext_auth=allow_plaintext_auth)


def advance(clock: Clock, seconds: float) -> None:
    """Let C{seconds} pass a tenth of a second at a time, so that delays scheduled by delayed calls run too."""
    for _ in range(round(seconds * 10)):
        clock.advance(0.1)


class MXSessionTestCase(TestCase):
    """One MX session over a RecordingStore, closed after the test."""

    def setUp(self) -> None:
        self.store = RecordingStore()
        self.factory = make_factory(self.store)
        self.session = Session(self.factory)

    def tearDown(self) -> None:
        self.session.proto.connectionLost(None)


class ProtocolTests(MXSessionTestCase):

    def test_greeting_is_220_with_hostname(self):
        self.assertEqual(self.session.replies(), [b"220 mail.example.test ESMTP mailapp"])

    def test_ehlo_advertises_only_what_works_on_the_mx_listener(self):
        self.session.clear()
        self.session.send(b"EHLO client.test\r\n")
        self.assertEqual(
            self.session.replies(),
            [
                b"250-mail.example.test",
                b"250-PIPELINING",
                b"250-SIZE 1048576",
                b"250-8BITMIME",
                b"250-ENHANCEDSTATUSCODES",
                b"250-DSN",
                b"250-SMTPUTF8",
                b"250-CHUNKING",
                b"250-BINARYMIME",
                b"250 HELP",
            ],
        )

    def test_pipelined_replies_come_back_in_order_across_asynchronous_checks(self):
        self.session.clear()
        self.session.send(
            b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<nobody@example.test>\r\n"
            b"RCPT TO:<alice@example.test>\r\nRCPT TO:<team@example.test>\r\nDATA\r\n"
        )
        self.assertTrue(b"354" in self.session.codes())
        self.assertEqual(self.session.codes(), [b"250", b"250", b"550", b"250", b"250", b"354"])
        self.assertIn(b"550 5.1.1 No such user here", self.session.replies())
        self.session.send(b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        self.assertTrue(b"221" in self.session.codes())
        self.assertEqual(self.session.codes()[-2:], [b"250", b"221"])
        self.assertEqual(len(self.store.inbox(ALICE)), 1)
        self.assertEqual(len(self.store.inbox("bob@example.test")), 1)

    def test_lf_dot_lf_and_cr_dot_cr_never_end_data_and_are_stored_as_crlf(self):
        self.session.send(b"HELO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertTrue(b"354" in self.session.codes())
        self.session.clear()
        # Each classic smuggling form, split across segments, followed by a would-be second transaction.
        for piece in [b"Subject: s\r\n\r\na\n", b".\n", b"MAIL FROM:<evil@x.test>\r\n", b"b\r", b".\r", b"RCPT TO:<bob@example.test>\r\n", b"c\r\n.\n", b"\r\n.\r", b"\n"]:
            self.session.send(piece)
        self.assertTrue(self.session.codes() == [b"250"])
        [stored] = self.store.inbox(ALICE)
        body = stored.split(b"\r\n\r\n", 1)[1]
        self.assertEqual(body, b"a\r\n.\r\nMAIL FROM:<evil@x.test>\r\nb\r\n.\r\nRCPT TO:<bob@example.test>\r\nc\r\n\r\n\r\n")
        self.assertNotIn(b"\n", stored.replace(b"\r\n", b""))
        self.assertEqual(self.store.inbox("bob@example.test"), [])

    def test_dot_stuffing_is_undone(self):
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertTrue(b"354" in self.session.codes())
        self.session.send(b"Subject: s\r\n\r\n..leading dot\r\n...\r\n.\r\n")
        self.assertTrue(self.session.codes()[-1:] == [b"250"])
        [stored] = self.store.inbox(ALICE)
        self.assertTrue(stored.endswith(b"\r\n\r\n.leading dot\r\n..\r\n"))
        self.assertTrue(stored.startswith(b"Return-Path: <>\r\nDelivered-To: alice@example.test\r\nReceived: from c"))

    def test_received_header_writes_an_ipv6_client_as_an_ipv6_address_literal(self):
        # RFC 5321 4.1.3: "[IPv6:2001:db8::1]". Found by the network-namespace rig.
        self.session.proto.connectionLost(None)
        self.session = Session(self.factory, peer="2001:db8::10")
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: s\r\n\r\nx\r\n.\r\n")
        self.assertTrue(self.session.codes()[-1:] == [b"250"])
        [stored] = self.store.inbox(ALICE)
        self.assertIn(b"\r\nReceived: from c ([IPv6:2001:db8::10])\r\n", stored)

    def test_address_literals_for_trace_headers(self):
        from mailapp.smtp import address_literal

        self.assertEqual(address_literal("192.0.2.7"), "[192.0.2.7]")
        self.assertEqual(address_literal("2001:db8::10"), "[IPv6:2001:db8::10]")
        self.assertEqual(address_literal("::ffff:192.0.2.7"), "[192.0.2.7]")

    def test_long_body_line_stays_in_data_mode_and_nothing_after_it_runs(self):
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertTrue(b"354" in self.session.codes())
        self.session.clear()
        self.session.send(b"Subject: s\r\n\r\n" + b"x" * 300_000 + b"\r\nRSET\r\nQUIT\r\n.\r\n")
        self.assertTrue(self.session.codes() == [b"250"])
        [stored] = self.store.inbox(ALICE)
        self.assertIn(b"x" * 300_000 + b"\r\nRSET\r\nQUIT\r\n", stored)
        self.assertFalse(self.transport_closed())

    def transport_closed(self) -> bool:
        return self.session.transport.disconnecting

    def test_overlong_command_line_gets_500_and_session_survives(self):
        self.session.clear()
        self.session.send(b"NOOP " + b"a" * 5000 + b"\r\nNOOP\r\n")
        self.assertEqual(self.session.replies(), [b"500 5.5.2 Line too long", b"250 2.0.0 Ok"])
        self.assertFalse(self.transport_closed())

    def test_unterminated_line_is_cut_off_and_connection_closed(self):
        self.session.clear()
        self.session.send(b"A" * 20_000)
        self.assertEqual(self.session.codes(), [b"500"])
        self.assertTrue(self.transport_closed())
        self.assertEqual(self.session.proto._buffer, b"")

    def test_nul_cr_and_eight_bit_bytes_in_arguments_get_501(self):
        self.session.clear()
        self.session.send(b"HELO a\x00b\r\nHELO caf\xc3\xa9\r\nEHLO a\rb\r\nHELO ok\r\n")
        self.session.send(b"MAIL FROM:<a\x00@b.test>\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice\r@example.test>\r\n")
        self.assertEqual(self.session.codes(), [b"501", b"501", b"501", b"250", b"501", b"250", b"501"])
        self.assertNotIn(b"\x00", self.session.transport.value())

    def test_nul_and_eight_bit_bytes_in_other_commands_get_500(self):
        self.session.clear()
        self.session.send(b"NOOP \x00\r\nNO\xffOP\r\n")
        self.assertEqual(self.session.codes(), [b"500", b"500"])

    def test_recipients_over_the_limit_get_452(self):
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\n")
        for _ in range(6):
            self.session.send(b"RCPT TO:<alice@example.test>\r\n")
        self.assertTrue(len(self.session.codes()) == 9)
        self.assertEqual(self.session.codes(), [b"220", b"250", b"250"] + [b"250"] * 5 + [b"452"])
        self.assertEqual(self.session.replies()[-1], b"452 4.5.3 Too many recipients")

    def test_shutdown_tells_an_idle_client_421_and_closes(self):
        self.session.clear()
        closed = self.session.proto.shutdown()
        self.assertEqual(self.session.replies(), [b"421 4.3.2 mail.example.test Service shutting down"])
        self.assertTrue(self.transport_closed())
        self.assertFalse(closed.called)
        self.session.proto.connectionLost(None)
        self.assertTrue(closed.called)

    def test_shutdown_lets_a_message_in_data_finish(self):
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertTrue(b"354" in self.session.codes())
        self.session.proto.shutdown()
        self.assertFalse(self.transport_closed())
        committed = self.store.hold("deliver")  # a commit takes a while, as on a disk
        self.session.send(b"Subject: s\r\n\r\nlast one\r\n.\r\nNOOP\r\n")
        committed.callback(None)
        self.assertTrue(self.session.codes()[-2:] == [b"250", b"421"])
        self.assertEqual(len(self.store.inbox(ALICE)), 1)
        self.assertTrue(self.transport_closed())

    def test_commands_pipelined_after_a_message_committed_at_once_get_421_when_the_server_stops(self):
        # The RecordingStore commits at once: the 250 is sent inside the loop
        # that reads the commands after it, which must still say goodbye.
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.session.proto.shutdown()
        self.session.clear()
        self.session.send(b"Subject: s\r\n\r\nlast one\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nNOOP\r\n")
        self.assertEqual(self.session.codes(), [b"250", b"421"])
        self.assertEqual(self.session.replies()[-1], b"421 4.3.2 mail.example.test Service shutting down")
        self.assertEqual(len(self.store.inbox(ALICE)), 1)
        self.assertTrue(self.transport_closed())

    def test_mail_from_gets_452_while_the_store_says_its_disk_is_nearly_full(self):
        # min_free_disk is the config's default (50 MiB); the store, not the builder, says how much is free.
        self.store.freeSpace.free = 1024 * 1024
        self.session.clear()
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\n")
        self.assertEqual(self.session.replies()[-1], b"452 4.3.1 Insufficient system storage")
        self.store.freeSpace.free = 100 * 1024 * 1024
        self.session.send(b"MAIL FROM:<>\r\n")
        self.assertEqual(self.session.replies()[-1], b"250 2.1.0 Ok")

    def test_helo_with_spaces_or_empty_argument_gets_501(self):
        self.session.clear()
        self.session.send(b"HELO\r\nEHLO a b\r\n")
        self.assertEqual(self.session.codes(), [b"501", b"501"])

    def test_out_of_sequence_and_unknown_commands(self):
        self.session.clear()
        self.session.send(b"MAIL FROM:<a@b.test>\r\nHELO c\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nFOO\r\nMAIL FROM:a@b\r\n")
        self.assertEqual(self.session.codes(), [b"503", b"250", b"503", b"503", b"500", b"501"])

    def test_vrfy_never_reveals_whether_a_user_exists(self):
        self.session.clear()
        self.session.send(b"VRFY alice\r\nVRFY nobody\r\n")
        self.assertEqual(self.session.codes(), [b"252", b"252"])

    def test_size_parameter_over_the_limit_gets_552(self):
        self.session.clear()
        self.session.send(b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=99999999\r\n")
        self.assertEqual(self.session.replies()[-1], b"552 5.3.4 Message size exceeds fixed maximum message size")

    def test_message_over_the_size_limit_gets_552_after_data_and_nothing_is_stored(self):
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertTrue(b"354" in self.session.codes())
        self.session.clear()
        for _ in range(20):
            self.session.send(b"y" * 100_000 + b"\r\n")
        self.session.send(b".\r\nNOOP\r\n")
        self.assertEqual(self.session.codes(), [b"552", b"250"])
        self.assertEqual(self.store.inbox(ALICE), [])

    def _send_message(self, message: bytes) -> None:
        self.session.send(b"HELO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertTrue(b"354" in self.session.codes())
        self.session.clear()
        for start in range(0, len(message), 7000):  # pieces that split lines, and CRLFs
            self.session.send(message[start : start + 7000])
        self.session.send(b".\r\nNOOP\r\n")
        self.assertTrue(len(self.session.codes()) == 2)

    def test_a_message_that_has_passed_50_relays_is_refused_as_a_loop(self):
        received = b"".join(b"Received: from hop%d.test by hop%d.test;\r\n\tMon, 1 Dec 2026 00:00:00 +0000\r\n" % (n, n + 1) for n in range(50))
        self._send_message(received + b"Subject: loop\r\n\r\nbody\r\n")
        self.assertEqual(self.session.replies()[0], b"554 5.4.6 Too many hops (50 Received: header fields): mail loop detected")
        self.assertEqual(self.session.codes(), [b"554", b"250"])
        self.assertEqual(self.store.inbox(ALICE), [])

    def test_49_received_fields_and_received_in_the_body_are_not_a_loop(self):
        received = b"".join(b"Received: from hop%d.test;\r\n\tMon, 1 Dec 2026 00:00:00 +0000\r\n" % n for n in range(49))
        self._send_message(received + b"Subject: ok\r\n\r\n" + b"Received: in the body\r\n" * 100)
        self.assertEqual(self.session.codes(), [b"250", b"250"])
        self.assertEqual(len(self.store.inbox(ALICE)), 1)

    def test_a_header_field_over_100_kib_is_refused_with_552_and_nothing_is_stored(self):
        recipients = b",\r\n ".join(b"person%06d@example.test" % n for n in range(5000))  # ~150 KiB, folded
        self._send_message(b"Subject: many\r\nTo: " + recipients + b"\r\n\r\nbody\r\n")
        self.assertEqual(self.session.replies()[0], b"552 5.6.0 Message header field longer than 100 KiB")
        self.assertEqual(self.store.inbox(ALICE), [])

    def test_a_message_with_a_nul_byte_is_refused_and_nothing_is_stored(self):
        self._send_message(b"Subject: nul\r\n\r\nbefore\x00after\r\n")
        self.assertEqual(self.session.replies()[0], b"554 5.6.0 Message contains NUL characters")
        self.assertEqual(self.store.inbox(ALICE), [])

    def test_helo_names_that_would_shape_our_received_header_are_refused(self):
        self.session.clear()
        self.session.send(b"EHLO a\tb\r\nEHLO x(y)\r\nHELO a;b\r\nEHLO [192.0.2.1]\r\nEHLO [IPv6:2001:db8::1]\r\nHELO host_1.example.test\r\n")
        self.assertEqual(self.session.codes(), [b"501", b"501", b"501", b"250", b"250", b"250"])
        self.assertIn(b"501 5.5.2 Invalid hostname: a domain name or an address literal such as [192.0.2.1]", self.session.replies())

    def test_too_many_errors_close_the_connection_with_421(self):
        self.session.clear()
        self.session.send(b"BAD\r\n" * 12)
        self.assertEqual(self.session.codes()[-1], b"421")
        self.assertTrue(self.transport_closed())

    def test_auth_is_not_offered_or_accepted_on_the_mx_listener(self):
        self.session.clear()
        self.session.send(b"EHLO c\r\nAUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1zZWNyZXQ=\r\n")
        self.assertNotIn(b"AUTH", b"".join(self.session.replies()[:-1]))
        self.assertEqual(self.session.codes()[-1], b"502")

class SubmissionProtocolTests(TestCase):
    def setUp(self) -> None:
        self.store = RecordingStore()
        self.clock = Clock()

    def session(self, **kwargs) -> Session:
        session = Session(make_factory(self.store, submission=True, clock=self.clock, **kwargs))
        self.addCleanup(session.proto.connectionLost, None)
        session.clear()
        return session

    def test_starttls_discards_bytes_pipelined_after_it(self):
        session = self.session(tls=object())
        session.send(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<x@remote.test>\r\n")
        self.assertEqual(session.codes(), [b"250", b"220"])
        self.assertEqual(len(session.tls_started), 1)
        self.assertIsNone(session.proto._ehlo)
        self.assertEqual(session.proto._buffer, b"")

    def test_auth_over_plaintext_is_refused_and_not_advertised(self):
        session = self.session(tls=object())
        session.send(b"EHLO c\r\nAUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1zZWNyZXQ=\r\nMAIL FROM:<alice@example.test>\r\n")
        self.assertNotIn(b"250-AUTH PLAIN LOGIN", session.replies())
        self.assertEqual(session.codes()[1:], [b"538", b"530"])

    def test_auth_plain_then_sender_must_be_owned(self):
        session = self.session(allow_plaintext_auth=True)
        token = base64.b64encode(b"\x00alice@example.test\x00alice-secret")
        session.send(b"EHLO c\r\nAUTH PLAIN " + token + b"\r\nMAIL FROM:<bob@example.test>\r\nMAIL FROM:<alice+lists@example.test>\r\n")
        self.assertTrue(len(session.codes()) == 4)
        self.assertEqual(session.codes(), [b"250", b"235", b"553", b"250"])

    def test_auth_login_with_wrong_password_gets_535_after_a_delay_then_421(self):
        session = self.session(allow_plaintext_auth=True)
        user = base64.b64encode(b"alice@example.test")
        bad = base64.b64encode(b"wrong")
        session.send(b"EHLO c\r\n" + (b"AUTH LOGIN\r\n" + user + b"\r\n" + bad + b"\r\n") * 3)
        advance(self.clock, 10)
        self.assertTrue(b"421" in session.codes())
        self.assertEqual(session.codes(), [b"250", b"334", b"334", b"535", b"334", b"334", b"535", b"334", b"334", b"421"])

    def submitted(self, message: bytes) -> bytes:
        """Alice logs in and submits C{message} (the data, its end included) to bob: his stored copy."""
        session = self.session(allow_plaintext_auth=True)
        token = base64.b64encode(b"\x00alice@example.test\x00alice-secret")
        session.send(b"EHLO c\r\nAUTH PLAIN " + token + b"\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        self.assertTrue(b"354" in session.codes())
        session.send(message)
        self.assertTrue(session.codes()[-1:] == [b"250"])
        [stored] = self.store.inbox("bob@example.test")
        return stored

    def test_submission_adds_message_id_and_date_when_missing(self):
        stored = self.submitted(b"Subject: no ids\r\n\r\nhello\r\n.\r\n")
        headers = stored.split(b"\r\n\r\n")[0]
        self.assertIn(b"\r\nDate: ", headers)
        self.assertIn(b"\r\nMessage-ID: <", headers)
        self.assertIn(b"with ESMTPA id", headers)
        self.assertTrue(stored.endswith(b"Subject: no ids\r\n\r\nhello\r\n"))

    def test_received_and_date_are_dated_by_the_listeners_clock(self):
        self.clock.advance(1_700_000_000)
        headers = self.submitted(b"Subject: no date\r\n\r\nhello\r\n.\r\n").split(b"\r\n\r\n")[0]
        self.assertIn(b"\tfor <bob@example.test>;\r\n\tTue, 14 Nov 2023 22:13:20 -0000\r\n", headers)
        self.assertIn(b"\r\nDate: Tue, 14 Nov 2023 22:13:20 -0000\r\n", headers)

    def test_submission_refuses_a_from_header_the_user_does_not_own(self):
        session = self.session(allow_plaintext_auth=True)
        token = base64.b64encode(b"\x00alice@example.test\x00alice-secret")
        session.send(b"EHLO c\r\nAUTH PLAIN " + token + b"\r\n")
        self.assertTrue(b"235" in session.codes())
        refused = b"553 5.7.1 From: header address not owned by you"
        for header_from, reply in (
            (b"The Boss <bob@example.test>", refused),
            (b"Alice <alice@example.test>,\r\n Bob <bob@example.test>", refused),
            (b"Alice <ALICE+news@example.test>", b"250 2.0.0 Ok: queued as"),
        ):
            session.clear()
            session.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
            self.assertTrue(b"354" in session.codes())
            session.send(b"From: " + header_from + b"\r\nSubject: s\r\n\r\nhello\r\n.\r\n")
            self.assertTrue(len(session.codes()) == 4)
            self.assertTrue(session.replies()[-1].startswith(reply), (header_from, session.replies()))
        self.assertEqual(len(self.store.inbox("bob@example.test")), 1)

    def test_remote_recipient_on_submission_gets_a_temporary_error_until_relay_exists(self):
        session = self.session(allow_plaintext_auth=True)
        token = base64.b64encode(b"\x00alice@example.test\x00alice-secret")
        session.send(b"EHLO c\r\nAUTH PLAIN " + token + b"\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<x@remote.test>\r\n")
        self.assertTrue(len(session.codes()) == 4)
        self.assertEqual(session.replies()[-1], b"451 4.4.0 Remote delivery is not available yet; try again later")


class TimeoutTests(TestCase):
    def test_idle_client_gets_421_after_the_greeting_timeout(self):
        clock = Clock()
        factory = make_factory(RecordingStore(), clock=clock)
        session = Session(factory)
        session.clear()
        clock.advance(59)
        self.assertFalse(session.transport.disconnecting)
        clock.advance(2)
        self.assertEqual(session.codes(), [b"421"])
        self.assertTrue(session.transport.disconnecting)
        session.proto.connectionLost(None)

    def test_connection_limit_per_ip_gets_421(self):
        factory = make_factory(RecordingStore(), max_connections_per_ip=2)
        sessions = [Session(factory) for _ in range(3)]
        self.assertEqual(sessions[2].codes(), [b"421"])
        self.assertIn(b"4.3.2", sessions[2].replies()[0])
        other = Session(factory, peer="192.0.2.8")
        self.assertEqual(other.codes(), [b"220"])
        for s in sessions + [other]:
            s.proto.connectionLost(None)


class DataReceiverTests(TestCase):
    """The DATA parser's fast path must store exactly what the line-by-line path stores."""

    def receive(self, segments: list[bytes], fast: bool, submission: bool) -> tuple[bytes, bytes]:
        from mailapp.smtp import _DataReceiver

        class Sink:
            def __init__(self) -> None:
                self.data = b""

            def write(self, data: bytes) -> None:
                self.data += data

        sink = Sink()
        receiver = _DataReceiver(sink, 10**9, prefix=b"Received: x\r\n", addMissing=(lambda h: b"X-Added: 1\r\n") if submission else None)
        receiver.fastPath = fast
        rest = b""
        for segment in segments:
            rest = receiver.feed(rest + segment)
            if receiver.done:
                break
        self.assertTrue(receiver.done)
        return sink.data, rest

    def test_fast_and_line_by_line_paths_agree_on_random_input(self):
        import random

        generator = random.Random(5321)
        alphabet = [b"a", b"b", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b":", b" ", b"\r\n\r\n", b"x" * 50]
        for case in range(300):
            body = b"".join(generator.choice(alphabet) for _ in range(generator.randint(0, 400)))
            stream = body + b"\r\n.\r\nQUIT\r\n"
            cuts = sorted(generator.sample(range(1, len(stream)), min(len(stream) - 1, generator.randint(0, 8))))
            segments = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
            for submission in (False, True):
                fast = self.receive(segments, True, submission)
                slow = self.receive(segments, False, submission)
                self.assertEqual(fast, slow, f"case {case}: {stream!r}")


class PipeliningRegressionTests(MXSessionTestCase):
    """Found in review: answers that are ready at once, and clients that leave mid-pipeline."""

    def test_hundreds_of_pipelined_recipients_past_the_limit_each_get_a_reply(self):
        self.session.clear()
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\n" + b"RCPT TO:<alice@example.test>\r\n" * 400 + b"NOOP\r\n")
        self.assertTrue(len(self.session.codes()) == 403)
        codes = self.session.codes()
        self.assertEqual(codes[:7], [b"250"] * 7)
        self.assertEqual(codes[7:402], [b"452"] * 395)
        self.assertEqual(codes[402], b"250")

    def test_a_full_disk_at_any_phase_of_the_commit_gets_452_and_stores_nothing(self):
        from mailapp.errors import StorageFull

        for phase in ("write", "finish", "deliver"):
            self.session.clear()
            self.session.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
            self.store.failNext(phase, StorageFull())
            self.session.clear()
            self.session.send(b"Subject: s\r\n\r\nbody\r\n.\r\nNOOP\r\n")
            self.assertEqual(self.session.replies(), [b"452 4.3.1 Insufficient system storage", b"250 2.0.0 Ok"], phase)
        self.assertEqual(self.store.delivered, [])

    def test_commands_pipelined_behind_a_commit_in_flight_never_run_after_a_drop(self):
        # The protocol half of tests/e2e/test_smtp_spool.py's drop test: the commit is held, not timed.
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        committed = self.store.hold("deliver")
        self.session.clear()
        self.session.send(
            b"Subject: one\r\n\r\nfirst\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" + b"z" * 200_000
        )
        self.session.proto.connectionLost(None)
        committed.callback(None)
        self.assertEqual(len(self.store.inbox(ALICE)), 1)
        self.assertEqual(self.session.codes(), [b"250"])
        self.assertEqual(self.store.inbox("bob@example.test"), [])


class ReviewFollowUpTests(TestCase):
    def session(self, **kwargs) -> Session:
        session = Session(make_factory(RecordingStore(), **kwargs))
        self.addCleanup(session.proto.connectionLost, None)
        session.clear()
        return session

    def test_probing_unknown_users_counts_as_errors_and_ends_with_421(self):
        session = self.session()
        session.send(b"HELO c\r\nMAIL FROM:<>\r\n" + b"".join(b"RCPT TO:<nobody%d@example.test>\r\n" % n for n in range(12)))
        advance(session.factory.reactor, 40)  # the first five are free, then 0.5 s doubling
        self.assertTrue(b"421" in session.codes())
        self.assertEqual(session.codes(), [b"250", b"250"] + [b"550"] * 10 + [b"421"])
        self.assertTrue(session.transport.disconnecting)

    def test_ipv4_clients_on_a_dual_stack_listener_match_ipv4_trusted_networks(self):
        factory = make_factory(RecordingStore(), trusted=("192.0.2.0/24",))
        self.assertTrue(factory.trusted("::ffff:192.0.2.7"))
        self.assertTrue(factory.trusted("192.0.2.7"))
        self.assertFalse(factory.trusted("::ffff:198.51.100.1"))

    def test_rcpt_to_postmaster_without_a_domain_reaches_the_first_local_domains_postmaster(self):
        from mailapp.smtp import SMTPPolicy

        factory = make_factory(RecordingStore())
        factory.policy = SMTPPolicy(**{**factory.policy.__dict__, "postmaster": "postmaster@example.test"})
        factory.router.accounts.add_alias("postmaster@example.test", ["alice@example.test"])
        session = Session(factory)
        self.addCleanup(session.proto.connectionLost, None)
        session.clear()
        session.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\n")
        self.assertTrue(len(session.codes()) == 3)
        self.assertEqual(session.codes(), [b"250", b"250", b"250"])
