"""The Maildir store's per-copy placements (IMessageStore.deliverPlacements), as Sieve delivery uses them."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from mailapp.errors import NoSuchFolder
from mailapp.records import FolderPlacement
from tests.unit.test_store import ALICE, BOB, MESSAGE, StoreTestCase


class PlacementTests(StoreTestCase):
    @inlineCallbacks
    def test_one_message_lands_in_each_placement_with_its_flags(self):
        writer = yield self.receive()
        yield self.store.mailbox(ALICE).createFolder("Lists")
        uids = yield self.store.deliverPlacements(
            writer,
            [
                FolderPlacement(ALICE, "Lists", frozenset({"\\Seen", "$Work"})),
                FolderPlacement(ALICE, "INBOX"),
                FolderPlacement(BOB, "Junk", frozenset({"\\Flagged"})),
            ],
        )
        self.assertEqual(uids, [1, 1, 1])
        self.assertEqual((yield self.read(ALICE, 1, "Lists")), MESSAGE)
        lists = yield self.store.mailbox(ALICE).folder("Lists")
        [info] = yield lists.messages()
        self.assertEqual(set(info.flags), {"\\Seen", "$Work"})
        junk = yield self.store.mailbox(BOB).folder("Junk")
        [info] = yield junk.messages()
        self.assertEqual(set(info.flags), {"\\Flagged"})
        inbox = yield self.store.mailbox(ALICE).folder("INBOX")
        self.assertEqual(len((yield inbox.messages())), 1)

    @inlineCallbacks
    def test_a_missing_folder_fails_the_whole_delivery(self):
        writer = yield self.receive()
        yield self.assertFailure(
            self.store.deliverPlacements(writer, [FolderPlacement(ALICE, "INBOX"), FolderPlacement(BOB, "Nowhere")]),
            NoSuchFolder,
        )
        inbox = yield self.store.mailbox(ALICE).folder("INBOX")
        self.assertEqual((yield inbox.messages()), [])
