"""The public fakes keep the contracts of the real implementations, and the Router works over them."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from mailapp.delivery import Router
from mailapp.errors import NoSuchUser, RelayDenied, StoreError, TooManyRecipients
from mailapp.interfaces import IEventBus, IFolder, IMailbox, IMessageStore, IMessageWriter
from mailapp.testing import FakeAccounts, FakeStore


def accounts() -> FakeAccounts:
    fake = FakeAccounts(["example.test"])
    fake.add_user("alice@example.test", "a")
    fake.add_user("bob@example.test", "b")
    fake.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
    return fake


class FakeStoreTests(TestCase):
    @inlineCallbacks
    def test_fake_store_provides_every_store_interface(self):
        store = FakeStore()
        verifyObject(IMessageStore, store)
        verifyObject(IEventBus, store.events)
        verifyObject(IMessageWriter, store.newMessage())
        mailbox = store.mailbox("alice@example.test")
        verifyObject(IMailbox, mailbox)
        verifyObject(IFolder, (yield mailbox.folder("INBOX")))

    @inlineCallbacks
    def test_fake_store_keeps_uids_flags_and_expunges_like_the_real_one(self):
        store = FakeStore()
        folder = yield store.mailbox("alice@example.test").folder("INBOX")
        first = yield folder.append(b"one")
        second = yield folder.append(b"two", ["\\Seen"])
        self.assertEqual((first, second), (1, 2))
        self.assertEqual((yield folder.expunge([1])), [1])
        third = yield folder.append(b"three")
        self.assertEqual(third, 3)
        status = yield folder.status()
        self.assertEqual((status.messages, status.unseen, status.uidnext), (2, 1, 4))


class RouterTests(TestCase):
    """The Router over the fakes: policy answers as errors, one copy per mailbox, nothing on failure."""

    @inlineCallbacks
    def deliver(self, store, recipients, relay=False):
        router = Router(accounts(), store, max_recipients=3)
        txn = router.start("sender@remote.test", relay_allowed=relay)
        for recipient in recipients:
            yield txn.addRecipient(recipient)
        txn.open().write(b"Subject: x\r\n\r\nbody\r\n")
        queue_id = yield txn.commit()
        return txn, queue_id

    @inlineCallbacks
    def test_alias_and_its_members_get_one_copy_each(self):
        store = FakeStore()
        txn, queue_id = yield self.deliver(store, ["team@example.test", "alice@example.test", "BOB@example.test"])
        self.assertEqual(store.deliveries[0][0], ("alice@example.test", "bob@example.test"))
        self.assertTrue(store.deliveries[0][2].startswith(b"Return-Path: <sender@remote.test>\r\nSubject: x"))
        self.assertEqual(len(queue_id), 12)

    @inlineCallbacks
    def test_single_mailbox_gets_delivered_to(self):
        store = FakeStore()
        yield self.deliver(store, ["alice+news@example.test"])
        self.assertIn(b"Delivered-To: alice@example.test\r\n", store.deliveries[0][2])

    @inlineCallbacks
    def test_policy_answers(self):
        router = Router(accounts(), FakeStore(), max_recipients=1)
        txn = router.start("", relay_allowed=False)
        yield self.assertFailure(txn.addRecipient("nobody@example.test"), NoSuchUser)
        yield self.assertFailure(txn.addRecipient("x@remote.test"), RelayDenied)
        yield txn.addRecipient("alice@example.test")
        yield self.assertFailure(txn.addRecipient("bob@example.test"), TooManyRecipients)

    @inlineCallbacks
    def test_a_store_failure_fails_the_commit_and_stores_nothing(self):
        store = FakeStore()
        store.failDeliver = True
        yield self.assertFailure(self.deliver(store, ["alice@example.test"]), StoreError)
        self.assertEqual(store.deliveries, [])


def test_fake_accounts_drop_alias_targets_of_a_removed_user_like_the_database() -> None:
    accounts = FakeAccounts(domains=["example.test"])
    accounts.add_user("alice@example.test", "pw")
    accounts.add_user("bob@example.test", "pw")
    accounts.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
    accounts.add_alias("news@example.test", ["alice+news@example.test"])
    accounts.remove_user("alice@example.test")
    assert accounts.find_alias("team@example.test") == ("bob@example.test",)
    assert accounts.find_alias("news@example.test") is None
