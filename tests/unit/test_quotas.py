"""
Mailbox quotas without sockets: the rule (mailapp.quota.refusal), SMTP on a
StringTransport over a real Maildir store, the accounts schema and the
admin command.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.trial.unittest import TestCase

from mailapp import accounts as accounts_module
from mailapp.accounts import AccountsDatabase, QuotaOverride, accounts_path
from mailapp.config import parse
from mailapp.errors import MailboxFull, MailboxWouldOverflow
from mailapp.quota import Quota, Quotas, refusal
from mailapp.store.records import Usage
from mailapp.testing import cheap_password_hasher
from tests.smtp_helpers import make_factory, stored_messages, wait_for
from tests.e2e.test_cli import config, mailapp  # noqa: F401  (fixtures)
from tests.protocol.smtp_client import Session

ALICE = "alice@example.test"


def test_a_mailbox_at_its_byte_quota_is_full():
    assert isinstance(refusal(Quota(bytes=1000), Usage(3, 1000), 0), MailboxFull)


def test_a_message_that_does_not_fit_in_the_room_left_is_temporary():
    refused = refusal(Quota(bytes=1000), Usage(3, 900), 200)
    assert isinstance(refused, MailboxWouldOverflow) and refused.reply() == (
        b"452 4.2.2 Mailbox full: not enough room for this message; try again later"
    )


def test_a_message_larger_than_the_whole_quota_is_permanent():
    assert refusal(Quota(bytes=1000), Usage(0, 0), 1001).reply() == b"552 5.2.2 Mailbox full"


def test_the_message_count_quota_refuses_the_message_past_it():
    assert isinstance(refusal(Quota(messages=2), Usage(2, 10), 5), MailboxFull)
    assert refusal(Quota(messages=2), Usage(1, 10), 5) is None


def test_zero_is_unlimited():
    assert refusal(Quota(0, 0), Usage(10**6, 10**12), 10**9) is None


def test_quota_defaults_are_5_gib_and_unlimited_messages_and_0_is_accepted():
    base = '[server]\nhostname = "mail.example.test"\n'
    limits = parse(base, Path("x.toml")).limits
    assert (limits.mailbox_quota_bytes, limits.mailbox_quota_messages) == (5 * 1024**3, 0)
    zero = parse(base + "[limits]\nmailbox_quota_bytes = 0\n", Path("x.toml")).limits
    assert zero.mailbox_quota_bytes == 0


def test_mx_rate_defaults_are_60_messages_and_200_mib_a_minute_and_0_turns_them_off():
    base = '[server]\nhostname = "mail.example.test"\n'
    limits = parse(base, Path("x.toml")).limits
    assert (limits.mx_messages_per_minute, limits.mx_bytes_per_minute) == (60, 200 * 1024**2)
    zero = parse(base + "[limits]\nmx_messages_per_minute = 0\n", Path("x.toml")).limits
    assert zero.mx_messages_per_minute == 0


# -- the accounts database ----------------------------------------------------------------


def test_a_version_1_accounts_database_is_migrated_keeping_its_users(tmp_path: Path):
    path = accounts_path(tmp_path)
    connection = sqlite3.connect(path)
    connection.executescript(
        """
        CREATE TABLE domains (name TEXT PRIMARY KEY NOT NULL);
        CREATE TABLE users (key TEXT PRIMARY KEY NOT NULL, address TEXT NOT NULL, domain TEXT NOT NULL,
            password_hash TEXT NOT NULL, created INTEGER NOT NULL DEFAULT (strftime('%s', 'now')));
        CREATE TABLE aliases (source_key TEXT NOT NULL, source TEXT NOT NULL, domain TEXT NOT NULL,
            target_key TEXT NOT NULL, target TEXT NOT NULL, position INTEGER NOT NULL, PRIMARY KEY (source_key, target_key));
        INSERT INTO users (key, address, domain, password_hash) VALUES ('alice@example.test', 'alice@example.test', 'example.test', 'x');
        PRAGMA user_version = 1;
        """
    )
    connection.close()
    with AccountsDatabase(path, ["example.test"], hasher=cheap_password_hasher()) as database:
        assert database.quota_override(ALICE) == QuotaOverride(None, None)
        database.set_quota(ALICE, QuotaOverride(1000, 0))
        assert database.quota_override(ALICE) == QuotaOverride(1000, 0)
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == accounts_module.SCHEMA_VERSION
    check.close()


def test_set_quota_refuses_a_negative_value_and_an_unknown_user(tmp_path: Path):
    with AccountsDatabase(accounts_path(tmp_path), ["example.test"], hasher=cheap_password_hasher()) as database:
        database.add_user(ALICE, "password-1")
        with pytest.raises(accounts_module.AccountError):
            database.set_quota(ALICE, QuotaOverride(-1, None))
        with pytest.raises(accounts_module.AccountError, match="no such user"):
            database.set_quota("nobody@example.test", QuotaOverride(1, None))


# -- the admin command ----------------------------------------------------------------------


def test_user_quota_sets_shows_and_resets_a_users_quota(mailapp):  # noqa: F811
    assert mailapp("user", "add", ALICE, stdin="alice-password\n").status == 0
    result = mailapp("user", "quota", ALICE, "--bytes", "2048", "--messages", "10", "--json")
    assert result.status == 0, result.err
    shown = json.loads(result.out)
    assert (shown["quota_bytes"], shown["quota_messages"], shown["used_bytes"]) == (2048, 10, 0)
    result = mailapp("user", "quota", ALICE, "--bytes", "default")
    assert result.out.strip() == (
        f"set the quota of {ALICE}\n{ALICE}: bytes 0 of 5368709120 (the config's default), messages 0 of 10"
    )


def test_user_quota_of_an_unknown_user_is_refused(mailapp):  # noqa: F811
    result = mailapp("user", "quota", "nobody@example.test", "--bytes", "1")
    assert result.status == 1 and "no such user" in result.err


# -- Quotas.check: what it reads ------------------------------------------------------------


class _Reads:
    """Accounts and a store that record what a check asks for, and answer from a dict (or fail)."""

    def __init__(self, override: QuotaOverride | None, usage: Usage | Exception) -> None:
        self.override = override
        self.answer = usage
        self.asked: list[str] = []

    def quotaOverride(self, account: str) -> Any:
        self.asked.append("override")
        return succeed(self.override)

    def mailbox(self, account: str) -> Any:
        return self

    def usage(self) -> Any:
        self.asked.append("usage")
        return fail(self.answer) if isinstance(self.answer, Exception) else succeed(self.answer)


def _check(reads: _Reads, default: Quota, size: int) -> Any:
    results: list[Any] = []
    Quotas(reads, reads, default).check(ALICE, size).addBoth(results.append)
    [result] = results
    return result


def test_with_an_unlimited_default_a_mailbox_its_override_leaves_unlimited_is_not_read():
    reads = _Reads(QuotaOverride(), Usage(10, 10**9))
    assert _check(reads, Quota(0, 0), 4096) is None
    assert reads.asked == ["override"]


def test_with_a_default_limit_the_usage_is_read_with_the_override_and_counted():
    reads = _Reads(QuotaOverride(bytes=None, messages=None), Usage(1, 9000))
    assert isinstance(_check(reads, Quota(10000, 0), 4096), MailboxWouldOverflow)
    assert sorted(reads.asked) == ["override", "usage"]


def test_an_override_that_lifts_the_limit_drops_the_usage_read_and_its_failure():
    reads = _Reads(QuotaOverride(bytes=0, messages=0), OSError("index unreadable"))
    assert _check(reads, Quota(10000, 0), 4096) is None
    assert sorted(reads.asked) == ["override", "usage"]


# -- SMTP ---------------------------------------------------------------------------------


class SMTPQuotaTests(TestCase):
    """A small quota for alice; bob has none of his own (the default is unlimited here)."""

    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.factory = make_factory(self.root)
        router = self.factory.router
        router.quotas = Quotas(router.accounts, router.store, Quota(0, 0))
        router.accounts.set_quota(ALICE, QuotaOverride(bytes=3000, messages=None))
        self.session = Session(self.factory)
        self.session.send(b"EHLO c.test\r\n")

    def tearDown(self) -> None:
        self.session.proto.connectionLost(None)

    @inlineCallbacks
    def command(self, line: bytes) -> Any:
        """Send one line; fire with its reply once it came."""
        self.session.clear()
        self.session.send(line + b"\r\n")
        yield wait_for(lambda: self.session.codes())
        return self.session.replies()[-1]

    @inlineCallbacks
    def send(self, rcpts: list[bytes], body: bytes = b"x" * 1000, mail: bytes = b"MAIL FROM:<s@remote.test>") -> Any:
        """One transaction; fire with every reply in order (RSET after, not included)."""
        replies = [(yield self.command(mail))]
        for rcpt in rcpts:
            replies.append((yield self.command(b"RCPT TO:<" + rcpt + b">")))
        data = yield self.command(b"DATA")
        replies.append(data)
        if data.startswith(b"354"):
            replies.append((yield self.command(b"Subject: q\r\n\r\n" + body + b"\r\n.")))
        yield self.command(b"RSET")
        return replies

    @inlineCallbacks
    def test_rcpt_to_a_mailbox_at_or_over_its_quota_gets_552_5_2_2(self):
        self.assertTrue((yield self.send([b"alice@example.test"], b"y" * 2600))[-1].startswith(b"250 2.0.0 Ok"))
        self.factory.router.accounts.set_quota(ALICE, QuotaOverride(bytes=2000, messages=None))
        replies = yield self.send([b"alice@example.test"])
        self.assertEqual(replies[1], b"552 5.2.2 Mailbox full")

    @inlineCallbacks
    def test_rcpt_with_a_size_that_does_not_fit_gets_452_4_2_2(self):
        self.assertTrue((yield self.send([b"alice@example.test"]))[-1].startswith(b"250 2.0.0 Ok"))
        replies = yield self.send([b"alice@example.test"], mail=b"MAIL FROM:<s@remote.test> SIZE=2500")
        self.assertEqual(replies[1], b"452 4.2.2 Mailbox full: not enough room for this message; try again later")
        replies = yield self.send([b"alice@example.test"], mail=b"MAIL FROM:<s@remote.test> SIZE=1500")
        self.assertEqual(replies[1], b"250 2.1.5 Ok")

    @inlineCallbacks
    def test_a_message_that_does_not_fit_is_refused_after_data_with_452_and_not_stored(self):
        replies = yield self.send([b"alice@example.test"], b"z" * 3500)
        self.assertEqual(replies[-1], b"552 5.2.2 Mailbox full")  # larger than the whole quota
        yield self.send([b"alice@example.test"], b"z" * 1500)
        replies = yield self.send([b"alice@example.test"], b"z" * 1500)
        self.assertEqual(replies[-1], b"452 4.2.2 Mailbox full: not enough room for this message; try again later")
        self.assertEqual(len(stored_messages(self.root, ALICE)), 1)

    @inlineCallbacks
    def test_a_message_for_a_full_and_a_roomy_mailbox_goes_to_both(self):
        yield self.send([b"alice@example.test"], b"y" * 2600)
        replies = yield self.send([b"team@example.test"], b"w" * 1500)  # alice and bob
        self.assertTrue(replies[-1].startswith(b"250 2.0.0 Ok"), replies)
        self.assertEqual(len(stored_messages(self.root, "bob@example.test")), 1)

    @inlineCallbacks
    def test_a_quota_change_applies_to_the_next_message(self):
        yield self.send([b"alice@example.test"], b"y" * 2600)
        self.factory.router.accounts.set_quota(ALICE, QuotaOverride(bytes=0, messages=None))
        self.assertTrue((yield self.send([b"alice@example.test"]))[-1].startswith(b"250 2.0.0 Ok"))

    @inlineCallbacks
    def test_a_message_reads_its_mailboxs_quota_once_and_the_next_message_again(self):
        counted = self.factory.router.quotas.accounts = _CountedOverrides(self.factory.router.accounts)
        self.assertTrue((yield self.send([b"alice@example.test"], b"y" * 1500))[-1].startswith(b"250 2.0.0 Ok"))
        self.assertEqual(counted.reads, 1)  # RCPT and the end of the data: one read
        self.factory.router.accounts.set_quota(ALICE, QuotaOverride(bytes=2000, messages=None))
        replies = yield self.send([b"alice@example.test"], b"y" * 1000)
        self.assertEqual(replies[-1], b"452 4.2.2 Mailbox full: not enough room for this message; try again later")
        self.assertEqual(counted.reads, 2)


# -- one transaction's quotas -------------------------------------------------------------


def test_a_quota_a_transaction_has_read_is_not_read_again_but_the_usage_is():
    reads = _Reads(QuotaOverride(bytes=10000, messages=None), Usage(1, 1000))
    known: dict[str, Quota] = {}
    quotas = Quotas(reads, reads, Quota(0, 0))
    results: list[Any] = []
    quotas.check(ALICE, 0, known=known).addBoth(results.append)
    reads.answer = Usage(2, 9000)
    quotas.check(ALICE, 4096, known=known).addBoth(results.append)
    assert results[0] is None and isinstance(results[1], MailboxWouldOverflow)
    assert reads.asked == ["override", "usage", "usage"]
    assert known == {ALICE: Quota(10000, 0)}


def test_a_quota_the_transaction_read_as_unlimited_reads_no_usage_at_the_second_check():
    reads = _Reads(QuotaOverride(bytes=0, messages=0), Usage(1, 10**9))
    known: dict[str, Quota] = {}
    quotas = Quotas(reads, reads, Quota(10000, 0))
    for size in (0, 4096):
        results: list[Any] = []
        quotas.check(ALICE, size, known=known).addBoth(results.append)
        assert results == [None]
    assert reads.asked == ["usage", "override"]


class _CountedOverrides:
    """Wraps the accounts of a factory: counts quotaOverride reads."""

    def __init__(self, accounts: Any) -> None:
        self.accounts = accounts
        self.reads = 0

    def quotaOverride(self, account: str) -> Any:
        self.reads += 1
        return self.accounts.quotaOverride(account)
