"""
The webmail's settings page over HTTP: a user sees and edits their own
allow and block lists of senders, with the command's validation, and never
anyone else's. The real Klein resource on a loopback socket, fake accounts
(whose lists decide as the database's do) and a real Maildir store.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.accounts import SenderRule
from mailapp.auth import makePortal
from mailapp.delivery import Router
from mailapp.store import MaildirStore
from mailapp.testing import FakeAccounts
from mailapp.web import Webmail, WebmailPolicy
from tests.e2e.test_web_http import ALICE, BOB, PASSWORDS, Client, csrf_of


class WebmailSettingsTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        store = MaildirStore(Path(self.mktemp()) / "mail", reactor=reactor)
        self.accounts = FakeAccounts(["example.test"])
        for account, password in PASSWORDS.items():
            self.accounts.add_user(account, password)
        policy = WebmailPolicy(hostname="mail.example.test", max_message_size=200_000)
        webmail = Webmail(Router(self.accounts, store), makePortal(self.accounts, store), policy, reactor)
        self.port = reactor.listenTCP(0, webmail.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @inlineCallbacks
    def signed_in(self, account: str) -> Any:
        client = Client(self.port.getHost().port)
        yield client.sign_in(account)
        page = yield client.get("/settings")
        self.assertEqual(page.status, 200)
        return client, page

    def rules(self, account: str) -> list[SenderRule]:
        return self.accounts.senderRules(account).result  # type: ignore[no-any-return]

    @inlineCallbacks
    def test_settings_is_linked_from_every_page_and_starts_empty(self) -> None:
        client, page = yield self.signed_in(ALICE)
        inbox = yield client.get("/list?f=INBOX")
        self.assertIn('href="/settings"', inbox.text)
        self.assertEqual(page.text.count("None yet."), 2)

    @inlineCallbacks
    def test_a_user_blocks_allows_and_removes_senders(self) -> None:
        client, page = yield self.signed_in(ALICE)
        csrf = csrf_of(page)
        response = yield client.post("/settings/senders/add", {"csrf": csrf, "entry": " Spam.Example ", "do": "block"})
        self.assertEqual((response.status, response.header("location")), (303, "/settings?notice=blocked"))
        yield client.post("/settings/senders/add", {"csrf": csrf, "entry": "Friend@Spam.Example", "do": "allow"})
        self.assertEqual(
            self.rules(ALICE),
            [SenderRule(ALICE, "friend@spam.example", "allow"), SenderRule(ALICE, "spam.example", "block")],
        )
        page = yield client.get("/settings?notice=blocked")
        self.assertIn("Sender blocked.", page.text)
        self.assertRegex(page.text, r'id="allow-list".*friend@spam\.example')
        self.assertRegex(page.text, r'id="block-list".*spam\.example')
        response = yield client.post("/settings/senders/remove", {"csrf": csrf, "entry": "spam.example"})
        self.assertEqual(response.header("location"), "/settings?notice=unlisted")
        self.assertEqual(self.rules(ALICE), [SenderRule(ALICE, "friend@spam.example", "allow")])
        self.assertEqual(self.rules(BOB), [])

    @inlineCallbacks
    def test_a_bad_entry_is_refused_with_the_commands_words_and_kept_in_the_form(self) -> None:
        client, page = yield self.signed_in(ALICE)
        response = yield client.post("/settings/senders/add", {"csrf": csrf_of(page), "entry": "*spam.example", "do": "block"})
        self.assertEqual(response.status, 400)
        self.assertIn("a wildcard is only allowed as a leading", response.text)
        self.assertIn('value="*spam.example"', response.text)
        self.assertEqual(self.rules(ALICE), [])

    @inlineCallbacks
    def test_a_change_without_the_csrf_token_is_refused_and_changes_nothing(self) -> None:
        client, _ = yield self.signed_in(ALICE)
        response = yield client.post("/settings/senders/add", {"entry": "spam.example", "do": "block"})
        self.assertEqual(response.status, 403)
        self.assertEqual(self.rules(ALICE), [])

    @inlineCallbacks
    def test_a_user_sees_and_changes_only_their_own_list(self) -> None:
        self.accounts.set_sender_rule(BOB, "bobs-secret.example", "allow")
        self.accounts.set_sender_rule("example.test", "domain-wide.example", "block")
        client, page = yield self.signed_in(ALICE)
        self.assertNotIn("bobs-secret.example", page.text)
        self.assertNotIn("domain-wide.example", page.text)
        # There is no owner to name: a form field for one is ignored, and removing Bob's entry finds nothing of Alice's.
        response = yield client.post(
            "/settings/senders/remove", {"csrf": csrf_of(page), "entry": "bobs-secret.example", "for": BOB, "owner": BOB}
        )
        self.assertEqual(response.status, 400)
        self.assertIn("is not on the list of alice@example.test", response.text)
        self.assertEqual(self.rules(BOB), [SenderRule(BOB, "bobs-secret.example", "allow")])

    @inlineCallbacks
    def test_signed_out_the_settings_redirect_to_sign_in_and_changes_are_refused(self) -> None:
        client = Client(self.port.getHost().port)
        page = yield client.get("/settings")
        self.assertEqual((page.status, page.header("location")), (303, "/login"))
        response = yield client.post("/settings/senders/add", {"entry": "spam.example", "do": "block"})
        self.assertEqual(response.status, 403)
        self.assertIsNone(re.search("spam", str(self.rules(ALICE))))
