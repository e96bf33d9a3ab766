"""
mailapp.abuse: failed-login delays that grow per address and per account,
address bans shared by every protocol (with an exempt list), bounded memory,
the sending rate, the log line fail2ban reads, and the [security] config.

The guard runs on a fake clock; the protocol tests drive real sessions over
StringTransport with one guard shared by SMTP, POP3 and IMAP, as the
service wires them.
"""

from __future__ import annotations

import base64
import configparser
import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from mailapp import logevents
from mailapp.abuse import AbuseGuard, quote_account
from mailapp.auth import makePortal
from mailapp.config import ConfigError, SecurityConfig, parse
from mailapp.delivery import Router
from mailapp.imap.server import IMAPFactory, IMAPPolicy
from mailapp.pop3 import POP3Factory, POP3Policy
from mailapp.smtp import SMTPFactory, SMTPPolicy
from mailapp.store import MaildirStore
from tests.smtp_helpers import make_accounts
from tests.paths import REPOSITORY

REPO = REPOSITORY
FILTER = REPO / "etc" / "fail2ban" / "filter.d" / "mailapp.conf"
ALICE = "alice@example.test"
ATTACKER = "198.51.100.7"
NEIGHBOUR = "198.51.100.8"
PATH = Path("etc/test.toml")
MINIMAL = '[server]\nhostname = "mail.example.test"\n'


def guard(clock: Clock, **security: Any) -> AbuseGuard:
    values: dict[str, Any] = {
        "auth_failure_delay": 1.0,
        "auth_failure_delay_max": 8.0,
        "ban_after_failures": 5,
        "ban_window": 600,
        "ban_seconds": 3600,
    }
    values.update(security)
    return AbuseGuard(clock.seconds, SecurityConfig(**values), max_messages_per_hour=3)


# --- the guard alone, on a fake clock -------------------------------------------------------------


