"""
DSN (RFC 3461) on the server side: offered in EHLO; RET and ENVID on MAIL,
NOTIFY and ORCPT on RCPT, checked and carried on the transaction; a bad
value is a 501 that names the parameter, an unknown one still a 555; and a
submitted message for a local mailbox with NOTIFY=SUCCESS gets its
"delivered" DSN. (What the relay does with them: tests/unit/test_dsn.py.)
"""

from __future__ import annotations

import base64

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mailapp.dsn import RecipientRequest
from mailapp.testing import RecordingStore
from tests.protocol.smtp_client import Session
from tests.protocol.test_smtp_session import make_factory

TOKEN = base64.b64encode(b"\x00alice@example.test\x00alice-secret")


class DSNParameterTests(TestCase):
    def session(self, submission: bool = False) -> Session:
        self.store = RecordingStore()
        session = Session(make_factory(self.store, submission=submission, clock=Clock(), allow_plaintext_auth=submission))
        self.addCleanup(session.proto.connectionLost, None)
        session.clear()
        return session

    def test_ehlo_offers_dsn(self) -> None:
        session = self.session()
        session.send(b"EHLO c\r\n")
        self.assertIn(b"250-DSN", session.replies())

    def test_ret_envid_notify_and_orcpt_are_carried_on_the_transaction(self) -> None:
        session = self.session()
        session.send(
            b"EHLO c\r\nMAIL FROM:<carol@remote.test> RET=hdrs ENVID=QQ+2B1\r\n"
            b"RCPT TO:<alice@example.test> NOTIFY=success,delay ORCPT=rfc822;alice@example.test\r\n"
        )
        self.assertEqual(session.codes(), [b"250", b"250", b"250"])
        txn = session.proto._txn
        self.assertEqual((txn.dsn.ret, txn.dsn.envid), ("HDRS", "QQ+2B1"))
        self.assertEqual(
            txn.dsn.request_for("alice@example.test"), RecipientRequest(("SUCCESS", "DELAY"), "rfc822;alice@example.test")
        )

    def test_bad_values_are_refused_with_501_naming_the_parameter(self) -> None:
        session = self.session()
        session.send(b"EHLO c\r\nMAIL FROM:<carol@remote.test> RET=BODY\r\n")
        session.send(b"MAIL FROM:<carol@remote.test> ENVID=" + b"x" * 101 + b"\r\n")
        session.send(b"MAIL FROM:<carol@remote.test>\r\nRCPT TO:<alice@example.test> NOTIFY=NEVER,SUCCESS\r\n")
        session.send(b"RCPT TO:<alice@example.test> ORCPT=alice@example.test\r\n")
        session.send(b"RCPT TO:<alice@example.test> COLOUR=blue\r\n")
        replies = session.replies()
        self.assertEqual(session.codes(), [b"250", b"501", b"501", b"250", b"501", b"501", b"555"])
        for name in (b"RET", b"ENVID", b"NOTIFY", b"ORCPT"):
            self.assertTrue(any(name in reply for reply in replies), name)

    def test_a_submitted_message_with_notify_success_gets_a_delivered_dsn(self) -> None:
        session = self.session(submission=True)
        session.send(
            b"EHLO c\r\nAUTH PLAIN " + TOKEN + b"\r\nMAIL FROM:<alice@example.test> ENVID=S1\r\n"
            b"RCPT TO:<bob@example.test> NOTIFY=SUCCESS\r\nDATA\r\n"
            b"Subject: receipts\r\n\r\nHello.\r\n.\r\n"
        )
        self.assertEqual(session.codes()[-1], b"250")
        [copy] = self.store.inbox("bob@example.test")
        self.assertIn(b"Hello.", copy)
        [report] = self.store.inbox("alice@example.test")
        self.assertIn(b"Action: delivered", report)
        self.assertIn(b"Original-Envelope-Id: S1", report)
        self.assertIn(b"Subject: receipts", report)
