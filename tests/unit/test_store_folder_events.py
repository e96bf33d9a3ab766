"""
What the stores publish about folders themselves (IMAP NOTIFY's
MailboxName and SubscriptionChange): created (missing parents too),
renamed (one event per folder moved, the old name as C{source}), deleted,
subscribed and unsubscribed; and the bus's per-account subscription
(L{EventBus.subscribeAccount}), which hears every folder of one account
and nobody else's. The Maildir store and the fake say the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from mailapp.interfaces import IEventBus
from mailapp.records import (
    ADDED,
    FOLDER_CREATED,
    FOLDER_DELETED,
    FOLDER_RENAMED,
    SUBSCRIBED,
    UNSUBSCRIBED,
    FolderEvent,
)
from mailapp.store import MaildirStore
from mailapp.store.events import EventBus
from mailapp.testing import FakeStore

ALICE = "alice@example.test"
BOB = "bob@example.test"

#: The folder events of the changes L{_change} makes, as (kind, folder, source).
EXPECTED = [
    (FOLDER_CREATED, "Lists", None),
    (FOLDER_CREATED, "Lists/ietf", None),
    (SUBSCRIBED, "Lists/ietf", None),
    (FOLDER_RENAMED, "Groups", "Lists"),
    (FOLDER_RENAMED, "Groups/ietf", "Lists/ietf"),
    (UNSUBSCRIBED, "Groups/ietf", None),
    (FOLDER_DELETED, "Groups/ietf", None),
]


@inlineCallbacks
def _change(store: Any) -> Any:
    heard: list[FolderEvent] = []
    store.events.subscribeAccount(ALICE.upper(), heard.append)
    mailbox = store.mailbox(ALICE)
    yield mailbox.createFolder("Lists/ietf")
    yield mailbox.setSubscribed("Lists/ietf", True)
    yield mailbox.setSubscribed("Nowhere", True)  # no such folder: nothing changed, nothing said
    yield mailbox.renameFolder("Lists", "Groups")
    yield mailbox.setSubscribed("Groups/ietf", False)
    yield mailbox.deleteFolder("Groups/ietf")
    return [(e.kind, e.folder, e.source) for e in heard]


class FolderEventTests(TestCase):
    @inlineCallbacks
    def test_the_maildir_store_publishes_each_folder_change(self) -> Any:
        store = MaildirStore(Path(self.mktemp()) / "mail", reactor=reactor)
        self.assertEqual((yield _change(store)), EXPECTED)

    @inlineCallbacks
    def test_the_fake_store_publishes_the_same(self) -> Any:
        self.assertEqual((yield _change(FakeStore())), EXPECTED)


def test_subscribe_account_hears_every_folder_of_that_account_only_until_it_unsubscribes() -> None:
    bus = EventBus()
    verifyObject(IEventBus, bus)
    heard: list[FolderEvent] = []
    unsubscribe = bus.subscribeAccount(ALICE, heard.append)
    mine = [FolderEvent(ADDED, ALICE.upper(), "INBOX", (1,)), FolderEvent(FOLDER_CREATED, ALICE, "a/b", ())]
    for event in mine:
        bus.publish(event)
    bus.publish(FolderEvent(ADDED, BOB, "INBOX", (2,)))
    assert (heard, bus.subscriberCount()) == (mine, 1)
    unsubscribe()
    bus.publish(mine[0])
    assert (len(heard), bus.subscriberCount()) == (2, 0)
