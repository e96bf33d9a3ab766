"""
The POP3 session driven over StringTransport, built by
L{mailapp.pop3.buildFactory} from a context of fakes (a L{FakeStore},
L{FakeAccounts}) with a L{task.Clock}: every reply is there when
C{dataReceived} returns, or when the clock has moved past a delay.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp import logevents, pop3, service
from mailapp.pop3 import CHUNK_SIZE, MAX_LINE, POP3Factory, SessionState, _DotStuffer, _MessageSender, _TopFilter
from mailapp.testing import FakeStore, listener
from tests.protocol.accounts import make_accounts
from tests.protocol.pop3_client import Session, make_factory, pop3_context

ALICE = "alice@example.test"
BOB = "bob@example.test"
ALICE_PLAIN = base64.b64encode(b"\x00alice@example.test\x00alice-secret")

FIRST = b"Subject: one\r\nFrom: x@remote.test\r\n\r\nline 1\r\n.starts with a dot\r\nline 3\r\n"
SECOND = b"Subject: two\r\n\r\n" + b"b" * 5000 + b"\r\n"
THIRD = b"Subject: three\r\n\r\nno final newline"


class POP3TestCase(TestCase):
    def setUp(self) -> None:
        self.factory, self.store = make_factory(FakeStore())

    def session(self, factory: POP3Factory | None = None, **kwargs: Any) -> Session:
        session = Session(factory or self.factory, **kwargs)
        self.addCleanup(session.drop)
        return session

    @inlineCallbacks
    def inbox(self, account: str = ALICE) -> Any:
        folder = yield self.store.mailbox(account).folder("INBOX")
        return folder

    @inlineCallbacks
    def deliver(self, *messages: bytes, account: str = ALICE) -> Any:
        folder = yield self.inbox(account)
        uids = []
        for message in messages:
            uid = yield folder.append(message)
            uids.append(uid)
        return uids

    def logged_in(self, session: Session | None = None, password: bytes = b"alice-secret") -> Any:
        session = session or self.session()
        session.send(b"USER alice@example.test\r\nPASS " + password + b"\r\n")
        self.assertGreaterEqual(len(session.statuses()), 3)
        self.assertEqual(session.statuses()[-1], b"+OK", session.lines())
        session.clear()
        return session

    def reply(self, session: Session, command: bytes, count: int = 1) -> Any:
        """Send C{command}: C{count} status lines (and any multi-line body) are there when it returns."""
        session.clear()
        session.send(command)
        self.assertTrue(len(session.statuses()) >= count and not session.proto._busy, session.lines())
        return session.output()

    @inlineCallbacks
    def uids(self, account: str = ALICE) -> Any:
        folder = yield self.inbox(account)
        messages = yield folder.messages()
        return [info.uid for info in messages]


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
            b"AUTH-RESP-CODE\r\nPIPELINING\r\nSTLS\r\nIMPLEMENTATION mailapp\r\n.\r\n",
        )

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
        first, second = (pop3.buildFactory(context, listener) for listener in listeners)
        self.assertIs(first.locks, second.locks)
        self.assertIs(service.PROTOCOL_BUILDERS["pop3"], pop3.buildFactory)
        one = yield self.logged_in(self.session(first))
        other = self.session(second)
        other.send(b"AUTH PLAIN " + ALICE_PLAIN + b"\r\n")
        self.assertTrue(len(other.lines()) == 2)
        self.assertIn(b"[IN-USE]", other.lines()[1])
        one.drop()


class TransactionTests(POP3TestCase):
    @inlineCallbacks
    def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        self.uidlist = yield self.deliver(FIRST, SECOND, THIRD)
        folder = yield self.inbox()
        status = yield folder.status()
        self.uidvalidity = status.uidvalidity

    @inlineCallbacks
    def test_stat_list_and_uidl_report_crlf_octet_counts_and_store_uids(self) -> None:
        session = yield self.logged_in()
        sizes = [len(FIRST), len(SECOND), len(THIRD)]
        output = yield self.reply(session, b"STAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nUIDL 3\r\n", count=5)
        v = self.uidvalidity
        u = self.uidlist
        expected = (
            b"+OK 3 %d\r\n" % sum(sizes)
            + b"+OK 3 messages (%d octets)\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n" % (sum(sizes), *sizes)
            + b"+OK 2 %d\r\n" % sizes[1]
            + b"+OK Unique-ID listing follows\r\n1 %d.%d\r\n2 %d.%d\r\n3 %d.%d\r\n.\r\n" % (v, u[0], v, u[1], v, u[2])
            + b"+OK 3 %d.%d\r\n" % (v, u[2])
        )
        self.assertEqual(output, expected)

    @inlineCallbacks
    def test_retr_sends_the_stored_bytes_dot_stuffed_with_their_octet_count(self) -> None:
        session = yield self.logged_in()
        output = yield self.reply(session, b"RETR 1\r\n")
        self.assertEqual(
            output,
            b"+OK %d octets\r\n" % len(FIRST)
            + b"Subject: one\r\nFrom: x@remote.test\r\n\r\nline 1\r\n..starts with a dot\r\nline 3\r\n.\r\n",
        )

    @inlineCallbacks
    def test_retr_of_a_message_without_final_newline_adds_one_before_the_terminator(self) -> None:
        session = yield self.logged_in()
        output = yield self.reply(session, b"RETR 3\r\n")
        self.assertEqual(output, b"+OK %d octets\r\n" % len(THIRD) + THIRD + b"\r\n.\r\n")

    @inlineCallbacks
    def test_top_sends_the_header_and_the_first_lines_of_the_body(self) -> None:
        session = yield self.logged_in()
        output = yield self.reply(session, b"TOP 1 0\r\nTOP 1 2\r\nTOP 1 99\r\n", count=3)
        head = b"Subject: one\r\nFrom: x@remote.test\r\n\r\n"
        self.assertEqual(
            output,
            b"+OK Top of message follows\r\n" + head + b".\r\n"
            + b"+OK Top of message follows\r\n" + head + b"line 1\r\n..starts with a dot\r\n.\r\n"
            + b"+OK Top of message follows\r\n" + head + b"line 1\r\n..starts with a dot\r\nline 3\r\n.\r\n",
        )

    @inlineCallbacks
    def test_bad_message_numbers_get_err_and_the_session_goes_on(self) -> None:
        session = yield self.logged_in()
        yield self.reply(session, b"DELE 2\r\n")
        output = yield self.reply(
            session,
            b"RETR 0\r\nRETR -1\r\nRETR 4\r\nRETR 99999999999999999999999999\r\nRETR x\r\nRETR\r\nRETR 1 2\r\n"
            b"RETR 2\r\nLIST 2\r\nUIDL 2\r\nTOP 2 1\r\nDELE 2\r\nTOP 1 -1\r\nTOP 1\r\nLIST 1 2\r\nNOOP\r\n",
            count=16,
        )
        self.assertEqual(
            output.split(b"\r\n")[:-1],
            [
                b"-ERR No such message",
                b"-ERR Invalid message number",
                b"-ERR No such message",
                b"-ERR No such message",
                b"-ERR Invalid message number",
                b"-ERR Syntax: RETR message",
                b"-ERR Syntax: RETR message",
                b"-ERR Message 2 is deleted",
                b"-ERR Message 2 is deleted",
                b"-ERR Message 2 is deleted",
                b"-ERR Message 2 is deleted",
                b"-ERR Message 2 is deleted",
                b"-ERR Invalid line count",
                b"-ERR Syntax: TOP message lines",
                b"-ERR Syntax: LIST [message]",
                b"+OK",
            ],
        )
        self.assertFalse(session.closed)

    @inlineCallbacks
    def test_unknown_and_wrong_state_commands_get_err(self) -> None:
        before = self.session()
        before.clear()
        before.send(b"STAT\r\nRETR 1\r\nNOOP\r\nAPOP alice x\r\nXYZZY\r\n\r\nUSER a\x00b\r\n")
        self.assertEqual(
            before.lines(),
            [
                b"-ERR STAT is not valid in the AUTHORIZATION state",
                b"-ERR RETR is not valid in the AUTHORIZATION state",
                b"-ERR NOOP is not valid in the AUTHORIZATION state",
                b"-ERR Unknown command",
                b"-ERR Unknown command",
                b"-ERR Unknown command",
                b"-ERR Invalid characters in command",
            ],
        )
        session = yield self.logged_in()
        output = yield self.reply(session, b"USER alice@example.test\r\nPASS x\r\nAUTH PLAIN\r\nSTLS\r\nNOOP\r\n", count=5)
        self.assertEqual(
            output.split(b"\r\n")[:-1],
            [
                b"-ERR USER is not valid in the TRANSACTION state",
                b"-ERR PASS is not valid in the TRANSACTION state",
                b"-ERR AUTH is not valid in the TRANSACTION state",
                b"-ERR STLS is not valid in the TRANSACTION state",
                b"+OK",
            ],
        )

    @inlineCallbacks
    def test_capa_after_login_offers_no_login_or_stls(self) -> None:
        factory, _ = make_factory(self.store, tls=object())
        session = yield self.logged_in(self.session(factory))
        output = yield self.reply(session, b"CAPA\r\n")
        self.assertEqual(
            output,
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION mailapp\r\n.\r\n",
        )

    def test_overlong_line_gets_err_and_closes(self) -> None:
        session = self.session()
        session.clear()
        session.send(b"NOOP " + b"a" * MAX_LINE + b"\r\nCAPA\r\n")
        self.assertEqual(session.lines(), [b"-ERR Line too long; closing connection"])
        self.assertTrue(session.closed)

    def test_overlong_unterminated_line_gets_err_and_closes(self) -> None:
        session = self.session()
        session.clear()
        session.send(b"A" * (MAX_LINE + 1))
        self.assertEqual(session.lines(), [b"-ERR Line too long; closing connection"])
        self.assertTrue(session.closed)
        self.assertEqual(session.proto._buffer, b"")

    @inlineCallbacks
    def test_pipelined_commands_are_answered_in_order(self) -> None:
        session = yield self.logged_in()
        output = yield self.reply(session, b"RETR 2\r\nSTAT\r\nTOP 1 0\r\nDELE 1\r\nLIST\r\nRETR 3\r\nNOOP\r\n", count=7)
        self.assertEqual(session.statuses(), [b"+OK"] * 7)
        self.assertTrue(output.startswith(b"+OK %d octets\r\nSubject: two" % len(SECOND)))
        after_retr = output.split(b"b" * 5000 + b"\r\n.\r\n", 1)[1]
        self.assertTrue(after_retr.startswith(b"+OK 3 %d\r\n+OK Top of message follows\r\nSubject: one" % (len(FIRST) + len(SECOND) + len(THIRD))))
        self.assertTrue(output.endswith(b"\r\n.\r\n+OK\r\n"))

    @inlineCallbacks
    def test_dele_marks_and_quit_commits_deletions_and_reports_what_is_left(self) -> None:
        session = yield self.logged_in()
        output = yield self.reply(session, b"DELE 1\r\nDELE 3\r\nSTAT\r\nLIST\r\n", count=4)
        self.assertEqual(
            output,
            b"+OK Message 1 marked for deletion\r\n+OK Message 3 marked for deletion\r\n"
            + b"+OK 1 %d\r\n" % len(SECOND)
            + b"+OK 1 messages (%d octets)\r\n2 %d\r\n.\r\n" % (len(SECOND), len(SECOND)),
        )
        remaining = yield self.uids()
        self.assertEqual(remaining, self.uidlist)
        output = yield self.reply(session, b"QUIT\r\n")
        self.assertEqual(output, b"+OK mail.example.test signing off (1 messages left)\r\n")
        self.assertTrue(session.closed)
        remaining = yield self.uids()
        self.assertEqual(remaining, [self.uidlist[1]])

    @inlineCallbacks
    def test_rset_unmarks_deletions(self) -> None:
        session = yield self.logged_in()
        output = yield self.reply(session, b"DELE 1\r\nRSET\r\nQUIT\r\n", count=3)
        self.assertIn(b"+OK Maildrop has 3 messages", output)
        remaining = yield self.uids()
        self.assertEqual(remaining, self.uidlist)

    @inlineCallbacks
    def test_dropped_connection_deletes_nothing_and_releases_the_lock(self) -> None:
        session = yield self.logged_in()
        yield self.reply(session, b"DELE 1\r\nDELE 2\r\n", count=2)
        session.drop()
        again = yield self.logged_in()
        output = yield self.reply(again, b"STAT\r\n")
        self.assertEqual(output, b"+OK 3 %d\r\n" % (len(FIRST) + len(SECOND) + len(THIRD)))
        remaining = yield self.uids()
        self.assertEqual(remaining, self.uidlist)

    @inlineCallbacks
    def test_idle_timeout_after_ten_minutes_deletes_nothing(self) -> None:
        clock = Clock()
        factory, _ = make_factory(self.store, clock=clock)
        session = self.session(factory)
        session.send(b"AUTH PLAIN " + ALICE_PLAIN + b"\r\n")
        self.assertTrue(session.proto.sessionState is SessionState.TRANSACTION)
        session.send(b"DELE 1\r\n")
        session.clear()
        clock.advance(599)
        self.assertFalse(session.closed)
        clock.advance(2)
        self.assertEqual(session.lines(), [b"-ERR Idle timeout; closing connection, nothing deleted"])
        self.assertTrue(session.closed)
        session.drop()
        remaining = yield self.uids()
        self.assertEqual(remaining, self.uidlist)
        self.assertTrue(factory.locks.acquire(ALICE))

    @inlineCallbacks
    def test_mail_arriving_during_a_session_waits_for_the_next_one(self) -> None:
        session = yield self.logged_in()
        [late] = yield self.deliver(b"Subject: late\r\n\r\nlate\r\n")
        output = yield self.reply(session, b"STAT\r\nLIST 4\r\nRETR 4\r\nQUIT\r\n", count=4)
        self.assertEqual(output.split(b"\r\n")[:3], [b"+OK 3 %d" % (len(FIRST) + len(SECOND) + len(THIRD)), b"-ERR No such message", b"-ERR No such message"])
        self.assertIn(b"(4 messages left)", output)
        again = yield self.logged_in()
        output = yield self.reply(again, b"UIDL 4\r\n")
        self.assertEqual(output, b"+OK 4 %d.%d\r\n" % (self.uidvalidity, late))

    @inlineCallbacks
    def test_uidl_is_stable_across_sessions_after_deletions(self) -> None:
        session = yield self.logged_in()
        yield self.reply(session, b"DELE 1\r\nQUIT\r\n", count=2)
        again = yield self.logged_in()
        output = yield self.reply(again, b"UIDL\r\n")
        v = self.uidvalidity
        self.assertEqual(
            output, b"+OK Unique-ID listing follows\r\n1 %d.%d\r\n2 %d.%d\r\n.\r\n" % (v, self.uidlist[1], v, self.uidlist[2])
        )

    @inlineCallbacks
    def test_retr_marks_seen_at_quit_and_top_does_not(self) -> None:
        session = yield self.logged_in()
        yield self.reply(session, b"RETR 1\r\nTOP 2 1\r\nRETR 3\r\nDELE 3\r\nQUIT\r\n", count=5)
        folder = yield self.inbox()
        messages = yield folder.messages()
        self.assertEqual([(m.uid, m.flags) for m in messages], [(self.uidlist[0], frozenset({"\\Seen"})), (self.uidlist[1], frozenset())])

    @inlineCallbacks
    def test_retr_without_quit_marks_nothing(self) -> None:
        session = yield self.logged_in()
        yield self.reply(session, b"RETR 1\r\n")
        session.drop()
        folder = yield self.inbox()
        messages = yield folder.messages()
        self.assertEqual(messages[0].flags, frozenset())

    @inlineCallbacks
    def test_message_expunged_by_another_client_gets_err_and_the_session_goes_on(self) -> None:
        session = yield self.logged_in()
        folder = yield self.inbox()
        yield folder.expunge([self.uidlist[0]])
        output = yield self.reply(session, b"RETR 1\r\nDELE 1\r\nQUIT\r\n", count=3)
        self.assertEqual(
            output,
            b"-ERR Message 1 was removed from the mailbox by another client\r\n"
            b"+OK Message 1 marked for deletion\r\n+OK mail.example.test signing off (2 messages left)\r\n",
        )
        again = yield self.logged_in()
        output = yield self.reply(again, b"STAT\r\n")
        self.assertEqual(output, b"+OK 2 %d\r\n" % (len(SECOND) + len(THIRD)))

    @inlineCallbacks
    def test_quit_in_authorization_changes_nothing(self) -> None:
        session = self.session()
        session.clear()
        session.send(b"QUIT\r\n")
        self.assertEqual(session.lines(), [b"+OK Bye"])
        self.assertTrue(session.closed)
        remaining = yield self.uids()
        self.assertEqual(remaining, self.uidlist)

    @inlineCallbacks
    def test_login_and_update_are_logged_with_stable_names(self) -> None:
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        session = yield self.logged_in()
        yield self.reply(session, b"DELE 2\r\nQUIT\r\n", count=2)
        named = {event.get("log_event"): event for event in events}
        self.assertEqual(named[logevents.POP3_LOGIN]["account"], ALICE)
        self.assertEqual((named[logevents.POP3_UPDATE]["deleted"], named[logevents.POP3_UPDATE]["left"]), (1, 2))


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


class StreamingTests(TestCase):
    """The pieces RETR and TOP stream through, fed in awkward chunks."""

    MESSAGE = b"A: b\r\n.x: y\r\n\r\n.\r\n..\r\nbody.\r\n.end\r\n\r\n.\r\nlast"

    def chunked(self, data: bytes, size: int) -> list[bytes]:
        return [data[i : i + size] for i in range(0, len(data), size)]

    def test_dot_stuffing_is_the_same_whatever_the_chunk_boundaries(self) -> None:
        whole = _DotStuffer()
        expected = whole.stuff(self.MESSAGE) + whole.end()
        self.assertEqual(expected, b"A: b\r\n..x: y\r\n\r\n..\r\n...\r\nbody.\r\n..end\r\n\r\n..\r\nlast\r\n.\r\n")
        for size in range(1, 8):
            stuffer = _DotStuffer()
            pieces = [stuffer.stuff(chunk) for chunk in self.chunked(self.MESSAGE, size)]
            self.assertEqual(b"".join(pieces) + stuffer.end(), expected, size)

    def test_top_cut_is_the_same_whatever_the_chunk_boundaries(self) -> None:
        for lines, expected in [(0, b"A: b\r\n.x: y\r\n\r\n"), (2, b"A: b\r\n.x: y\r\n\r\n.\r\n..\r\n"), (9, self.MESSAGE)]:
            for size in range(1, 8):
                top = _TopFilter(lines)
                out = b""
                for chunk in self.chunked(self.MESSAGE, size):
                    piece, done = top.feed(chunk)
                    out += piece
                    if done:
                        break
                self.assertEqual(out, expected, (lines, size))

    def test_top_treats_a_bare_lf_blank_line_as_the_end_of_the_header(self) -> None:
        self.assertEqual(_TopFilter(0).feed(b"A: b\n\nbody\n"), (b"A: b\n\n", True))

    def test_sender_reads_no_further_while_the_transport_is_paused(self) -> None:
        """Bounded memory: at most one chunk is read ahead of what the transport accepted."""
        data = b"x" * (CHUNK_SIZE * 5 + 10)
        reads: list[int] = []

        class File:
            position = 0
            closed = False

            def read(self, size: int) -> bytes:
                reads.append(size)
                chunk = data[self.position : self.position + size]
                self.position += len(chunk)
                return chunk

            def close(self) -> None:
                self.closed = True

        class SlowClientTransport(StringTransport):
            """Asks the producer to pause once two chunks wait in its buffer, as a TCP transport does."""

            def write(self, data: bytes) -> None:
                super().write(data)
                if len(self.value()) >= 2 * CHUNK_SIZE:
                    self.producer.pauseProducing()

        transport = SlowClientTransport()
        file = File()
        sender = _MessageSender(transport, file, lambda f, n: succeed(f.read(n)), None, lambda: None)  # type: ignore[arg-type]
        done = sender.start()
        received = b""
        for expected_reads in (2, 4):
            self.assertEqual(len(reads), expected_reads)
            self.assertFalse(done.called)
            received += transport.value()
            transport.clear()
            sender.resumeProducing()
        self.assertEqual(len(reads), 6)
        self.assertIs(self.successResultOf(done), True)
        self.assertIsNone(transport.producer)
        self.assertTrue(file.closed)
        self.assertEqual(received + transport.value(), data + b"\r\n.\r\n")

    def test_sender_stopped_by_a_lost_connection_closes_the_file(self) -> None:
        closed: list[bool] = []
        pending: Deferred[bytes] = Deferred()

        class File:
            def close(self) -> None:
                closed.append(True)

        transport = StringTransport()
        sender = _MessageSender(transport, File(), lambda f, n: pending, None, lambda: None)  # type: ignore[arg-type]
        done = sender.start()
        sender.stopProducing()
        self.assertIs(self.successResultOf(done), False)
        self.assertEqual(closed, [])  # a read is in flight on a worker thread: not yet
        pending.callback(b"late")
        self.assertEqual(closed, [True])
        self.assertEqual(transport.value(), b"")


class ReadAheadTests(POP3TestCase):
    """Small messages are read before their RETR, within a window of READ_AHEAD messages."""

    @inlineCallbacks
    def test_a_client_fetching_newest_first_holds_at_most_the_read_ahead_window(self) -> None:
        from mailapp.pop3 import READ_AHEAD

        yield self.deliver(*[b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(1, 31)])
        session = yield self.logged_in()
        for number in range(30, 0, -1):
            output = yield self.reply(session, b"RETR %d\r\n" % number)
            self.assertTrue(output.endswith(b"body %d\r\n.\r\n" % number), output)
            self.assertLessEqual(len(session.proto._ahead), READ_AHEAD)

    @inlineCallbacks
    def test_messages_fetched_in_order_come_from_the_read_ahead(self) -> None:
        yield self.deliver(*[b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(1, 6)])
        session = yield self.logged_in()
        yield self.reply(session, b"RETR 1\r\n")
        self.assertEqual(sorted(session.proto._ahead), [2, 3, 4, 5])
        output = yield self.reply(session, b"RETR 2\r\n")
        self.assertTrue(output.endswith(b"body 2\r\n.\r\n"))
        self.assertNotIn(2, session.proto._ahead)

    @inlineCallbacks
    def test_hundreds_of_pipelined_retrs_served_from_the_read_ahead_each_get_their_message(self) -> None:
        count = 300
        yield self.deliver(*[b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(1, count + 1)])
        session = yield self.logged_in()
        yield self.reply(session, b"RETR 1\r\n")  # starts the read-ahead
        output = yield self.reply(session, b"".join(b"RETR %d\r\n" % n for n in range(2, count + 1)), count=count - 1)
        for n in (2, 150, count):
            self.assertIn(b"body %d\r\n.\r\n" % n, output)
        self.assertEqual(output.count(b"+OK "), count - 1)
