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


# -- the fakes a protocol test is built from (mailapp.testing.context, recording, resolver, threads) --


def test_service_context_fills_every_field_with_fakes_on_a_clock() -> None:
    from dataclasses import fields

    from twisted.internet.task import Clock
    from twisted.internet.interfaces import IProtocolFactory

    from mailapp.abuse import AbuseGuard
    from mailapp.interfaces import IAccounts
    from mailapp.pools import WorkerPools
    from mailapp.quota import Quotas
    from mailapp.service import ServiceContext
    from mailapp.testing import FakeAccounts, InlineWorkerPools, build_factory, service_context

    context = service_context()
    assert all(hasattr(context, f.name) for f in fields(ServiceContext))
    assert isinstance(context.reactor, Clock)
    verifyObject(IMessageStore, context.store)
    verifyObject(IAccounts, context.accounts)
    assert isinstance(context.accounts, FakeAccounts) and context.accounts.is_local_domain("example.test")
    assert isinstance(context.router, Router) and context.router.store is context.store
    assert isinstance(context.guard, AbuseGuard) and isinstance(context.quotas, Quotas)
    assert isinstance(context.pools, WorkerPools) and isinstance(context.pools, InlineWorkerPools)
    assert (context.tls, context.relay) == (None, None)
    for protocol in ("smtp", "submission", "pop3", "imap"):
        factory = build_factory(context, protocol)
        verifyObject(IProtocolFactory, factory)
        assert factory.reactor is context.reactor


def test_service_context_builds_its_parts_over_what_it_is_given() -> None:
    import pytest

    from mailapp.testing import RecordingStore, service_context

    store = RecordingStore()
    accounts = FakeAccounts(["other.test"])
    context = service_context(store=store, accounts=accounts, config='server.hostname = "mx.other.test"\ndomains.local = ["other.test"]\n')
    assert context.router.store is store and context.router.accounts is accounts
    assert context.quotas.store is store and context.config.hostname == "mx.other.test"
    with pytest.raises(TypeError, match="no field colour"):
        service_context(colour="blue")


def test_inline_pools_run_their_work_at_once_on_the_callers_thread() -> None:
    import threading

    from twisted.internet.threads import deferToThreadPool
    from twisted.internet.task import Clock

    from mailapp.testing import InlineWorkerPools, SynchronousReactor

    pools = InlineWorkerPools()
    reactor = SynchronousReactor(Clock(), pools.store)
    done = deferToThreadPool(reactor, pools.store, threading.get_ident)  # type: ignore[arg-type]
    assert done.called and done.result == threading.get_ident()
    pools.stop()


class RecordingStoreTests(TestCase):
    """The recording delivery target: what was delivered where, and a fault at each phase on demand."""

    def commit(self, store, recipients=("alice@example.test",)):
        router = Router(accounts(), store)
        txn = router.start("sender@remote.test", relay_allowed=False)
        for recipient in recipients:
            self.successResultOf(txn.addRecipient(recipient))
        txn.open().write(b"Subject: x\r\n\r\nbody\r\n")
        return txn.commit()

    def test_recording_store_provides_the_store_interfaces(self):
        from mailapp.testing import RecordingStore

        store = RecordingStore()
        verifyObject(IMessageStore, store)
        verifyObject(IMessageWriter, store.newMessage())

    def test_deliveries_are_recorded_per_account_and_readable_through_the_mailbox(self):
        from mailapp.testing import Delivery, RecordingStore

        store = RecordingStore()
        self.successResultOf(self.commit(store, ["team@example.test"]))
        [delivery] = store.delivered
        self.assertIsInstance(delivery, Delivery)
        self.assertEqual((delivery.accounts, delivery.folder), (("alice@example.test", "bob@example.test"), "INBOX"))
        self.assertEqual(store.inbox("BOB@example.test"), [delivery.data])
        inbox = self.successResultOf(store.mailbox("alice@example.test").folder("INBOX"))
        self.assertEqual(len(self.successResultOf(inbox.messages())), 1)

    def test_each_phase_fails_once_with_the_error_given(self):
        from mailapp.errors import StorageFull
        from mailapp.testing import RecordingStore

        for phase in ("finish", "deliver"):
            store = RecordingStore()
            store.failNext(phase)
            self.failureResultOf(self.commit(store), StorageFull)
            self.assertEqual(store.delivered, [])
            self.successResultOf(self.commit(store))
            self.assertEqual(len(store.delivered), 1, phase)
        # A write's error is kept, as the spool keeps it: its Deferred only says "ready for more".
        store = RecordingStore()
        store.failNext("write", StoreError())
        writer = store.newMessage()
        self.successResultOf(writer.write(b"lost"))
        self.successResultOf(writer.write(b"after the error"))
        self.assertEqual(writer.data(), b"")
        self.failureResultOf(writer.finish(), StoreError)
        store.failNext("write")
        self.failureResultOf(self.commit(store), StorageFull)
        self.assertEqual(store.delivered, [])

    def test_a_held_phase_waits_for_the_test_then_goes_on_or_fails(self):
        from mailapp.errors import StorageFull
        from mailapp.testing import RecordingStore

        store = RecordingStore()
        held = store.hold("deliver")
        committed = self.commit(store)
        self.assertNoResult(committed)
        self.assertEqual(store.delivered, [])
        held.callback(None)
        self.assertEqual(len(self.successResultOf(committed)), 12)
        self.assertEqual(len(store.delivered), 1)
        held = store.hold("finish")
        committed = self.commit(store)
        self.assertNoResult(committed)
        held.errback(StorageFull())
        self.failureResultOf(committed, StorageFull)
        self.assertEqual(len(store.delivered), 1)
        held = store.hold("write")
        writer = store.newMessage()
        ready = writer.write(b"first ")
        self.assertNoResult(ready)
        writer.write(b"second")
        finished = writer.finish()
        self.assertNoResult(finished)
        held.callback(None)
        self.successResultOf(finished)
        self.assertEqual(writer.data(), b"first second")

    def test_an_unknown_phase_is_refused(self):
        import pytest

        from mailapp.testing import RecordingStore

        with pytest.raises(ValueError, match="not 'commit'"):
            RecordingStore().failNext("commit")  # type: ignore[arg-type]


