"""
Asking for recipients that do not exist gets slower after a few, per client
address and across connections (L{mailapp.abuse.AbuseGuard.unknownRecipient}):
reconnecting once listed our users at ~2,000 names a second.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mailapp.abuse import UNKNOWN_RECIPIENTS_FREE, AbuseGuard
from mailapp.config import SecurityConfig
from tests.smtp_helpers import make_factory
from tests.protocol.smtp_client import Session


def test_the_first_few_unknown_recipients_are_free_then_each_waits_twice_as_long() -> None:
    now = [0.0]
    guard = AbuseGuard(lambda: now[0], SecurityConfig(auth_failure_delay_max=15.0, ban_window=600))
    delays = [guard.unknownRecipient("192.0.2.7") for _ in range(UNKNOWN_RECIPIENTS_FREE + 7)]
    assert delays == [0.0] * UNKNOWN_RECIPIENTS_FREE + [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert guard.unknownRecipient("192.0.2.8") == 0.0, "another address is not slowed"
    now[0] = 601
    assert guard.unknownRecipient("192.0.2.7") == 0.0, "the window passed"


class ProbingAcrossConnectionsTests(TestCase):
    def test_a_client_reconnecting_for_each_name_is_slowed_all_the_same(self) -> None:
        clock = Clock()
        factory = make_factory(Path(self.mktemp()), clock=clock)
        factory._guard = AbuseGuard(clock.seconds, SecurityConfig())
        answered_at = []
        for number in range(UNKNOWN_RECIPIENTS_FREE + 3):
            session = Session(factory)
            session.proto.callLater = clock.callLater
            session.send(b"HELO c\r\nMAIL FROM:<x@remote.test>\r\n")
            session.clear()
            session.send(b"RCPT TO:<nobody%d@example.test>\r\n" % number)
            started = clock.seconds()
            for _ in range(200):
                if session.codes():
                    break
                clock.advance(0.25)
            self.assertEqual(session.codes(), [b"550"])
            answered_at.append(clock.seconds() - started)
            session.proto.connectionLost(None)
        self.assertEqual(answered_at[:UNKNOWN_RECIPIENTS_FREE], [0.0] * UNKNOWN_RECIPIENTS_FREE)
        self.assertEqual(answered_at[UNKNOWN_RECIPIENTS_FREE:], [0.5, 1.0, 2.0])
