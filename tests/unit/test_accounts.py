"""
Tests for mailapp.accounts: address rules, the SQLite database, alias
resolution, and the asynchronous IAccounts (threads, hashing, rehash), plus
the FakeAccounts in mailapp.testing that shares the same rules.
"""

from __future__ import annotations

import shutil
import sqlite3
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailapp.accounts import (
    MAX_ALIAS_DEPTH,
    SCHEMA_VERSION,
    Accounts,
    AccountsDatabase,
    AliasInfo,
    DomainInfo,
    RemovedUser,
    Resolution,
    accounts_path,
    check_address,
    check_new_password,
    resolve_address,
)
from mailapp.accounts.addresses import address_key
from mailapp.errors import AccountError
from mailapp.interfaces import IAccounts
from mailapp.testing import FakeAccounts, cheap_password_hasher

DOMAIN = "example.test"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[AccountsDatabase]:
    database = AccountsDatabase(accounts_path(tmp_path), [DOMAIN], hasher=cheap_password_hasher())
    yield database
    database.close()


# --- the database file -------------------------------------------------------


def test_accounts_path_is_in_the_state_dir(tmp_path: Path) -> None:
    assert accounts_path(tmp_path) == tmp_path / "accounts.sqlite3"


def test_new_database_records_its_schema_version(db: AccountsDatabase) -> None:
    connection = sqlite3.connect(db.path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        connection.close()


def test_database_file_is_readable_by_its_owner_only(db: AccountsDatabase) -> None:
    assert stat.S_IMODE(db.path.stat().st_mode) == 0o600


def test_database_creates_missing_state_dir(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "accounts.sqlite3"
    AccountsDatabase(path, hasher=cheap_password_hasher()).close()
    assert path.is_file()


def test_database_from_a_newer_mailapp_is_refused(tmp_path: Path) -> None:
    path = accounts_path(tmp_path)
    AccountsDatabase(path).close()
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(AccountError, match="newer than this mailapp"):
        AccountsDatabase(path)


def test_change_through_one_connection_is_seen_by_another_at_once(tmp_path: Path) -> None:
    with AccountsDatabase(accounts_path(tmp_path), [DOMAIN], hasher=cheap_password_hasher()) as server:
        assert server.resolve("alice@example.test") is None
        with AccountsDatabase(accounts_path(tmp_path), [DOMAIN], hasher=cheap_password_hasher()) as cli:
            cli.add_user("alice@example.test", "pw")
        assert server.resolve("alice@example.test") == Resolution(local=("alice@example.test",))


# --- address checks ----------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "",
        "alice",
        "@example.test",
        "alice@",
        "al ice@example.test",
        "alice\r\n@example.test",
        "alice@example.test\n",
        "al\x00ice@example.test",
        "al\tice@example.test",
        "<alice@example.test>",
        "alice@exa_mple.test",
        "alice@-example.test",
        "alice@example-.test",
        "alice@example..test",
        "alice@example.test.",
        "alice@xn--a.test",  # an A-label that is not Punycode
        "alice@ex\u200dmple.test",  # a U-label IDNA2008 refuses (a joiner out of context)
        ".alice@example.test",
        "alice.@example.test",
        "al..ice@example.test",
        "al(ice@example.test",
        'al"ice@example.test',
        "al,ice@example.test",
        "a@b@example.test",
        "x" * 65 + "@example.test",
        "alice@" + "a" * 64 + ".test",
        "alice@" + ".".join(["a" * 60] * 5),
    ],
)
def test_malformed_address_is_refused_with_a_message(address: str) -> None:
    with pytest.raises(AccountError) as raised:
        check_address(address)
    assert str(raised.value)


def test_an_international_domain_in_u_labels_or_a_labels_is_one_domain_kept_as_a_labels() -> None:
    assert check_address("jörg@Müller.example") == "jörg@xn--mller-kva.example"
    assert address_key("Jörg@müller.example") == address_key("jörg@XN--MLLER-KVA.example") == "jörg@xn--mller-kva.example"
    # A local part in decomposed form (o + combining diaeresis) is the same user as the composed one.
    assert address_key("jo\u0308rg@xn--mller-kva.example") == address_key("jörg@müller.example")
    assert check_address("用户@例子.广告") == "用户@xn--fsqu00a.xn--4rr70v"


def test_address_keeps_local_case_and_lowercases_domain() -> None:
    assert check_address("Alice.Smith+x@Example.TEST") == "Alice.Smith+x@example.test"


def test_longest_allowed_local_part_is_accepted() -> None:
    assert check_address("x" * 64 + "@example.test") == "x" * 64 + "@example.test"


def test_non_ascii_local_part_is_accepted() -> None:
    assert check_address("jürgen@example.test") == "jürgen@example.test"


def test_slash_is_refused_in_a_mailbox_name_but_allowed_in_a_remote_target() -> None:
    assert check_address("a/b@remote.test") == "a/b@remote.test"
    with pytest.raises(AccountError, match="cannot name a mailbox"):
        check_address("a/b@example.test", mailbox=True)