class FakeResolverTests(TestCase):
    """DNS from a dict, with the failures the relay and SPF must handle, through the relay's own MX lookup."""

    RECORDS = {
        "b.test": {"MX": [(20, "backup.b.test"), (10, "mx.b.test")], "TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
        "mx.b.test": {"A": ["192.0.2.2"], "AAAA": ["2001:db8::2"]},
        "backup.b.test": {"A": ["192.0.2.3"]},
        "alias.test": {"CNAME": "b.test"},
    }

    def resolver(self, **failures):
        from mailapp.testing import FakeResolver

        return FakeResolver(self.RECORDS, **failures)

    def test_fake_resolver_provides_iresolver(self):
        from twisted.internet.interfaces import IResolver

        verifyObject(IResolver, self.resolver())

    def test_mx_order_addresses_and_a_cname_come_from_the_dict(self):
        from mailapp.relay.routing import MXResolver

        mx = MXResolver(self.resolver(), shuffle=lambda group: None)
        hops = self.successResultOf(mx.resolve("b.test"))
        self.assertEqual([(h.name, h.address, h.preference) for h in hops], [
            ("mx.b.test", "192.0.2.2", 10), ("mx.b.test", "2001:db8::2", 10), ("backup.b.test", "192.0.2.3", 20),
        ])
        self.assertEqual(len(self.successResultOf(mx.resolve("alias.test"))), 3)
        answers, _, _ = self.successResultOf(self.resolver().lookupText("b.test"))
        self.assertEqual(answers[0].payload.data, [b"v=spf1 ip4:192.0.2.0/24 -all"])

    def test_nxdomain_servfail_and_timeout_are_the_errors_twisted_names_gives(self):
        from mailapp.relay.routing import MXResolver, RouteError

        resolver = self.resolver(servfail=["broken.test"], timeout=["slow.test"])
        mx = MXResolver(resolver)
        for domain, reply in (
            ("nowhere.test", "550 5.1.2 domain nowhere.test does not exist (NXDOMAIN)"),
            ("mx.broken.test", "451 4.4.3 DNS server failure looking up mx.broken.test"),
            ("slow.test", "451 4.4.3 DNS timeout looking up slow.test"),
        ):
            self.assertEqual(self.failureResultOf(mx.resolve(domain), RouteError).value.reply, reply)
        self.assertIn(("nowhere.test", "MX"), resolver.queries)

    def test_an_unanswered_query_waits_for_the_test(self):
        resolver = self.resolver(unanswered=["b.test"])
        pending = resolver.lookupMailExchange("b.test")
        self.assertNoResult(pending)
        [held] = resolver.held
        held.callback(([], [], []))
        self.assertEqual(self.successResultOf(pending), ([], [], []))

    def test_spf_checks_run_over_it(self):
        # pyspf runs on a worker thread and asks the resolver on the reactor: the real ones, here.
        from twisted.internet import reactor
        from twisted.internet.defer import gatherResults

        from mailapp.spf import SPFChecker

        checker = SPFChecker(reactor, self.resolver(servfail=["broken.test"]), reactor.getThreadPool())

        def check(ip, sender):
            return checker.check(ip, sender, "client.test").addCallback(lambda outcome: outcome.result)

        results = [check("192.0.2.7", "x@b.test"), check("198.51.100.1", "x@b.test"), check("192.0.2.7", "x@broken.test")]
        return gatherResults(results).addCallback(self.assertEqual, ["pass", "fail", "temperror"])
