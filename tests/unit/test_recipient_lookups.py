"""
A transaction looks each recipient domain up once, not each RCPT: the first
recipient in a domain is looked up alone (as a one-recipient message always
was), the second fetches the domain's directory from the accounts, and the
rest are resolved in memory by the same rules; what it learned lives as
long as the transaction, so the next one sees a change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.trial.unittest import TestCase

from mailapp.accounts import AccountsDatabase
from mailapp.accounts.resolution import DOMAIN_DIRECTORY_LIMIT, DomainDirectory, OutsideDirectory, resolve_address
from mailapp.delivery import Router
from mailapp.errors import NoSuchUser, RelayDenied
from mailapp.testing import FakeAccounts, FakeStore, cheap_password_hasher


class CountingAccounts:
    """The two lookups a transaction makes, over a real accounts database, counted."""

    def __init__(self, database: AccountsDatabase) -> None:
        self.database = database
        self.calls: list[tuple[str, str]] = []

    def resolve(self, address: str) -> Deferred[Any]:
        self.calls.append(("resolve", address))
        return succeed(self.database.resolve(address))

    def domainDirectory(self, domain: str) -> Deferred[Any]:
        self.calls.append(("domainDirectory", domain))
        return succeed(self.database.domain_directory(domain))


def database(tmp: str) -> AccountsDatabase:
    db = AccountsDatabase(Path(tmp) / "accounts.sqlite3", ["example.test"], hasher=cheap_password_hasher())
    for n in range(10):
        db.add_user(f"user{n}@example.test", "pw")
    return db


class RecipientLookupTests(TestCase):
    def setUp(self) -> None:
        self.db = database(self._dir())
        self.addCleanup(self.db.close)
        self.accounts = CountingAccounts(self.db)
        self.store = FakeStore()
        self.router = Router(self.accounts, self.store)  # type: ignore[arg-type]

    def _dir(self) -> str:
        path = Path(self.mktemp())
        path.mkdir(parents=True)
        return str(path)

    @inlineCallbacks
    def test_ten_recipients_in_one_domain_cost_one_domain_lookup(self) -> None:
        transaction = self.router.start("sender@remote.test", relay_allowed=False)
        for n in range(10):
            yield transaction.addRecipient(f"User{n}@Example.TEST")
        self.assertEqual(self.accounts.calls, [("resolve", "User0@Example.TEST"), ("domainDirectory", "example.test")])
        self.assertEqual(transaction.local, [f"user{n}@example.test" for n in range(10)])

    @inlineCallbacks
    def test_a_message_to_one_recipient_costs_one_address_lookup_as_before(self) -> None:
        transaction = self.router.start("sender@remote.test", relay_allowed=False)
        yield transaction.addRecipient("user3@example.test")
        self.assertEqual(self.accounts.calls, [("resolve", "user3@example.test")])

    @inlineCallbacks
    def test_ten_remote_recipients_in_one_domain_cost_one_domain_lookup(self) -> None:
        transaction = self.router.start("user0@example.test", relay_allowed=True)
        self.router.queue = object()  # type: ignore[assignment]  # remote recipients need a relay queue to be accepted
        for n in range(10):
            yield transaction.addRecipient(f"friend{n}@remote.test")
        self.assertEqual(self.accounts.calls, [("resolve", "friend0@remote.test"), ("domainDirectory", "remote.test")])
        self.assertEqual(transaction.remote, [f"friend{n}@remote.test" for n in range(10)])

    @inlineCallbacks
    def test_recipients_in_two_domains_cost_one_domain_lookup_each(self) -> None:
        self.db.add_domain("other.test")
        for n in range(3):
            self.db.add_user(f"o{n}@other.test", "pw")
        transaction = self.router.start("sender@remote.test", relay_allowed=False)
        for address in ("user1@example.test", "o0@other.test", "user2@example.test", "o1@other.test", "user3@example.test", "o2@other.test"):
            yield transaction.addRecipient(address)
        self.assertEqual(
            self.accounts.calls,
            [
                ("resolve", "user1@example.test"), ("resolve", "o0@other.test"),
                ("domainDirectory", "example.test"), ("domainDirectory", "other.test"),
            ],
        )
        self.assertEqual(len(transaction.local), 6)

    @inlineCallbacks
    def test_a_domain_removed_between_two_transactions_is_seen_by_the_second(self) -> None:
        self.db.add_domain("gone.test")
        first = self.router.start("sender@remote.test", relay_allowed=False)
        for name in ("someone", "anyone"):
            yield self.assertFailure(first.addRecipient(f"{name}@gone.test"), NoSuchUser)
        self.db.remove_domain("gone.test")
        second = self.router.start("sender@remote.test", relay_allowed=False)
        for name in ("someone", "anyone"):
            yield self.assertFailure(second.addRecipient(f"{name}@gone.test"), RelayDenied)
        self.assertEqual([call for call in self.accounts.calls if call[0] == "domainDirectory"], [("domainDirectory", "gone.test")] * 2)

    @inlineCallbacks
    def test_a_user_added_between_two_transactions_is_found_by_the_second(self) -> None:
        first = self.router.start("sender@remote.test", relay_allowed=False)
        yield first.addRecipient("user1@example.test")
        yield self.assertFailure(first.addRecipient("new@example.test"), NoSuchUser)
        self.db.add_user("new@example.test", "pw")
        second = self.router.start("sender@remote.test", relay_allowed=False)
        yield second.addRecipient("user1@example.test")
        yield second.addRecipient("new@example.test")
        self.assertEqual(second.local, ["user1@example.test", "new@example.test"])
        self.assertEqual([call[0] for call in self.accounts.calls], ["resolve", "domainDirectory"] * 2)

    @inlineCallbacks
    def test_an_alias_into_another_local_domain_is_resolved_by_the_accounts(self) -> None:
        self.db.add_domain("other.test")
        self.db.add_user("carol@other.test", "pw")
        self.db.add_alias("team@example.test", ["user1@example.test", "carol@other.test"])
        transaction = self.router.start("sender@remote.test", relay_allowed=False)
        yield transaction.addRecipient("user2@example.test")
        yield transaction.addRecipient("team@example.test")
        yield transaction.addRecipient("user3@example.test")
        self.assertEqual(transaction.local, ["user2@example.test", "user1@example.test", "carol@other.test", "user3@example.test"])
        self.assertEqual(
            self.accounts.calls,
            [("resolve", "user2@example.test"), ("domainDirectory", "example.test"), ("resolve", "team@example.test")],
        )

    @inlineCallbacks
    def test_a_domain_too_big_to_hold_is_looked_up_per_recipient(self) -> None:
        self.db.add_domain("big.test")
        for n in range(DOMAIN_DIRECTORY_LIMIT + 1):
            self.db.add_user(f"u{n}@big.test", "pw")
        transaction = self.router.start("sender@remote.test", relay_allowed=False)
        for n in (1, 2, 3):
            yield transaction.addRecipient(f"u{n}@big.test")
        self.assertEqual(transaction.local, ["u1@big.test", "u2@big.test", "u3@big.test"])
        self.assertEqual(
            self.accounts.calls,
            [("resolve", "u1@big.test"), ("domainDirectory", "big.test"), ("resolve", "u2@big.test"), ("resolve", "u3@big.test")],
        )


class DomainDirectoryTests(TestCase):
    """The in-memory directory resolves every address as the database does, or says it cannot."""

    def setUp(self) -> None:
        path = Path(self.mktemp())
        path.mkdir(parents=True)
        self.db = database(str(path))
        self.addCleanup(self.db.close)

    def test_users_tags_aliases_catch_all_and_postmaster_resolve_as_in_the_database(self) -> None:
        self.db.add_domain("b.test")
        self.db.add_user("Alice@b.test", "pw")
        self.db.add_user("bob@b.test", "pw")
        self.db.add_alias("team@b.test", ["alice@b.test", "bob@b.test", "ext@remote.test"])
        self.db.add_alias("staff@b.test", ["team@b.test"])
        self.db.add_alias("@b.test", ["bob@b.test"])
        directory = self.db.domain_directory("B.test")
        assert directory is not None
        for address in (
            "alice@b.test", "ALICE+news@B.TEST", "team@b.test", "staff@b.test", "Staff+x@b.test",
            "nobody@b.test", "postmaster@b.test", "bob@b.test",
        ):
            self.assertEqual(resolve_address(address, directory), self.db.resolve(address), address)

    def test_a_domain_that_is_not_ours_is_remote_without_any_user(self) -> None:
        directory = self.db.domain_directory("Remote.TEST")
        self.assertEqual(directory, DomainDirectory("remote.test", local=False, local_domains=frozenset({"example.test"})))
        assert directory is not None
        self.assertEqual(resolve_address("x@remote.test", directory), self.db.resolve("x@remote.test"))

    def test_a_question_about_another_domain_raises(self) -> None:
        directory = self.db.domain_directory("example.test")
        assert directory is not None
        with self.assertRaises(OutsideDirectory):
            directory.find_user("carol@other.test")
        self.assertFalse(directory.is_local_domain("other.test"))

    def test_the_fake_accounts_give_the_same_directory_as_the_database(self) -> None:
        fake = FakeAccounts(domains=["example.test"])
        for n in range(10):
            fake.add_user(f"user{n}@example.test", "pw")
        fake.add_alias("team@example.test", ["user1@example.test", "user2@example.test"])
        self.db.add_alias("team@example.test", ["user1@example.test", "user2@example.test"])
        self.assertEqual(self.successResultOf(fake.domainDirectory("example.test")), self.db.domain_directory("example.test"))
