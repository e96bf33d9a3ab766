"""
CONDSTORE and QRESYNC (RFC 7162) over StringTransport with the fake store:
each rule of the RFC the server keeps, one test each.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp.testing import FakeStore, build_factory, service_context
from tests.protocol.accounts import make_accounts
from tests.protocol.imap_sessions import logged_in

ALICE = "alice@example.test"


def message(number: int) -> bytes:
    return b"Subject: message %d\r\nFrom: x@remote.test\r\n\r\nbody %d\r\n" % (number, number)


class CondstoreTestCase(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        self.inbox = self.successResultOf(self.store.mailbox(ALICE).folder("INBOX"))
        for number in range(1, 6):
            self.successResultOf(self.inbox.append(message(number)))

    def connect(self) -> tuple[Any, StringTransport]:
        return logged_in(self, self.factory)

    def send(self, protocol: Any, transport: StringTransport, line: bytes) -> list[bytes]:
        transport.clear()
        protocol.dataReceived(line + b"\r\n")
        return transport.value().split(b"\r\n")[:-1]

    def modseqs(self) -> dict[int, int]:
        return {m.uid: m.modseq for m in self.successResultOf(self.inbox.messages())}

    def highest(self) -> int:
        return int(self.successResultOf(self.inbox.highestModseq()))


class CapabilityAndEnableTests(CondstoreTestCase):
    def test_capability_announces_condstore_and_qresync(self) -> None:
        protocol, transport = self.connect()
        lines = self.send(protocol, transport, b"a CAPABILITY")
        self.assertIn(b" CONDSTORE", lines[0])
        self.assertIn(b" QRESYNC", lines[0])

    def test_enable_lists_what_it_turned_on_once(self) -> None:
        protocol, transport = self.connect()
        self.assertEqual(self.send(protocol, transport, b"a ENABLE CONDSTORE X-UNKNOWN"),
                         [b"* ENABLED CONDSTORE", b"a OK ENABLE completed"])
        self.assertEqual(self.send(protocol, transport, b"b ENABLE CONDSTORE QRESYNC"),
                         [b"* ENABLED QRESYNC", b"b OK ENABLE completed"])

    def test_select_after_enable_condstore_answers_highestmodseq(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a ENABLE CONDSTORE")
        lines = self.send(protocol, transport, b"b SELECT INBOX")
        self.assertIn(b"* OK [HIGHESTMODSEQ %d] Highest" % self.highest(), lines)

    def test_select_condstore_parameter_turns_it_on(self) -> None:
        protocol, transport = self.connect()
        lines = self.send(protocol, transport, b"b EXAMINE INBOX (CONDSTORE)")
        self.assertIn(b"* OK [HIGHESTMODSEQ %d] Highest" % self.highest(), lines)
        self.assertTrue(lines[-1].startswith(b"b OK [READ-ONLY]"))

    def test_a_plain_select_says_nothing_of_modseqs(self) -> None:
        protocol, transport = self.connect()
        lines = self.send(protocol, transport, b"b SELECT INBOX")
        self.assertFalse([line for line in lines if b"MODSEQ" in line])

    def test_an_unknown_select_parameter_is_bad(self) -> None:
        protocol, transport = self.connect()
        self.assertTrue(self.send(protocol, transport, b"b SELECT INBOX (FROB)")[-1].startswith(b"b BAD"))

    def test_qresync_without_enable_is_bad(self) -> None:
        protocol, transport = self.connect()
        lines = self.send(protocol, transport, b"b SELECT INBOX (QRESYNC (1 1))")
        self.assertTrue(lines[-1].startswith(b"b BAD"))

    def test_status_highestmodseq(self) -> None:
        protocol, transport = self.connect()
        lines = self.send(protocol, transport, b"a STATUS INBOX (MESSAGES HIGHESTMODSEQ)")
        self.assertEqual(lines[0], b'* STATUS "INBOX" (MESSAGES 5 HIGHESTMODSEQ %d)' % self.highest())


class FetchTests(CondstoreTestCase):
    def test_fetch_modseq_enables_condstore_and_tells_the_highest_first(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a SELECT INBOX")
        lines = self.send(protocol, transport, b"b FETCH 1 MODSEQ")
        self.assertEqual(lines[0], b"* OK [HIGHESTMODSEQ %d] Highest" % self.highest())
        self.assertEqual(lines[1], b"* 1 FETCH (MODSEQ (%d))" % self.modseqs()[1])
        # Once on, FETCH FLAGS carries MODSEQ too.
        lines = self.send(protocol, transport, b"c FETCH 2 FLAGS")
        self.assertEqual(lines[0], b"* 2 FETCH (FLAGS (\\Recent) MODSEQ (%d))" % self.modseqs()[2])

    def test_changedsince_answers_only_the_messages_changed_after_it_with_modseq(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a SELECT INBOX")
        since = self.highest()
        self.successResultOf(self.inbox.setFlags([2, 4], ["\\Flagged"], "add"))
        self.send(protocol, transport, b"n NOOP")
        lines = self.send(protocol, transport, b"b UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % since)
        fetches = [line for line in lines if line.startswith(b"* ") and b" FETCH " in line]
        seqs = self.modseqs()
        self.assertEqual(fetches, [
            b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % seqs[2],
            b"* 4 FETCH (UID 4 FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % seqs[4],
        ])

    def test_vanished_modifier_needs_qresync_and_uid_fetch(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a SELECT INBOX")
        self.assertTrue(self.send(protocol, transport, b"b UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)")[-1].startswith(b"b BAD"))

    def test_uid_fetch_changedsince_vanished_reports_expunges_since(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a ENABLE QRESYNC")
        self.send(protocol, transport, b"s SELECT INBOX")
        since = self.highest()
        self.successResultOf(self.inbox.expunge([3]))
        self.successResultOf(self.inbox.setFlags([5], ["\\Seen"], "add"))
        lines = self.send(protocol, transport, b"b UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % since)
        self.assertIn(b"* VANISHED (EARLIER) 3", lines)
        self.assertIn(b"* VANISHED 3", lines)  # the view's own update, after the command
        # The view learns of the change at the end of the command: told there, with its MODSEQ.
        self.assertIn(b"* 4 FETCH (FLAGS (\\Recent \\Seen) UID 5 MODSEQ (%d))" % self.modseqs()[5], lines)
        self.assertEqual(lines[-1], b"b OK FETCH completed")


class StoreTests(CondstoreTestCase):
    def test_unchangedsince_stores_what_did_not_change_and_reports_the_rest_as_modified(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a SELECT INBOX")
        since = self.highest()
        self.successResultOf(self.inbox.setFlags([2], ["$Other"], "add"))  # another client's change
        lines = self.send(protocol, transport, b"b STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % since)
        self.assertEqual(lines[-1], b"b OK [MODIFIED 2] Conditional STORE failed")
        seqs = self.modseqs()
        self.assertIn(b"* 1 FETCH (FLAGS (\\Recent \\Seen) MODSEQ (%d))" % seqs[1], lines)
        self.assertIn(b"* 3 FETCH (FLAGS (\\Recent \\Seen) MODSEQ (%d))" % seqs[3], lines)
        flags = {m.uid: m.flags for m in self.successResultOf(self.inbox.messages())}
        self.assertEqual(flags[2], frozenset({"$Other"}))

    def test_unchangedsince_0_always_fails(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a SELECT INBOX")
        lines = self.send(protocol, transport, b"b UID STORE 4:5 (UNCHANGEDSINCE 0) +FLAGS.SILENT (\\Seen)")
        self.assertEqual(lines[-1], b"b OK [MODIFIED 4:5] Conditional STORE failed")

    def test_silent_store_still_tells_the_new_modseq_once_condstore_is_on(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a ENABLE CONDSTORE")
        self.send(protocol, transport, b"s SELECT INBOX")
        lines = self.send(protocol, transport, b"b UID STORE 2 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(lines[0], b"* 2 FETCH (UID 2 MODSEQ (%d))" % self.modseqs()[2])
        self.assertEqual(lines[-1], b"b OK STORE completed")

    def test_without_condstore_store_answers_as_before(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"s SELECT INBOX")
        self.assertEqual(self.send(protocol, transport, b"b STORE 2 +FLAGS (\\Seen)"),
                         [b"* 2 FETCH (FLAGS (\\Recent \\Seen))", b"b OK STORE completed"])

    def test_another_sessions_flag_change_is_told_with_its_modseq(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a ENABLE CONDSTORE")
        self.send(protocol, transport, b"s SELECT INBOX")
        self.successResultOf(self.inbox.setFlags([3], ["\\Answered"], "add"))
        lines = self.send(protocol, transport, b"n NOOP")
        self.assertEqual(lines[0], b"* 3 FETCH (FLAGS (\\Answered \\Recent) MODSEQ (%d))" % self.modseqs()[3])


class SearchTests(CondstoreTestCase):
    def test_search_modseq_finds_the_changed_and_answers_their_highest(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a SELECT INBOX")
        since = self.highest()
        self.successResultOf(self.inbox.setFlags([2, 4], ["\\Seen"], "add"))
        self.send(protocol, transport, b"n NOOP")
        lines = self.send(protocol, transport, b"b SEARCH MODSEQ %d" % (since + 1))
        self.assertIn(b"* SEARCH 2 4 (MODSEQ %d)" % self.modseqs()[4], lines)
        lines = self.send(protocol, transport, b'c UID SEARCH MODSEQ "/flags/\\\\Seen" all %d' % (since + 1))
        self.assertIn(b"* SEARCH 2 4 (MODSEQ %d)" % self.modseqs()[4], lines)
        lines = self.send(protocol, transport, b"d SEARCH MODSEQ %d" % (self.highest() + 1))
        self.assertIn(b"* SEARCH", lines)


class QresyncTests(CondstoreTestCase):
    def qresync_session(self) -> tuple[Any, StringTransport]:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a ENABLE QRESYNC")
        return protocol, transport

    def test_select_qresync_sends_vanished_earlier_and_the_changed_flags_only(self) -> None:
        validity = self.successResultOf(self.inbox.status()).uidvalidity
        since = self.highest()
        self.successResultOf(self.inbox.expunge([2]))
        self.successResultOf(self.inbox.setFlags([4], ["\\Flagged"], "add"))
        protocol, transport = self.qresync_session()
        lines = self.send(protocol, transport, b"s SELECT INBOX (QRESYNC (%d %d))" % (validity, since))
        self.assertIn(b"* OK [HIGHESTMODSEQ %d] Highest" % self.highest(), lines)
        self.assertIn(b"* VANISHED (EARLIER) 2", lines)
        fetches = [line for line in lines if line.startswith(b"* ") and b" FETCH " in line]
        self.assertEqual(fetches, [b"* 3 FETCH (UID 4 FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % self.modseqs()[4]])
        self.assertTrue(lines[-1].startswith(b"s OK [READ-WRITE]"))

    def test_known_uids_limit_the_resync(self) -> None:
        validity = self.successResultOf(self.inbox.status()).uidvalidity
        since = self.highest()
        self.successResultOf(self.inbox.expunge([1, 2]))
        self.successResultOf(self.inbox.setFlags([4, 5], ["\\Flagged"], "add"))
        protocol, transport = self.qresync_session()
        lines = self.send(protocol, transport, b"s SELECT INBOX (QRESYNC (%d %d 2:4 (1:3 2:4)))" % (validity, since))
        self.assertIn(b"* VANISHED (EARLIER) 2", lines)
        self.assertEqual([line for line in lines if line.startswith(b"* ") and b" FETCH " in line],
                         [b"* 2 FETCH (UID 4 FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % self.modseqs()[4]])

    def test_a_modseq_older_than_the_store_remembers_lists_every_missing_uid(self) -> None:
        validity = self.successResultOf(self.inbox.status()).uidvalidity
        since = self.highest()
        self.successResultOf(self.inbox.expunge([1, 3]))
        self.inbox._state.forgetVanished(0)
        protocol, transport = self.qresync_session()
        lines = self.send(protocol, transport, b"s SELECT INBOX (QRESYNC (%d %d))" % (validity, since))
        self.assertIn(b"* VANISHED (EARLIER) 1,3", lines)

    def test_another_uidvalidity_gets_no_resync(self) -> None:
        self.successResultOf(self.inbox.setFlags([4], ["\\Flagged"], "add"))
        protocol, transport = self.qresync_session()
        lines = self.send(protocol, transport, b"s SELECT INBOX (QRESYNC (1 1))")
        self.assertFalse([line for line in lines if b"VANISHED" in line or line.startswith(b"* ") and b" FETCH " in line])

    def test_after_enable_qresync_expunges_are_vanished_responses(self) -> None:
        protocol, transport = self.qresync_session()
        self.send(protocol, transport, b"s SELECT INBOX")
        self.send(protocol, transport, b"t STORE 2,4 +FLAGS.SILENT (\\Deleted)")
        lines = self.send(protocol, transport, b"e EXPUNGE")
        self.assertEqual(lines, [b"* VANISHED 2,4", b"e OK [HIGHESTMODSEQ %d] EXPUNGE completed" % self.highest()])
        self.successResultOf(self.inbox.expunge([5]))
        self.assertEqual(self.send(protocol, transport, b"n NOOP"), [b"* VANISHED 5", b"n OK NOOP completed"])

    def test_expunge_with_condstore_on_answers_the_new_highestmodseq(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a ENABLE CONDSTORE")
        self.send(protocol, transport, b"s SELECT INBOX")
        self.send(protocol, transport, b"t STORE 1 +FLAGS.SILENT (\\Deleted)")
        lines = self.send(protocol, transport, b"e EXPUNGE")
        self.assertEqual(lines, [b"* 1 EXPUNGE", b"e OK [HIGHESTMODSEQ %d] EXPUNGE completed" % self.highest()])

    def test_a_second_select_first_says_closed(self) -> None:
        protocol, transport = self.qresync_session()
        self.send(protocol, transport, b"s SELECT INBOX")
        lines = self.send(protocol, transport, b"t SELECT Archive")
        self.assertEqual(lines[0], b"* OK [CLOSED] Previous mailbox closed")
        self.assertTrue(re.match(rb"^t OK \[READ-WRITE\]", lines[-1]))


class ProportionalUpdateTests(CondstoreTestCase):
    """With mod-sequences the view and the SELECT snapshot read what changed, not the folder."""

    def count_full_reads(self) -> list[int]:
        from mailapp.testing.store import FakeFolder

        calls: list[int] = []
        real_messages, real_if_changed = FakeFolder.messages, FakeFolder.messagesIfChanged

        def messages(folder: Any) -> Any:
            calls.append(1)
            return real_messages(folder)

        def if_changed(folder: Any, known: Any) -> Any:
            result = real_if_changed(folder, known)
            if self.successResultOf(result)[2] is not None:
                calls.append(1)
            return real_if_changed(folder, known)

        self.patch(FakeFolder, "messages", messages)
        self.patch(FakeFolder, "messagesIfChanged", if_changed)
        return calls

    def test_another_sessions_changes_are_told_without_reading_the_folder_again(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"s SELECT INBOX")
        calls = self.count_full_reads()
        self.successResultOf(self.inbox.setFlags([2], ["\\Seen"], "add"))
        self.successResultOf(self.inbox.expunge([4]))
        self.successResultOf(self.inbox.append(message(6)))
        lines = self.send(protocol, transport, b"n NOOP")
        self.assertEqual(lines, [b"* 4 EXPUNGE", b"* 2 FETCH (FLAGS (\\Recent \\Seen))", b"* 5 EXISTS", b"* 5 RECENT",
                                 b"n OK NOOP completed"])
        self.assertEqual(calls, [])

    def test_an_expunge_held_back_during_fetch_is_told_at_the_next_command(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"s SELECT INBOX")
        self.successResultOf(self.inbox.expunge([3]))
        self.successResultOf(self.inbox.setFlags([1], ["\\Flagged"], "add"))
        lines = self.send(protocol, transport, b"f FETCH 1 (UID)")
        self.assertNotIn(b"* 3 EXPUNGE", lines)
        self.assertIn(b"* 1 FETCH (FLAGS (\\Flagged \\Recent))", lines)
        self.assertEqual(self.send(protocol, transport, b"n NOOP"), [b"* 3 EXPUNGE", b"n OK NOOP completed"])

    def test_a_select_after_a_change_updates_the_snapshot_from_the_changes(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a ENABLE QRESYNC")
        self.send(protocol, transport, b"s SELECT INBOX")
        validity = self.successResultOf(self.inbox.status()).uidvalidity
        since = self.highest()
        self.send(protocol, transport, b"u UNSELECT")
        calls = self.count_full_reads()
        self.successResultOf(self.inbox.setFlags([5], ["\\Answered"], "add"))
        lines = self.send(protocol, transport, b"s SELECT INBOX (QRESYNC (%d %d))" % (validity, since))
        self.assertEqual(calls, [])
        self.assertEqual([line for line in lines if b" FETCH " in line and line.startswith(b"* ")],
                         [b"* 5 FETCH (UID 5 FLAGS (\\Answered) MODSEQ (%d))" % self.modseqs()[5]])


class SnapshotMergeTests(CondstoreTestCase):
    def test_a_snapshot_brought_up_to_date_by_changes_equals_one_read_whole(self) -> None:
        import random

        from twisted.internet.defer import Deferred

        from mailapp.imap.snapshots import FolderSnapshot, FolderSnapshots

        rng = random.Random(7)
        snapshots = FolderSnapshots()
        self.successResultOf(Deferred.fromCoroutine(snapshots.read(ALICE, self.inbox)))
        for round_ in range(30):
            uids = [m.uid for m in self.successResultOf(self.inbox.messages())]
            for _ in range(rng.randint(1, 4)):
                action = rng.choice(["flag", "flag", "seen", "unseen", "expunge", "append"])
                if action == "append" or not uids:
                    self.successResultOf(self.inbox.append(message(round_), rng.choice([(), ("\\Seen",), ("$Work",)])))
                elif action == "expunge":
                    self.successResultOf(self.inbox.expunge([rng.choice(uids)]))
                elif action == "seen":
                    self.successResultOf(self.inbox.setFlags([rng.choice(uids)], ["\\Seen"], "add"))
                elif action == "unseen":
                    self.successResultOf(self.inbox.setFlags([rng.choice(uids)], ["\\Seen"], "remove"))
                else:
                    self.successResultOf(self.inbox.setFlags([rng.choice(uids)], ["$Label%d" % rng.randint(1, 3)], "add"))
                uids = [m.uid for m in self.successResultOf(self.inbox.messages())]
            merged = self.successResultOf(Deferred.fromCoroutine(snapshots.read(ALICE, self.inbox)))
            token, uidnext, listing = self.successResultOf(self.inbox.messagesIfChanged(None))
            whole = FolderSnapshot.of(token, uidnext, listing)
            self.assertEqual((merged.token, merged.status, merged.messages, merged.uids, merged.info, merged.first_unseen),
                             (whole.token, whole.status, whole.messages, whole.uids, whole.info, whole.first_unseen))
            self.assertTrue(set(whole.keywords) <= set(merged.keywords))
            self.assertEqual(merged.modseq, self.highest())


class ExpungeHighestModseqTests(CondstoreTestCase):
    def test_an_expunge_tells_every_change_below_the_highestmodseq_it_reports(self) -> None:
        """
        EXPUNGE reports the folder's HIGHESTMODSEQ; a change another worker
        made below it, whose event has not reached this process yet, is
        read and told before the tagged OK, or a client resyncing from that
        value would never see it.
        """
        protocol, transport = self.connect()
        self.send(protocol, transport, b"a SELECT INBOX (CONDSTORE)")
        events = self.store.events
        publish, events.publish = events.publish, lambda event: None  # type: ignore[method-assign]
        try:
            self.successResultOf(self.inbox.changeFlags([2], ["\\Flagged"], "add"))
        finally:
            events.publish = publish  # type: ignore[method-assign]
        lines = self.send(protocol, transport, b"b EXPUNGE")
        self.assertEqual(
            lines,
            [b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % self.modseqs()[2], b"b OK [HIGHESTMODSEQ %d] EXPUNGE completed" % self.highest()],
        )
