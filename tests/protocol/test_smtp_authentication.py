"""
The MX's sender authentication through the SMTP session, on fakes: the
listener built by its real builder from a context whose DNS is a
L{FakeResolver} (C{ServiceContext.dns}), on a L{Clock}, so that SPF, DKIM
and DMARC run inline and every reply is there when C{dataReceived} returns.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mailapp.dnsthread import ServiceDNS
from mailapp.testing import MINIMAL_CONFIG, FakeResolver, RecordingStore, build_factory, service_context
from tests.protocol.accounts import make_accounts
from tests.protocol.smtp_client import Session
from tests.dkim_examples import SENDER_ZONE, signed

A_SERVER = "192.0.2.10"
FORGER = "203.0.113.5"


def mx(
    store: RecordingStore,
    authentication: dict[str, Any] | None = None,
    trusted: tuple[str, ...] = (),
    resolver: FakeResolver | None = None,
    limits: str = "",
) -> Any:
    lines = [MINIMAL_CONFIG, "[relay]", f"trusted_networks = {json.dumps(list(trusted))}", "[limits]", "mx_messages_per_minute = 0", limits]
    lines.append("[authentication]")
    lines.extend(f"{key} = {json.dumps(value)}" for key, value in (authentication or {}).items())
    clock = Clock()
    context = service_context(
        config="\n".join(lines) + "\n",
        reactor=clock,
        store=store,
        accounts=make_accounts(),
        dns=ServiceDNS(clock, resolver or FakeResolver(SENDER_ZONE)),
    )
    return build_factory(context, "smtp")


def transaction(message: bytes, sender: str = "bob@a.test", rcpt_parameters: bytes = b"") -> bytes:
    return (
        b"EHLO mail.a.test\r\nMAIL FROM:<" + sender.encode() + b">\r\nRCPT TO:<alice@example.test>"
        + rcpt_parameters + b"\r\nDATA\r\n"
        + message.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    )


class MXAuthenticationTests(TestCase):
    def setUp(self) -> None:
        self.store = RecordingStore()
        self.sessions: list[Session] = []

    def tearDown(self) -> None:
        for session in self.sessions:
            session.proto.connectionLost(None)

    def send(
        self, message: bytes, peer: str = A_SERVER, sender: str = "bob@a.test", rcpt_parameters: bytes = b"", **options: Any
    ) -> Session:
        session = Session(mx(self.store, **options), peer=peer)
        self.sessions.append(session)
        session.send(transaction(message, sender, rcpt_parameters))
        return session

    def test_an_authenticated_message_is_stored_with_our_header_on_top_of_its_own(self) -> None:
        message = signed(b"From: bob@a.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nhello\r\n")
        session = self.send(message)
        self.assertEqual(session.replies()[-1][:3], b"250")
        [delivery] = self.store.delivered
        self.assertEqual(delivery.folder, "INBOX")
        lines = delivery.data.split(b"\r\n")
        self.assertEqual(lines[0], b"Return-Path: <bob@a.test>")
        self.assertEqual(lines[2], b"Authentication-Results: mail.example.test;")
        header = delivery.data[: delivery.data.index(b"Received:")]
        for clause in (b"spf=pass smtp.mailfrom=a.test", b"dkim=pass header.d=a.test", b"dmarc=pass header.from=a.test"):
            self.assertIn(clause, header)
        self.assertTrue(delivery.data.endswith(b"\r\n\r\n" + message.split(b"\r\n\r\n", 1)[1]))
        self.assertIn(b"Received: from mail.a.test", delivery.data)

    def dsn_events(self, message: bytes, **options: Any) -> list[str]:
        """The DSN log events of one MX transaction whose RCPT asks NOTIFY=SUCCESS."""
        from twisted.logger import globalLogPublisher

        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        try:
            self.send(message, rcpt_parameters=b" NOTIFY=SUCCESS", **options)
        finally:
            globalLogPublisher.removeObserver(logged.append)
        return [str(e["log_event"]) for e in logged if str(e.get("log_event", "")).startswith("dsn.")]

    def test_a_delivered_dsn_goes_to_a_sender_whose_spf_passed_and_never_to_an_unverified_one(self) -> None:
        verified = self.dsn_events(signed(b"From: bob@a.test\r\nSubject: hi\r\n\r\nhello\r\n"))
        forged = self.dsn_events(b"From: x@evil.test\r\n\r\nhi\r\n", peer=FORGER, sender="x@evil.test")
        # bob@a.test is remote and this server has no relay queue: the DSN is tried, and its failure logged.
        self.assertEqual(verified, ["dsn.delivered_failed"])
        self.assertEqual(forged, [])
        self.assertEqual(len(self.store.delivered), 2)

    def test_a_forged_from_under_p_reject_gets_550_at_the_end_of_data_and_nothing_is_stored(self) -> None:
        session = self.send(b"From: boss@a.test\r\nSubject: pay\r\n\r\nnow\r\n", peer=FORGER, sender="x@evil.test")
        self.assertEqual(session.replies()[-1], b"550 5.7.1 Message rejected: it fails the DMARC policy of its From: domain")
        self.assertEqual(self.store.delivered, [])

    def test_a_failure_under_p_quarantine_is_delivered_to_junk(self) -> None:
        session = self.send(b"From: news@q.test\r\n\r\nhi\r\n", peer=FORGER, sender="x@evil.test")
        self.assertEqual(session.replies()[-1][:3], b"250")
        [delivery] = self.store.delivered
        self.assertEqual(delivery.folder, "Junk")
        self.assertIn(b"dmarc=fail header.from=q.test policy.dmarc=quarantine", delivery.data)

    def test_a_forged_header_claiming_our_authserv_id_is_removed(self) -> None:
        message = b"Authentication-Results: mail.example.test; dkim=pass header.d=bank.test\r\nFrom: x@evil.test\r\n\r\nhi\r\n"
        self.send(message, peer=FORGER, sender="x@evil.test")
        [delivery] = self.store.delivered
        self.assertEqual(delivery.data.count(b"Authentication-Results: mail.example.test;"), 1)
        self.assertNotIn(b"bank.test", delivery.data)

    def test_dmarc_reject_deliver_in_the_config_stores_the_forgery_with_its_result(self) -> None:
        self.send(b"From: boss@a.test\r\n\r\nhi\r\n", peer=FORGER, sender="x@evil.test", authentication={"dmarc_reject": "deliver"})
        [delivery] = self.store.delivered
        self.assertEqual(delivery.folder, "INBOX")
        self.assertIn(b"dmarc=fail header.from=a.test policy.dmarc=reject", delivery.data)

    def test_a_trusted_client_is_not_checked_and_gets_no_header(self) -> None:
        self.send(b"From: boss@a.test\r\n\r\nhi\r\n", peer=FORGER, sender="x@evil.test", trusted=("203.0.113.0/24",))
        [delivery] = self.store.delivered
        self.assertNotIn(b"Authentication-Results", delivery.data)

    def test_loopback_is_exempt_by_default(self) -> None:
        self.send(b"From: boss@a.test\r\n\r\nhi\r\n", peer="127.0.0.1", sender="x@evil.test")
        [delivery] = self.store.delivered
        self.assertNotIn(b"Authentication-Results", delivery.data)

    def test_spf_is_asked_at_mail_from_before_any_recipient(self) -> None:
        resolver = FakeResolver(SENDER_ZONE)
        session = Session(mx(self.store, resolver=resolver), peer=A_SERVER)
        self.sessions.append(session)
        session.send(b"EHLO mail.a.test\r\nMAIL FROM:<bob@a.test>\r\n")
        self.assertEqual(session.codes()[-1], b"250")
        self.assertIn(("a.test", "TXT"), resolver.queries)
        self.assertIn(("mail.a.test", "TXT"), resolver.queries)

    def test_a_dns_failure_of_the_dmarc_policy_gets_451_at_the_end_of_data(self) -> None:
        resolver = FakeResolver(SENDER_ZONE, servfail=["_dmarc.a.test"])
        session = Session(mx(self.store, resolver=resolver), peer=FORGER)
        self.sessions.append(session)
        session.send(transaction(b"From: boss@a.test\r\n\r\nhi\r\n", "x@evil.test"))
        self.assertEqual(session.replies()[-1], b"451 4.7.1 Cannot check the sender's domain now (DNS); try again later")
        self.assertEqual(self.store.delivered, [])

    def test_a_held_message_over_the_size_limit_is_refused_and_never_checked(self) -> None:
        resolver = FakeResolver(SENDER_ZONE)
        session = Session(mx(self.store, resolver=resolver, limits="max_message_size = 1000"), peer=FORGER)
        self.sessions.append(session)
        session.send(transaction(b"From: boss@a.test\r\n\r\n" + b"x" * 2000 + b"\r\n", "x@evil.test"))
        self.assertEqual(session.replies()[-1][:3], b"552")
        self.assertEqual(self.store.delivered, [])
        self.assertNotIn(("_dmarc.a.test", "TXT"), resolver.queries)

    def test_every_check_off_stores_the_message_as_before(self) -> None:
        self.send(
            b"From: boss@a.test\r\n\r\nhi\r\n", peer=FORGER, sender="x@evil.test",
            authentication={"spf": False, "dkim": False, "dmarc": False},
        )
        [delivery] = self.store.delivered
        self.assertNotIn(b"Authentication-Results", delivery.data)
