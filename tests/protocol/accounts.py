"""The users and aliases every protocol test logs in as and delivers to."""

from __future__ import annotations

from mailapp.testing import FakeAccounts


def make_accounts() -> FakeAccounts:
    accounts = FakeAccounts(["example.test"])
    accounts.add_user("alice@example.test", "alice-secret")
    accounts.add_user("bob@example.test", "bob-secret")
    accounts.add_user("carol@example.test", "carol-secret")
    accounts.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
    accounts.add_alias("sales@example.test", ["carol@example.test"])
    return accounts
