"""
A flag change, an expunge or a delivery this process made carries its
transaction's L{FolderDelta} (L{mailapp.store.changes.folder_delta}), and a
session's view of the folder applies a chain of them without reading the
store (L{mailapp.imap.selected.SelectedFolder.update}); a change it was
not told of exactly (no delta, a gap in the chain, a folder made again)
makes it read, as before. Under imaptest's stress on one shared INBOX that
read was a quarter of the sessions' thread trips.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.trial.unittest import TestCase

from mailapp.imap import selected
from mailapp.imap.selected import SelectedFolder
from mailapp.records import FLAGS_CHANGED, FolderDelta, FolderEvent
from mailapp.store import MaildirStore

ALICE = "alice@example.test"


class _Markers:
    """The factory's shared reads, as a view uses them: nothing is anyone's \\Recent here."""

    def claimRecent(self, account: Any, folder: Any, uidvalidity: int, uid: int) -> Deferred[range]:
        return succeed(range(uid + 1, uid + 1))

    def messagesAfter(self, folder: Any, uid: int) -> Any:
        raise AssertionError("the view read the messages above what it announced")


class _Watched:
    """A folder whose reads of what changed are counted (the trips a delta saves)."""

    def __init__(self, folder: Any) -> None:
        self._folder = folder
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._folder, name)

    def changesSince(self, modseq: int) -> Any:
        self.reads += 1
        return self._folder.changesSince(modseq)

    def messages(self) -> Any:
        self.reads += 1
        return self._folder.messages()


class ViewDeltaTests(TestCase):
    def setUp(self) -> None:
        self.store = MaildirStore(self.mktemp())
        self.written: list[bytes] = []

    @inlineCallbacks
    def deliver(self, count: int) -> Any:
        for number in range(count):
            writer = self.store.newMessage()
            yield writer.write(b"Subject: %d\r\n\r\nbody\r\n" % number)
            yield writer.finish()
            yield self.store.deliver(writer, [ALICE])

    @inlineCallbacks
    def openView(self) -> Any:
        """A session's view of ALICE's INBOX (3 messages), hinted by the store's events as a session's is."""
        yield self.deliver(3)
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        watched = _Watched(folder)
        messages = yield folder.messages()
        status = yield folder.status()
        view = SelectedFolder(watched, False, ALICE, _Markers(), self.written.append, status, messages)
        view.mark = yield folder.highestModseq()
        view.unsubscribe = self.store.events.subscribe(ALICE, "INBOX", view.hint)
        self.addCleanup(view.close)
        # Another session's folder object: its changes reach the view only as events.
        other = yield self.store.mailbox(ALICE).folder("INBOX")
        return view, watched, other

    def told(self) -> bytes:
        told, self.written[:] = b"".join(self.written), []
        return told

    @inlineCallbacks
    def test_a_flag_change_carries_exactly_what_it_changed(self) -> Any:
        view, watched, other = yield self.openView()
        before = yield other.highestModseq()
        seen: list[FolderEvent] = []
        self.store.events.subscribe(ALICE, "INBOX", seen.append)
        yield other.changeFlags([1, 3], ["\\Seen"], "add")
        [event] = seen
        delta = event.delta
        assert delta is not None
        found = yield other.changesSince(before)
        self.assertEqual((delta.before, delta.after), (before, found.highestmodseq))
        self.assertEqual(list(delta.changed), found.changed)
        self.assertEqual([m.uid for m in delta.changed], [1, 3])
        self.assertEqual(delta.vanished, ())
        self.assertEqual(delta.uidvalidity, view.uidvalidity)

    @inlineCallbacks
    def test_a_view_applies_flag_changes_and_expunges_from_their_deltas_without_reading(self) -> Any:
        view, watched, other = yield self.openView()
        yield other.changeFlags([1], ["\\Seen"], "add")
        yield other.changeFlags([2], ["\\Deleted"], "add")
        yield view.update(allow_expunge=True)
        self.assertEqual(self.told(), b"* 1 FETCH (FLAGS (\\Seen))\r\n* 2 FETCH (FLAGS (\\Deleted))\r\n")
        yield other.expungeDeleted()
        # A FETCH may not tell an expunge: it waits, and the next command that may tells it.
        yield view.update(allow_expunge=False)
        self.assertEqual(self.told(), b"")
        self.assertEqual(view.uids, [1, 2, 3])
        yield view.update(allow_expunge=True)
        self.assertEqual(self.told(), b"* 2 EXPUNGE\r\n")
        self.assertEqual(view.uids, [1, 3])
        self.assertEqual(watched.reads, 0)
        self.assertEqual(view.mark, (yield other.highestModseq()))

    @inlineCallbacks
    def test_a_delivery_to_a_folder_a_session_has_open_is_announced_from_its_delta(self) -> Any:
        view, watched, other = yield self.openView()
        yield self.deliver(1)
        yield view.update(allow_expunge=True)
        self.assertEqual(self.told(), b"* 4 EXISTS\r\n* 0 RECENT\r\n")
        self.assertEqual(view.uids, [1, 2, 3, 4])
        self.assertEqual(watched.reads, 0)

    @inlineCallbacks
    def test_a_delivery_to_a_folder_nobody_has_open_is_not_described(self) -> Any:
        yield self.deliver(1)
        seen: list[FolderEvent] = []
        self.store.events.subscribeAll(seen.append)
        yield self.deliver(1)
        self.assertEqual([event.delta for event in seen], [None])

    @inlineCallbacks
    def test_a_change_without_a_delta_makes_the_view_read(self) -> Any:
        view, watched, other = yield self.openView()
        # As another process's change arrives (L{mailapp.workers}): the UIDs, no delta.
        yield other.changeFlags([1], ["\\Flagged"], "add")
        view.hint(FolderEvent(FLAGS_CHANGED, ALICE, "INBOX", (2,)))
        yield view.update(allow_expunge=True)
        self.assertEqual(watched.reads, 1)
        self.assertEqual(self.told(), b"* 1 FETCH (FLAGS (\\Flagged))\r\n")

    @inlineCallbacks
    def test_a_gap_in_the_chain_makes_the_view_read(self) -> Any:
        view, watched, other = yield self.openView()
        yield other.changeFlags([1], ["\\Flagged"], "add")
        # A delta from further on, as if one change in between had not been told.
        view.hint(FolderEvent(FLAGS_CHANGED, ALICE, "INBOX", (3,), delta=FolderDelta(view.uidvalidity, view.mark + 5, view.mark + 6, (), ())))
        yield view.update(allow_expunge=True)
        self.assertEqual(watched.reads, 1)
        self.assertEqual(self.told(), b"* 1 FETCH (FLAGS (\\Flagged))\r\n")

    @inlineCallbacks
    def test_a_delta_of_a_folder_made_again_makes_the_view_read(self) -> Any:
        view, watched, other = yield self.openView()
        view.hint(FolderEvent(FLAGS_CHANGED, ALICE, "INBOX", (1,), delta=FolderDelta(view.uidvalidity + 1, view.mark, view.mark + 1, (), ())))
        yield view.update(allow_expunge=True)
        self.assertEqual(watched.reads, 1)

    @inlineCallbacks
    def test_a_delta_that_does_not_move_the_modseq_makes_the_view_read_and_never_loops(self) -> Any:
        view, watched, other = yield self.openView()
        view.hint(FolderEvent(FLAGS_CHANGED, ALICE, "INBOX", (1,), delta=FolderDelta(view.uidvalidity, view.mark + 1, view.mark + 1, (), ())))
        yield view.update(allow_expunge=True)
        self.assertEqual(watched.reads, 1)

    @inlineCallbacks
    def test_a_delta_told_again_costs_no_read(self) -> Any:
        view, watched, other = yield self.openView()
        seen: list[FolderEvent] = []
        self.store.events.subscribe(ALICE, "INBOX", seen.append)
        yield other.changeFlags([1], ["\\Seen"], "add")
        yield view.update(allow_expunge=True)
        self.told()
        # Every job of one delivery batch carries the batch's delta: the second is old news.
        view.hint(seen[0])
        yield view.update(allow_expunge=True)
        self.assertEqual((watched.reads, self.told()), (0, b""))

    @inlineCallbacks
    def test_more_changes_than_a_view_keeps_make_it_read(self) -> Any:
        view, watched, other = yield self.openView()
        for number in range(selected.MAX_LINKS + 1):
            yield other.changeFlags([1], [f"$Label{number % 2}"], "replace")
        self.assertEqual(view._links, {})
        yield view.update(allow_expunge=True)
        self.assertEqual(watched.reads, 1)

    @inlineCallbacks
    def test_a_change_to_a_folder_nobody_has_open_is_not_described(self) -> Any:
        yield self.deliver(2)
        inbox = yield self.store.mailbox(ALICE).folder("INBOX")
        change = yield inbox.changeFlags([1], ["\\Seen"], "add")
        gone = yield inbox.expunge([2])
        self.assertIsNone(change.delta)
        self.assertEqual(gone, [2])