# --- domains -----------------------------------------------------------------


def test_domain_list_marks_config_domains(db: AccountsDatabase) -> None:
    db.add_domain("Other.TEST")
    assert db.list_domains() == [DomainInfo("example.test", True), DomainInfo("other.test", False)]


def test_added_domain_is_local_in_any_case(db: AccountsDatabase) -> None:
    assert not db.is_local_domain("other.test")
    db.add_domain("other.test")
    assert db.is_local_domain("OTHER.test")
    assert db.is_local_domain("Example.Test")


def test_adding_a_domain_twice_is_refused(db: AccountsDatabase) -> None:
    db.add_domain("other.test")
    with pytest.raises(AccountError, match="exists already"):
        db.add_domain("OTHER.test")


def test_adding_a_config_domain_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="config file"):
        db.add_domain("example.test")


def test_removing_a_config_domain_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="config file"):
        db.remove_domain("Example.test")


def test_removing_a_domain_with_users_is_refused(db: AccountsDatabase) -> None:
    db.add_domain("other.test")
    db.add_user("bob@other.test", "pw")
    with pytest.raises(AccountError, match="still has 1 user"):
        db.remove_domain("other.test")
    assert db.is_local_domain("other.test")


def test_removing_a_domain_with_aliases_is_refused(db: AccountsDatabase) -> None:
    db.add_domain("other.test")
    db.add_alias("@other.test", ["x@remote.test"])
    with pytest.raises(AccountError, match="1 alias"):
        db.remove_domain("other.test")


def test_removing_an_empty_domain_makes_it_remote(db: AccountsDatabase) -> None:
    db.add_domain("other.test")
    assert db.remove_domain("OTHER.test") == "other.test"
    assert db.resolve("bob@other.test") == Resolution(remote=("bob@other.test",), local_domain=False)


def test_removing_an_unknown_domain_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="unknown domain"):
        db.remove_domain("nowhere.test")


def test_malformed_domain_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="letters, digits"):
        db.add_domain("bad_domain.test")


# --- users -------------------------------------------------------------------


def test_user_keeps_the_case_it_was_created_with(db: AccountsDatabase) -> None:
    assert db.add_user("Alice@Example.TEST", "pw") == "Alice@example.test"
    assert db.list_users() == ["Alice@example.test"]
    assert db.find_user("ALICE@example.test") == "Alice@example.test"


def test_user_differing_only_in_case_is_a_duplicate(db: AccountsDatabase) -> None:
    db.add_user("Alice@example.test", "pw")
    with pytest.raises(AccountError, match="exists already"):
        db.add_user("alice@EXAMPLE.test", "other")


def test_user_in_unknown_domain_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="unknown domain nowhere.test"):
        db.add_user("bob@nowhere.test", "pw")


def test_user_with_empty_password_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="empty password"):
        db.add_user("alice@example.test", "")
    assert db.count_users() == 0


def test_user_that_is_an_alias_is_refused(db: AccountsDatabase) -> None:
    db.add_alias("team@example.test", ["x@remote.test"])
    with pytest.raises(AccountError, match="is an alias"):
        db.add_user("Team@example.test", "pw")


def test_check_new_user_refuses_before_any_password_is_asked(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    with pytest.raises(AccountError, match="exists already"):
        db.check_new_user("ALICE@example.test")
    assert db.check_new_user("Bob@example.test") == "Bob@example.test"


def test_removed_user_no_longer_receives_mail(db: AccountsDatabase) -> None:
    db.add_user("Alice@example.test", "pw")
    assert db.remove_user("alice@example.test") == RemovedUser("Alice@example.test")
    assert db.resolve("alice@example.test") is None
    assert db.count_users() == 0


def test_removing_an_unknown_user_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="no such user"):
        db.remove_user("nobody@example.test")


def test_list_users_of_one_domain(db: AccountsDatabase) -> None:
    db.add_domain("other.test")
    db.add_user("bob@other.test", "pw")
    db.add_user("carol@example.test", "pw")
    db.add_user("Alice@example.test", "pw")
    assert db.list_users() == ["Alice@example.test", "carol@example.test", "bob@other.test"]
    assert db.list_users("OTHER.test") == ["bob@other.test"]


def test_list_users_of_unknown_domain_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="unknown domain"):
        db.list_users("nowhere.test")


def test_password_hash_is_argon2id_and_found_in_any_case(db: AccountsDatabase) -> None:
    db.add_user("Alice@example.test", "secret")
    found = db.lookup_password_hash("ALICE@EXAMPLE.TEST")
    assert found is not None
    canonical, password_hash = found
    assert canonical == "Alice@example.test"
    assert password_hash.startswith("$argon2id$")
    assert cheap_password_hasher().verify(password_hash, "secret")


