"""
The POP3 session before login, and its limits, driven over StringTransport,
built by L{mailapp.pop3.buildFactory} from a context of fakes (a
L{FakeStore}, L{FakeAccounts}) with a L{task.Clock}: every reply is there
when C{dataReceived} returns, or when the clock has moved past a delay.
The TRANSACTION state is in C{test_pop3_transaction.py}.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock

from mailapp import pop3, service
from mailapp.pop3 import SessionState
from mailapp.testing import listener
from tests.protocol.accounts import make_accounts
from tests.protocol.pop3_client import (
    ALICE,
    ALICE_PLAIN,
    FIRST,
    SECOND,
    POP3TestCase,
    make_factory,
    pop3_context,
)


class AuthorizationTests(POP3TestCase):
    def test_greeting_names_the_host(self) -> None:
        self.assertEqual(self.session().output(), b"+OK mail.example.test POP3 mailapp ready\r\n")

    def test_capa_lists_every_capability_when_login_is_allowed(self) -> None:
        factory, _ = make_factory(self.store, tls=object())
        session = self.session(factory)
        session.clear()
        session.send(b"CAPA\r\n")
        self.assertEqual(
            session.output(),
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\n"
            b"AUTH-RESP-CODE\r\nPIPELINING\r\nUTF8 USER\r\nSTLS\r\nIMPLEMENTATION mailapp\r\n.\r\n",
        )

    def test_utf8_is_accepted_and_a_utf8_user_logs_in_with_user_and_pass(self) -> None:
        accounts = make_accounts()
        accounts.add_user("jörg@example.test", "jörg-geheim")
        factory, _ = make_factory(self.store, accounts=accounts)
        session = self.session(factory)
        session.clear()
        session.send("UTF8\r\nUSER Jörg@example.test\r\nPASS jörg-geheim\r\nSTAT\r\n".encode())
        lines = session.lines()
        self.assertEqual(lines[0], b"+OK UTF8 enabled")
        self.assertTrue(lines[-1].startswith(b"+OK 0 0"), lines)

    def test_without_tls_plaintext_login_is_neither_offered_nor_accepted(self) -> None:
        accounts = make_accounts()
        factory, _ = make_factory(self.store, tls=object(), allow_plaintext_auth=False, accounts=accounts)
        session = self.session(factory)
        session.clear()
        session.send(b"CAPA\r\nUSER alice@example.test\r\nPASS alice-secret\r\nAUTH PLAIN " + ALICE_PLAIN + b"\r\n")
        lines = session.lines()
        self.assertNotIn(b"USER", lines)
        self.assertNotIn(b"SASL PLAIN", lines)
        self.assertIn(b"STLS", lines)
        guidance = b"-ERR [AUTH] Plaintext authentication is not allowed without TLS; use STLS first"
        self.assertEqual(lines[-3:], [guidance] * 3)
        self.assertEqual(accounts.attempts, [])

    def test_without_stls_the_guidance_points_at_the_pop3s_port(self) -> None:
        factory, _ = make_factory(self.store, allow_plaintext_auth=False)
        session = self.session(factory)
        session.clear()
        session.send(b"USER alice@example.test\r\n")
        self.assertEqual(
            session.lines(), [b"-ERR [AUTH] Plaintext authentication is not allowed without TLS; connect to the POP3S port (995)"]
        )

    @inlineCallbacks
    def test_stls_discards_pipelined_bytes_then_allows_login(self) -> None:
        factory, _ = make_factory(self.store, tls=object(), allow_plaintext_auth=False)
        session = self.session(factory)
        session.clear()
        session.send(b"STLS\r\nUSER alice@example.test\r\nPASS alice-secret\r\n")
        self.assertEqual(session.lines(), [b"+OK Begin TLS negotiation"])
        self.assertEqual(session.tls_started, [b"+OK Begin TLS negotiation\r\n"])
        self.assertEqual(session.proto._buffer, b"")
        self.assertIsNone(session.proto._user)
        session.clear()
        session.send(b"CAPA\r\nSTLS\r\n")
        self.assertNotIn(b"STLS", session.lines()[:-1])
        self.assertIn(b"USER", session.lines())
        self.assertEqual(session.lines()[-1], b"-ERR Already using TLS")
        yield self.logged_in(session)

    def test_stls_is_refused_where_tls_is_not_configured(self) -> None:
        session = self.session()
        session.clear()
        session.send(b"STLS\r\n")
        self.assertEqual(session.lines(), [b"-ERR STLS not available on this port"])
        self.assertEqual(session.tls_started, [])

    @inlineCallbacks
    def test_user_pass_logs_in_and_reports_the_maildrop(self) -> None:
        yield self.deliver(FIRST, SECOND)
        session = self.session()
        session.clear()
        session.send(b"USER alice@example.test\r\n")
        self.assertEqual(session.lines(), [b"+OK Send your password"])
        session.send(b"PASS alice-secret\r\n")
        self.assertTrue(len(session.lines()) == 2)
        self.assertEqual(session.lines()[1], b"+OK Logged in; maildrop has 2 messages (%d octets)" % (len(FIRST) + len(SECOND)))
        self.assertIs(session.proto.sessionState, SessionState.TRANSACTION)

    def test_password_may_contain_spaces(self) -> None:
        accounts = make_accounts()
        accounts.add_user("dave@example.test", "two words ")
        factory, _ = make_factory(self.store, accounts=accounts)
        session = self.session(factory)
        session.send(b"USER dave@example.test\r\nPASS two words \r\n")
        self.assertTrue(len(session.statuses()) == 3)
        self.assertEqual(session.statuses(), [b"+OK", b"+OK", b"+OK"])

    def test_auth_plain_with_initial_response(self) -> None:
        session = self.session()
        session.clear()
        session.send(b"AUTH PLAIN " + ALICE_PLAIN + b"\r\n")
        self.assertTrue(session.lines() != [])
        self.assertEqual(session.lines(), [b"+OK Logged in; maildrop has 0 messages (0 octets)"])

    def test_auth_plain_with_continuation(self) -> None:
        session = self.session()
        session.clear()
        session.send(b"AUTH PLAIN\r\n")
        self.assertEqual(session.output(), b"+ \r\n")
        session.send(ALICE_PLAIN + b"\r\n")
        self.assertTrue(len(session.lines()) == 2)
        self.assertTrue(session.lines()[1].startswith(b"+OK Logged in"))

    def test_auth_cancelled_and_malformed_responses_get_err_and_the_session_goes_on(self) -> None:
        session = self.session()
        session.clear()
        session.send(b"AUTH PLAIN\r\n*\r\nAUTH PLAIN !!!\r\nAUTH PLAIN " + base64.b64encode(b"no-nuls") + b"\r\nAUTH CRAM-MD5\r\nCAPA\r\n")
        self.assertEqual(
            session.lines()[:5],
            [
                b"+ ",
                b"-ERR Authentication cancelled",
                b"-ERR Malformed base64 in AUTH response",
                b"-ERR Malformed PLAIN response",
                b"-ERR Unsupported authentication mechanism",
            ],
        )
        self.assertEqual(session.lines()[5], b"+OK Capability list follows")

    def test_auth_without_mechanism_lists_plain(self) -> None:
        session = self.session()
        session.clear()
        session.send(b"AUTH\r\n")
        self.assertEqual(session.output(), b"+OK SASL mechanisms follow\r\nPLAIN\r\n.\r\n")

    def test_pass_without_user_is_refused(self) -> None:
        session = self.session()
        session.clear()
        session.send(b"PASS alice-secret\r\n")
        self.assertEqual(session.lines(), [b"-ERR Send USER first"])

    def test_wrong_password_is_answered_only_after_the_delay(self) -> None:
        clock = Clock()
        factory, _ = make_factory(self.store, clock=clock, auth_failure_delay=1.0)
        session = self.session(factory)
        session.clear()
        session.send(b"USER alice@example.test\r\nPASS wrong\r\nCAPA\r\n")
        self.assertEqual(session.lines(), [b"+OK Send your password"])
        clock.advance(0.9)
        self.assertEqual(session.lines(), [b"+OK Send your password"])
        clock.advance(0.2)
        self.assertEqual(session.lines()[1:3], [b"-ERR [AUTH] Authentication failed", b"+OK Capability list follows"])

    def test_repeated_failures_close_the_connection_and_are_reported_to_the_guard(self) -> None:
        clock = Clock()
        factory, _ = make_factory(self.store, clock=clock)
        failures: list[tuple[str, str]] = []
        report = factory.guard.failed

        def failed(protocol: str, ip: str, account: str) -> Any:
            failures.append((ip, account))
            return report(protocol, ip, account)

        factory.guard.failed = failed  # type: ignore[method-assign]
        session = self.session(factory)
        session.clear()
        session.send(b"USER alice@example.test\r\nPASS bad\r\n" * 2 + b"AUTH PLAIN " + base64.b64encode(b"\0nobody@example.test\0x") + b"\r\n")
        clock.advance(1)
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(
            session.statuses(), [b"+OK", b"-ERR", b"+OK", b"-ERR", b"-ERR"]
        )
        self.assertEqual(session.lines()[-1], b"-ERR [AUTH] Too many authentication failures; closing connection")
        self.assertTrue(session.closed)
        self.assertEqual(failures, [("192.0.2.7", ALICE)] * 2 + [("192.0.2.7", "nobody@example.test")])

    @inlineCallbacks
    def test_second_concurrent_login_gets_in_use_until_the_first_ends(self) -> None:
        first = yield self.logged_in()
        second = self.session()
        second.clear()
        second.send(b"USER alice@example.test\r\nPASS alice-secret\r\n")
        self.assertTrue(len(second.lines()) == 2)
        self.assertEqual(second.lines()[1], b"-ERR [IN-USE] Your maildrop is open in another POP3 session; try again later")
        self.assertIs(second.proto.sessionState, SessionState.AUTHORIZATION)
        # Another user is not affected.
        other = self.session()
        other.send(b"USER bob@example.test\r\nPASS bob-secret\r\n")
        self.assertTrue(len(other.statuses()) == 3)
        self.assertEqual(other.statuses()[-1], b"+OK")
        first.drop()
        yield self.logged_in(second)

    @inlineCallbacks
    def test_in_use_is_shared_by_every_listener_over_one_store(self) -> None:
        context = pop3_context(self.store)
        listeners = [listener("pop3", name=name, allow_plaintext_auth=True) for name in ("pop3", "pop3s")]
        # One built directly, one the way the service builds its listeners.
        first = pop3.buildFactory(context, listeners[0])
        second = service.PROTOCOL_BUILDERS["pop3"](context, listeners[1])
        self.assertIs(first.locks, second.locks)
        one = yield self.logged_in(self.session(first))
        other = self.session(second)
        other.send(b"AUTH PLAIN " + ALICE_PLAIN + b"\r\n")
        self.assertTrue(len(other.lines()) == 2)
        self.assertIn(b"[IN-USE]", other.lines()[1])
        one.drop()

    @inlineCallbacks
    def test_two_servers_over_one_store_do_not_share_maildrop_locks(self) -> None:
        # Each context is one server's (as two tests' are): a session of one is not the other's [IN-USE].
        pop3_listener = listener("pop3", allow_plaintext_auth=True)
        first, second = (pop3.buildFactory(pop3_context(self.store), pop3_listener) for _ in range(2))
        self.assertIsNot(first.locks, second.locks)
        one = yield self.logged_in(self.session(first))
        other = yield self.logged_in(self.session(second))
        self.assertIs(other.proto.sessionState, SessionState.TRANSACTION)
        one.drop()


class LimitsTests(POP3TestCase):
    def test_connection_limit_per_ip_gets_err(self) -> None:
        factory, _ = make_factory(self.store, max_connections_per_ip=2)
        sessions = [self.session(factory) for _ in range(3)]
        self.assertEqual(sessions[2].lines(), [b"-ERR [SYS/TEMP] Too many connections from your address; try again later"])
        self.assertTrue(sessions[2].closed)
        self.assertTrue(self.session(factory, peer="192.0.2.8").output().startswith(b"+OK"))

    def test_shutdown_ends_idle_sessions_without_deleting(self) -> None:
        session = self.session()
        session.clear()
        self.factory.stopFactory()
        self.assertEqual(session.lines(), [b"-ERR [SYS/TEMP] Server shutting down; nothing deleted"])
        self.assertTrue(session.closed)
