"""
Tests for mailapp.auth: the credentials checker, the realm, and the portal
that every protocol logs in through.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from mailapp import auth
from mailapp.accounts import Accounts, AccountsDatabase, accounts_path, default_password_hasher
from mailapp.auth import AccountsChecker, MailRealm, makePortal
from mailapp.interfaces import IMailbox
from mailapp.testing import FakeAccounts, cheap_password_hasher


@implementer(IMailbox)
class _Mailbox:
    def __init__(self, account: str) -> None:
        self.account = account


class _Store:
    """Just enough of IMessageStore for the realm: mailbox(account)."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def mailbox(self, account: str) -> _Mailbox:
        self.opened.append(account)
        return _Mailbox(account)


class IOtherAvatar(Interface):
    """A protocol's avatar interface, registered from outside the realm."""


class IUnknownAvatar(Interface):
    """An interface nobody has a factory for."""


def _accounts() -> FakeAccounts:
    accounts = FakeAccounts(domains=["example.test"])
    accounts.add_user("Alice@example.test", "secret")
    return accounts


def _outcome(deferred: Deferred[Any]) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "expected an already-fired Deferred"
    return results[0]


class CheckerTests(unittest.SynchronousTestCase):
    def test_checker_provides_ICredentialsChecker_for_username_password(self) -> None:
        checker = AccountsChecker(_accounts())
        self.assertTrue(verifyObject(ICredentialsChecker, checker))
        self.assertEqual(len(checker.credentialInterfaces), 1)

    def test_bytes_credentials_fire_with_the_canonical_account(self) -> None:
        checker = AccountsChecker(_accounts())
        result = self.successResultOf(checker.requestAvatarId(UsernamePassword(b"ALICE@example.test", b"secret")))
        self.assertEqual(result, "Alice@example.test")

    def test_text_credentials_are_passed_on_as_text_name_and_utf8_password(self) -> None:
        accounts = _accounts()
        accounts.add_user("jürgen@example.test", "pässword")
        checker = AccountsChecker(accounts)
        result = self.successResultOf(checker.requestAvatarId(UsernamePassword("Jürgen@example.test", "pässword")))
        self.assertEqual(result, "jürgen@example.test")
        self.assertEqual(accounts.attempts[-1], ("Jürgen@example.test", "pässword".encode()))

    def test_wrong_password_fails_with_unauthorized_login(self) -> None:
        checker = AccountsChecker(_accounts())
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"nope")), UnauthorizedLogin)

    def test_username_that_is_not_utf8_fails_like_any_unknown_user(self) -> None:
        accounts = _accounts()
        checker = AccountsChecker(accounts)
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"\xffalice@example.test", b"secret")), UnauthorizedLogin)
        self.assertEqual(accounts.attempts[-1][0], "\ufffdalice@example.test")

    def test_failed_login_is_not_logged_by_the_checker(self) -> None:
        # The protocol's AbuseGuard logs each failure once, with the client address.
        events: list[dict[str, Any]] = []
        self.patch(auth, "log", Logger(observer=events.append))
        checker = AccountsChecker(_accounts())
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"nope")))
        self.assertEqual(events, [])


class RealmTests(unittest.SynchronousTestCase):
    def test_realm_provides_IRealm(self) -> None:
        self.assertTrue(verifyObject(IRealm, MailRealm(_Store())))

    def test_mailbox_avatar_comes_from_the_store(self) -> None:
        store = _Store()
        interface, avatar, logout = MailRealm(store).requestAvatar("Alice@example.test", None, IMailbox)
        self.assertIs(interface, IMailbox)
        self.assertEqual(avatar.account, "Alice@example.test")
        self.assertEqual(store.opened, ["Alice@example.test"])
        self.assertIsNone(logout())

    def test_bytes_avatar_id_is_decoded(self) -> None:
        _, avatar, _ = MailRealm(_Store()).requestAvatar(b"alice@example.test", None, IMailbox)
        self.assertEqual(avatar.account, "alice@example.test")

    def test_first_requested_interface_with_a_factory_wins(self) -> None:
        realm = MailRealm(_Store(), {IOtherAvatar: lambda account, store: ("other", account)})
        interface, avatar, _ = realm.requestAvatar("a@example.test", None, IUnknownAvatar, IOtherAvatar, IMailbox)
        self.assertIs(interface, IOtherAvatar)
        self.assertEqual(avatar, ("other", "a@example.test"))

    def test_registered_factory_is_used_and_its_logout_called(self) -> None:
        logged_out: list[str] = []

        class Session:
            def __init__(self, account: str) -> None:
                self.account = account

            def logout(self) -> None:
                logged_out.append(self.account)

        realm = MailRealm(_Store())
        realm.registerAvatarFactory(IOtherAvatar, lambda account, store: Session(account))
        _, avatar, logout = realm.requestAvatar("a@example.test", None, IOtherAvatar)
        logout()
        self.assertEqual(logged_out, ["a@example.test"])

    def test_factory_may_return_a_deferred(self) -> None:
        realm = MailRealm(_Store(), {IOtherAvatar: lambda account, store: succeed(account.upper())})
        interface, avatar, _ = self.successResultOf(realm.requestAvatar("a@example.test", None, IOtherAvatar))
        self.assertEqual((interface, avatar), (IOtherAvatar, "A@EXAMPLE.TEST"))

    def test_unknown_interface_raises_not_implemented(self) -> None:
        with self.assertRaises(NotImplementedError):
            MailRealm(_Store()).requestAvatar("a@example.test", None, IUnknownAvatar)

    def test_realm_module_imports_no_protocol(self) -> None:
        source = Path(auth.__file__).read_text()
        for protocol in ("pop3", "imap", "smtp", "mailapp.web"):
            self.assertNotIn(f"import {protocol}", source)
            self.assertNotIn(f"mailapp.{protocol}", source)


