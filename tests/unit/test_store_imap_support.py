"""The store additions IMAP needs: subscriptions and appending a spooled message."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from mailapp.interfaces import IFolder, IMailbox
from mailapp.store import ADDED, MaildirStore, index

ALICE = "alice@example.test"
MESSAGE = b"Subject: appended\r\n\r\nbody\r\n"


class StoreImapSupportTests(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "mail"
        self.store = MaildirStore(self.root, reactor=reactor)

    @inlineCallbacks
    def test_mailbox_and_folder_still_provide_their_interfaces(self):
        mailbox = self.store.mailbox(ALICE)
        verifyObject(IMailbox, mailbox)
        verifyObject(IFolder, (yield mailbox.folder("INBOX")))

    @inlineCallbacks
    def test_unsubscribe_and_subscribe_are_kept_across_a_restart(self):
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Lists/python")
        changed = yield mailbox.setSubscribed("Lists/python", True)
        self.assertTrue(changed)
        index.reset_connections()
        mailbox = MaildirStore(self.root, reactor=reactor).mailbox(ALICE)
        folders = {f.name: f.subscribed for f in (yield mailbox.listFolders())}
        self.assertEqual((folders["Lists/python"], folders["Lists"]), (True, False))
        yield mailbox.setSubscribed("Lists/python", False)
        folders = {f.name: f.subscribed for f in (yield mailbox.listFolders())}
        self.assertFalse(folders["Lists/python"])

    @inlineCallbacks
    def test_create_subscribes_neither_the_folder_nor_its_new_parents_but_the_defaults_are(self):
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Projects/2026")
        yield mailbox.renameFolder("Projects/2026", "Keep/Old/2026")
        folders = {f.name: f.subscribed for f in (yield mailbox.listFolders())}
        self.assertEqual({n: s for n, s in folders.items() if n.startswith(("Projects", "Keep"))},
                         {"Projects": False, "Keep": False, "Keep/Old": False, "Keep/Old/2026": False})
        self.assertTrue(folders["INBOX"] and folders["Sent"])

    @inlineCallbacks
    def test_subscribing_a_missing_folder_changes_nothing(self):
        changed = yield self.store.mailbox(ALICE).setSubscribed("Nope", True)
        self.assertFalse(changed)

    @inlineCallbacks
    def test_a_subscription_outlives_its_folders_delete_and_a_restart_and_comes_back_with_the_folder(self):
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Lists/python")
        yield mailbox.createFolder("Lists/rust")
        yield mailbox.setSubscribed("Lists/python", True)
        yield mailbox.deleteFolder("Lists/python")
        yield mailbox.deleteFolder("Lists/rust")  # not subscribed: nothing kept
        index.reset_connections()
        mailbox = MaildirStore(self.root, reactor=reactor).mailbox(ALICE)
        self.assertEqual((yield mailbox.subscribedWithoutFolder()), ["Lists/python"])
        yield mailbox.createFolder("Lists/python")
        folders = {f.name: f.subscribed for f in (yield mailbox.listFolders())}
        self.assertTrue(folders["Lists/python"])
        self.assertEqual((yield mailbox.subscribedWithoutFolder()), [])

    @inlineCallbacks
    def test_unsubscribing_a_deleted_folders_name_forgets_it(self):
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Old")
        yield mailbox.setSubscribed("Old", True)
        yield mailbox.deleteFolder("Old")
        self.assertTrue((yield mailbox.setSubscribed("Old", False)))
        self.assertEqual((yield mailbox.subscribedWithoutFolder()), [])
        yield mailbox.createFolder("Old")
        folders = {f.name: f.subscribed for f in (yield mailbox.listFolders())}
        self.assertFalse(folders["Old"])

    @inlineCallbacks
    def test_append_message_stores_a_spooled_message_with_flags_and_date(self):
        folder = yield self.store.mailbox(ALICE).folder("Drafts")
        events = []
        self.store.events.subscribe(ALICE, "Drafts", events.append)
        writer = self.store.newMessage()
        yield writer.write(MESSAGE)
        yield writer.finish()
        appended = yield folder.appendMessage(writer, ["\\Draft", "$Label"], 1_000_000_000.0)
        status = yield folder.status()
        self.assertEqual((appended.uid, appended.uidvalidity), (1, status.uidvalidity))
        [info] = yield folder.messages()
        self.assertEqual(
            (info.uid, info.flags, info.size, info.internaldate),
            (1, frozenset({"\\Draft", "$Label"}), len(MESSAGE), 1_000_000_000.0),
        )
        handle = yield folder.openMessage(1)
        with handle:
            self.assertEqual(handle.read(), MESSAGE)
        self.assertEqual([(e.kind, e.uids) for e in events], [(ADDED, (1,))])

    @inlineCallbacks
    def test_append_message_streams_a_large_message_written_in_chunks(self):
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        writer = self.store.newMessage()
        chunk = b"x" * 1000 + b"\r\n"
        for _ in range(300):
            yield writer.write(chunk)
        yield writer.finish()
        appended = yield folder.appendMessage(writer)
        handle = yield folder.openMessage(appended.uid)
        with handle:
            self.assertEqual(handle.read(), chunk * 300)
        self.assertEqual(list(self.store.spool_dir.iterdir()), [])
