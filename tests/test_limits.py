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

from mailapp import pop3
from mailapp.abuse import AbuseGuard
from mailapp.auth import makePortal
from mailapp.config import ConfigError, Limits, SecurityConfig, parse
from mailapp.delivery import Router
from mailapp.imap import server as imap_server
from mailapp.imap.server import IMAPFactory, IMAPPolicy
from mailapp.pop3 import POP3Factory, POP3Policy
from mailapp.smtp import SMTPFactory, SMTPPolicy
from mailapp.store import MaildirStore
from tests.smtp_helpers import make_accounts
from tests.test_abuse import _Connection, plain

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


def context_for(limits: str, store: Any) -> Any:
    config = parse(MINIMAL + "[limits]\n" + limits, PATH, base_dir=Path("/srv"))
    accounts = make_accounts()
    return SimpleNamespace(
        config=config,
        reactor=Clock(),
        store=store,
        accounts=accounts,
        portal=makePortal(accounts, store),
        tls=None,
        inflight=None,
        router=Router(accounts, store),
        guard=None,
    )


def listener(protocol: str) -> Any:
    return SimpleNamespace(protocol=protocol, tls="none", allow_plaintext_auth=True)


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

    def test_pop3_closes_an_idle_session_after_its_timeout(self) -> None:
        session = self.connect(self.pop3(timeout=42))
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
        sent = Deferred.fromCoroutine(webmail._send(request, session, draft))
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
