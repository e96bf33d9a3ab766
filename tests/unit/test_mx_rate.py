"""
The MX's messages and bytes per client address per minute
(mailapp.abuse.MXRateLimiter), on a StringTransport with a fake clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mailapp.abuse import AbuseGuard, MXRateLimiter
from mailapp.config import SecurityConfig
from tests.smtp_helpers import make_factory, wait_for
from tests.protocol.smtp_client import Session

TOO_MUCH = b"451 4.7.1 Too much mail from your address; try again later"


class MXRateLimiterTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = MXRateLimiter(self.clock.seconds, messages_per_minute=3, bytes_per_minute=1000)

    def test_the_message_past_the_limit_is_refused_until_the_minute_has_passed(self):
        for _ in range(3):
            self.assertIsNone(self.limiter.messageStarted("192.0.2.1"))
        self.assertEqual(self.limiter.messageStarted("192.0.2.1"), "messages")
        self.clock.advance(59.9)
        self.assertEqual(self.limiter.messageStarted("192.0.2.1"), "messages")
        self.clock.advance(0.1)
        self.assertIsNone(self.limiter.messageStarted("192.0.2.1"))

    def test_another_address_is_not_affected(self):
        for _ in range(4):
            self.limiter.messageStarted("192.0.2.1")
        self.assertIsNone(self.limiter.messageStarted("192.0.2.2"))

    def test_an_ipv6_slash_64_counts_as_one_client(self):
        for host in range(3):
            self.assertIsNone(self.limiter.messageStarted(f"2001:db8:1:2::{host + 1}"))
        self.assertEqual(self.limiter.messageStarted("2001:db8:1:2:ffff::9"), "messages")
        self.assertIsNone(self.limiter.messageStarted("2001:db8:1:3::1"))

    def test_bytes_past_the_limit_are_refused_at_the_end_of_data_and_then_at_mail_from(self):
        self.assertTrue(self.limiter.dataReceived("192.0.2.1", 600))
        self.assertFalse(self.limiter.dataReceived("192.0.2.1", 600))
        self.assertEqual(self.limiter.messageStarted("192.0.2.1"), "bytes")

    def test_a_declared_size_that_would_pass_the_bytes_limit_is_refused_at_mail_from(self):
        self.limiter.dataReceived("192.0.2.1", 600)
        self.assertEqual(self.limiter.messageStarted("192.0.2.1", declared=500), "bytes")
        self.assertIsNone(self.limiter.messageStarted("192.0.2.1", declared=300))

    def test_a_first_message_larger_than_the_bytes_per_minute_is_let_in(self):
        self.assertTrue(self.limiter.dataReceived("192.0.2.1", 5000))

    def test_memory_is_bounded_by_the_tracked_addresses(self):
        limiter = MXRateLimiter(self.clock.seconds, 60, 1000, max_tracked=100)
        for host in range(1000):
            limiter.messageStarted(f"10.0.{host // 256}.{host % 256}")
            limiter.dataReceived(f"10.0.{host // 256}.{host % 256}", 10)
        self.assertEqual(len(limiter), 100)

    def test_a_reload_applies_the_new_limits(self):
        guard = AbuseGuard(self.clock.seconds, SecurityConfig(), mx_messages_per_minute=1)
        guard.mx.messageStarted("192.0.2.1")
        self.assertEqual(guard.mx.messageStarted("192.0.2.1"), "messages")

        class Config:
            security = SecurityConfig()

            class limits:
                max_messages_per_hour = 1000
                mx_messages_per_minute = 5
                mx_bytes_per_minute = 0

        guard.reconfigure(Config)
        self.assertIsNone(guard.mx.messageStarted("192.0.2.1"))


class MXRateSessionTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.root = Path(self.mktemp())
        self.factory = make_factory(self.root, trusted=("198.51.100.0/24",))
        self.factory._guard = AbuseGuard(self.clock.seconds, SecurityConfig(), mx_messages_per_minute=2, mx_bytes_per_minute=4000)
        self.sessions: list[Session] = []

    def tearDown(self) -> None:
        for session in self.sessions:
            session.proto.connectionLost(None)

    def session(self, peer: str) -> Session:
        session = Session(self.factory, peer=peer)
        self.sessions.append(session)
        session.send(b"EHLO c.test\r\n")
        return session

    @inlineCallbacks
    def command(self, session: Session, line: bytes) -> Any:
        session.clear()
        session.send(line + b"\r\n")
        yield wait_for(lambda: session.codes())
        return session.replies()[-1]

    @inlineCallbacks
    def send(self, session: Session, body: bytes = b"hello") -> Any:
        """One message to alice; fire with the reply to MAIL FROM, or to the data when it got that far."""
        reply = yield self.command(session, b"MAIL FROM:<s@remote.test>")
        if not reply.startswith(b"250"):
            return reply
        yield self.command(session, b"RCPT TO:<alice@example.test>")
        yield self.command(session, b"DATA")
        reply = yield self.command(session, b"Subject: r\r\n\r\n" + body + b"\r\n.")
        return reply

    @inlineCallbacks
    def test_an_mx_client_over_the_message_rate_gets_451_4_7_1_at_mail_from(self):
        session = self.session("192.0.2.9")
        for _ in range(2):
            self.assertTrue((yield self.send(session)).startswith(b"250 2.0.0"))
        self.assertEqual((yield self.send(session)), TOO_MUCH)
        other = self.session("192.0.2.10")
        self.assertTrue((yield self.send(other)).startswith(b"250 2.0.0"))
        self.clock.advance(60)
        self.assertTrue((yield self.send(session)).startswith(b"250 2.0.0"))

    @inlineCallbacks
    def test_an_mx_client_over_the_byte_rate_gets_451_4_7_1_after_its_data_and_nothing_is_stored(self):
        session = self.session("192.0.2.9")
        self.assertTrue((yield self.send(session, b"a" * 3000)).startswith(b"250 2.0.0"))
        self.assertEqual((yield self.send(session, b"b" * 3000)), TOO_MUCH)
        from tests.smtp_helpers import stored_messages

        self.assertEqual(len(stored_messages(self.root, "alice@example.test")), 1)

    @inlineCallbacks
    def test_trusted_networks_are_exempt(self):
        session = self.session("198.51.100.7")
        for _ in range(4):
            self.assertTrue((yield self.send(session)).startswith(b"250 2.0.0"))
