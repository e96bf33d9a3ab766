"""
The content scan at the end of DATA through the SMTP session, on fakes: the
listener built by its real builder from a context whose C{scanner} speaks
to a L{FakeRspamd} that answers as told (or not at all), on a L{Clock}.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mailapp.dnsthread import ServiceDNS
from mailapp.spam import ContentScanner
from mailapp.spam.client import RspamdError
from mailapp.testing import MINIMAL_CONFIG, FakeResolver, RecordingStore, build_factory, service_context
from tests.dkim_examples import SENDER_ZONE
from tests.protocol.accounts import make_accounts
from tests.protocol.smtp_client import Session

A_SERVER = "192.0.2.10"
MESSAGE = b"From: bob@a.test\r\nTo: alice@example.test\r\nSubject: offer\r\nX-Spam-Status: No, forged\r\n\r\nbuy now\r\n"


class FakeRspamd:
    """Answers C{/checkv2} with C{answer}, or fails as rspamd down does (C{answer} None); records each request."""

    def __init__(self, answer: dict[str, Any] | None) -> None:
        self.answer = answer
        self.requests: list[tuple[str, list[tuple[str, str]], bytes]] = []

    def check(self, url: str, headers: Any, message: bytes, timeout: float) -> defer.Deferred[dict[str, Any]]:
        self.requests.append((url, list(headers), message))
        if self.answer is None:
            return defer.fail(RspamdError("connection refused"))
        return defer.succeed(self.answer)


def answer(action: str, score: float = 7.5, **extra: Any) -> dict[str, Any]:
    return {"action": action, "score": score, "required_score": 15.0, **extra}


def factory(
    rspamd: FakeRspamd, spam: dict[str, Any], store: RecordingStore, protocol: str = "smtp", dns: bool = False, accounts: Any = None
) -> Any:
    lines = [MINIMAL_CONFIG, "[limits]", "mx_messages_per_minute = 0", "[spam]"]
    lines.extend(f"{key} = {json.dumps(value)}" for key, value in spam.items())
    clock = Clock()
    context = service_context(
        config="\n".join(lines) + "\n",
        reactor=clock,
        store=store,
        accounts=accounts if accounts is not None else make_accounts(),
        scanner=ContentScanner(rspamd),
        dns=ServiceDNS(clock, FakeResolver(SENDER_ZONE)) if dns else None,
    )
    return build_factory(context, protocol, allow_plaintext_auth=protocol == "submission")


ON = {"rspamd_url": "http://127.0.0.1:11333"}


class _Sessions(TestCase):
    """The sessions a test opens, over one RecordingStore, each closed after it."""

    def setUp(self) -> None:
        self.store = RecordingStore()
        self.sessions: list[Session] = []

    def tearDown(self) -> None:
        for session in self.sessions:
            session.proto.connectionLost(None)

    def open(self, factory: Any, peer: str) -> Session:
        session = Session(factory, peer=peer)
        self.sessions.append(session)
        return session


class MXScanTests(_Sessions):
    def send(self, rspamd: FakeRspamd, spam: dict[str, Any] = ON, dns: bool = False, accounts: Any = None) -> Session:
        session = self.open(factory(rspamd, spam, self.store, dns=dns, accounts=accounts), A_SERVER)
        session.send(
            b"EHLO mail.a.test\r\nMAIL FROM:<bob@a.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
            + MESSAGE + b".\r\n"
        )
        return session

    def test_reject_is_554_at_the_end_of_data_and_nothing_is_stored(self) -> None:
        session = self.send(FakeRspamd(answer("reject", 20)))
        self.assertEqual(session.replies()[-1], b"554 5.7.1 Message rejected as spam")
        self.assertEqual(self.store.delivered, [])

    def test_soft_reject_and_greylist_are_451(self) -> None:
        for action in ("soft reject", "greylist"):
            session = self.send(FakeRspamd(answer(action)))
            self.assertEqual(session.replies()[-1][:10], b"451 4.7.1 ")
        self.assertEqual(self.store.delivered, [])

    def test_add_header_goes_to_junk_with_the_spam_fields_and_without_the_forged_one(self) -> None:
        session = self.send(FakeRspamd(answer("add header", 7.5)))
        self.assertEqual(session.replies()[-1][:3], b"250")
        [delivery] = self.store.delivered
        self.assertEqual(delivery.folder, "Junk")
        self.assertIn(b"\r\nX-Spam-Status: Yes, score=7.50 required=15.00\r\nX-Spam-Score: 7.50\r\nX-Spam-Action: add header\r\n", delivery.data)
        self.assertNotIn(b"forged", delivery.data)
        self.assertTrue(delivery.data.endswith(b"\r\n\r\nbuy now\r\n"))

    def test_spam_from_a_sender_every_recipient_allows_stays_in_the_inbox(self) -> None:
        accounts = make_accounts()
        accounts.set_sender_rule("alice@example.test", "a.test", "allow")
        accounts.set_sender_rule("bob@example.test", "bob@a.test", "allow")
        session = self.send(FakeRspamd(answer("add header", 7.5)), accounts=accounts)
        self.assertEqual(session.replies()[-1][:3], b"250")
        [delivery] = self.store.delivered
        self.assertEqual(delivery.folder, "INBOX")

    def test_spam_from_a_sender_only_some_recipients_allow_goes_to_junk_for_all(self) -> None:
        # One folder per message: the allow of one recipient does not move the others' copies out of Junk.
        accounts = make_accounts()
        accounts.set_sender_rule("alice@example.test", "a.test", "allow")
        self.send(FakeRspamd(answer("add header", 7.5)), accounts=accounts)
        [delivery] = self.store.delivered
        self.assertEqual(delivery.folder, "Junk")

    def test_a_reject_stands_even_for_a_sender_every_recipient_allows(self) -> None:
        accounts = make_accounts()
        accounts.set_sender_rule("alice@example.test", "a.test", "allow")
        accounts.set_sender_rule("bob@example.test", "a.test", "allow")
        session = self.send(FakeRspamd(answer("reject", 20)), accounts=accounts)
        self.assertEqual(session.replies()[-1], b"554 5.7.1 Message rejected as spam")
        self.assertEqual(self.store.delivered, [])

    def test_rewrite_subject_goes_to_junk_with_rspamds_subject(self) -> None:
        self.send(FakeRspamd(answer("rewrite subject", subject="*** SPAM *** offer")))
        [delivery] = self.store.delivered
        self.assertEqual(delivery.folder, "Junk")
        self.assertIn(b"\r\nSubject: *** SPAM *** offer\r\n", delivery.data)
        self.assertNotIn(b"Subject: offer\r\n", delivery.data)

    def test_no_action_goes_to_the_inbox_marked_as_not_spam(self) -> None:
        self.send(FakeRspamd(answer("no action", 0.5)))
        [delivery] = self.store.delivered
        self.assertEqual(delivery.folder, "INBOX")
        self.assertIn(b"X-Spam-Status: No, score=0.50", delivery.data)

    def test_rspamd_is_given_the_envelope_and_the_message_with_our_fields_on_top(self) -> None:
        rspamd = FakeRspamd(answer("no action"))
        self.send(rspamd, dns=True)
        [(url, headers, message)] = rspamd.requests
        self.assertEqual(url, "http://127.0.0.1:11333")
        self.assertIn(("IP", A_SERVER), headers)
        self.assertIn(("Helo", "mail.a.test"), headers)
        self.assertIn(("From", "bob@a.test"), headers)
        self.assertEqual([value for name, value in headers if name == "Rcpt"], ["alice@example.test", "bob@example.test"])
        self.assertIn("Queue-Id", dict(headers))
        self.assertTrue(message.startswith(b"Authentication-Results: mail.example.test;"))
        self.assertIn(b"\r\nReceived: from mail.a.test", message)
        self.assertTrue(message.endswith(MESSAGE))

    def test_the_spam_fields_go_below_the_authentication_results_and_our_received(self) -> None:
        self.send(FakeRspamd(answer("add header")), dns=True)
        [delivery] = self.store.delivered
        data = delivery.data
        self.assertLess(data.index(b"Authentication-Results:"), data.index(b"Received: from mail.a.test"))
        self.assertLess(data.index(b"Received: from mail.a.test"), data.index(b"X-Spam-Status: Yes"))
        self.assertLess(data.index(b"X-Spam-Action:"), data.index(b"From: bob@a.test"))

    def test_rspamd_down_failing_open_stores_the_message_unscanned(self) -> None:
        session = self.send(FakeRspamd(None), {**ON, "fail": "open"})
        self.assertEqual(session.replies()[-1][:3], b"250")
        [delivery] = self.store.delivered
        self.assertEqual(delivery.folder, "INBOX")
        self.assertNotIn(b"X-Spam-Score", delivery.data)

    def test_rspamd_down_failing_closed_is_451(self) -> None:
        session = self.send(FakeRspamd(None), {**ON, "fail": "closed"})
        self.assertEqual(session.replies()[-1], b"451 4.7.1 Cannot scan the message now; try again later")
        self.assertEqual(self.store.delivered, [])

    def test_a_message_over_max_scan_size_is_not_scanned(self) -> None:
        rspamd = FakeRspamd(answer("reject"))
        session = self.send(rspamd, {**ON, "max_scan_size": 100})
        self.assertEqual(session.replies()[-1][:3], b"250")
        self.assertEqual(rspamd.requests, [])

    def test_nothing_is_scanned_without_rspamd_url(self) -> None:
        rspamd = FakeRspamd(answer("reject"))
        session = self.send(rspamd, {})
        self.assertEqual(session.replies()[-1][:3], b"250")
        self.assertEqual(rspamd.requests, [])
        [delivery] = self.store.delivered
        self.assertTrue(delivery.data.endswith(MESSAGE))


class SubmissionScanTests(_Sessions):
    def submit(self, rspamd: FakeRspamd, spam: dict[str, Any] = ON) -> Session:
        session = self.open(factory(rspamd, spam, self.store, protocol="submission"), "127.0.0.1")
        token = base64.b64encode(b"\x00alice@example.test\x00alice-secret")
        session.send(
            b"EHLO c\r\nAUTH PLAIN " + token + b"\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
            b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n.\r\n"
        )
        return session

    def test_outbound_reject_is_554_and_logged_with_the_account(self) -> None:
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        rspamd = FakeRspamd(answer("reject", 30))
        session = self.submit(rspamd)
        self.assertEqual(session.replies()[-1], b"554 5.7.1 Message rejected as spam")
        self.assertEqual(self.store.delivered, [])
        self.assertIn(("User", "alice@example.test"), rspamd.requests[0][1])
        [refused] = [e for e in events if e.get("log_event") == "spam.outbound_rejected"]
        self.assertEqual(refused["account"], "alice@example.test")

    def test_outbound_add_header_is_sent_unchanged(self) -> None:
        session = self.submit(FakeRspamd(answer("add header")))
        self.assertEqual(session.replies()[-1][:3], b"250")
        [delivery] = self.store.delivered
        self.assertEqual(delivery.folder, "INBOX")
        self.assertNotIn(b"X-Spam", delivery.data)

    def test_submission_is_not_scanned_with_scan_outbound_off(self) -> None:
        rspamd = FakeRspamd(answer("reject"))
        session = self.submit(rspamd, {**ON, "scan_outbound": False})
        self.assertEqual(session.replies()[-1][:3], b"250")
        self.assertEqual(rspamd.requests, [])


class DecisionEventTests(TestCase):
    def test_each_decision_is_one_event_counted_by_action_and_reason(self) -> None:
        from twisted.logger import globalLogPublisher

        from mailapp.metrics import Metrics

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        store = RecordingStore()
        for rspamd in (FakeRspamd(answer("add header")), FakeRspamd(None)):
            session = Session(factory(rspamd, {**ON, "fail": "closed"}, store), peer=A_SERVER)
            session.send(b"EHLO a\r\nMAIL FROM:<bob@a.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + MESSAGE + b".\r\n")
            session.proto.connectionLost(None)
        decided = [e for e in events if e.get("log_event") == "spam.scanned"]
        self.assertEqual([(e["action"], e["reason"], e["rspamd"]) for e in decided], [("junk", "rspamd_add_header", "add header"), ("tempfail", "unavailable", "none")])
        self.assertEqual(len([e for e in events if e.get("log_event") == "spam.scan_failed"]), 1)
        metrics = Metrics()
        for event in decided:
            metrics(event)
        text = metrics.exposition().decode()
        self.assertIn('mailapp_spam_decisions_total{action="junk",reason="rspamd_add_header"} 1.0', text)
        self.assertIn('mailapp_spam_decisions_total{action="tempfail",reason="unavailable"} 1.0', text)
