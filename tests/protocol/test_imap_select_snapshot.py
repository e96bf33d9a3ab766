"""
A warm SELECT answers from the process's snapshot of the folder
(L{mailapp.imap.snapshots}) while the store's token holds, and from a fresh
listing once anything changed it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp.testing import FakeStore, build_factory, service_context
from tests.protocol.accounts import make_accounts
from tests.protocol.imap_sessions import logged_in


class SelectSnapshotTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        self.inbox = self.successResultOf(self.store.mailbox("alice@example.test").folder("INBOX"))
        for n in range(3):
            self.successResultOf(self.inbox.append(b"Subject: %d\r\n\r\nbody\r\n" % n, ["\\Seen"] if n == 0 else []))

    def session(self) -> tuple[Any, StringTransport]:
        return logged_in(self, self.factory)

    def select(self, protocol: Any, transport: StringTransport) -> bytes:
        transport.clear()
        protocol.dataReceived(b"s SELECT INBOX\r\n")
        return transport.value()

    def test_a_second_select_of_an_unchanged_folder_answers_from_the_same_snapshot(self):
        protocol, transport = self.session()
        first = self.select(protocol, transport)
        kept = self.store._imapFolderSnapshots._snapshots[("alice@example.test", "INBOX")]
        second = self.select(protocol, transport)
        self.assertIs(self.store._imapFolderSnapshots._snapshots[("alice@example.test", "INBOX")], kept)
        self.assertEqual(first.replace(b"3 RECENT", b"0 RECENT"), second)
        self.assertIn(b"* OK [UNSEEN 2] First unseen\r\n", second)

    def test_a_select_after_another_session_changed_flags_shows_them(self):
        protocol, transport = self.session()
        self.select(protocol, transport)
        other, other_transport = self.session()
        self.select(other, other_transport)
        other.dataReceived(b"t STORE 2 +FLAGS ($Work \\Seen)\r\n")
        self.assertIn(b"t OK", other_transport.value())
        answer = self.select(protocol, transport)
        self.assertIn(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)\r\n", answer)
        self.assertIn(b"* OK [UNSEEN 3] First unseen\r\n", answer)

    def test_a_select_after_a_delivery_and_an_expunge_counts_what_is_there(self):
        protocol, transport = self.session()
        self.select(protocol, transport)
        self.successResultOf(self.inbox.append(b"Subject: new\r\n\r\nbody\r\n"))
        self.successResultOf(self.inbox.expunge([1]))
        answer = self.select(protocol, transport)
        self.assertIn(b"* 3 EXISTS\r\n", answer)
        self.assertIn(b"* OK [UIDNEXT 5] Predicted next UID\r\n", answer)
        self.assertIn(b"* OK [UNSEEN 1] First unseen\r\n", answer)

    def test_a_warm_select_with_condstore_reads_highestmodseq_with_the_snapshot_check(self):
        from mailapp.testing.store import FakeFolder

        reads: list[int] = []
        highest = FakeFolder.highestModseq

        def counted(folder: Any) -> Any:
            reads.append(1)
            return highest(folder)

        self.patch(FakeFolder, "highestModseq", counted)
        protocol, transport = self.session()
        transport.clear()
        protocol.dataReceived(b"s SELECT INBOX (CONDSTORE)\r\n")
        self.assertEqual(len(reads), 1)  # cold: read before the listing
        self.successResultOf(self.inbox.setFlags([2], ["\\Flagged"], "add"))
        now = self.successResultOf(highest(self.inbox))
        transport.clear()
        protocol.dataReceived(b"t SELECT INBOX (CONDSTORE)\r\n")
        self.assertIn(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % now, transport.value())
        self.assertEqual(len(reads), 1)  # warm: read with the snapshot's check, no trip of its own