class PortalWithFakeAccountsTests(unittest.SynchronousTestCase):
    def test_good_password_yields_the_mailbox_avatar(self) -> None:
        portal = makePortal(_accounts(), _Store())
        interface, avatar, _ = self.successResultOf(
            portal.login(UsernamePassword(b"alice@example.test", b"secret"), None, IMailbox)
        )
        self.assertIs(interface, IMailbox)
        self.assertEqual(avatar.account, "Alice@example.test")

    def test_wrong_password_and_unknown_user_fail_alike(self) -> None:
        portal = makePortal(_accounts(), _Store())
        for username, password in [(b"alice@example.test", b"bad"), (b"nobody@example.test", b"secret")]:
            failure = self.failureResultOf(
                portal.login(UsernamePassword(username, password), None, IMailbox), UnauthorizedLogin
            )
            self.assertEqual(str(failure.value), "Invalid credentials")

    def test_extra_avatar_factories_are_handed_to_the_realm(self) -> None:
        portal = makePortal(_accounts(), _Store(), {IOtherAvatar: lambda account, store: f"pop3:{account}"})
        _, avatar, _ = self.successResultOf(
            portal.login(UsernamePassword(b"alice@example.test", b"secret"), None, IOtherAvatar)
        )
        self.assertEqual(avatar, "pop3:Alice@example.test")


def _temporary_directory(test: unittest.TestCase) -> Path:
    """
    A fresh directory removed after the test. (trial's C{mktemp} is relative
    to the working directory, which under pytest is the repository.)
    """
    directory = Path(tempfile.mkdtemp(prefix="mailapp-test-"))
    test.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return directory


class PortalWithRealAccountsTests(unittest.TestCase):
    """The portal over the real database and argon2, on real threads."""

    def makePortal(self, hasher: Any) -> Any:
        path = accounts_path(_temporary_directory(self))
        with AccountsDatabase(path, ["example.test"], hasher=hasher) as database:
            database.add_user("Alice@example.test", "secret")
        pool = ThreadPool(minthreads=0, maxthreads=2, name="test-auth-db")
        pool.start()
        self.addCleanup(pool.stop)
        accounts = Accounts(path, ["example.test"], reactor=reactor, threadpool=pool, hasher=hasher)
        self.addCleanup(accounts.close)
        return makePortal(accounts, _Store())

    async def test_password_that_authenticates_yields_the_mailbox_avatar(self) -> None:
        portal = self.makePortal(cheap_password_hasher())
        interface, avatar, _ = await portal.login(UsernamePassword(b"alice@EXAMPLE.test", b"secret"), None, IMailbox)
        self.assertIs(interface, IMailbox)
        self.assertEqual(avatar.account, "Alice@example.test")

    async def test_wrong_password_and_unknown_user_both_fail_unauthorized(self) -> None:
        portal = self.makePortal(cheap_password_hasher())
        for username, password in [(b"alice@example.test", b"bad"), (b"nobody@example.test", b"secret")]:
            with self.assertRaises(UnauthorizedLogin):
                await portal.login(UsernamePassword(username, password), None, IMailbox)

    async def test_unknown_user_and_wrong_password_take_about_the_same_time(self) -> None:
        # Real argon2 parameters: with the cheap ones every path is ~0.1 ms
        # and the comparison would measure noise. Without the dummy hash an
        # unknown user would fail ~100x faster; a 3x band allows for a busy
        # machine while still catching that.
        portal = self.makePortal(default_password_hasher())
        timings: dict[bytes, list[float]] = {b"alice@example.test": [], b"nobody@example.test": []}
        for _ in range(5):
            for username, samples in timings.items():
                started = time.perf_counter()
                with self.assertRaises(UnauthorizedLogin):
                    await portal.login(UsernamePassword(username, b"wrong"), None, IMailbox)
                samples.append(time.perf_counter() - started)
        wrong_password = statistics.median(timings[b"alice@example.test"])
        unknown_user = statistics.median(timings[b"nobody@example.test"])
        ratio = unknown_user / wrong_password
        self.assertTrue(1 / 3 < ratio < 3, f"unknown user {unknown_user:.4f}s vs wrong password {wrong_password:.4f}s")

    test_unknown_user_and_wrong_password_take_about_the_same_time.timeout = 60  # type: ignore[attr-defined]
