"""
REQUIRETLS (RFC 8689) on the server side: offered on submission inside TLS
when the server relays, accepted on MAIL FROM there (and carried on the
transaction), refused where it is not offered.
"""

from __future__ import annotations

import base64

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from zope.interface import alsoProvides
from twisted.trial.unittest import TestCase

from mailapp.testing import RecordingStore
from tests.protocol.smtp_client import Session
from tests.protocol.test_smtp_session import make_factory

TOKEN = base64.b64encode(b"\x00alice@example.test\x00alice-secret")


class RequireTLSTests(TestCase):
    def session(self, submission: bool = True, relays: bool = True) -> Session:
        session = Session(make_factory(RecordingStore(), submission=submission, clock=Clock(), tls=object()))
        if relays:
            session.proto.router.queue = object()  # a relay queue: the relay honours REQUIRETLS
        self.addCleanup(session.proto.connectionLost, None)
        session.clear()
        return session

    @staticmethod
    def starttls(session: Session, ehlo: bytes = b"EHLO c\r\n") -> None:
        """STARTTLS, with the transport then what a TLS one is (StringTransport does no handshake)."""
        session.send(ehlo + b"STARTTLS\r\n")
        alsoProvides(session.transport, ISSLTransport)
        session.clear()

    def test_submission_offers_requiretls_only_after_starttls(self) -> None:
        session = self.session()
        session.send(b"EHLO c\r\n")
        self.assertNotIn(b"250-REQUIRETLS", session.replies())
        self.starttls(session, b"")
        session.send(b"EHLO c\r\n")
        self.assertIn(b"250-REQUIRETLS", session.replies())

    def test_requiretls_on_mail_from_is_accepted_and_carried_on_the_transaction(self) -> None:
        session = self.session()
        self.starttls(session)
        session.send(b"EHLO c\r\nAUTH PLAIN " + TOKEN + b"\r\nMAIL FROM:<alice@example.test> REQUIRETLS\r\n")
        self.assertEqual(session.codes(), [b"250", b"235", b"250"])
        self.assertTrue(session.proto._txn.requiretls)

    def test_mail_without_requiretls_leaves_the_transaction_unmarked(self) -> None:
        session = self.session()
        self.starttls(session)
        session.send(b"EHLO c\r\nAUTH PLAIN " + TOKEN + b"\r\nMAIL FROM:<alice@example.test>\r\n")
        self.assertFalse(session.proto._txn.requiretls)

    def test_the_mx_neither_offers_nor_accepts_requiretls(self) -> None:
        session = self.session(submission=False)
        self.starttls(session)
        session.send(b"EHLO c\r\nMAIL FROM:<carol@remote.test> REQUIRETLS\r\n")
        self.assertNotIn(b"250-REQUIRETLS", session.replies())
        self.assertEqual(session.codes(), [b"250", b"555"])

    def test_submission_without_a_relay_does_not_offer_requiretls(self) -> None:
        session = self.session(relays=False)
        self.starttls(session)
        session.send(b"EHLO c\r\n")
        self.assertNotIn(b"250-REQUIRETLS", session.replies())
