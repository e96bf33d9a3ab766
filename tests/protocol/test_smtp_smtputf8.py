"""
SMTPUTF8 (RFC 6531) on the server side, byte by byte: offered in EHLO; a
UTF-8 address only in a transaction whose MAIL FROM said SMTPUTF8 (else
553 5.6.7); bytes that are not UTF-8, or a control character spelled in
UTF-8, still refused as before; an internationalised domain IDNA refuses
is a bad address; the flag carried on the transaction.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mailapp.testing import RecordingStore
from tests.protocol.smtp_client import Session
from tests.protocol.test_smtp_session import make_factory


class SMTPUTF8Tests(TestCase):
    def setUp(self) -> None:
        self.session = Session(make_factory(RecordingStore(), clock=Clock()))
        self.addCleanup(self.session.proto.connectionLost, None)
        self.session.clear()

    def test_ehlo_offers_smtputf8(self) -> None:
        self.session.send(b"EHLO c\r\n")
        self.assertIn(b"250-SMTPUTF8", self.session.replies())

    def test_a_utf8_address_needs_smtputf8_on_mail_from(self) -> None:
        self.session.send("EHLO c\r\nMAIL FROM:<zoë@remote.test>\r\n".encode())
        self.assertEqual(self.session.replies()[-1][:9], b"553 5.6.7")
        self.session.send("MAIL FROM:<zoë@remote.test> SMTPUTF8\r\n".encode())
        self.assertEqual(self.session.codes()[-1], b"250")
        self.assertTrue(self.session.proto._txn.smtputf8)

    def test_a_utf8_recipient_in_a_transaction_without_smtputf8_gets_553(self) -> None:
        self.session.send("EHLO c\r\nMAIL FROM:<zoe@remote.test>\r\nRCPT TO:<jörg@example.test>\r\n".encode())
        self.assertEqual(self.session.codes(), [b"250", b"250", b"553"])

    def test_bytes_that_are_not_utf8_or_spell_a_control_are_refused_as_before(self) -> None:
        self.session.send(b"EHLO c\r\nMAIL FROM:<zo\xe9@remote.test> SMTPUTF8\r\n")
        self.session.send("MAIL FROM:<zo\u0085e@remote.test> SMTPUTF8\r\n".encode())
        self.assertEqual(self.session.codes(), [b"250", b"501", b"501"])

    def test_an_internationalised_domain_idna_refuses_is_a_bad_address(self) -> None:
        self.session.send("EHLO c\r\nMAIL FROM:<zoe@ex\u200dmple.test> SMTPUTF8\r\n".encode())
        self.assertEqual(self.session.replies()[-1][:9], b"501 5.1.3")