def test_failure_delay_doubles_per_failure_of_the_address_up_to_the_maximum() -> None:
    clock = Clock()
    subject = guard(clock, ban_after_failures=100)
    delays = [subject.failed("imap", ATTACKER, f"user{n}@example.test").delay for n in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_failure_delay_grows_per_account_across_addresses() -> None:
    clock = Clock()
    subject = guard(clock, ban_after_failures=100)
    delays = [subject.failed("pop3", f"203.0.113.{n}", ALICE).delay for n in range(1, 5)]
    assert delays == [1.0, 2.0, 4.0, 8.0]
    # Another account from a fresh address starts again at the base delay.
    assert subject.failed("pop3", "203.0.113.99", "bob@example.test").delay == 1.0


def test_failures_leave_the_window_and_the_delay_falls_back() -> None:
    clock = Clock()
    subject = guard(clock, ban_window=60, ban_after_failures=100)
    subject.failed("smtp", ATTACKER, ALICE)
    subject.failed("smtp", ATTACKER, ALICE)
    clock.advance(61)
    assert subject.failed("smtp", ATTACKER, ALICE).delay == 1.0


def test_ban_after_n_failures_in_the_window_then_lifted_after_its_period() -> None:
    clock = Clock()
    subject = guard(clock, ban_after_failures=3, ban_seconds=100)
    verdicts = [subject.failed("imap", ATTACKER, ALICE) for _ in range(3)]
    assert [v.banned for v in verdicts] == [False, False, True]
    assert subject.banned(ATTACKER)
    assert not subject.banned(NEIGHBOUR)
    clock.advance(99)
    assert subject.banned(ATTACKER)
    clock.advance(1)
    assert not subject.banned(ATTACKER)
    # A fresh start after the ban: one failure does not ban again.
    assert not subject.failed("imap", ATTACKER, ALICE).banned


def test_failures_spread_beyond_the_window_never_ban() -> None:
    clock = Clock()
    subject = guard(clock, ban_after_failures=3, ban_window=60)
    for _ in range(10):
        assert not subject.failed("imap", ATTACKER, ALICE).banned
        clock.advance(31)


def test_exempt_networks_are_delayed_but_never_banned() -> None:
    clock = Clock()
    subject = guard(clock, ban_after_failures=2, ban_exempt_networks=(ipaddress.ip_network("198.51.100.0/24"),))
    verdicts = [subject.failed("smtp", ATTACKER, ALICE) for _ in range(5)]
    assert not any(v.banned for v in verdicts)
    assert verdicts[-1].delay == 8.0
    assert not subject.banned(ATTACKER)
    assert subject.exempt(ATTACKER) and not subject.exempt("192.0.2.1")


def test_ipv4_mapped_ipv6_address_is_the_same_client() -> None:
    clock = Clock()
    subject = guard(clock, ban_after_failures=2)
    subject.failed("imap", "::ffff:" + ATTACKER, ALICE)
    subject.failed("imap", ATTACKER, ALICE)
    assert subject.banned("::ffff:" + ATTACKER) and subject.banned(ATTACKER)


def test_a_good_login_forgives_the_account_not_the_address() -> None:
    clock = Clock()
    subject = guard(clock, ban_after_failures=100)
    subject.failed("imap", ATTACKER, ALICE)
    subject.failed("imap", ATTACKER, ALICE)
    subject.succeeded(ATTACKER, ALICE)
    # The address keeps its two failures: the third is delayed 4 s.
    assert subject.failed("imap", ATTACKER, "bob@example.test").delay == 4.0
    assert subject.failed("imap", "192.0.2.50", ALICE).delay == 1.0


def test_memory_is_bounded_by_the_tracked_key_cap() -> None:
    clock = Clock()
    subject = AbuseGuard(clock.seconds, SecurityConfig(ban_after_failures=1, ban_seconds=10_000), max_tracked=50)
    for n in range(500):
        subject.failed("imap", str(ipaddress.ip_address(0x0A000000 + n)), f"user{n}@example.test")
    tracked = subject.tracked()
    assert tracked["addresses"] <= 50 and tracked["accounts"] <= 50 and tracked["bans"] <= 50
    # The newest bans are the ones kept.
    assert subject.banned(str(ipaddress.ip_address(0x0A000000 + 499)))


def test_expired_entries_are_forgotten() -> None:
    clock = Clock()
    subject = guard(clock, ban_window=60, ban_after_failures=100)
    for n in range(20):
        subject.failed("imap", f"192.0.2.{n}", f"user{n}@example.test")
    clock.advance(61)
    subject.failed("imap", "192.0.2.200", "other@example.test")
    assert subject.tracked()["addresses"] == 1
    assert subject.tracked()["accounts"] == 1


def test_sending_rate_counts_accepted_messages_per_sender_over_a_sliding_hour() -> None:
    clock = Clock()
    subject = guard(clock)
    for _ in range(3):
        assert subject.mayAcceptMessage(ALICE)
        subject.messageAccepted(ALICE)
        clock.advance(60)
    assert not subject.mayAcceptMessage(ALICE)
    assert not subject.mayAcceptMessage(ALICE.upper())
    assert subject.mayAcceptMessage("bob@example.test")
    clock.advance(3600 - 180)
    assert subject.mayAcceptMessage(ALICE)


# --- the log line and the fail2ban filter ------------------------------------------------------------


def test_account_is_quoted_so_no_user_name_can_forge_a_field_or_a_line() -> None:
    assert quote_account("alice@example.test") == '"alice@example.test"'
    assert quote_account('x" client=8.8.8.8') == '"x\\" client=8.8.8.8"'
    assert quote_account("a\r\nb\\\x00é") == '"a\\x0d\\x0ab\\\\\\x00\\xe9"'
    assert len(quote_account("a" * 10_000)) < 300


def capture(events: list[dict[str, Any]]) -> Any:
    globalLogPublisher.addObserver(events.append)
    return lambda: globalLogPublisher.removeObserver(events.append)


def test_each_failure_is_logged_once_with_protocol_client_and_account() -> None:
    from twisted.logger import formatEvent

    events: list[dict[str, Any]] = []
    stop = capture(events)
    try:
        guard(Clock()).failed("webmail", ATTACKER, ALICE)
    finally:
        stop()
    failures = [event for event in events if event.get("log_event") == logevents.AUTH_FAILED]
    assert len(failures) == 1
    assert formatEvent(failures[0]) == f'auth failed protocol=webmail client={ATTACKER} account="{ALICE}"'
    assert (failures[0]["protocol"], failures[0]["client"], failures[0]["account"]) == ("webmail", ATTACKER, ALICE)


def failregexes() -> list[re.Pattern[str]]:
    """The shipped filter's failregex lines, with fail2ban's <HOST> as a named group."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(FILTER, encoding="utf-8")
    lines = [line.strip() for line in parser["Definition"]["failregex"].splitlines() if line.strip()]
    assert lines, "the filter has no failregex"
    return [re.compile(line.replace("<HOST>", r"(?P<host>\S+)")) for line in lines]


#: fail2ban finds the timestamp and matches the regex against the rest of the line.
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?(?:[+-]\d{4}|Z)?")


def fail2ban_hosts(lines: list[str]) -> list[str]:
    hosts = []
    for line in lines:
        rest = _TIMESTAMP.sub("", line, count=1)
        for pattern in failregexes():
            match = pattern.search(rest)
            if match:
                hosts.append(match.group("host"))
                break
    return hosts


def logged_lines(run: Any) -> list[str]:
    """What twistd's text log file would hold for the events C{run} emits."""
    from io import StringIO

    from twisted.logger import textFileLogObserver

    output = StringIO()
    observer = textFileLogObserver(output)
    globalLogPublisher.addObserver(observer)
    try:
        run()
    finally:
        globalLogPublisher.removeObserver(observer)
    return output.getvalue().splitlines()


def test_fail2ban_filter_matches_every_protocols_failure_line_and_nothing_else() -> None:
    subject = guard(Clock(), ban_after_failures=100)

    def run() -> None:
        for protocol in ("smtp", "pop3", "imap", "webmail"):
            subject.failed(protocol, ATTACKER, ALICE)
        subject.failed("imap", "2001:db8::7", "")

    lines = logged_lines(run)
    assert fail2ban_hosts(lines) == [ATTACKER] * 4 + ["2001:db8::7"]
    assert fail2ban_hosts(["2024-05-01T10:00:00+0000 [mailapp.smtp#info] accepted ABC from=<a@b> client=1.2.3.4"]) == []


def test_fail2ban_filter_cannot_be_tricked_by_the_account_name() -> None:
    subject = guard(Clock(), ban_after_failures=100)
    forged = [
        'x" client=8.8.8.8 account="y',
        "x client=8.8.8.8",
        "] auth failed protocol=imap client=8.8.8.8 account=",
        "a\n2024-05-01T10:00:00+0000 [mailapp.abuse#info] auth failed protocol=imap client=8.8.8.8 account=\"b\"",
    ]
    lines = logged_lines(lambda: [subject.failed("imap", ATTACKER, account) for account in forged])
    assert len(lines) == len(forged)
    assert fail2ban_hosts(lines) == [ATTACKER] * len(forged)


def test_the_jail_example_uses_the_filter() -> None:
    jail = configparser.ConfigParser(interpolation=None)
    jail.read(REPO / "etc" / "fail2ban" / "jail.d" / "mailapp.local", encoding="utf-8")
    assert jail["mailapp"]["filter"] == "mailapp"
    assert jail["mailapp"]["enabled"] == "true"


# --- [security] in the config ---------------------------------------------------------------------


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse(text, PATH, base_dir=Path("/srv/mailapp"))
    return raised.value.problems


def test_security_defaults() -> None:
    config = parse(MINIMAL, PATH, base_dir=Path("/srv/mailapp"))
    assert config.security == SecurityConfig(
        auth_failure_delay=1.0,
        auth_failure_delay_max=15.0,
        ban_after_failures=10,
        ban_window=600,
        ban_seconds=3600,
        ban_exempt_networks=(),
    )


def test_security_values_are_read() -> None:
    config = parse(
        MINIMAL
        + "[security]\nauth_failure_delay = 0.5\nauth_failure_delay_max = 4\nban_after_failures = 3\n"
        + 'ban_window = 60\nban_seconds = 1\nban_exempt_networks = ["10.0.0.0/8", "2001:db8::/32"]\n',
        PATH,
        base_dir=Path("/srv/mailapp"),
    )
    assert config.security == SecurityConfig(
        auth_failure_delay=0.5,
        auth_failure_delay_max=4.0,
        ban_after_failures=3,
        ban_window=60,
        ban_seconds=1,
        ban_exempt_networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")),
    )


def test_security_mistakes_are_all_reported_with_their_keys() -> None:
    problems = problems_of(
        MINIMAL
        + '[security]\nauth_failure_delay = 0\nauth_failure_delay_max = "x"\nban_after_failures = 0\n'
        + 'ban_window = -1\nban_seconds = true\nban_exempt_networks = ["10.0.0.1/8", 7]\nbantime = 3\n'
    )
    assert problems == [
        (
            "etc/test.toml: security.bantime: unknown key (expected one of: auth_cache_seconds, auth_failure_delay, auth_failure_delay_max, "
            "ban_after_failures, ban_exempt_networks, ban_seconds, ban_window, mx_refuse_local_senders)"
        ),
        "etc/test.toml: security.auth_failure_delay: must be a number of seconds above 0 and at most 300, not 0",
        "etc/test.toml: security.auth_failure_delay_max: must be a number of seconds above 0 and at most 300, not a string ('x')",
        "etc/test.toml: security.ban_after_failures: must be a positive integer, not 0",
        "etc/test.toml: security.ban_window: must be a positive integer, not -1",
        "etc/test.toml: security.ban_seconds: must be an integer, not a boolean (True)",
        "etc/test.toml: security.ban_exempt_networks[0]: bad network '10.0.0.1/8': 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?",
        "etc/test.toml: security.ban_exempt_networks[1]: must be a string, not an integer (7)",
    ]


def test_delay_maximum_below_the_base_is_a_problem() -> None:
    assert problems_of(MINIMAL + "[security]\nauth_failure_delay = 5\nauth_failure_delay_max = 2\n") == [
        "etc/test.toml: security.auth_failure_delay_max: 2 is less than security.auth_failure_delay (5)"
    ]


# --- one guard, every protocol: sessions over StringTransport ------------------------------------


class _Connection:
    def __init__(self, factory: Any, peer: str) -> None:
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.transport.startTLS = lambda context: None  # type: ignore[method-assign]
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def lines(self) -> list[bytes]:
        return self.transport.value().split(b"\r\n")[:-1]

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def close(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.connectionLost(None)


def plain(account: str, password: str) -> bytes:
    return base64.b64encode(b"\0" + account.encode() + b"\0" + password.encode())


class CrossProtocolTests(TestCase):
    """A ban earned on one protocol is enforced by all; other addresses and the right password are untouched."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.guard = guard(self.clock, ban_after_failures=3, ban_seconds=300)
        accounts = make_accounts()
        store = MaildirStore(Path(self.mktemp()) / "mail", reactor=reactor)
        portal = makePortal(accounts, store)
        self.imap = IMAPFactory(portal, store, IMAPPolicy("mail.example.test", allow_plaintext_auth=True), self.clock, guard=self.guard)
        self.pop3 = POP3Factory(portal, POP3Policy("mail.example.test", allow_plaintext_auth=True), self.clock, guard=self.guard)
        smtp_policy = SMTPPolicy("mail.example.test", submission=True, max_message_size=100_000, timeout=300, allow_plaintext_auth=True)
        self.smtp = SMTPFactory(Router(accounts, store), portal, smtp_policy, self.clock, guard=self.guard)
        self.connections: list[_Connection] = []

    def tearDown(self) -> None:
        for connection in self.connections:
            connection.close()

    def connect(self, factory: Any, peer: str = ATTACKER) -> _Connection:
        connection = _Connection(factory, peer)
        self.connections.append(connection)
        return connection

    def fail_on_imap(self, times: int, peer: str = ATTACKER) -> _Connection:
        session = self.connect(self.imap, peer)
        for n in range(times):
            session.send(b"a%d LOGIN alice@example.test wrong\r\n" % n)
            self.clock.advance(10)
        return session

    def test_failures_are_answered_after_a_delay_that_grows(self) -> None:
        session = self.connect(self.imap)
        session.send(b"a LOGIN alice@example.test wrong\r\n")
        self.clock.advance(0.99)
        self.assertEqual(len(session.lines()), 1)
        self.clock.advance(0.01)
        self.assertEqual(session.lines()[-1], b"a NO [AUTHENTICATIONFAILED] Authentication failed")
        session.send(b"b LOGIN alice@example.test wrong\r\n")
        self.clock.advance(1.99)
        self.assertEqual(session.lines()[-1], b"a NO [AUTHENTICATIONFAILED] Authentication failed")
        self.clock.advance(0.01)
        self.assertEqual(session.lines()[-1], b"b NO [AUTHENTICATIONFAILED] Authentication failed")

    def test_the_failure_that_bans_is_answered_then_the_session_closes(self) -> None:
        session = self.fail_on_imap(3)
        self.assertEqual(
            session.lines()[-2:],
            [b"a2 NO [AUTHENTICATIONFAILED] Authentication failed", b"* BYE [UNAVAILABLE] Too many failed logins from your address; try again later"],
        )
        self.assertTrue(session.closed)

    def test_banned_on_imap_is_refused_at_connect_by_smtp_pop3_and_imap(self) -> None:
        self.fail_on_imap(3)
        smtp = self.connect(self.smtp)
        self.assertEqual(smtp.lines(), [b"421 4.7.0 mail.example.test Too many failed logins from your address; try again later"])
        self.assertTrue(smtp.closed)
        pop3 = self.connect(self.pop3)
        self.assertEqual(pop3.lines(), [b"-ERR [SYS/TEMP] Too many failed logins from your address; try again later"])
        self.assertTrue(pop3.closed)
        imap = self.connect(self.imap)
        self.assertEqual(imap.lines(), [b"* BYE [UNAVAILABLE] Too many failed logins from your address; try again later"])
        self.assertTrue(imap.closed)

    def test_another_address_logs_in_with_the_right_password_during_the_ban(self) -> None:
        self.fail_on_imap(3)
        other = self.connect(self.smtp, NEIGHBOUR)
        other.send(b"EHLO client.test\r\nAUTH PLAIN " + plain(ALICE, "alice-secret") + b"\r\n")
        self.assertEqual(other.lines()[-1], b"235 2.7.0 Authentication successful")
        imap = self.connect(self.imap, NEIGHBOUR)
        imap.send(b"a LOGIN alice@example.test alice-secret\r\n")
        self.assertTrue(imap.lines()[-1].startswith(b"a OK [CAPABILITY "), imap.lines())

    def test_the_ban_is_lifted_after_its_period(self) -> None:
        self.fail_on_imap(3)
        self.clock.advance(300)
        smtp = self.connect(self.smtp)
        self.assertTrue(smtp.lines()[0].startswith(b"220 "))
        smtp.send(b"EHLO client.test\r\nAUTH PLAIN " + plain(ALICE, "alice-secret") + b"\r\n")
        self.assertEqual(smtp.lines()[-1], b"235 2.7.0 Authentication successful")

    def test_a_session_open_before_the_ban_gets_no_password_check_after_it(self) -> None:
        smtp = self.connect(self.smtp)
        smtp.send(b"EHLO client.test\r\n")
        self.fail_on_imap(3)
        smtp.send(b"AUTH PLAIN " + plain(ALICE, "alice-secret") + b"\r\n")
        self.clock.advance(10)
        self.assertEqual(smtp.lines()[-1], b"421 4.7.0 mail.example.test Too many failed logins from your address; try again later")
        self.assertTrue(smtp.closed)

    def test_failures_on_every_protocol_add_up_to_one_ban(self) -> None:
        smtp = self.connect(self.smtp)
        smtp.send(b"EHLO client.test\r\nAUTH PLAIN " + plain(ALICE, "wrong") + b"\r\n")
        self.clock.advance(10)
        self.assertEqual(smtp.lines()[-1], b"535 5.7.8 Authentication credentials invalid")
        pop3 = self.connect(self.pop3)
        pop3.send(b"USER alice@example.test\r\nPASS wrong\r\n")
        self.clock.advance(10)
        self.assertEqual(pop3.lines()[-1], b"-ERR [AUTH] Authentication failed")
        self.assertFalse(self.guard.banned(ATTACKER))
        self.fail_on_imap(1)
        self.assertTrue(self.guard.banned(ATTACKER))
        self.assertEqual(self.connect(self.pop3).lines(), [b"-ERR [SYS/TEMP] Too many failed logins from your address; try again later"])

    def test_each_protocol_logs_one_failure_line_per_attempt(self) -> None:
        events: list[dict[str, Any]] = []
        stop = capture(events)
        self.addCleanup(stop)
        smtp = self.connect(self.smtp)
        smtp.send(b"EHLO client.test\r\nAUTH PLAIN " + plain(ALICE, "wrong") + b"\r\n")
        pop3 = self.connect(self.pop3)
        pop3.send(b"USER bob@example.test\r\nPASS wrong\r\n")
        imap = self.connect(self.imap)
        imap.send(b"a LOGIN nobody@example.test wrong\r\n")
        self.clock.advance(10)
        failures = [(e["protocol"], e["client"], e["account"]) for e in events if e.get("log_event") == logevents.AUTH_FAILED]
        self.assertEqual(
            failures,
            [("smtp", ATTACKER, ALICE), ("pop3", ATTACKER, "bob@example.test"), ("imap", ATTACKER, "nobody@example.test")],
        )


def test_a_reload_applies_new_security_settings_and_keeps_bans_in_force():
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    from mailapp.abuse import AbuseGuard
    from mailapp.config import Limits, SecurityConfig

    clock = Clock()
    guard = AbuseGuard(clock.seconds, SecurityConfig(ban_after_failures=10, ban_seconds=60))
    for _ in range(10):
        guard.failed("imap", "192.0.2.1", "a@example.test")
    assert guard.banned("192.0.2.1")
    guard.reconfigure(SimpleNamespace(security=SecurityConfig(ban_after_failures=2, ban_seconds=60), limits=Limits(max_messages_per_hour=1)))
    assert guard.banned("192.0.2.1"), "a ban in force stays"
    guard.failed("imap", "192.0.2.2", "b@example.test")
    assert not guard.banned("192.0.2.2")
    guard.failed("imap", "192.0.2.2", "b@example.test")
    assert guard.banned("192.0.2.2"), "the new threshold applies"
    assert guard.sending.allowed("c@example.test")
    guard.sending.accepted("c@example.test")
    assert not guard.sending.allowed("c@example.test"), "the new hourly limit applies"
