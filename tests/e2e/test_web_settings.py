"""
The webmail's settings page over HTTP: a user sees and edits their own
allow and block lists of senders, with the command's validation, and never
anyone else's; their filter rules, vacation, forwarding and Sieve script
(taking effect on the next local delivery), display name, signature and
password. The real Klein resource on a loopback socket, fake accounts
(whose lists decide as the database's do) and a real Maildir store.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mailapp.accounts import SenderRule
from mailapp.auth import makePortal
from mailapp.delivery import Router
from mailapp.sieve import compile
from mailapp.sieve.filter import SieveFilter
from mailapp.sieve.scripts import ScriptStore
from mailapp.sieve.webmail import SCRIPT_NAME
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


# -- filters, vacation, forwarding, the script, and the account ----------------------------


def field_value(page: Any, name: str) -> str | None:
    """The value of the input C{name} on C{page}, or None when there is none."""
    found = re.search(r'<input[^>]*name="' + re.escape(name) + r'"[^>]*value="([^"]*)"', page.text)
    return found.group(1) if found else None


def textarea_of(page: Any, name: str) -> str:
    found = re.search(r'<textarea[^>]*name="' + re.escape(name) + r'"[^>]*>(.*?)</textarea>', page.text, re.S)
    assert found is not None, page.text[:300]
    return html.unescape(found.group(1))


def rule_fields(number: int, **values: str) -> dict[str, str]:
    defaults = {"field": "subject", "match": "contains", "action": "move", "flag": "\\Flagged"}
    return {f"r{number}_{name}": value for name, value in {**defaults, **values}.items()}


class WebmailFilterSettingsTests(TestCase):
    """
    The settings page's Sieve parts over HTTP, with the Router filtering
    local deliveries through the same ScriptStore (what the service builds),
    and the account basics with their effect on compose.
    """

    timeout = 60

    def setUp(self) -> None:
        root = Path(self.mktemp())
        self.store = MaildirStore(root / "mail", reactor=reactor)
        self.accounts = FakeAccounts(["example.test"])
        for account, password in PASSWORDS.items():
            self.accounts.add_user(account, password)
        self.scripts = ScriptStore(root / "sieve")
        self.router = Router(self.accounts, self.store)
        self.router.sieve = SieveFilter(self.scripts, lambda function, *args: deferToThread(function, *args), reactor)
        policy = WebmailPolicy(hostname="mail.example.test", max_message_size=200_000, login_failure_delay=0.01, login_failure_limit=3)
        self.webmail = Webmail(self.router, makePortal(self.accounts, self.store), policy, reactor)
        self.port = reactor.listenTCP(0, self.webmail.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @inlineCallbacks
    def signed_in(self, account: str = ALICE) -> Any:
        client = Client(self.port.getHost().port)
        yield client.sign_in(account)
        page = yield client.get("/settings")
        self.assertEqual(page.status, 200)
        return client, csrf_of(page)

    @inlineCallbacks
    def messages_in(self, account: str, folder: str) -> Any:
        target = yield self.store.mailbox(account).folder(folder)
        found = []
        for info in (yield target.messages()):
            handle = yield target.openMessage(info.uid)
            with handle:
                found.append((email.message_from_bytes(handle.read(), policy=email.policy.default), sorted(info.flags)))
        return found

    @inlineCallbacks
    def send(self, client: Client, csrf: str, to: str, subject: str, body: str = "hello") -> Any:
        response = yield client.post_multipart("/compose", {"csrf": csrf, "to": to, "subject": subject, "body": body, "action": "send"})
        self.assertEqual(response.status, 303, response.text[:2000])

    @inlineCallbacks
    def test_a_saved_rule_is_the_active_script_and_moves_the_next_message(self) -> None:
        client, csrf = yield self.signed_in(ALICE)
        fields = {"csrf": csrf, "rules": "2", **rule_fields(0, text="report", newfolder="Reports", stop="1"), **rule_fields(1, text="", field="subject")}
        response = yield client.post("/settings/filters", fields)
        self.assertEqual((response.status, response.header("location")), (303, "/settings?notice=rules#filters"))
        self.assertEqual(self.scripts.active_name(ALICE), SCRIPT_NAME)
        text = self.scripts.get(ALICE, SCRIPT_NAME)
        self.assertIn('if header :contains "subject" "report" {\n    fileinto :create "Reports";\n    stop;\n}', text)
        page = yield client.get("/settings?notice=rules")
        self.assertIn("Filter rules saved", page.text)
        self.assertEqual(textarea_of(page, "script"), text)
        self.assertEqual(field_value(page, "r0_text"), "report")
        bob, bob_csrf = yield self.signed_in(BOB)
        yield self.send(bob, bob_csrf, ALICE, "weekly report")
        yield self.send(bob, bob_csrf, ALICE, "lunch?")
        reports = yield self.messages_in(ALICE, "Reports")
        inbox = yield self.messages_in(ALICE, "INBOX")
        self.assertEqual([m["Subject"] for m, _ in reports], ["weekly report"])
        self.assertEqual([m["Subject"] for m, _ in inbox], ["lunch?"])
        # The new folder is offered to the next rule.
        page = yield client.get("/settings")
        self.assertIn('<option value="Reports" selected="">Reports</option>', page.text)

    @inlineCallbacks
    def test_rules_keep_their_order_move_up_and_remove(self) -> None:
        client, csrf = yield self.signed_in(ALICE)
        three = {**rule_fields(0, text="one", action="discard"), **rule_fields(1, text="two", action="flag", flag="\\Seen"), **rule_fields(2, text="three", action="forward", address="carol@example.net", copy="1")}
        yield client.post("/settings/filters", {"csrf": csrf, "rules": "3", **three})
        yield client.post("/settings/filters", {"csrf": csrf, "rules": "3", **three, "up": "2", "r0_remove": "1"})
        text = self.scripts.get(ALICE, SCRIPT_NAME)
        self.assertNotIn('"one"', text)
        self.assertLess(text.index('"three"'), text.index('"two"'))
        self.assertIn('redirect :copy "carol@example.net";', text)
        self.assertIn('addflag "\\\\Seen";', text)

    @inlineCallbacks
    def test_a_bad_rule_is_shown_in_its_form_with_what_was_typed_and_nothing_is_stored(self) -> None:
        client, csrf = yield self.signed_in(ALICE)
        fields = {"csrf": csrf, "rules": "2", **rule_fields(0, text="ok", newfolder="A"), **rule_fields(1, text="x", action="forward", address="not-an-address")}
        response = yield client.post("/settings/filters", fields)
        self.assertEqual(response.status, 400)
        self.assertRegex(response.text, r'id="rules-errors".*Rule 2: the forwarding address: address .not-an-address. has no @domain part')
        self.assertEqual(field_value(response, "r1_address"), "not-an-address")
        self.assertEqual(field_value(response, "r0_newfolder"), "A")
        self.assertIsNone(self.scripts.active_name(ALICE))

    @inlineCallbacks
    def test_hostile_rule_text_stays_one_string_in_the_script_and_escaped_in_the_page(self) -> None:
        client, csrf = yield self.signed_in(ALICE)
        hostile = '"; discard; # \\ </textarea><script>alert(1)</script> ${x}'
        response = yield client.post("/settings/filters", {"csrf": csrf, "rules": "1", **rule_fields(0, text=hostile, action="discard")})
        self.assertEqual(response.status, 303)
        text = self.scripts.get(ALICE, SCRIPT_NAME)
        self.assertIn('"\\"; discard; # \\\\ </textarea><script>alert(1)</script> ${x}"', text)
        self.assertEqual(len(compile(text)), 1)  # one if: the text became no command
        page = yield client.get("/settings")
        self.assertNotIn("<script>", page.text)
        self.assertEqual(textarea_of(page, "script"), text)
        self.assertEqual(html.unescape(field_value(page, "r0_text") or ""), hostile)
        bob, bob_csrf = yield self.signed_in(BOB)
        yield self.send(bob, bob_csrf, ALICE, "ordinary")
        yield self.send(bob, bob_csrf, ALICE, "re: " + hostile)
        inbox = yield self.messages_in(ALICE, "INBOX")
        self.assertEqual([m["Subject"] for m, _ in inbox], ["ordinary"])

    @inlineCallbacks
    def test_an_active_script_uploaded_elsewhere_is_shown_and_replaced_only_with_the_box_ticked(self) -> None:
        uploaded = 'require "fileinto";\n# from sieve-connect\nfileinto "Mine";\n'
        self.scripts.put(ALICE, "mine", uploaded)
        self.scripts.activate(ALICE, "mine")
        client, csrf = yield self.signed_in(ALICE)
        page = yield client.get("/settings")
        self.assertIn("was not made by this page", page.text)
        self.assertEqual(textarea_of(page, "script"), uploaded)
        self.assertIn('name="replace"', page.text)
        fields = {"csrf": csrf, "rules": "1", **rule_fields(0, text="x", action="discard")}
        response = yield client.post("/settings/filters", fields)
        self.assertEqual(response.status, 400)
        self.assertIn("Replace my active script", response.text)
        self.assertEqual(field_value(response, "r0_text"), "x")
        response = yield client.post("/settings/vacation", {"csrf": csrf, "enabled": "1", "text": "away", "days": "7"})
        self.assertEqual(response.status, 400)
        self.assertEqual(self.scripts.active_name(ALICE), "mine")
        response = yield client.post("/settings/filters", {**fields, "replace": "1"})
        self.assertEqual(response.status, 303)
        self.assertEqual(self.scripts.active_name(ALICE), SCRIPT_NAME)
        self.assertEqual(self.scripts.get(ALICE, "mine"), uploaded)
        page = yield client.get("/settings")
        self.assertNotIn("was not made by this page", page.text)

    @inlineCallbacks
    def test_a_broken_script_is_refused_with_line_and_column_and_never_activated(self) -> None:
        client, csrf = yield self.signed_in(ALICE)
        broken = 'require "fileinto";\nif header :contains "subject" "x" {\n    fileinto "A"\n}\n'
        response = yield client.post("/settings/script", {"csrf": csrf, "script": broken.replace("\n", "\r\n"), "do": "save"})
        self.assertEqual(response.status, 400)
        self.assertRegex(response.text, r'id="script-errors".*Line 4, column 1: expected .;. after .fileinto.')
        self.assertEqual(textarea_of(response, "script"), broken)
        self.assertIsNone(self.scripts.active_name(ALICE))
        good = 'require "fileinto";\nfileinto "Everything";\n'
        response = yield client.post("/settings/script", {"csrf": csrf, "script": good, "do": "check"})
        self.assertEqual(response.status, 200)
        self.assertIn("The script is valid. It was not saved.", response.text)
        self.assertIsNone(self.scripts.active_name(ALICE))
        response = yield client.post("/settings/script", {"csrf": csrf, "script": good, "do": "save"})
        self.assertEqual(response.header("location"), "/settings?notice=script#script")
        self.assertEqual((self.scripts.active_name(ALICE), self.scripts.get(ALICE, SCRIPT_NAME)), (SCRIPT_NAME, good))
        page = yield client.get("/settings")
        self.assertIn("not made by the form above", page.text)  # edited as text: the form asks before replacing it

    @inlineCallbacks
    def test_vacation_is_stored_in_the_same_script_as_the_rules(self) -> None:
        client, csrf = yield self.signed_in(ALICE)
        yield client.post("/settings/filters", {"csrf": csrf, "rules": "1", **rule_fields(0, text="report", newfolder="Reports")})
        response = yield client.post("/settings/vacation", {"csrf": csrf, "enabled": "1", "start": "2026-12-24", "end": "2026-12-23", "subject": "Away", "text": "x", "days": "3"})
        self.assertEqual(response.status, 400)
        self.assertIn("Vacation: the last day is before the first.", response.text)
        self.assertEqual(field_value(response, "start"), "2026-12-24")
        vacation = {"csrf": csrf, "enabled": "1", "start": "2026-12-24", "end": "2027-01-02", "subject": 'Away "till" 2027', "text": "I am away.\r\n.\r\nBack on the 3rd.", "days": "3"}
        response = yield client.post("/settings/vacation", vacation)
        self.assertEqual(response.header("location"), "/settings?notice=vacation#vacation")
        text = self.scripts.get(ALICE, SCRIPT_NAME)
        self.assertIn('currentdate :value "ge" "date" "2026-12-24"', text)
        self.assertIn('vacation :days 3 :subject "Away \\"till\\" 2027" text:\nI am away.\n..\nBack on the 3rd.\n.\n;', text)
        self.assertIn('fileinto :create "Reports";', text)
        page = yield client.get("/settings")
        self.assertEqual(textarea_of(page, "text"), "I am away.\n.\nBack on the 3rd.")
        self.assertEqual(field_value(page, "days"), "3")

    @inlineCallbacks
    def test_forwarding_checks_the_address_and_keeps_a_copy_or_not(self) -> None:
        client, csrf = yield self.signed_in(ALICE)
        response = yield client.post("/settings/forwarding", {"csrf": csrf, "address": "carol@", "copy": "1"})
        self.assertEqual(response.status, 400)
        self.assertIn("Forwarding: the forwarding address: address 'carol@' has an empty domain.", response.text)
        self.assertEqual(field_value(response, "address"), "carol@")
        yield client.post("/settings/forwarding", {"csrf": csrf, "address": "Carol@Example.NET", "copy": "1"})
        self.assertIn('redirect :copy "Carol@example.net";', self.scripts.get(ALICE, SCRIPT_NAME))
        yield client.post("/settings/forwarding", {"csrf": csrf, "address": BOB})
        self.assertIn(f'redirect "{BOB}";\nstop;', self.scripts.get(ALICE, SCRIPT_NAME))
        sender, sender_csrf = yield self.signed_in(BOB)
        yield self.send(sender, sender_csrf, ALICE, "for alice")
        self.assertEqual((yield self.messages_in(ALICE, "INBOX")), [])
        forwarded = yield self.messages_in(BOB, "INBOX")
        self.assertEqual([m["Subject"] for m, _ in forwarded], ["for alice"])

    @inlineCallbacks
    def test_display_name_and_signature_are_used_by_compose(self) -> None:
        client, csrf = yield self.signed_in(ALICE)
        response = yield client.post("/settings/profile", {"csrf": csrf, "display_name": "Alice\r\nBcc: x@evil.example", "signature": "A."})
        self.assertEqual(response.status, 400)
        self.assertIn("the display name must be one line", response.text)
        response = yield client.post("/settings/profile", {"csrf": csrf, "display_name": 'Alice "Al" Ex\u00e4mple', "signature": "Alice\r\nExample Ltd"})
        self.assertEqual(response.header("location"), "/settings?notice=profile#profile")
        page = yield client.get("/settings")
        self.assertEqual(html.unescape(field_value(page, "display_name") or ""), 'Alice "Al" Ex\u00e4mple')
        form = yield client.get("/compose")
        self.assertIn("-- \nAlice\nExample Ltd", textarea_of(form, "body"))
        self.assertIn(html.escape('"Alice \\"Al\\" Ex\u00e4mple" <alice@example.test>', quote=False), form.text)
        yield self.send(client, csrf, BOB, "signed", textarea_of(form, "body").replace("\n\n-- ", "Hello Bob.\n\n-- ", 1))
        [(message, _)] = yield self.messages_in(BOB, "INBOX")
        self.assertEqual((message["From"].addresses[0].display_name, message["From"].addresses[0].addr_spec), ('Alice "Al" Ex\u00e4mple', ALICE))
        self.assertEqual(message.get_content().replace("\r\n", "\n"), "Hello Bob.\n\n-- \nAlice\nExample Ltd\n")

    @inlineCallbacks
    def test_a_password_change_needs_the_current_one_and_ends_the_other_sessions(self) -> None:
        other = Client(self.port.getHost().port)
        yield other.sign_in(ALICE)
        bob, _ = yield self.signed_in(BOB)
        client, csrf = yield self.signed_in(ALICE)
        for fields, words in (
            ({"current": "wrong", "new": "brand new password", "again": "brand new password"}, "The current password is wrong"),
            ({"current": PASSWORDS[ALICE], "new": "brand new password", "again": "brand new passw0rd"}, "differ"),
            ({"current": PASSWORDS[ALICE], "new": "Qz7", "again": "Qz7"}, "too short"),
            ({"current": PASSWORDS[ALICE], "new": ALICE.upper(), "again": ALICE.upper()}, "must not be the address"),
        ):
            response = yield client.post("/settings/password", {"csrf": csrf, **fields})
            self.assertEqual(response.status, 400)
            self.assertRegex(response.text, 'id="password-errors".*' + words)
            self.assertNotIn(fields["new"], response.text.replace(ALICE, ""))  # passwords are never echoed
        self.assertEqual((yield self.accounts.authenticate(ALICE, PASSWORDS[ALICE].encode())), ALICE)
        response = yield client.post("/settings/password", {"csrf": csrf, "current": PASSWORDS[ALICE], "new": "brand new password", "again": "brand new password"})
        self.assertEqual(response.header("location"), "/settings?notice=password#password")
        self.assertEqual((yield self.accounts.authenticate(ALICE, b"brand new password")), ALICE)
        page = yield client.get("/settings?notice=password")
        self.assertIn("Password changed.", page.text)
        ended = yield other.get("/settings")
        self.assertEqual((ended.status, ended.header("location")), (303, "/login?notice=expired"))
        still = yield bob.get("/settings")
        self.assertEqual(still.status, 200)

    @inlineCallbacks
    def test_wrong_current_passwords_count_as_failed_logins_and_ban_the_address(self) -> None:
        client, csrf = yield self.signed_in(ALICE)
        change = {"csrf": csrf, "new": "brand new password", "again": "brand new password"}
        for guess in ("guess-1", "guess-2", "guess-3"):
            response = yield client.post("/settings/password", {**change, "current": guess})
            self.assertIn("The current password is wrong", response.text)
        response = yield client.post("/settings/password", {**change, "current": PASSWORDS[ALICE]})
        self.assertEqual(response.status, 400)
        self.assertIn("Too many wrong passwords", response.text)
        self.assertEqual((yield self.accounts.authenticate(ALICE, PASSWORDS[ALICE].encode())), ALICE)

    @inlineCallbacks
    def test_every_settings_form_refuses_a_post_without_the_csrf_token(self) -> None:
        client, _ = yield self.signed_in(ALICE)
        for path, fields in (
            ("/settings/filters", {"rules": "1", **rule_fields(0, text="x", action="discard")}),
            ("/settings/vacation", {"enabled": "1", "text": "x", "days": "7"}),
            ("/settings/forwarding", {"address": BOB}),
            ("/settings/script", {"script": "discard;", "do": "save"}),
            ("/settings/profile", {"display_name": "Mallory"}),
            ("/settings/password", {"current": PASSWORDS[ALICE], "new": "brand new password", "again": "brand new password"}),
        ):
            response = yield client.post(path, fields)
            self.assertEqual(response.status, 403, path)
        self.assertIsNone(self.scripts.active_name(ALICE))
        self.assertEqual((yield self.accounts.profile(ALICE)).display_name, "")
        self.assertEqual((yield self.accounts.authenticate(ALICE, PASSWORDS[ALICE].encode())), ALICE)
