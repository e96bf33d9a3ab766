"""
\\Recent as the sessions see it (RFC 3501 2.3.2), claimed through the store
(L{mailapp.imap.selected.SelectedFolder.claim}): of the sessions that
have a folder selected when mail arrives, the first told of it owns it;
EXAMINE and STATUS show what no session has claimed and take nothing; and
the sessions of two listeners (two factories over one store, as two
worker processes are over one index) share one claim.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp.testing import FakeStore, build_factory, service_context
from tests.protocol.accounts import make_accounts
from tests.protocol.imap_sessions import logged_in


class RecentTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        context = service_context(store=self.store, accounts=make_accounts())
        self.factories = [build_factory(context, "imap", allow_plaintext_auth=True) for _ in range(2)]
        self.inbox = self.successResultOf(self.store.mailbox("alice@example.test").folder("INBOX"))

    def deliver(self) -> None:
        self.successResultOf(self.inbox.append(b"Subject: new\r\n\r\nbody\r\n"))

    def session(self, listener: int = 0) -> tuple[Any, StringTransport]:
        return logged_in(self, self.factories[listener])

    def command(self, session: tuple[Any, StringTransport], line: bytes) -> bytes:
        protocol, transport = session
        transport.clear()
        protocol.dataReceived(line + b"\r\n")
        answer = transport.value()
        self.assertIn(line.split(b" ", 1)[0] + b" OK", answer)
        return answer

    def test_mail_that_arrives_while_two_sessions_have_the_folder_selected_is_recent_in_the_first_told(self) -> None:
        first, second = self.session(), self.session()
        self.command(first, b"s SELECT INBOX")
        self.command(second, b"s SELECT INBOX")
        self.deliver()
        told_second = self.command(second, b"n NOOP")
        told_first = self.command(first, b"n NOOP")
        self.assertIn(b"* 1 EXISTS\r\n* 1 RECENT\r\n", told_second)
        self.assertIn(b"* 1 EXISTS\r\n* 0 RECENT\r\n", told_first)
        self.assertIn(b"* 1 FETCH (FLAGS (\\Recent))", self.command(second, b"f FETCH 1 FLAGS"))
        self.assertIn(b"* 1 FETCH (FLAGS ())", self.command(first, b"f FETCH 1 FLAGS"))

    def test_examine_and_status_show_the_unclaimed_as_recent_and_the_next_select_still_gets_them(self) -> None:
        self.deliver()
        self.deliver()
        looker, selector = self.session(), self.session()
        self.assertIn(b"* STATUS \"INBOX\" (MESSAGES 2 RECENT 2)", self.command(looker, b"t STATUS INBOX (MESSAGES RECENT)"))
        self.assertIn(b"* 2 RECENT\r\n", self.command(looker, b"e EXAMINE INBOX"))
        self.assertIn(b"* 2 RECENT\r\n", self.command(selector, b"s SELECT INBOX"))
        # Claimed by that SELECT: nobody else sees them as recent now.
        self.assertIn(b"* 0 RECENT\r\n", self.command(looker, b"e EXAMINE INBOX"))
        self.assertIn(b"* STATUS \"INBOX\" (RECENT 0)", self.command(looker, b"t STATUS INBOX (RECENT)"))

    def test_an_examine_session_is_told_new_mail_as_recent_until_a_select_claims_it(self) -> None:
        looker, selector = self.session(), self.session()
        self.command(looker, b"e EXAMINE INBOX")
        self.deliver()
        self.assertIn(b"* 1 EXISTS\r\n* 1 RECENT\r\n", self.command(looker, b"n NOOP"))
        self.assertIn(b"* 1 RECENT\r\n", self.command(selector, b"s SELECT INBOX"))

    def test_sessions_of_two_listeners_share_one_claim(self) -> None:
        self.deliver()
        on_one, on_other = self.session(0), self.session(1)
        self.assertIn(b"* 1 RECENT\r\n", self.command(on_one, b"s SELECT INBOX"))
        self.assertIn(b"* 0 RECENT\r\n", self.command(on_other, b"s SELECT INBOX"))
        self.deliver()
        self.assertIn(b"* 2 EXISTS\r\n* 1 RECENT\r\n", self.command(on_other, b"n NOOP"))
        self.assertIn(b"* 2 EXISTS\r\n* 1 RECENT\r\n", self.command(on_one, b"n NOOP"))
        self.assertIn(b"* SEARCH 1\r\n", self.command(on_one, b"r SEARCH RECENT"))
        self.assertIn(b"* SEARCH 2\r\n", self.command(on_other, b"r SEARCH RECENT"))


class _HeldFolder:
    """A folder whose claims wait for the test: what the factory asked, and the Deferreds to fire."""

    name = "INBOX"

    def __init__(self) -> None:
        self.asked: list[tuple[int, Deferred[range]]] = []

    def claimRecent(self, uid: int) -> Deferred[range]:
        d: Deferred[range] = Deferred()
        self.asked.append((uid, d))
        return d


class ClaimsInFlightTests(TestCase):
    def setUp(self) -> None:
        context = service_context(store=FakeStore(), accounts=make_accounts())
        self.factory = build_factory(context, "imap", allow_plaintext_auth=True)
        self.folder = _HeldFolder()

    def test_a_claim_in_flight_is_not_asked_again_and_nothing_is_remembered_once_it_is_answered(self) -> None:
        first = self.factory.claimRecent("alice@example.test", self.folder, 7, 3)
        # Woken by the same delivery: covered by the claim in flight, owns nothing, asks nothing.
        self.assertEqual(self.successResultOf(self.factory.claimRecent("Alice@example.test", self.folder, 7, 3)), range(0))
        self.assertEqual([uid for uid, _ in self.folder.asked], [3])
        self.folder.asked[0][1].callback(range(1, 4))
        self.assertEqual(self.successResultOf(first), range(1, 4))
        # Answered: the next claim asks the store (a folder made again must not inherit the last one's claim).
        self.factory.claimRecent("alice@example.test", self.folder, 7, 3)
        self.assertEqual([uid for uid, _ in self.folder.asked], [3, 3])