def test_password_hash_of_a_non_user_is_none(db: AccountsDatabase) -> None:
    db.add_alias("team@example.test", ["x@remote.test"])
    assert db.lookup_password_hash("team@example.test") is None
    assert db.lookup_password_hash("nobody@example.test") is None
    assert db.lookup_password_hash("not an address") is None


def test_set_password_replaces_the_hash(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "old")
    assert db.set_password("ALICE@example.test", "new") == "alice@example.test"
    _, password_hash = db.lookup_password_hash("alice@example.test") or ("", "")
    assert cheap_password_hasher().verify(password_hash, "new")


def test_set_password_of_unknown_user_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="no such user"):
        db.set_password("nobody@example.test", "pw")


# --- aliases -----------------------------------------------------------------


def test_alias_to_many_targets_resolves_to_local_and_remote(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    db.add_user("bob@example.test", "pw")
    db.add_alias("team@example.test", ["bob@example.test", "x@Remote.TEST", "alice@example.test"])
    assert db.resolve("Team@example.test") == Resolution(
        local=("bob@example.test", "alice@example.test"), remote=("x@remote.test",)
    )


def test_nested_aliases_expand_and_collapse_duplicates_in_order(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    db.add_user("bob@example.test", "pw")
    db.add_alias("devs@example.test", ["alice@example.test", "bob@example.test"])
    db.add_alias("ops@example.test", ["bob@example.test", "pager@remote.test"])
    db.add_alias("all@example.test", ["ops@example.test", "devs@example.test", "pager@remote.test"])
    assert db.resolve("all@example.test") == Resolution(
        local=("bob@example.test", "alice@example.test"), remote=("pager@remote.test",)
    )


def test_adding_targets_to_an_existing_alias_appends_them(db: AccountsDatabase) -> None:
    db.add_alias("team@example.test", ["a@remote.test"])
    db.add_alias("team@example.test", ["b@remote.test"])
    assert db.list_aliases() == [AliasInfo("team@example.test", ("a@remote.test", "b@remote.test"))]


def test_alias_loop_is_refused_and_nothing_is_stored(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    db.add_alias("b@example.test", ["alice@example.test"])
    db.add_alias("a@example.test", ["b@example.test"])
    with pytest.raises(AccountError, match="alias loop: b@example.test -> a@example.test -> b@example.test"):
        db.add_alias("b@example.test", ["a@example.test"])
    assert db.find_alias("b@example.test") == ("alice@example.test",)


def test_alias_to_itself_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="itself"):
        db.add_alias("a@example.test", ["A@example.test"])


def test_alias_to_itself_through_plus_addressing_is_a_loop(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="alias loop"):
        db.add_alias("a@example.test", ["a+x@example.test"])


def test_catch_all_to_a_nonexistent_address_in_its_domain_is_refused_as_dangling(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="alias @example.test points at nobody@example.test, which is not a user"):
        db.add_alias("@example.test", ["nobody@example.test"])


def test_alias_chain_deeper_than_the_limit_is_refused(db: AccountsDatabase) -> None:
    db.add_alias(f"a{MAX_ALIAS_DEPTH + 1}@example.test", ["x@remote.test"])
    for level in range(MAX_ALIAS_DEPTH, 1, -1):
        db.add_alias(f"a{level}@example.test", [f"a{level + 1}@example.test"])
    with pytest.raises(AccountError, match="longer than"):
        db.add_alias("a1@example.test", ["a2@example.test"])


def test_alias_to_a_local_nobody_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="not a user or alias here"):
        db.add_alias("team@example.test", ["nobody@example.test"])


def test_alias_whose_source_is_a_user_is_refused(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    with pytest.raises(AccountError, match="is a user"):
        db.add_alias("ALICE@example.test", ["x@remote.test"])


def test_alias_in_unknown_domain_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="unknown domain"):
        db.add_alias("team@nowhere.test", ["x@remote.test"])


def test_duplicate_alias_target_is_refused(db: AccountsDatabase) -> None:
    db.add_alias("team@example.test", ["x@remote.test"])
    with pytest.raises(AccountError, match="exists already"):
        db.add_alias("team@example.test", ["X@REMOTE.test"])


def test_alias_without_targets_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="at least one target"):
        db.add_alias("team@example.test", [])


def test_removing_one_target_keeps_the_others(db: AccountsDatabase) -> None:
    db.add_alias("team@example.test", ["a@remote.test", "b@remote.test"])
    assert db.remove_alias("TEAM@example.test", "A@remote.test") == ["a@remote.test"]
    assert db.resolve("team@example.test") == Resolution(remote=("b@remote.test",))


def test_removing_a_whole_alias(db: AccountsDatabase) -> None:
    db.add_alias("team@example.test", ["a@remote.test", "b@remote.test"])
    assert db.remove_alias("team@example.test") == ["a@remote.test", "b@remote.test"]
    assert db.list_aliases() == []


