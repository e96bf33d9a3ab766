"""
Hostile clients that trickle: idle timeouts restart at every byte, so one
byte every 20 seconds kept a connection (and a place in the budgets) for
ever. These sessions run over StringTransport on a fake clock and prove each
bound of L{mailapp.sessions.SessionDeadlines} (the session's deadline, the
login's, a command line's, the data rate), the count of IPv6 clients per
/64, and the bounded log of refused connections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import LogPublisher, globalLogPublisher
from twisted.python.failure import Failure
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp import logevents
from mailapp.abuse import AbuseGuard, address_key
from mailapp.auth import makePortal
from mailapp.config import SecurityConfig
from mailapp.delivery import Router
from mailapp.imap.server import IMAPFactory, IMAPPolicy
from mailapp.pop3 import POP3Factory, POP3Policy
from mailapp.smtp import SMTPFactory, SMTPPolicy
from mailapp.store import MaildirStore
from tests.smtp_helpers import make_accounts
from tests.unit.test_abuse import _Connection, plain

ALICE = "alice@example.test"
PEER = "192.0.2.9"


class _IPv6Connection(_Connection):
    def __init__(self, factory: Any, peer: str) -> None:
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv6Address("TCP", peer, 40000))
        self.protocol.makeConnection(self.transport)


class DeadlineTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.accounts = make_accounts()
        self.store = MaildirStore(Path(self.mktemp()) / "mail", reactor=reactor)
        self.portal = makePortal(self.accounts, self.store)
        self.guard = AbuseGuard(self.clock.seconds, SecurityConfig(auth_failure_delay=0.1, auth_failure_delay_max=0.1))
        self.connections: list[_Connection] = []

    def tearDown(self) -> None:
        for connection in self.connections:
            connection.close()

    def connect(self, factory: Any, peer: str = PEER) -> _Connection:
        connection = (_IPv6Connection if ":" in peer else _Connection)(factory, peer)
        self.connections.append(connection)
        return connection

    def smtp(self, **policy: Any) -> SMTPFactory:
        values: dict[str, Any] = {"submission": False, "max_message_size": 100_000, "timeout": 300, "allow_plaintext_auth": True}
        values.update(policy)
        return SMTPFactory(Router(self.accounts, self.store), self.portal, SMTPPolicy("mail.example.test", **values), self.clock, guard=self.guard)

    def pop3(self, **policy: Any) -> POP3Factory:
        return POP3Factory(self.portal, POP3Policy("mail.example.test", allow_plaintext_auth=True, **policy), self.clock, guard=self.guard)

    def imap(self, **policy: Any) -> IMAPFactory:
        return IMAPFactory(self.portal, self.store, IMAPPolicy("mail.example.test", allow_plaintext_auth=True, **policy), self.clock, guard=self.guard)

    def trickle(self, session: _Connection, data: bytes, every: float, until: float) -> float:
        """Send C{data} every C{every} seconds until the session closes or C{until}; the seconds it lasted."""
        elapsed = 0.0
        while not session.closed and elapsed < until:
            session.send(data)
            self.clock.advance(every)
            elapsed += every
        return elapsed

    # -- the whole session -----------------------------------------------------------------

    def test_smtp_mx_session_kept_alive_by_a_noop_every_20_seconds_is_cut_at_its_deadline(self) -> None:
        session = self.connect(self.smtp(session_deadline=300))
        lasted = self.trickle(session, b"NOOP\r\n", 20, until=10_000)
        self.assertEqual(lasted, 300)
        self.assertEqual(session.lines()[-1], b"421 4.4.2 mail.example.test Session time limit reached; closing connection")

    def test_pop3_session_kept_alive_by_a_noop_every_20_seconds_is_cut_at_its_deadline(self) -> None:
        session = self.connect(self.pop3(session_deadline=300, max_commands_before_auth=1000))
        lasted = self.trickle(session, b"NOOP\r\n", 20, until=10_000)
        self.assertEqual(lasted, 300)
        self.assertEqual(session.lines()[-1], b"-ERR Session time limit reached; closing connection, nothing deleted")

    # -- the login -------------------------------------------------------------------------

    def test_submission_that_never_logs_in_is_cut_at_the_login_deadline_whatever_it_sends(self) -> None:
        session = self.connect(self.smtp(submission=True, login_deadline=60, max_commands_before_auth=1000))
        session.send(b"EHLO a.test\r\n")
        lasted = self.trickle(session, b"NOOP\r\n", 10, until=10_000)
        self.assertEqual(lasted, 60)
        self.assertEqual(session.lines()[-1], b"421 4.4.2 mail.example.test No login in time; closing connection")

    def test_submission_that_logs_in_is_not_cut_at_the_login_deadline(self) -> None:
        session = self.connect(self.smtp(submission=True, login_deadline=60))
        session.send(b"EHLO a.test\r\nAUTH PLAIN " + plain(ALICE, "alice-secret") + b"\r\n")
        self.assertEqual(session.lines()[-1], b"235 2.7.0 Authentication successful")
        self.assertEqual(self.trickle(session, b"NOOP\r\n", 10, until=600), 600)
        self.assertFalse(session.closed)

    def test_imap_before_login_is_cut_at_the_login_deadline(self) -> None:
        session = self.connect(self.imap(login_deadline=60, max_commands_before_auth=1000))
        lasted = self.trickle(session, b"a NOOP\r\n", 10, until=10_000)
        self.assertEqual(lasted, 60)
        self.assertEqual(session.lines()[-1], b"* BYE No login in time; closing connection")

    def test_imap_after_login_has_no_session_deadline_so_idle_can_last_for_days(self) -> None:
        session = self.connect(self.imap(login_deadline=60, timeout=1800))
        session.send(b"a LOGIN alice@example.test alice-secret\r\n")
        self.assertIn(b"a OK", session.lines()[-1])
        # Three days, a command every 25 minutes (as an IDLE client re-issues IDLE).
        self.assertGreaterEqual(self.trickle(session, b"b NOOP\r\n", 1500, until=3 * 86400), 3 * 86400)
        self.assertFalse(session.closed)

    # -- a command line ---------------------------------------------------------------------

    def test_smtp_command_line_trickled_a_byte_every_5_seconds_is_cut_after_the_line_time_limit(self) -> None:
        session = self.connect(self.smtp(line_seconds=30))
        lasted = self.trickle(session, b"N", 5, until=10_000)
        self.assertEqual(lasted, 30)
        self.assertEqual(session.lines()[-1], b"421 4.4.2 mail.example.test Command line too slow; closing connection")

    def test_pop3_command_line_trickled_is_cut_after_the_line_time_limit(self) -> None:
        session = self.connect(self.pop3(line_seconds=30))
        self.assertEqual(self.trickle(session, b"U", 5, until=10_000), 30)
        self.assertEqual(session.lines()[-1], b"-ERR Command line too slow; closing connection, nothing deleted")

    def test_imap_command_line_trickled_after_login_is_cut_after_the_line_time_limit(self) -> None:
        session = self.connect(self.imap(line_seconds=30))
        session.send(b"a LOGIN alice@example.test alice-secret\r\n")
        self.assertIn(b"a OK", session.lines()[-1])
        self.assertEqual(self.trickle(session, b"b", 5, until=10_000), 30)
        self.assertEqual(session.lines()[-1], b"* BYE Command line too slow; closing connection")

    def test_a_slow_typist_whose_lines_end_within_the_limit_is_not_cut(self) -> None:
        session = self.connect(self.smtp(line_seconds=30))
        for _ in range(20):
            for byte in b"NOOP":
                session.send(bytes([byte]))
                self.clock.advance(5)
            session.send(b"\r\n")
        self.assertFalse(session.closed)
        self.assertEqual(session.lines().count(b"250 2.0.0 Ok"), 20)

    # -- the data rate ------------------------------------------------------------------------

    def _in_data(self, session: _Connection) -> None:
        session.send(b"HELO a.test\r\nMAIL FROM:<bob@elsewhere.test>\r\nRCPT TO:<" + ALICE.encode() + b">\r\nDATA\r\n")
        self.assertEqual(session.lines()[-1], b"354 End data with <CR><LF>.<CR><LF>", session.lines())

    def test_smtp_data_trickled_below_the_minimum_rate_is_cut_after_the_grace(self) -> None:
        session = self.connect(self.smtp(min_data_rate=100, data_grace=30, timeout=300))
        self._in_data(session)
        # A line of 10 bytes every 5 seconds: 2 bytes/s against a minimum of 100.
        lasted = self.trickle(session, b"trickling\n", 5, until=10_000)
        self.assertLessEqual(lasted, 35)
        self.assertGreaterEqual(lasted, 30)
        self.assertEqual(session.lines()[-1], b"421 4.4.2 mail.example.test Data too slow; closing connection")

    def test_smtp_data_at_the_minimum_rate_is_not_cut(self) -> None:
        session = self.connect(self.smtp(min_data_rate=100, data_grace=30, max_message_size=10_000_000))
        self._in_data(session)
        line = b"x" * 98 + b"\r\n"
        self.assertEqual(self.trickle(session, line, 1, until=600), 600)
        self.assertFalse(session.closed)

    def test_imap_append_literal_trickled_below_the_minimum_rate_is_cut(self) -> None:
        session = self.connect(self.imap(min_data_rate=100, data_grace=30))
        session.send(b"a LOGIN alice@example.test alice-secret\r\n")
        session.send(b"b APPEND INBOX {100000}\r\n")
        self.assertEqual(session.lines()[-1], b"+ Ready for literal data")
        lasted = self.trickle(session, b"x", 5, until=10_000)
        self.assertLessEqual(lasted, 35)
        self.assertEqual(session.lines()[-1], b"* BYE Data too slow; closing connection")

    # -- counting clients ---------------------------------------------------------------------

    def test_ipv6_clients_are_counted_per_64_for_the_per_address_limit(self) -> None:
        factory = self.smtp(max_connections_per_ip=2)
        self.connect(factory, "2001:db8:1:2::1")
        self.connect(factory, "2001:db8:1:2:ffff::2")
        refused = self.connect(factory, "2001:db8:1:2::3")
        self.assertEqual(refused.lines(), [b"421 4.3.2 mail.example.test Too many connections from your address; try again later"])
        self.assertEqual(self.connect(factory, "2001:db8:1:3::1").lines(), [b"220 mail.example.test ESMTP mailapp"])

    def test_an_ipv6_64_is_one_key_for_bans_and_ipv4_mapped_is_its_ipv4_address(self) -> None:
        self.assertEqual(address_key("2001:db8:1:2:aaaa::9"), "2001:db8:1:2::/64")
        self.assertEqual(address_key("::ffff:192.0.2.1"), "192.0.2.1")
        guard = AbuseGuard(self.clock.seconds, SecurityConfig(ban_after_failures=2))
        guard.failed("imap", "2001:db8:1:2::1", ALICE)
        guard.failed("imap", "2001:db8:1:2::2", ALICE)
        self.assertTrue(guard.banned("2001:db8:1:2::3"))
        self.assertFalse(guard.banned("2001:db8:1:3::1"))

    # -- the log of refused connections ---------------------------------------------------------

    def test_refused_connections_are_logged_once_per_address_per_minute_then_summarised(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        telemetry = LogPublisher()
        counted: list[dict[str, Any]] = []
        telemetry.addObserver(counted.append)
        factory = self.smtp(max_connections_per_ip=1)
        factory.telemetry = telemetry
        self.connect(factory)
        for _ in range(1000):
            self.connect(factory).close()
        self.connect(factory, "192.0.2.77").close()
        refused = [event for event in events if event.get("log_event") == logevents.SESSION_REFUSED]
        self.assertEqual([event["client"] for event in refused], [PEER])
        self.clock.advance(60)
        summaries = [event for event in events if event.get("log_event") == logevents.SESSION_REFUSED_SUMMARY]
        self.assertEqual([(event["client"], event["count"]) for event in summaries], [(PEER, 999)])
        # The metrics still see every refusal.
        self.assertEqual(len([event for event in counted if event.get("log_event") == logevents.SESSION_REFUSED]), 999)
        # A new minute: the next refusal is logged again.
        self.connect(factory).close()
        refused = [event for event in events if event.get("log_event") == logevents.SESSION_REFUSED]
        self.assertEqual(len(refused), 2)


class WebmailConnectionTests(TestCase):
    """The webmail listener is counted and bounded like the others (its Site's channels over StringTransport)."""

    def setUp(self) -> None:
        from mailapp.sessions import SessionLimits
        from mailapp.web.app import Webmail, WebmailConnections, WebmailPolicy, WebmailSite

        self.clock = Clock()
        accounts = make_accounts()
        store = MaildirStore(Path(self.mktemp()) / "mail", reactor=reactor)
        webmail = Webmail(Router(accounts, store), makePortal(accounts, store), WebmailPolicy("mail.example.test"), reactor)
        self.limits = SessionLimits(max_connections=5, max_connections_per_ip=2, line_seconds=10, min_data_rate=100, data_grace=10)
        self.site = WebmailSite(webmail.app.resource(), 1_000_000, connections=WebmailConnections(self.limits, self.clock), reactor=self.clock)
        self.channels: list[Any] = []

    def tearDown(self) -> None:
        for channel, transport in self.channels:
            if channel.transport is not None and not getattr(channel, "_lost", False):
                channel._lost = True
                channel.connectionLost(Failure(ConnectionDone()))

    def connect(self, peer: str = PEER) -> tuple[Any, StringTransport]:
        from twisted.internet.address import IPv4Address

        channel = self.site.buildProtocol(IPv4Address("TCP", peer, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        channel.makeConnection(transport)
        self.channels.append((channel, transport))
        return channel, transport

    def test_webmail_connections_beyond_the_per_address_limit_get_503_and_close(self) -> None:
        self.connect()
        self.connect()
        _, refused = self.connect()
        self.assertTrue(refused.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), refused.value())
        self.assertTrue(refused.value().endswith(b"Too many connections from your address; try again later"))
        self.assertTrue(refused.disconnecting)
        self.assertEqual(self.site.connections.counts.of(PEER), 2)

    def test_webmail_connections_beyond_the_listener_budget_get_503(self) -> None:
        for number in range(5):
            self.connect(f"192.0.2.{number + 20}")
        _, refused = self.connect("192.0.2.99")
        self.assertTrue(refused.value().startswith(b"HTTP/1.1 503"), refused.value())

    def test_webmail_request_headers_trickled_are_cut_with_408_at_the_header_deadline(self) -> None:
        channel, transport = self.connect()
        request = b"GET /login HTTP/1.1\r\nHost: mail.example.test\r\n" + b"X-Trickle: " + b"a" * 1000
        sent = 0
        while not transport.disconnecting and sent < len(request):
            channel.dataReceived(request[sent : sent + 1])
            sent += 1
            self.clock.advance(1)
        self.assertEqual(sent, 10)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n"), transport.value())

    def test_webmail_body_below_the_minimum_rate_is_cut(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"POST /login HTTP/1.1\r\nHost: mail.example.test\r\nContent-Length: 100000\r\n\r\n")
        lasted = 0
        while not transport.disconnecting and lasted < 1000:
            channel.dataReceived(b"x")
            self.clock.advance(1)
            lasted += 1
        self.assertLessEqual(lasted, 11)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408"), transport.value())
