"""
What the Maildir store publishes for a copy or move: the C{added} event on
the target names the folder the messages came from (the Junk learner's
cue), and a server-wide subscriber (L{EventBus.subscribeAll}) hears every
folder's events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from mailapp.interfaces import IEventBus
from mailapp.records import ADDED, EXPUNGED, FolderEvent
from mailapp.store import MaildirStore
from mailapp.store.events import EventBus

ALICE = "alice@example.test"


class TransferEventTests(TestCase):
    def setUp(self) -> None:
        self.store = MaildirStore(Path(self.mktemp()) / "mail", reactor=reactor)

    @inlineCallbacks
    def test_a_move_publishes_added_with_its_source_and_an_expunge_without(self) -> Any:
        events: list[FolderEvent] = []
        self.store.events.subscribeAll(events.append)
        mailbox = self.store.mailbox(ALICE)
        inbox = yield mailbox.folder("INBOX")
        junk = yield mailbox.folder("Junk")
        uid = yield inbox.append(b"Subject: x\r\n\r\ny\r\n")
        yield inbox.moveTo([uid], junk)
        yield junk.copyTo([1], inbox)
        self.assertEqual(
            [(e.kind, e.folder, e.source) for e in events],
            [(ADDED, "INBOX", None), (ADDED, "Junk", "INBOX"), (EXPUNGED, "INBOX", None), (ADDED, "INBOX", "Junk")],
        )


def test_subscribe_all_hears_every_folder_until_it_unsubscribes() -> None:
    bus = EventBus()
    verifyObject(IEventBus, bus)
    heard: list[FolderEvent] = []
    folder: list[FolderEvent] = []
    unsubscribe = bus.subscribeAll(heard.append)
    bus.subscribe(ALICE, "Junk", folder.append)
    first = FolderEvent(ADDED, ALICE, "Junk", (1,), "INBOX")
    bus.publish(first)
    bus.publish(FolderEvent(ADDED, "bob@example.test", "INBOX", (2,)))
    assert (len(heard), folder, bus.subscriberCount()) == (2, [first], 2)
    unsubscribe()
    bus.publish(first)
    assert len(heard) == 2
