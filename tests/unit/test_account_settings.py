"""
What a user changes about their own account (the webmail's settings): the
password, through the one password policy and the hashing pool, and the
display name and signature (schema 4's C{profiles} table), in the database,
the server's L{Accounts} and the fake alike.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from mailapp.accounts import SCHEMA_VERSION, Accounts, AccountsDatabase, Profile, accounts_path, check_profile
from mailapp.errors import AccountError
from mailapp.testing import FakeAccounts, cheap_password_hasher

ALICE = "alice@example.test"


@pytest.mark.parametrize(
    ("name", "signature", "words"),
    [
        ("Alice\r\nBcc: x@example.org", "", "one line"),
        ("A" * 101, "", "longer"),
        ("Alice", "x\x1b[31m", "control"),
        ("Alice", "x" * 2001, "longer"),
    ],
)
def test_a_bad_profile_is_refused_saying_why(name: str, signature: str, words: str) -> None:
    with pytest.raises(AccountError, match=words):
        check_profile(name, signature)


def test_a_profile_is_trimmed_and_its_line_ends_made_lf() -> None:
    assert check_profile("  Alice Example ", "\r\nAlice\r\n\tExample Ltd\r\n\r\n") == Profile("Alice Example", "Alice\n\tExample Ltd")


def test_the_database_keeps_a_profile_and_forgets_it_with_the_user(tmp_path: Path) -> None:
    with AccountsDatabase(accounts_path(tmp_path), ["example.test"], hasher=cheap_password_hasher()) as database:
        database.add_user(ALICE, "password-1")
        assert database.profile(ALICE) == Profile()
        assert database.profile("nobody@example.test") is None
        database.set_profile("ALICE@example.test", "Alice", "-- not a separator")
        database.set_profile(ALICE, 'Alice "A." Example', "Alice")
        assert database.profile(ALICE) == Profile('Alice "A." Example', "Alice")
        with pytest.raises(AccountError, match="no such user"):
            database.set_profile("nobody@example.test", "x", "")
        database.remove_user(ALICE)
        database.add_user(ALICE, "password-2")
        assert database.profile(ALICE) == Profile()


def test_a_version_3_accounts_database_is_migrated_with_empty_profiles(tmp_path: Path) -> None:
    path = accounts_path(tmp_path)
    with AccountsDatabase(path, ["example.test"], hasher=cheap_password_hasher()) as database:
        database.add_user(ALICE, "password-1")
    connection = sqlite3.connect(path)
    connection.executescript("DROP TABLE profiles; PRAGMA user_version = 3;")
    connection.close()
    with AccountsDatabase(path, ["example.test"], hasher=cheap_password_hasher()) as database:
        assert database.profile(ALICE) == Profile()
        database.set_profile(ALICE, "Alice", "")
        assert database.profile(ALICE) == Profile("Alice", "")
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    check.close()


class AccountSettingsTests(unittest.TestCase):
    """L{Accounts} against a real database file, on real threads; the fake answers the same."""

    def setUp(self) -> None:
        self.path = accounts_path(Path(self.mktemp()))
        admin = AccountsDatabase(self.path, ["example.test"], hasher=cheap_password_hasher())
        admin.add_user(ALICE, "password-1")
        admin.close()
        pool = ThreadPool(minthreads=0, maxthreads=2, name="test-account-settings")
        pool.start()
        self.addCleanup(pool.stop)
        self.accounts = Accounts(self.path, ["example.test"], reactor=reactor, threadpool=pool, hasher=cheap_password_hasher())
        self.addCleanup(self.accounts.close)
        self.fake = FakeAccounts(["example.test"])
        self.fake.add_user(ALICE, "password-1")

    async def test_a_new_password_replaces_the_old_one(self) -> None:
        for accounts in (self.accounts, self.fake):
            self.assertEqual(await accounts.authenticate(ALICE, b"password-1"), ALICE)
            await accounts.setPassword(ALICE, "a much longer one")
            self.assertEqual(await accounts.authenticate(ALICE, b"a much longer one"), ALICE)
            with self.assertRaises(UnauthorizedLogin):
                await accounts.authenticate(ALICE, b"password-1")

    async def test_a_password_the_policy_refuses_changes_nothing(self) -> None:
        for accounts in (self.accounts, self.fake):
            for password, words in (("short", "too short"), ("ALICE@example.test", "must not be the address"), ("Alice", "too short")):
                with self.assertRaisesRegex(AccountError, words):
                    await accounts.setPassword(ALICE, password)
            with self.assertRaisesRegex(AccountError, "no such user"):
                await accounts.setPassword("nobody@example.test", "long enough password")
            self.assertEqual(await accounts.authenticate(ALICE, b"password-1"), ALICE)

    async def test_a_profile_is_stored_and_read_back(self) -> None:
        for accounts in (self.accounts, self.fake):
            self.assertEqual(await accounts.profile(ALICE), Profile())
            self.assertEqual(await accounts.setProfile(ALICE, " Alice ", "Alice\r\n"), Profile("Alice", "Alice"))
            self.assertEqual(await accounts.profile(ALICE), Profile("Alice", "Alice"))
            with self.assertRaisesRegex(AccountError, "one line"):
                await accounts.setProfile(ALICE, "A\nB", "")
            for bad in ("nobody@example.test", "example.test"):
                with self.assertRaisesRegex(AccountError, "no such user"):
                    await accounts.profile(bad)
