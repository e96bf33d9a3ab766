"""
The MX applies each recipient's allow and block lists at RCPT: a blocked
sender is refused 550 5.7.1 for that recipient only, an allowed one is
marked on the transaction for the spam checks that follow.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from mailapp import logevents
from mailapp.testing import RecordingStore
from tests.protocol.accounts import make_accounts
from tests.protocol.context import server_context
from tests.protocol.smtp_client import Session
from mailapp.testing import build_factory

BLOCKED = b"550 5.7.1 Sender blocked by the recipient"


class SenderListTests(TestCase):
    def setUp(self) -> None:
        self.accounts = make_accounts()
        self.store = RecordingStore()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def session(self, submission: bool = False, trusted: tuple[str, ...] = ()) -> Session:
        context = server_context(self.store, accounts=self.accounts, trusted_networks=trusted)
        session = Session(build_factory(context, "submission" if submission else "smtp", tls="none", allow_plaintext_auth=True))
        self.addCleanup(session.proto.connectionLost, None)
        return session

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [entry for entry in self.events if entry.get("log_event") == event]

    def test_a_sender_on_the_users_block_list_gets_550_for_that_recipient_only(self) -> None:
        self.accounts.set_sender_rule("alice@example.test", "spam@bad.example", "block")
        session = self.session()
        session.send(b"EHLO c\r\nMAIL FROM:<Spam@Bad.Example>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n")
        self.assertEqual(session.replies()[-2:], [BLOCKED, b"250 2.1.5 Ok"])
        session.send(b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        self.assertEqual(session.codes()[-1], b"250")
        self.assertEqual(self.store.inbox("alice@example.test"), [])
        self.assertEqual(len(self.store.inbox("bob@example.test")), 1)
        [event] = self.logged(logevents.SMTP_SENDER_BLOCKED)
        self.assertEqual(
            (event["sender"], event["recipient"], event["owner"], event["pattern"]),
            ("Spam@Bad.Example", "alice@example.test", "alice@example.test", "spam@bad.example"),
        )

    def test_a_domains_block_list_refuses_every_recipient_there(self) -> None:
        self.accounts.set_sender_rule("example.test", "*.bad.example", "block")
        session = self.session()
        session.send(b"EHLO c\r\nMAIL FROM:<a@mx.bad.example>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<team@example.test>\r\n")
        self.assertEqual(session.replies()[-2:], [BLOCKED, BLOCKED])

    def test_the_users_allow_list_wins_over_its_domains_block_list(self) -> None:
        self.accounts.set_sender_rule("example.test", "bad.example", "block")
        self.accounts.set_sender_rule("alice@example.test", "friend@bad.example", "allow")
        session = self.session()
        session.send(b"EHLO c\r\nMAIL FROM:<friend@bad.example>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n")
        self.assertEqual(session.replies()[-2:], [b"250 2.1.5 Ok", BLOCKED])
        txn = session.proto._txn
        self.assertEqual(txn.allowed_by_recipient, {"alice@example.test"})
        self.assertEqual(txn.allowed_accounts, {"alice@example.test"})
        self.assertEqual(len(self.logged(logevents.SMTP_SENDER_ALLOWED)), 1)

    def test_an_allow_through_a_tag_marks_the_recipient_as_given_and_the_account_it_reaches(self) -> None:
        self.accounts.set_sender_rule("alice@example.test", "news.example", "allow")
        session = self.session()
        session.send(b"EHLO c\r\nMAIL FROM:<list@news.example>\r\nRCPT TO:<Alice+news@example.test>\r\nRCPT TO:<carol@example.test>\r\n")
        self.assertEqual(session.codes()[-2:], [b"250", b"250"])
        txn = session.proto._txn
        self.assertEqual(txn.allowed_by_recipient, {"Alice+news@example.test"})
        self.assertEqual(txn.allowed_accounts, {"alice@example.test"})

    def test_the_null_sender_is_never_blocked(self) -> None:
        self.accounts.set_sender_rule("example.test", "bad.example", "block")
        session = self.session()
        session.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.codes()[-1], b"250")

    def test_a_trusted_client_is_not_checked(self) -> None:
        self.accounts.set_sender_rule("alice@example.test", "bad.example", "block")
        session = self.session(trusted=("192.0.2.0/24",))
        session.send(b"EHLO c\r\nMAIL FROM:<x@bad.example>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.codes()[-1], b"250")
        self.assertEqual(self.logged(logevents.SMTP_SENDER_BLOCKED), [])

    def test_a_change_applies_to_the_next_rcpt(self) -> None:
        session = self.session()
        session.send(b"EHLO c\r\nMAIL FROM:<x@bad.example>\r\nRCPT TO:<alice@example.test>\r\n")
        self.accounts.set_sender_rule("alice@example.test", "x@bad.example", "block")
        session.send(b"RCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.replies()[-2:], [b"250 2.1.5 Ok", BLOCKED])

    def test_an_allowed_recipient_marks_its_accounts_even_when_an_earlier_rcpt_reached_them(self) -> None:
        self.accounts.set_sender_rule("alice@example.test", "news.example", "allow")
        session = self.session()
        session.send(b"EHLO c\r\nMAIL FROM:<list@news.example>\r\nRCPT TO:<team@example.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.codes()[-2:], [b"250", b"250"])
        txn = session.proto._txn
        self.assertEqual((txn.allowed_by_recipient, txn.allowed_accounts), ({"alice@example.test"}, {"alice@example.test"}))

    def test_a_blocked_recipient_marks_nothing_allowed(self) -> None:
        self.accounts.set_sender_rule("example.test", "news.example", "allow")
        self.accounts.set_sender_rule("bob@example.test", "news.example", "block")
        session = self.session()
        session.send(b"EHLO c\r\nMAIL FROM:<list@news.example>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<nobody@example.test>\r\n")
        self.assertEqual(session.replies()[-2:], [BLOCKED, b"550 5.1.1 No such user here"])
        txn = session.proto._txn
        self.assertEqual((txn.allowed_by_recipient, txn.allowed_accounts), (set(), set()))
