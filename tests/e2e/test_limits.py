"""
The configurable limits, each with its protocol error: connections (total
and per address) on every listener, commands before authentication, idle
timeouts, messages per hour per sender, and IMAP literal and line sizes.
Sessions run over StringTransport on a fake clock.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mailapp import pop3, testing
from mailapp.abuse import AbuseGuard
from mailapp.auth import makePortal
from mailapp.config import ConfigError, Limits, ListenerBudget, ListenerConfig, SecurityConfig, listener_budget, parse
from mailapp.context import ServiceContext
from mailapp.delivery import Router
from mailapp.imap import server as imap_server
from mailapp.imap.server import IMAPFactory, IMAPPolicy
from mailapp.pop3 import POP3Factory, POP3Policy
from mailapp.sessions import ConnectionCounts
from mailapp.smtp import SMTPFactory, SMTPPolicy
from mailapp.store import MaildirStore
from mailapp.testing import service_context
from tests.smtp_helpers import make_accounts
from tests.unit.test_abuse import _Connection, plain

PATH = Path("etc/test.toml")
MINIMAL = '[server]\nhostname = "mail.example.test"\n'
ALICE = "alice@example.test"
PEER = "192.0.2.9"


# --- config ----------------------------------------------------------------------------------------


def test_new_limits_have_documented_defaults() -> None:
    limits = parse(MINIMAL, PATH, base_dir=Path("/srv")).limits
    assert (
        limits.max_commands_before_auth,
        limits.pop3_timeout_seconds,
        limits.imap_timeout_seconds,
        limits.max_messages_per_hour,
        limits.imap_max_literal,
        limits.imap_max_line,
    ) == (20, 600, 1800, 1000, 262_144, 524_288)


@pytest.mark.parametrize(
    "name",
    ["max_commands_before_auth", "pop3_timeout_seconds", "imap_timeout_seconds", "max_messages_per_hour", "imap_max_literal", "imap_max_line"],
)
def test_new_limits_must_be_positive_integers(name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(MINIMAL + f"[limits]\n{name} = 0\n", PATH, base_dir=Path("/srv"))
    assert raised.value.problems == [f"etc/test.toml: limits.{name}: must be a positive integer, not 0"]


def _listeners(*tables: str) -> str:
    return "".join(f"[listeners.{name}]\nprotocol = \"{protocol}\"\nendpoint = \"tcp:0\"\ntls = \"none\"\n{more}\n" for name, protocol, more in tables)


FOUR_LISTENERS = (("smtp", "smtp", ""), ("submission", "submission", ""), ("pop3", "pop3", ""), ("imap", "imap", ""))


def test_each_listener_defaults_to_the_server_ceiling_the_mx_to_a_quarter_and_login_listeners_share_half_unauthenticated() -> None:
    config = parse(MINIMAL + _listeners(*FOUR_LISTENERS) + "[limits]\nmax_connections = 600\n", PATH, base_dir=Path("/srv"))
    budgets = {listener.name: listener_budget(config, listener) for listener in config.listeners}
    assert {name: (b.max_connections, b.max_unauthenticated) for name, b in budgets.items()} == {
        "smtp": (150, None),
        "submission": (600, 100),
        "pop3": (600, 100),
        "imap": (600, 100),
    }
    assert config.limits.login_timeout_seconds == 60


def test_a_listeners_own_budgets_come_from_its_table() -> None:
    config = parse(
        MINIMAL + _listeners(("smtp", "smtp", "max_connections = 300"), ("imap", "imap", "max_connections = 200\nmax_unauthenticated = 20")),
        PATH,
        base_dir=Path("/srv"),
    )
    smtp, imap = config.listeners
    assert (listener_budget(config, smtp), listener_budget(config, imap)) == (ListenerBudget(300, None), ListenerBudget(200, 20))


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (("imap", "imap", "max_connections = 2000"), "listeners.imap.max_connections: 2000 is more than limits.max_connections (1000), the ceiling for all listeners together"),
        (("imap", "imap", "max_connections = 10\nmax_unauthenticated = 11"), "listeners.imap.max_unauthenticated: 11 is more than this listener's max_connections (10)"),
        (("imap", "imap", "max_unauthenticated = 0"), "listeners.imap.max_unauthenticated: must be a positive integer, not 0"),
        (("smtp", "smtp", "max_unauthenticated = 5"), "listeners.smtp.max_unauthenticated: the MX has no login, so every connection is unauthenticated: use max_connections"),
        (("metrics", "metrics", "max_connections = 5"), "listeners.metrics.max_connections: metrics connections are not counted: the key applies to smtp, submission, pop3, imap, managesieve and webmail"),
        (("web", "webmail", "max_unauthenticated = 5"), "listeners.web.max_unauthenticated: webmail logins are per request, not per connection: use max_connections"),
    ],
)
def test_listener_budgets_are_checked(table: tuple[str, str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(MINIMAL + _listeners(table), PATH, base_dir=Path("/srv"))
    assert raised.value.problems == [f"etc/test.toml: {problem}"]


def test_the_builders_take_each_listeners_budget_and_the_login_timeout_from_the_config() -> None:
    from mailapp import smtp

    text = MINIMAL + _listeners(("smtp", "smtp", "max_connections = 30"), ("imap", "imap", "max_connections = 20\nmax_unauthenticated = 5")) + "[limits]\nlogin_timeout_seconds = 15\n"
    config = parse(text, PATH, base_dir=Path("/srv"))
    context = service_context(config=config, accounts=make_accounts())
    mx = smtp.buildFactory(context, config.listeners[0]).policy
    imap = imap_server.buildFactory(context, config.listeners[1]).policy
    assert (mx.max_connections, mx.max_unauthenticated, mx.max_server_connections) == (30, None, 1000)
    assert (imap.max_connections, imap.max_unauthenticated, imap.login_timeout) == (20, 5, 15.0)


def context_for(limits: str, store: Any) -> ServiceContext:
    config = parse(MINIMAL + "[limits]\n" + limits, PATH, base_dir=Path("/srv"))
    return service_context(config=config, store=store, accounts=make_accounts())


def listener(protocol: str) -> ListenerConfig:
    return testing.listener(protocol, allow_plaintext_auth=True)


# --- sessions ------------------------------------------------------------------------------------------


class LimitTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.accounts = make_accounts()
        self.store = MaildirStore(Path(self.mktemp()) / "mail", reactor=reactor)
        self.portal = makePortal(self.accounts, self.store)
        self.guard = AbuseGuard(self.clock.seconds, SecurityConfig(auth_failure_delay=0.1, auth_failure_delay_max=0.1), max_messages_per_hour=2)
        self.connections: list[_Connection] = []

    def tearDown(self) -> None:
        for connection in self.connections:
            connection.close()

    def connect(self, factory: Any, peer: str = PEER) -> _Connection:
        connection = _Connection(factory, peer)
        self.connections.append(connection)
        return connection

    def smtp(self, **policy: Any) -> SMTPFactory:
        values: dict[str, Any] = {"submission": True, "max_message_size": 100_000, "timeout": 300, "allow_plaintext_auth": True}
        values.update(policy)
        return SMTPFactory(Router(self.accounts, self.store), self.portal, SMTPPolicy("mail.example.test", **values), self.clock, guard=self.guard)

    def pop3(self, **policy: Any) -> POP3Factory:
        return POP3Factory(self.portal, POP3Policy("mail.example.test", allow_plaintext_auth=True, **policy), self.clock, guard=self.guard)

    def imap(self, **policy: Any) -> IMAPFactory:
        return IMAPFactory(self.portal, self.store, IMAPPolicy("mail.example.test", allow_plaintext_auth=True, **policy), self.clock, guard=self.guard)

    # connections, total and per address, on each protocol

    def test_smtp_connections_per_address_and_in_total_get_421(self) -> None:
        factory = self.smtp(max_connections=2, max_connections_per_ip=1)
        self.connect(factory)
        self.assertEqual(self.connect(factory).lines(), [b"421 4.3.2 mail.example.test Too many connections from your address; try again later"])
        self.connect(factory, "192.0.2.10")
        self.assertEqual(self.connect(factory, "192.0.2.11").lines(), [b"421 4.3.2 mail.example.test Too many connections; try again later"])

    def test_pop3_connections_per_address_and_in_total_get_sys_temp(self) -> None:
        factory = self.pop3(max_connections=2, max_connections_per_ip=1)
        self.connect(factory)
        self.assertEqual(self.connect(factory).lines(), [b"-ERR [SYS/TEMP] Too many connections from your address; try again later"])
        self.connect(factory, "192.0.2.10")
        self.assertEqual(self.connect(factory, "192.0.2.11").lines(), [b"-ERR [SYS/TEMP] Too many connections; try again later"])

    def test_imap_connections_per_address_and_in_total_get_bye(self) -> None:
        factory = self.imap(max_connections=2, max_connections_per_ip=1)
        self.connect(factory)
        refused = self.connect(factory)
        self.assertEqual(refused.lines(), [b"* BYE Too many connections from your address; try again later"])
        self.assertTrue(refused.closed)
        self.connect(factory, "192.0.2.10")
        self.assertEqual(self.connect(factory, "192.0.2.11").lines(), [b"* BYE Too many connections; try again later"])

    # each listener's own budget, and its connections not logged in yet

    def test_a_full_imap_listener_leaves_the_mx_its_own_budget(self) -> None:
        counts = ConnectionCounts()
        imap = self.imap(max_connections=3, max_connections_per_ip=100, max_server_connections=10)
        mx = self.smtp(submission=False, max_connections=3, max_connections_per_ip=100, max_server_connections=10)
        imap.counts = mx.counts = counts
        for number in range(3):
            self.connect(imap, f"192.0.2.{number}")
        self.assertEqual(self.connect(imap, "192.0.2.50").lines(), [b"* BYE Too many connections; try again later"])
        self.assertEqual(self.connect(mx, "192.0.2.60").lines(), [b"220 mail.example.test ESMTP mailapp"])

    def test_the_server_ceiling_holds_for_all_listeners_together(self) -> None:
        counts = ConnectionCounts()
        imap = self.imap(max_connections=3, max_connections_per_ip=100, max_server_connections=4)
        mx = self.smtp(submission=False, max_connections=3, max_connections_per_ip=100, max_server_connections=4)
        imap.counts = mx.counts = counts
        for number in range(2):
            self.connect(imap, f"192.0.2.{number}")
            self.connect(mx, f"192.0.2.{number + 10}")
        self.assertEqual(self.connect(mx, "192.0.2.60").lines(), [b"421 4.3.2 mail.example.test Too many connections; try again later"])

    def test_imap_connections_not_logged_in_past_max_unauthenticated_get_bye_and_a_login_frees_a_place(self) -> None:
        factory = self.imap(max_connections=10, max_connections_per_ip=10, max_unauthenticated=2)
        first = self.connect(factory)
        self.connect(factory)
        refused = self.connect(factory)
        self.assertEqual(refused.lines(), [b"* BYE Too many connections waiting to log in; try again later"])
        self.assertTrue(refused.closed)
        first.send(b"a LOGIN alice@example.test alice-secret\r\n")
        self.assertIn(b"a OK", first.lines()[-1])
        self.assertEqual(factory.unauthenticated(), 1)
        self.assertTrue(self.connect(factory).lines()[0].startswith(b"* OK"))

    def test_pop3_connections_not_logged_in_past_max_unauthenticated_get_sys_temp(self) -> None:
        factory = self.pop3(max_connections=10, max_connections_per_ip=10, max_unauthenticated=1)
        self.connect(factory)
        self.assertEqual(self.connect(factory).lines(), [b"-ERR [SYS/TEMP] Too many connections waiting to log in; try again later"])

    def test_submission_connections_not_logged_in_past_max_unauthenticated_get_421_and_auth_frees_a_place(self) -> None:
        factory = self.smtp(max_connections=10, max_connections_per_ip=10, max_unauthenticated=1)
        first = self.connect(factory)
        refused = self.connect(factory)
        self.assertEqual(refused.lines(), [b"421 4.3.2 mail.example.test Too many connections waiting to log in; try again later"])
        first.send(b"EHLO a.test\r\nAUTH PLAIN " + plain(ALICE, "alice-secret") + b"\r\n")
        self.assertEqual(first.lines()[-1], b"235 2.7.0 Authentication successful")
        self.assertEqual(self.connect(factory).lines(), [b"220 mail.example.test ESMTP mailapp"])

    def test_the_mx_admits_its_whole_budget_without_logins(self) -> None:
        factory = self.smtp(submission=False, max_connections=3, max_connections_per_ip=10)
        replies = [self.connect(factory, f"192.0.2.{number}").lines() for number in range(3)]
        self.assertEqual(replies, [[b"220 mail.example.test ESMTP mailapp"]] * 3)

    def test_submission_closes_a_session_idle_before_auth_after_the_login_timeout(self) -> None:
        session = self.connect(self.smtp(timeout=300, login_timeout=30))
        session.send(b"EHLO a.test\r\n")
        self.clock.advance(29)
        self.assertFalse(session.closed)
        self.clock.advance(1)
        self.assertEqual(session.lines()[-1], b"421 4.4.2 mail.example.test Error: timeout exceeded")

    def test_submission_after_auth_gets_the_session_timeout(self) -> None:
        session = self.connect(self.smtp(timeout=300, login_timeout=30))
        session.send(b"EHLO a.test\r\nAUTH PLAIN " + plain(ALICE, "alice-secret") + b"\r\n")
        self.clock.advance(299)
        self.assertFalse(session.closed)

    def test_imap_closes_a_session_idle_before_login_after_the_login_timeout(self) -> None:
        session = self.connect(self.imap(login_timeout=30))
        self.clock.advance(30)
        self.assertEqual(session.lines()[-1], b"* BYE Autologout; idle for too long")

    # commands before authentication

    def test_smtp_submission_closes_with_421_after_too_many_commands_before_auth(self) -> None:
        session = self.connect(self.smtp(max_commands_before_auth=3))
        session.send(b"EHLO a.test\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
        self.assertEqual(session.lines()[-1], b"421 4.7.0 mail.example.test Too many commands before authentication; closing connection")
        self.assertTrue(session.closed)

    def test_smtp_commands_after_auth_are_not_limited(self) -> None:
        session = self.connect(self.smtp(max_commands_before_auth=3))
        session.send(b"EHLO a.test\r\nAUTH PLAIN " + plain(ALICE, "alice-secret") + b"\r\n" + b"NOOP\r\n" * 10)
        self.assertEqual(session.lines()[-1], b"250 2.0.0 Ok")
        self.assertFalse(session.closed)

    def test_smtp_mx_has_no_command_limit_before_auth(self) -> None:
        session = self.connect(self.smtp(submission=False, max_commands_before_auth=3))
        session.send(b"EHLO a.test\r\n" + b"NOOP\r\n" * 10)
        self.assertEqual(session.lines()[-1], b"250 2.0.0 Ok")

    def test_pop3_closes_after_too_many_commands_before_login(self) -> None:
        session = self.connect(self.pop3(max_commands_before_auth=2))
        session.send(b"CAPA\r\nUSER x\r\nUSER y\r\n")
        self.assertEqual(session.lines()[-1], b"-ERR Too many commands before login; closing connection")
        self.assertTrue(session.closed)

    def test_imap_says_bye_after_too_many_commands_before_login(self) -> None:
        session = self.connect(self.imap(max_commands_before_auth=2))
        session.send(b"a CAPABILITY\r\nb NOOP\r\nc NOOP\r\n")
        self.assertEqual(session.lines()[-1], b"* BYE Too many commands before login; closing connection")
        self.assertTrue(session.closed)

    # idle timeouts

    def test_pop3_and_imap_timeouts_come_from_the_config(self) -> None:
        context = context_for("pop3_timeout_seconds = 42\nimap_timeout_seconds = 43\nimap_max_literal = 1000\nimap_max_line = 2000\n", self.store)
        self.assertEqual(pop3.buildFactory(context, listener("pop3")).policy.timeout, 42)
        policy = imap_server.buildFactory(context, listener("imap")).policy
        self.assertEqual((policy.timeout, policy.max_literal, policy.max_line), (43, 1000, 2000))

    def test_pop3_closes_a_session_idle_before_login_after_the_login_timeout(self) -> None:
        session = self.connect(self.pop3(timeout=600, login_timeout=42))
        self.clock.advance(41)
        self.assertFalse(session.closed)
        self.clock.advance(1)
        self.assertEqual(session.lines()[-1], b"-ERR Idle timeout; closing connection, nothing deleted")
        self.assertTrue(session.closed)

    def test_imap_logs_out_an_idle_session_after_its_timeout(self) -> None:
        session = self.connect(self.imap(timeout=43))
        session.send(b"a LOGIN alice@example.test alice-secret\r\n")
        self.clock.advance(42)
        self.assertFalse(session.closed)
        self.clock.advance(1)
        self.assertEqual(session.lines()[-1], b"* BYE Autologout; idle for too long")

    # messages per hour

    def test_submission_refuses_mail_with_450_past_the_hourly_limit(self) -> None:
        self.guard.messageAccepted(ALICE)
        self.guard.messageAccepted(ALICE)
        session = self.connect(self.smtp())
        session.send(b"EHLO a.test\r\nAUTH PLAIN " + plain(ALICE, "alice-secret") + b"\r\nMAIL FROM:<alice@example.test>\r\n")
        self.assertEqual(session.lines()[-1], b"450 4.7.1 Too many messages: the limit is 2 per hour; try again later")
        self.clock.advance(3600)
        session.send(b"MAIL FROM:<alice@example.test>\r\n")
        self.assertNotEqual(session.lines()[-1][:3], b"450")

    def test_webmail_refuses_to_send_past_the_hourly_limit_with_a_clear_message(self) -> Any:
        from twisted.internet.defer import Deferred

        from mailapp.web import Webmail, WebmailPolicy
        from mailapp.web.messages import Draft

        webmail = Webmail(Router(self.accounts, self.store), self.portal, WebmailPolicy("mail.example.test"), reactor, guard=self.guard)
        self.guard.messageAccepted(ALICE)
        self.guard.messageAccepted(ALICE)
        request = SimpleNamespace(getClientAddress=lambda: SimpleNamespace(host=PEER))
        session = SimpleNamespace(account=ALICE)
        draft = Draft(to=[("", "bob@example.test")], cc=[], bcc=[], subject="hi", body="hello", attachments=[], in_reply_to="", references="")
        from mailapp.accounts import Profile

        sent = Deferred.fromCoroutine(webmail._send(request, session, draft, Profile()))
        sent.addCallback(self.assertEqual, ["You have sent 2 messages in the last hour, the most allowed. Try again later."])
        return sent

    # IMAP literal and line sizes

    def test_imap_literal_limit_is_configurable(self) -> None:
        session = self.connect(self.imap(max_literal=100))
        session.send(b"a LOGIN alice@example.test alice-secret\r\nb STATUS {101}\r\n")
        self.assertEqual(session.lines()[-1], b"b BAD Literal too large")
        session.send(b"c STATUS {100}\r\n")
        self.assertEqual(session.lines()[-1], b"+ Ready for literal data")

    def test_imap_line_limit_is_configurable(self) -> None:
        session = self.connect(self.imap(max_line=10_000))
        session.send(b"a LOGIN alice@example.test alice-secret\r\n")
        session.send(b"b NOOP " + b"x" * 10_000 + b"\r\n")
        self.assertEqual(session.lines()[-1], b"* BAD Line too long; closing connection")
        self.assertTrue(session.closed)


def test_limits_dataclass_defaults_match_the_config_defaults() -> None:
    assert parse(MINIMAL, PATH, base_dir=Path("/srv")).limits == Limits()


def test_connection_limits_hold_across_all_listeners_together(tmp_path):
    """max_connections_per_ip counts a client's connections on every port, not on each."""
    import socket

    from tests.service_runner import TIMEOUT, ServiceProcess, listener

    server = ServiceProcess(
        tmp_path,
        listener("smtp", "smtp") + listener("pop3", "pop3") + listener("imap", "imap"),
        "[limits]\nmax_connections = 10\nmax_connections_per_ip = 2\n",
    )
    server.start()
    opened = []
    try:

        def connect(name: str) -> bytes:
            sock = socket.create_connection(("127.0.0.1", server.port(name)), timeout=TIMEOUT)
            opened.append(sock)
            return sock.recv(200)

        assert connect("smtp").startswith(b"220 ")
        assert connect("pop3").startswith(b"+OK")
        third = connect("imap")
        assert third.startswith(b"* BYE"), third
    finally:
        for sock in opened:
            sock.close()
        server.terminate()


