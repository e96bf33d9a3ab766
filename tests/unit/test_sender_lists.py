"""
The allow and block lists of senders: what an entry may be, which entry a
sender matches, the database that keeps them (and its migration), and the
fake that must decide as the database does.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from mailapp.accounts import (
    SCHEMA_VERSION,
    AccountError,
    Accounts,
    AccountsDatabase,
    SenderRule,
    SenderVerdict,
    accounts_path,
    check_sender_pattern,
    sender_candidates,
)
from mailapp.testing import FakeAccounts, cheap_password_hasher

ALICE = "alice@example.test"


@pytest.mark.parametrize(
    ("given", "stored"),
    [("Alice@Example.ORG", "alice@example.org"), ("Example.ORG", "example.org"), ("*.Example.org", "*.example.org")],
)
def test_an_entry_is_an_address_a_domain_or_a_wildcard_stored_lower_cased(given: str, stored: str) -> None:
    assert check_sender_pattern(given) == stored


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("", "empty"),
        ("@example.org", "without the @"),
        ("a*.example.org", "wildcard"),
        ("*example.org", "wildcard"),
        ("example..org", "empty label"),
        ("bad address@example.org", "whitespace"),
    ],
)
def test_a_bad_entry_is_refused_saying_why(given: str, says: str) -> None:
    with pytest.raises(AccountError, match=says):
        check_sender_pattern(given)


def test_candidates_run_from_the_address_to_the_farthest_wildcard() -> None:
    assert sender_candidates("Bob@Mx.Mail.Example.org") == [
        "bob@mx.mail.example.org",
        "mx.mail.example.org",
        "*.mail.example.org",
        "*.example.org",
        "*.org",
    ]
    assert sender_candidates("") == [] and sender_candidates("nobody") == []


@pytest.fixture()
def database(tmp_path: Path):
    with AccountsDatabase(accounts_path(tmp_path), ["example.test"], hasher=cheap_password_hasher()) as database:
        database.add_user(ALICE, "password-1")
        database.add_user("bob@example.test", "password-2")
        database.add_alias("both@example.test", [ALICE, "bob@example.test"])
        database.add_alias("me@example.test", [ALICE])
        yield database


def test_a_wildcard_matches_subdomains_and_not_the_domain_itself(database: AccountsDatabase) -> None:
    database.set_sender_rule(ALICE, "*.example.org", "block")
    assert database.sender_verdict(ALICE, "x@mail.example.org") == SenderVerdict("block", ALICE, "*.example.org", (ALICE,))
    assert database.sender_verdict(ALICE, "x@example.org") is None


def test_the_most_specific_entry_of_a_list_wins(database: AccountsDatabase) -> None:
    database.set_sender_rule(ALICE, "example.org", "block")
    database.set_sender_rule(ALICE, "Boss@example.org", "allow")
    assert database.sender_verdict(ALICE, "boss@EXAMPLE.org").action == "allow"
    assert database.sender_verdict(ALICE, "other@example.org").action == "block"


def test_the_users_list_wins_over_its_domains_and_the_domains_applies_otherwise(database: AccountsDatabase) -> None:
    database.set_sender_rule("example.test", "example.org", "block")
    database.set_sender_rule(ALICE, "example.org", "allow")
    assert database.sender_verdict("Alice+tag@example.test", "x@example.org") == SenderVerdict("allow", ALICE, "example.org", (ALICE,))
    assert database.sender_verdict("bob@example.test", "x@example.org") == SenderVerdict("block", "example.test", "example.org", ("bob@example.test",))
    # An alias to one user is that user's; to several, only the domain's list applies.
    assert database.sender_verdict("me@example.test", "x@example.org").action == "allow"
    assert database.sender_verdict("both@example.test", "x@example.org").action == "block"


def test_setting_an_entry_again_replaces_its_action(database: AccountsDatabase) -> None:
    assert database.set_sender_rule(ALICE, "example.org", "block") == (SenderRule(ALICE, "example.org", "block"), None)
    assert database.set_sender_rule(ALICE, "example.org", "allow") == (SenderRule(ALICE, "example.org", "allow"), "block")
    assert database.sender_rules(ALICE) == [SenderRule(ALICE, "example.org", "allow")]


def test_removing_an_entry_and_removing_one_not_there(database: AccountsDatabase) -> None:
    database.set_sender_rule(ALICE, "example.org", "block")
    assert database.remove_sender_rule(ALICE, "EXAMPLE.org") == SenderRule(ALICE, "example.org", "block")
    with pytest.raises(AccountError, match="not on the list"):
        database.remove_sender_rule(ALICE, "example.org")


def test_a_list_needs_a_user_or_a_local_domain_and_a_known_action(database: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="no such user"):
        database.set_sender_rule("nobody@example.test", "example.org", "block")
    with pytest.raises(AccountError, match="unknown domain"):
        database.set_sender_rule("elsewhere.test", "example.org", "block")
    with pytest.raises(AccountError, match="'allow' or 'block'"):
        database.set_sender_rule(ALICE, "example.org", "deny")


def test_a_removed_users_list_goes_with_it(database: AccountsDatabase) -> None:
    database.set_sender_rule("bob@example.test", "example.org", "allow")
    database.remove_user("bob@example.test")
    database.add_user("bob@example.test", "password-3")
    assert database.sender_rules("bob@example.test") == []


def test_a_version_2_accounts_database_is_migrated_with_empty_lists(tmp_path: Path) -> None:
    path = accounts_path(tmp_path)
    connection = sqlite3.connect(path)
    connection.executescript(
        """
        CREATE TABLE domains (name TEXT PRIMARY KEY NOT NULL);
        CREATE TABLE users (key TEXT PRIMARY KEY NOT NULL, address TEXT NOT NULL, domain TEXT NOT NULL,
            password_hash TEXT NOT NULL, created INTEGER NOT NULL DEFAULT (strftime('%s', 'now')),
            quota_bytes INTEGER, quota_messages INTEGER);
        CREATE TABLE aliases (source_key TEXT NOT NULL, source TEXT NOT NULL, domain TEXT NOT NULL,
            target_key TEXT NOT NULL, target TEXT NOT NULL, position INTEGER NOT NULL, PRIMARY KEY (source_key, target_key));
        INSERT INTO users (key, address, domain, password_hash) VALUES ('alice@example.test', 'alice@example.test', 'example.test', 'x');
        PRAGMA user_version = 2;
        """
    )
    connection.close()
    with AccountsDatabase(path, ["example.test"], hasher=cheap_password_hasher()) as database:
        assert database.sender_rules() == []
        database.set_sender_rule(ALICE, "example.org", "block")
        assert database.sender_verdict(ALICE, "x@example.org") == SenderVerdict("block", ALICE, "example.org", (ALICE,))
        assert database.find_user(ALICE) == ALICE
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    check.close()


def test_the_fake_decides_as_the_database_does(database: AccountsDatabase) -> None:
    fake = FakeAccounts(["example.test"])
    fake.add_user(ALICE, "a")
    fake.add_user("bob@example.test", "b")
    fake.add_alias("both@example.test", [ALICE, "bob@example.test"])
    rules = [("example.test", "*.example.org", "block"), (ALICE, "example.org", "block"), (ALICE, "boss@example.org", "allow")]
    for owner, pattern, action in rules:
        database.set_sender_rule(owner, pattern, action)
        fake.set_sender_rule(owner, pattern, action)
    for recipient in (ALICE, "alice+x@example.test", "bob@example.test", "both@example.test", "nobody@example.test"):
        for sender in ("boss@example.org", "x@example.org", "x@a.example.org", "", "x@other.org"):
            assert fake.senderVerdict(recipient, sender).result == database.sender_verdict(recipient, sender)


def test_the_fakes_list_methods_take_a_user_never_a_domain() -> None:
    fake = FakeAccounts(["example.test"])
    fake.add_user(ALICE, "a")
    assert fake.setSenderRule(ALICE, "Example.org", "block").result == SenderRule(ALICE, "example.org", "block")
    assert fake.senderRules(ALICE).result == [SenderRule(ALICE, "example.org", "block")]
    failure = fake.setSenderRule("example.test", "example.org", "block")
    failure.addErrback(lambda reason: reason.trap(AccountError) and None)
    assert fake.removeSenderRule(ALICE, "example.org").result == SenderRule(ALICE, "example.org", "block")


class AccountsSenderListTests(unittest.TestCase):
    """The server's L{Accounts}: the lists on its database threads, a change seen at the next call."""

    def setUp(self) -> None:
        directory = Path(self.mktemp())
        path = accounts_path(directory)
        self.admin = AccountsDatabase(path, ["example.test"], hasher=cheap_password_hasher())
        self.addCleanup(self.admin.close)
        self.admin.add_user(ALICE, "password-1")
        pool = ThreadPool(minthreads=0, maxthreads=2, name="test-sender-lists")
        pool.start()
        self.addCleanup(pool.stop)
        self.accounts = Accounts(path, ["example.test"], reactor=reactor, threadpool=pool, hasher=cheap_password_hasher())
        self.addCleanup(self.accounts.close)

    async def test_a_change_by_the_command_is_seen_at_the_next_verdict(self) -> None:
        self.assertIsNone(await self.accounts.senderVerdict(ALICE, "x@spam.example"))
        self.admin.set_sender_rule(ALICE, "spam.example", "block")
        self.assertEqual(await self.accounts.senderVerdict(ALICE, "x@spam.example"), SenderVerdict("block", ALICE, "spam.example", (ALICE,)))

    async def test_the_users_own_list_through_the_interface(self) -> None:
        self.assertEqual(await self.accounts.setSenderRule(ALICE, "spam.example", "block"), SenderRule(ALICE, "spam.example", "block"))
        self.assertEqual(await self.accounts.senderRules(ALICE), [SenderRule(ALICE, "spam.example", "block")])
        self.assertEqual(await self.accounts.removeSenderRule(ALICE, "spam.example"), SenderRule(ALICE, "spam.example", "block"))
        self.assertEqual(self.admin.sender_rules(ALICE), [])

    async def test_the_interface_never_edits_a_domains_list(self) -> None:
        with self.assertRaises(AccountError):
            await self.accounts.setSenderRule("example.test", "spam.example", "block")
        with self.assertRaises(AccountError):
            await self.accounts.senderRules("example.test")
        self.assertEqual(self.admin.sender_rules(), [])


def test_a_domains_verdict_on_an_alias_covers_every_account_it_reaches(database: AccountsDatabase) -> None:
    database.set_sender_rule("example.test", "news.example", "allow")
    verdict = database.sender_verdict("both@example.test", "list@news.example")
    assert verdict == SenderVerdict("allow", "example.test", "news.example", (ALICE, "bob@example.test"))
