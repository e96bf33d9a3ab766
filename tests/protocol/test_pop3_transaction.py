"""
The POP3 session after login (STAT, LIST, UIDL, RETR, TOP, DELE, QUIT and
the read-ahead) over a L{FakeStore}, as C{test_pop3_session.py} builds it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock

from mailapp import logevents, pop3
from mailapp.pop3 import CHUNK_SIZE, MAX_LINE, SessionState
from mailapp.testing import HeldThreadPool, InlineWorkerPools, listener
from tests.protocol.pop3_client import (
    ALICE,
    ALICE_PLAIN,
    FIRST,
    SECOND,
    THIRD,
    POP3TestCase,
    make_factory,
    pop3_context,
)


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
    def test_a_large_message_is_read_on_the_servers_store_pool(self) -> None:
        big = b"Subject: big\r\n\r\n" + b"x" * (2 * CHUNK_SIZE) + b"\r\n"
        yield self.deliver(big)
        pools = InlineWorkerPools()
        held = HeldThreadPool()
        held.held = True
        pools.store = held
        context = dataclasses.replace(pop3_context(self.store), pools=pools)
        factory = pop3.buildFactory(context, listener("pop3", allow_plaintext_auth=True))
        session = yield self.logged_in(self.session(factory))
        session.send(b"RETR 4\r\n")
        self.assertEqual(session.output(), b"+OK %d octets\r\n" % len(big))
        self.assertTrue(held.jobs)
        held.run()
        self.assertEqual(session.output(), b"+OK %d octets\r\n" % len(big) + big + b".\r\n")

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
    def test_message_expunged_by_another_client_is_still_sent_while_the_store_holds_it(self) -> None:
        session = yield self.logged_in()
        folder = yield self.inbox()
        yield folder.expunge([self.uidlist[0]])
        output = yield self.reply(session, b"RETR 1\r\n")
        self.assertTrue(output.startswith(b"+OK %d octets\r\n" % len(FIRST)), output)

    @inlineCallbacks
    def test_message_expunged_by_another_client_and_gone_gets_err_and_the_session_goes_on(self) -> None:
        session = yield self.logged_in()
        folder = yield self.inbox()
        yield folder.expunge([self.uidlist[0]])
        self.store._mailboxes[ALICE.lower()]["INBOX"].expunged.clear()  # held past the store's while
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
            self.assertLessEqual(len(session.proto._readahead), READ_AHEAD)

    @inlineCallbacks
    def test_messages_fetched_in_order_come_from_the_read_ahead(self) -> None:
        yield self.deliver(*[b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(1, 6)])
        session = yield self.logged_in()
        yield self.reply(session, b"RETR 1\r\n")
        self.assertEqual(session.proto._readahead.held(), [2, 3, 4, 5])
        output = yield self.reply(session, b"RETR 2\r\n")
        self.assertTrue(output.endswith(b"body 2\r\n.\r\n"))
        self.assertNotIn(2, session.proto._readahead.held())

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

    def batches(self) -> list[list[int]]:
        """The UIDs of each batch the session read through IFolder.readMessages (one worker-thread trip each)."""
        return self.store._mailboxes[ALICE.lower()]["INBOX"].batches

    @inlineCallbacks
    def test_pipelined_retrs_of_small_messages_take_one_store_trip_per_batch(self) -> None:
        from mailapp.pop3 import READ_AHEAD

        count = 100
        yield self.deliver(*[b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(1, count + 1)])
        session = yield self.logged_in()
        output = yield self.reply(session, b"".join(b"RETR %d\r\n" % n for n in range(1, count + 1)), count=count)
        self.assertEqual(output.count(b"+OK "), count)
        for n in (1, 50, count):
            self.assertIn(b"Subject: %d\r\n\r\nbody %d\r\n.\r\n" % (n, n), output)
        batches = self.batches()
        self.assertEqual(sorted(uid for batch in batches for uid in batch), (yield self.uids()))
        self.assertLessEqual(len(batches), 2 * count // READ_AHEAD + 1)
        self.assertEqual(len(batches[0]), READ_AHEAD)

    @inlineCallbacks
    def test_a_client_fetching_newest_first_reads_one_message_per_trip(self) -> None:
        yield self.deliver(*[b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(1, 11)])
        session = yield self.logged_in()
        for number in range(10, 0, -1):
            output = yield self.reply(session, b"RETR %d\r\n" % number)
            self.assertTrue(output.endswith(b"body %d\r\n.\r\n" % number), output)
        uids = yield self.uids()
        self.assertEqual(self.batches(), [[uid] for uid in reversed(uids)])

    @inlineCallbacks
    def test_a_message_marked_deleted_is_not_read_ahead(self) -> None:
        yield self.deliver(*[b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(1, 6)])
        session = yield self.logged_in()
        yield self.reply(session, b"DELE 3\r\nRETR 1\r\n", count=2)
        uids = yield self.uids()
        self.assertEqual(self.batches(), [[uids[0], uids[1], uids[3], uids[4]]])
        output = yield self.reply(session, b"RETR 3\r\n")
        self.assertEqual(output, b"-ERR Message 3 is deleted\r\n")

    @inlineCallbacks
    def test_a_message_bigger_than_a_chunk_is_streamed_between_read_ahead_ones(self) -> None:
        big = b"Subject: big\r\n\r\n" + b".x\r\n" * (CHUNK_SIZE // 3) + b"end\r\n"
        yield self.deliver(b"Subject: 1\r\n\r\none\r\n", big, b"Subject: 3\r\n\r\nthree\r\n")
        session = yield self.logged_in()
        output = yield self.reply(session, b"RETR 1\r\nRETR 2\r\nRETR 3\r\n", count=3)
        self.assertEqual(
            output,
            b"+OK 19 octets\r\nSubject: 1\r\n\r\none\r\n.\r\n"
            + b"+OK %d octets\r\n" % len(big) + big.replace(b"\n.", b"\n..") + b".\r\n"
            + b"+OK 21 octets\r\nSubject: 3\r\n\r\nthree\r\n.\r\n",
        )
        uids = yield self.uids()
        self.assertEqual(self.batches(), [[uids[0], uids[2]]])


    @inlineCallbacks
    def test_a_message_deleted_then_restored_by_rset_is_still_sent_whole(self) -> None:
        yield self.deliver(*[b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(1, 6)])
        session = yield self.logged_in()
        yield self.reply(session, b"RETR 1\r\nDELE 2\r\nRSET\r\n", count=3)
        self.assertNotIn(2, session.proto._readahead.held())
        output = yield self.reply(session, b"RETR 2\r\n")
        self.assertEqual(output, b"+OK 22 octets\r\nSubject: 2\r\n\r\nbody 2\r\n.\r\n")


class OutputBackPressureTests(POP3TestCase):
    """A client that pipelines RETRs and stops reading makes the session stop taking commands."""

    @inlineCallbacks
    def test_commands_wait_while_the_transport_is_full_and_run_once_it_drains(self) -> None:
        yield self.deliver(*[b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(1, 6)])
        session = yield self.logged_in()
        output = session.transport.producer
        self.assertIs(output, session.proto._output)
        output.pauseProducing()  # as a TCP transport does when its buffer is over its size
        session.send(b"".join(b"RETR %d\r\n" % n for n in range(1, 6)))
        self.assertEqual(session.output(), b"")
        output.resumeProducing()
        self.assertEqual(session.output().count(b"+OK "), 5)
        self.assertTrue(session.output().endswith(b"body 5\r\n.\r\n"))

    @inlineCallbacks
    def test_a_streamed_message_pauses_with_the_session_output(self) -> None:
        big = b"Subject: big\r\n\r\n" + b"y" * (3 * CHUNK_SIZE) + b"\r\n"
        yield self.deliver(big)
        session = yield self.logged_in()
        output = session.transport.producer
        write = session.transport.write

        def full_after_a_chunk(data: bytes) -> None:
            write(data)
            if len(data) >= CHUNK_SIZE:
                output.pauseProducing()  # the transport's buffer is over its size

        session.transport.write = full_after_a_chunk  # type: ignore[method-assign]
        session.send(b"RETR 1\r\nNOOP\r\n")
        self.assertEqual(len(session.output()), len(b"+OK %d octets\r\n" % len(big)) + CHUNK_SIZE)
        self.assertIs(session.transport.producer, output)
        session.transport.write = write  # type: ignore[method-assign]
        output.resumeProducing()
        self.assertEqual(session.output(), b"+OK %d octets\r\n" % len(big) + big + b".\r\n+OK\r\n")