def test_removing_an_unknown_alias_is_refused(db: AccountsDatabase) -> None:
    with pytest.raises(AccountError, match="no such alias"):
        db.remove_alias("team@example.test")
    db.add_alias("team@example.test", ["a@remote.test"])
    with pytest.raises(AccountError, match="no such alias"):
        db.remove_alias("team@example.test", "b@remote.test")


def test_removing_a_user_drops_the_alias_targets_naming_it(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    db.add_alias("team@example.test", ["Alice@example.test", "x@remote.test"])
    db.add_alias("news@example.test", ["alice+news@example.test"])
    removed = db.remove_user("alice@example.test")
    assert removed.aliases_pruned == (
        AliasInfo("news@example.test", ("alice+news@example.test",)),
        AliasInfo("team@example.test", ("Alice@example.test",)),
    )
    assert removed.aliases_removed == ("news@example.test",)
    assert db.list_aliases() == [AliasInfo("team@example.test", ("x@remote.test",))]
    assert db.aliases_pointing_at("alice@example.test") == []


def test_removing_a_user_keeps_aliases_of_other_users_with_a_similar_name(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    db.add_user("alice2@example.test", "pw")
    db.add_domain("other.test")
    db.add_user("alice@other.test", "pw")
    db.add_alias("team@example.test", ["alice2@example.test", "alice@other.test"])
    db.add_alias("team@example.test", ["alice@example.test"])
    db.remove_user("alice@example.test")
    assert db.list_aliases() == [AliasInfo("team@example.test", ("alice2@example.test", "alice@other.test"))]


def test_a_catch_all_left_pointing_at_a_deleted_user_is_no_user_not_an_alias_loop(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    db.add_alias("@example.test", ["alice@example.test"])
    db.add_alias("bob@example.test", ["alice@example.test"])
    # As an older mailapp left it: the user gone, the aliases still there.
    db._connection.execute("DELETE FROM users")
    problems: list[str] = []
    observer = lambda event: problems.append(event["problem"]) if "problem" in event else None  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        assert db.resolve("alice@example.test") is None
        assert db.resolve("bob@example.test") is None
        assert db.resolve("zed@example.test") is None
    finally:
        globalLogPublisher.removeObserver(observer)
    assert problems == ["alias @example.test points at alice@example.test, which is not a user or alias here"] * 3


@pytest.mark.parametrize("password", ["", "x", "1234567"])
def test_a_new_password_shorter_than_eight_characters_is_refused(password: str) -> None:
    with pytest.raises(AccountError, match="at least 8 characters"):
        check_new_password("alice@example.test", password)


@pytest.mark.parametrize("password", ["Alice@Example.TEST", "ALICEALICE", "alicealice"])
def test_a_new_password_equal_to_the_address_or_local_part_is_refused(password: str) -> None:
    with pytest.raises(AccountError, match="must not be the address or its local part"):
        check_new_password("AliceAlice@example.test" if "@" not in password else "alice@example.test", password)


def test_a_new_password_of_eight_characters_is_accepted() -> None:
    check_new_password("alice@example.test", "alice123")


# --- resolution rules --------------------------------------------------------


def test_remote_address_resolves_to_itself_with_domain_lowercased(db: AccountsDatabase) -> None:
    assert db.resolve("Bob@Remote.TEST") == Resolution(remote=("Bob@remote.test",), local_domain=False)


def test_unknown_local_address_resolves_to_none(db: AccountsDatabase) -> None:
    assert db.resolve("nobody@example.test") is None


def test_garbage_resolves_to_none(db: AccountsDatabase) -> None:
    assert db.resolve("no-at-sign") is None


def test_user_is_found_in_any_case_as_its_canonical_name(db: AccountsDatabase) -> None:
    db.add_user("Alice@example.test", "pw")
    assert db.resolve("aLiCe@EXAMPLE.test") == Resolution(local=("Alice@example.test",))


def test_plus_tag_goes_to_the_user(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    assert db.resolve("Alice+lists@example.test") == Resolution(local=("alice@example.test",))


def test_plus_tag_that_is_itself_a_user_goes_to_that_user(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    db.add_user("alice+work@example.test", "pw")
    assert db.resolve("alice+work@example.test") == Resolution(local=("alice+work@example.test",))


def test_plus_tag_that_is_itself_an_alias_goes_to_the_alias(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    db.add_alias("alice+fwd@example.test", ["x@remote.test"])
    assert db.resolve("alice+fwd@example.test") == Resolution(remote=("x@remote.test",))


def test_plus_tag_of_an_alias_goes_to_the_alias(db: AccountsDatabase) -> None:
    db.add_alias("team@example.test", ["x@remote.test"])
    assert db.resolve("team+urgent@example.test") == Resolution(remote=("x@remote.test",))


def test_user_beats_catch_all(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    db.add_user("bob@example.test", "pw")
    db.add_alias("@example.test", ["bob@example.test"])
    assert db.resolve("alice@example.test") == Resolution(local=("alice@example.test",))


def test_alias_beats_plus_stripping_and_catch_all(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    db.add_alias("@example.test", ["catch@remote.test"])
    db.add_alias("alice+x@example.test", ["alias@remote.test"])
    assert db.resolve("alice+x@example.test") == Resolution(remote=("alias@remote.test",))


def test_plus_stripping_beats_catch_all(db: AccountsDatabase) -> None:
    db.add_user("alice@example.test", "pw")
    db.add_alias("@example.test", ["catch@remote.test"])
    assert db.resolve("alice+x@example.test") == Resolution(local=("alice@example.test",))


def test_catch_all_takes_unknown_addresses_of_its_domain(db: AccountsDatabase) -> None:
    db.add_user("postmaster@example.test", "pw")
    db.add_alias("@Example.test", ["postmaster@example.test"])
    assert db.resolve("anything@example.test") == Resolution(local=("postmaster@example.test",))


def test_user_owns_own_address_tags_and_aliases_but_not_others(db: AccountsDatabase) -> None:
    db.add_user("Alice@example.test", "pw")
    db.add_user("bob@example.test", "pw")
    db.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
    db.add_alias("bobs@example.test", ["bob@example.test"])
    assert db.owns_address("Alice@example.test", "alice@EXAMPLE.test")
    assert db.owns_address("Alice@example.test", "alice+tag@example.test")
    assert db.owns_address("Alice@example.test", "team@example.test")
    assert not db.owns_address("Alice@example.test", "bob@example.test")
    assert not db.owns_address("Alice@example.test", "bobs@example.test")
    assert not db.owns_address("Alice@example.test", "alice@remote.test")
    assert not db.owns_address("Alice@example.test", "nobody@example.test")


class _Directory:
    """A bare AddressDirectory, to test resolve_address on data no checked change could create."""

    def __init__(self, users: list[str], aliases: dict[str, list[str]]) -> None:
        self.users = {user.lower(): user for user in users}
        self.aliases = {source.lower(): tuple(targets) for source, targets in aliases.items()}

    def is_local_domain(self, domain: str) -> bool:
        return domain == DOMAIN

    def find_user(self, address: str) -> str | None:
        return self.users.get(address.lower())

    def find_alias(self, source: str) -> tuple[str, ...] | None:
        return self.aliases.get(source.lower())

    def first_user(self, domain: str) -> str | None:
        return next(iter(self.users.values()), None)


def test_stored_loop_is_skipped_at_delivery_keeping_the_other_targets() -> None:
    directory = _Directory(
        ["alice@example.test"],
        {
            "a@example.test": ["b@example.test", "alice@example.test"],
            "b@example.test": ["a@example.test"],
        },
    )
    assert resolve_address("a@example.test", directory) == Resolution(local=("alice@example.test",))


def test_stored_loop_with_nothing_else_resolves_to_none() -> None:
    directory = _Directory([], {"a@example.test": ["b@example.test"], "b@example.test": ["a@example.test"]})
    assert resolve_address("a@example.test", directory) is None


def test_stored_dangling_target_is_skipped() -> None:
    directory = _Directory([], {"team@example.test": ["gone@example.test", "x@remote.test"]})
    assert resolve_address("team@example.test", directory) == Resolution(remote=("x@remote.test",))


def test_stored_chain_deeper_than_the_limit_is_cut() -> None:
    depth = MAX_ALIAS_DEPTH + 2
    aliases = {f"a{level}@example.test": [f"a{level + 1}@example.test"] for level in range(depth)}
    aliases[f"a{depth}@example.test"] = ["x@remote.test"]
    directory = _Directory([], aliases)
    assert resolve_address("a0@example.test", directory) is None
    assert resolve_address(f"a{depth - MAX_ALIAS_DEPTH + 1}@example.test", directory) == Resolution(
        remote=("x@remote.test",)
    )


def test_strict_resolution_raises_on_a_stored_loop() -> None:
    directory = _Directory([], {"a@example.test": ["b@example.test"], "b@example.test": ["a@example.test"]})
    with pytest.raises(AccountError, match="alias loop"):
        resolve_address("a@example.test", directory, strict=True)


# --- the asynchronous IAccounts ---------------------------------------------


class _RecordingHasher(PasswordHasher):
    """A cheap hasher that records which thread each hash and verify ran in."""

    def __init__(self, **parameters: int) -> None:
        super().__init__(**{"time_cost": 1, "memory_cost": 8, "parallelism": 1, **parameters})
        self.verify_threads: list[str] = []
        self.hash_threads: list[str] = []

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.hash_threads.append(threading.current_thread().name)
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002
        self.verify_threads.append(threading.current_thread().name)
        return super().verify(hash, password)


def _temporary_directory(test: unittest.TestCase) -> Path:
    """
    A fresh directory removed after the test. (trial's C{mktemp} is relative
    to the working directory, which under pytest is the repository.)
    """
    directory = Path(tempfile.mkdtemp(prefix="mailapp-test-"))
    test.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return directory


class AccountsTests(unittest.TestCase):
    """L{Accounts} against a real database file, on real threads (trial runs the reactor)."""

    def setUp(self) -> None:
        self.path = accounts_path(_temporary_directory(self))
        self.admin = AccountsDatabase(self.path, [DOMAIN], hasher=cheap_password_hasher())
        self.addCleanup(self.admin.close)
        self.admin.add_user("Alice@example.test", "secret")
        self.pool = ThreadPool(minthreads=0, maxthreads=2, name="test-accounts-db")
        self.pool.start()
        self.addCleanup(self.pool.stop)

    def makeAccounts(self, hasher: PasswordHasher | None = None) -> Accounts:
        accounts = Accounts(
            self.path, [DOMAIN], reactor=reactor, threadpool=self.pool, hasher=hasher or cheap_password_hasher()
        )
        self.addCleanup(accounts.close)
        return accounts

    def test_accounts_provides_IAccounts(self) -> None:
        self.assertTrue(verifyObject(IAccounts, self.makeAccounts()))

    async def test_correct_password_in_any_case_fires_with_canonical_account(self) -> None:
        account = await self.makeAccounts().authenticate("ALICE@Example.Test", b"secret")
        self.assertEqual(account, "Alice@example.test")

    async def test_wrong_password_fails_with_invalid_credentials(self) -> None:
        with self.assertRaises(UnauthorizedLogin) as raised:
            await self.makeAccounts().authenticate("alice@example.test", b"wrong")
        self.assertEqual(str(raised.exception), "Invalid credentials")

    async def test_unknown_user_fails_like_a_wrong_password(self) -> None:
        hasher = _RecordingHasher()
        with self.assertRaises(UnauthorizedLogin) as raised:
            await self.makeAccounts(hasher).authenticate("nobody@example.test", b"secret")
        self.assertEqual(str(raised.exception), "Invalid credentials")
        self.assertEqual(len(hasher.verify_threads), 1, "an unknown user must cost one verify too")

    async def test_the_unknown_users_hash_is_made_in_the_hashing_pool_when_first_needed(self) -> None:
        # Made at construction it cost every start (and so every worker
        # restart) an argon2id hash on the reactor thread.
        hasher = _RecordingHasher()
        accounts = self.makeAccounts(hasher)
        self.assertEqual(hasher.hash_threads, [], "starting must not hash")
        for _ in range(2):
            with self.assertRaises(UnauthorizedLogin):
                await accounts.authenticate("nobody@example.test", b"secret")
        self.assertEqual(len(hasher.hash_threads), 1, "the hash is made once and kept")
        self.assertIn("mailapp-password-hashing", hasher.hash_threads[0])

    async def test_malformed_username_fails_like_a_wrong_password(self) -> None:
        for username in ["", "alice", "alice@example.test\r\n", "a\x00@example.test", "\udcffalice@example.test"]:
            with self.assertRaises(UnauthorizedLogin):
                await self.makeAccounts().authenticate(username, b"secret")

    async def test_password_is_verified_in_the_hashing_pool(self) -> None:
        hasher = _RecordingHasher()
        await self.makeAccounts(hasher).authenticate("alice@example.test", b"secret")
        self.assertEqual(len(hasher.verify_threads), 1)
        self.assertIn("mailapp-password-hashing", hasher.verify_threads[0])

    async def test_logging_in_again_skips_the_kdf_but_a_wrong_password_never_does(self) -> None:
        hasher = _RecordingHasher()
        accounts = self.makeAccounts(hasher)
        await accounts.authenticate("alice@example.test", b"secret")
        await accounts.authenticate("ALICE@example.test", b"secret")
        self.assertEqual(len(hasher.verify_threads), 1, "the second login should come from the verified-password cache")
        with self.assertRaises(UnauthorizedLogin):
            await accounts.authenticate("alice@example.test", b"wrong")
        self.assertEqual(len(hasher.verify_threads), 2, "a wrong password must always pay the KDF")

    async def test_a_password_change_takes_effect_at_once_despite_the_cache(self) -> None:
        accounts = self.makeAccounts()
        await accounts.authenticate("alice@example.test", b"secret")
        self.admin.set_password("alice@example.test", "new-secret")
        with self.assertRaises(UnauthorizedLogin):
            await accounts.authenticate("alice@example.test", b"secret")
        self.assertEqual(await accounts.authenticate("alice@example.test", b"new-secret"), "Alice@example.test")

    async def test_login_upgrades_a_hash_made_with_older_parameters(self) -> None:
        stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
        accounts = self.makeAccounts(stronger)
        old_hash = self.admin.lookup_password_hash("alice@example.test")[1]  # type: ignore[index]
        self.assertTrue(stronger.check_needs_rehash(old_hash))
        self.assertEqual(await accounts.authenticate("alice@example.test", b"secret"), "Alice@example.test")
        new_hash = self.admin.lookup_password_hash("alice@example.test")[1]  # type: ignore[index]
        self.assertNotEqual(new_hash, old_hash)
        self.assertFalse(stronger.check_needs_rehash(new_hash))
        self.assertEqual(await accounts.authenticate("alice@example.test", b"secret"), "Alice@example.test")

    async def test_failed_login_does_not_touch_the_hash(self) -> None:
        accounts = self.makeAccounts(PasswordHasher(time_cost=2, memory_cost=16, parallelism=1))
        old_hash = self.admin.lookup_password_hash("alice@example.test")
        with self.assertRaises(UnauthorizedLogin):
            await accounts.authenticate("alice@example.test", b"wrong")
        self.assertEqual(self.admin.lookup_password_hash("alice@example.test"), old_hash)

    async def test_current_hash_is_not_rewritten(self) -> None:
        accounts = self.makeAccounts()
        old_hash = self.admin.lookup_password_hash("alice@example.test")
        await accounts.authenticate("alice@example.test", b"secret")
        self.assertEqual(self.admin.lookup_password_hash("alice@example.test"), old_hash)

    async def test_changes_by_the_admin_command_are_seen_at_the_next_call(self) -> None:
        accounts = self.makeAccounts()
        self.assertIsNone(await accounts.resolve("bob@example.test"))
        self.assertFalse(await accounts.isLocalDomain("other.test"))
        self.admin.add_user("bob@example.test", "pw")
        self.admin.add_domain("other.test")
        self.assertEqual(await accounts.resolve("bob@example.test"), Resolution(local=("bob@example.test",)))
        self.assertTrue(await accounts.isLocalDomain("OTHER.test"))
        self.assertEqual(await accounts.countUsers(), 2)
        self.admin.set_password("alice@example.test", "changed")
        with self.assertRaises(UnauthorizedLogin):
            await accounts.authenticate("alice@example.test", b"secret")
        self.assertEqual(await accounts.authenticate("alice@example.test", b"changed"), "Alice@example.test")

    async def test_resolve_and_owns_address_follow_the_database_rules(self) -> None:
        self.admin.add_alias("team@example.test", ["alice@example.test", "x@remote.test"])
        accounts = self.makeAccounts()
        self.assertEqual(
            await accounts.resolve("team@example.test"),
            Resolution(local=("Alice@example.test",), remote=("x@remote.test",)),
        )
        self.assertTrue(await accounts.ownsAddress("Alice@example.test", "alice+x@example.test"))
        self.assertTrue(await accounts.ownsAddress("Alice@example.test", "team@example.test"))
        self.assertFalse(await accounts.ownsAddress("Alice@example.test", "x@remote.test"))

    def test_close_stops_the_hashing_threads_and_is_idempotent(self) -> None:
        accounts = self.makeAccounts()
        d = accounts.authenticate("alice@example.test", b"secret")

        def closeAndCheck(_: object) -> None:
            accounts.close()
            accounts.close()
            alive = [thread.name for thread in threading.enumerate() if "mailapp-password-hashing" in thread.name]
            self.assertEqual(alive, [])

        return d.addCallback(closeAndCheck)

    def test_closed_accounts_refuse_calls(self) -> None:
        accounts = self.makeAccounts()
        accounts.close()
        return self.assertFailure(accounts.countUsers(), RuntimeError)


# --- FakeAccounts ------------------------------------------------------------


def _fake() -> FakeAccounts:
    accounts = FakeAccounts(domains=["Example.TEST"])
    accounts.add_user("Alice@example.test", "secret")
    return accounts


def _result(deferred: object) -> object:
    results: list[object] = []
    deferred.addBoth(results.append)  # type: ignore[attr-defined]
    assert results, "FakeAccounts must return already-fired Deferreds"
    return results[0]


def test_fake_accounts_provides_IAccounts() -> None:
    assert verifyObject(IAccounts, _fake())


def test_fake_accounts_authenticates_in_any_case() -> None:
    assert _result(_fake().authenticate("alice@EXAMPLE.test", b"secret")) == "Alice@example.test"


def test_fake_accounts_refuses_wrong_password_and_unknown_user_alike() -> None:
    accounts = _fake()
    for username, password in [("alice@example.test", b"wrong"), ("nobody@example.test", b"secret")]:
        failure = _result(accounts.authenticate(username, password))
        assert failure.check(UnauthorizedLogin)  # type: ignore[attr-defined]
        assert str(failure.value) == "Invalid credentials"  # type: ignore[attr-defined]
    assert accounts.attempts == [("alice@example.test", b"wrong"), ("nobody@example.test", b"secret")]


def test_fake_accounts_resolves_with_the_database_rules() -> None:
    accounts = _fake()
    accounts.add_alias("team@example.test", ["alice@example.test", "x@remote.test"])
    accounts.add_alias("@example.test", ["postmaster@remote.test"])
    assert _result(accounts.resolve("alice+tag@example.test")) == Resolution(local=("Alice@example.test",))
    assert _result(accounts.resolve("TEAM@example.test")) == Resolution(
        local=("Alice@example.test",), remote=("x@remote.test",)
    )
    assert _result(accounts.resolve("whoever@example.test")) == Resolution(remote=("postmaster@remote.test",))
    assert _result(accounts.resolve("bob@remote.test")) == Resolution(remote=("bob@remote.test",), local_domain=False)
    assert _result(accounts.isLocalDomain("example.TEST")) is True
    assert _result(accounts.ownsAddress("Alice@example.test", "team@example.test")) is True
    assert _result(accounts.countUsers()) == 1


def test_fake_accounts_refuses_an_alias_loop_and_keeps_the_old_targets() -> None:
    accounts = _fake()
    accounts.add_alias("a@example.test", ["alice@example.test"])
    accounts.add_alias("b@example.test", ["a@example.test"])
    with pytest.raises(AccountError, match="alias loop"):
        accounts.add_alias("a@example.test", ["b@example.test"])
    assert accounts.find_alias("a@example.test") == ("alice@example.test",)


def test_fake_accounts_refuses_a_duplicate_user() -> None:
    with pytest.raises(AccountError, match="exists already"):
        _fake().add_user("ALICE@example.test", "x")


def test_opening_an_existing_database_keeps_other_connections_locks(tmp_path):
    """
    Closing any descriptor of a file drops the process's POSIX locks on it; a
    second open of the database must not touch the file, or the server's
    connections lose their SQLite locks and another process can checkpoint
    away a WAL still in use.
    """
    import fcntl
    import os

    from mailapp.accounts import AccountsDatabase
    from mailapp.testing import cheap_password_hasher

    path = tmp_path / "accounts.sqlite3"
    first = AccountsDatabase(path, ["example.test"], hasher=cheap_password_hasher())
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 1000)
        second = AccountsDatabase(path, ["example.test"], hasher=cheap_password_hasher())
        second.close()
        probe = os.fork()
        if probe == 0:  # pragma: no cover - child: is the lock still held?
            child = os.open(path, os.O_RDWR)
            try:
                fcntl.lockf(child, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1000)
                os._exit(1)
            except OSError:
                os._exit(0)
        _, status = os.waitpid(probe, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "our lock was dropped by the second open"
    finally:
        os.close(fd)
        first.close()


def test_a_second_login_with_the_same_password_skips_the_kdf_and_a_change_invalidates_it(tmp_path):
    from twisted.internet import task

    from mailapp.accounts import VerifiedPasswords

    clock = task.Clock()
    cache = VerifiedPasswords(clock.seconds, ttl=300)
    cache.remember("alice@example.test", "$argon2id$hash-1", b"secret")
    assert cache.check("alice@example.test", "$argon2id$hash-1", b"secret")
    assert not cache.check("alice@example.test", "$argon2id$hash-1", b"wrong")
    # A password change (a new stored hash) invalidates the entry at once.
    assert not cache.check("alice@example.test", "$argon2id$hash-2", b"secret")
    assert not cache.check("alice@example.test", "$argon2id$hash-1", b"secret")
    cache.remember("bob@example.test", "h", b"pw")
    clock.advance(301)
    assert not cache.check("bob@example.test", "h", b"pw")


def test_the_cache_never_holds_a_password_in_clear():
    from mailapp.accounts import VerifiedPasswords

    cache = VerifiedPasswords(lambda: 0.0, ttl=300)
    cache.remember("alice@example.test", "h", b"correct horse battery staple")
    assert b"correct horse" not in repr(cache._entries).encode()


def test_a_zero_ttl_turns_the_cache_off():
    from mailapp.accounts import VerifiedPasswords

    cache = VerifiedPasswords(lambda: 0.0, ttl=0)
    cache.remember("alice@example.test", "h", b"pw")
    assert not cache.check("alice@example.test", "h", b"pw")


def test_postmaster_without_its_own_alias_reaches_the_domains_first_user(tmp_path) -> None:
    from mailapp.accounts import AccountsDatabase
    from mailapp.testing import cheap_password_hasher

    with AccountsDatabase(tmp_path / "a.sqlite3", ("example.test", "other.test"), hasher=cheap_password_hasher()) as database:
        assert database.resolve("postmaster@example.test") is None  # nobody at all yet
        database.add_user("carol@other.test", "carol-password-1")
        database.add_user("alice@example.test", "alice-password-1")
        database.add_user("bob@example.test", "bob-password-1")
        assert database.resolve("postmaster@example.test").local == ("alice@example.test",)
        assert database.resolve("POSTMASTER@other.test").local == ("carol@other.test",)
        database.add_alias("postmaster@example.test", ["bob@example.test"])
        assert database.resolve("postmaster@example.test").local == ("bob@example.test",)
        assert database.resolve("nobody@example.test") is None
