"""
Password guesses sent at once on many connections are counted when they
start, not when they fail (L{mailapp.abuse.AbuseGuard.attemptStarted}): 19
parallel guesses once were all verified against a ban limit of 10.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mailapp.abuse import AbuseGuard
from mailapp.config import SecurityConfig
from mailapp.imap.server import IMAPFactory, IMAPPolicy
from mailapp.sessions import ConnectionCounts
from tests.unit.test_session_close import StuckTransport


def test_attempts_in_progress_count_against_the_ban_limit() -> None:
    guard = AbuseGuard(lambda: 0.0, SecurityConfig(ban_after_failures=10))
    allowed = [guard.attemptStarted("192.0.2.7") for _ in range(19)]
    assert allowed.count(True) == 10
    assert guard.attemptStarted("192.0.2.8"), "another address is not affected"
    for _ in range(10):
        guard.attemptEnded("192.0.2.7")
    assert guard.attemptStarted("192.0.2.7"), "attempts that ended free their place (their failures count instead)"


def test_exempt_networks_are_never_held_back() -> None:
    guard = AbuseGuard(lambda: 0.0, SecurityConfig(ban_after_failures=2, ban_exempt_networks=(ipaddress.ip_network("192.0.2.0/24"),)))
    assert all(guard.attemptStarted("192.0.2.7") for _ in range(5))


def _two_processes(limit: int) -> tuple[AbuseGuard, AbuseGuard, ConnectionCounts]:
    """Two workers' guards whose logins in progress reach each other as the parent passes them on."""
    guards, tables = [], []
    for _ in range(2):
        guard = AbuseGuard(lambda: 0.0, SecurityConfig(ban_after_failures=limit))
        guard.attemptCounts = ConnectionCounts()
        guards.append(guard)
        tables.append(guard.attemptCounts)
    for origin, (here, there) in enumerate(((tables[0], tables[1]), (tables[1], tables[0])), start=1):
        here.share = lambda key, delta, there=there, origin=origin: there.learn(str(origin), key, delta)
    return guards[0], guards[1], tables[1]


def test_logins_in_progress_in_another_worker_count_against_the_ban_limit() -> None:
    """With two workers, each once allowed ban_after_failures guesses at once: twice the limit."""
    first, second, _ = _two_processes(10)
    assert [first.attemptStarted("192.0.2.7") for _ in range(6)].count(True) == 6
    assert [second.attemptStarted("192.0.2.7") for _ in range(6)].count(True) == 4
    assert not first.attemptStarted("192.0.2.7")
    for _ in range(6):
        first.attemptEnded("192.0.2.7")
    assert second.attemptStarted("192.0.2.7"), "the other worker's ended attempts free their place"


def test_a_dead_workers_logins_in_progress_no_longer_count() -> None:
    first, second, seconds_table = _two_processes(10)
    assert all(first.attemptStarted("192.0.2.7") for _ in range(10))
    assert not second.attemptStarted("192.0.2.7")
    seconds_table.forget("1")  # the parent: worker 1 died
    assert second.attemptStarted("192.0.2.7")
    assert seconds_table.total == 0, "logins in progress are not connections"


class Portal:
    """A portal whose every verification waits until the test answers it."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d


class ParallelIMAPGuessTests(TestCase):
    def _nineteen_logins(self, password: bytes) -> tuple[Clock, Portal, AbuseGuard, list[tuple[Any, StuckTransport]]]:
        """Nineteen connections from one address, each sending one LOGIN at once; no verification has ended."""
        clock = Clock()
        portal = Portal()
        policy = IMAPPolicy("mail.example.test", allow_plaintext_auth=True, auth_failure_delay=0.01)
        guard = AbuseGuard(clock.seconds, SecurityConfig(ban_after_failures=10, auth_failure_delay=0.01))
        factory = IMAPFactory(portal, None, policy, clock, guard=guard)
        transports = []
        for _ in range(19):
            session = factory.buildProtocol(None)
            transport = StuckTransport()
            session.makeConnection(transport)
            session.dataReceived(b"a LOGIN alice@example.test " + password + b"\r\n")
            transports.append((session, transport))
        self.addCleanup(lambda: [session.connectionLost(None) for session, _ in transports])
        return clock, portal, guard, transports

    def test_nineteen_parallel_imap_guesses_verify_at_most_the_ban_limit(self) -> None:
        clock, portal, guard, transports = self._nineteen_logins(b"wrong-guess")
        self.assertEqual(len(portal.pending), 10)
        for d in portal.pending:
            d.errback(UnauthorizedLogin())
        clock.advance(60)
        self.assertTrue(guard.banned("192.0.2.7"))
        self.assertEqual(len(portal.pending), 10, "no guess was verified after the ban either")

    def test_logins_past_the_limit_are_told_to_retry_not_failed(self) -> None:
        """
        The nine logins not tried are a temporary failure at once (IMAP
        C{NO [UNAVAILABLE]}, RFC 5530), not a failed login: one client
        opening nineteen connections, or an office behind one NAT address,
        must not be banned for passwords nobody got wrong.
        """
        clock, portal, guard, transports = self._nineteen_logins(b"right-password")
        refused = [t for _, t in transports if b"a NO [UNAVAILABLE]" in t.value()]
        self.assertEqual(len(refused), 9)
        self.assertEqual(len(portal.pending), 10)
        clock.advance(60)  # the ten are still being verified: only the nine refused matter here
        self.assertFalse(guard.banned("192.0.2.7"), "logins that were never tried do not count as failures")
        self.assertFalse(guard.attemptStarted("192.0.2.7"), "the ten in progress still hold their places")