def test_idle_imap_connections_that_never_log_in_cannot_lock_out_the_mx_submission_or_pop3(tmp_path):
    """
    The outage of issue item 8, with an old config (only [limits]): 30 idle
    IMAP connections that never log in once filled the one budget of every
    listener, and the MX answered 421. Now they get their listener's share
    for connections not logged in, and every other listener still serves.
    """
    import poplib
    import smtplib
    import socket

    from tests.service_runner import TIMEOUT, ServiceProcess, listener

    server = ServiceProcess(
        tmp_path,
        listener("smtp", "smtp") + listener("submission", "submission", allow_plaintext_auth=True)
        + listener("pop3", "pop3", allow_plaintext_auth=True) + listener("imap", "imap", allow_plaintext_auth=True),
        "[limits]\nmax_connections = 30\nmax_connections_per_ip = 30\n",
    )
    server.add_users({ALICE: "alice-secret"})
    server.start()
    idle: list[socket.socket] = []
    try:
        greetings = []
        for _ in range(30):
            sock = socket.create_connection(("127.0.0.1", server.port("imap")), timeout=TIMEOUT)
            idle.append(sock)
            greetings.append(sock.recv(500))
        # Three listeners with logins share half of 30: five each may wait to log in.
        assert sum(greeting.startswith(b"* OK") for greeting in greetings) == 5, greetings
        assert sum(greeting.startswith(b"* BYE Too many connections waiting to log in") for greeting in greetings) == 25

        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as mx:
            assert mx.noop()[0] == 250
            refused = mx.sendmail("someone@elsewhere.test", [ALICE], b"Subject: still here\r\n\r\nThe MX answers.\r\n")
            assert refused == {}
        with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=TIMEOUT) as submission:
            submission.login(ALICE, "alice-secret")
            assert submission.sendmail(ALICE, [ALICE], b"Subject: note\r\n\r\nto self\r\n") == {}
        pop = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=TIMEOUT)
        pop.user(ALICE)
        pop.pass_("alice-secret")
        assert pop.stat()[0] == 2
        pop.quit()
    finally:
        for sock in idle:
            sock.close()
        server.terminate()
