"""A login storm is shed with a temporary error once the password-hashing queue is full, not queued without bound."""

from __future__ import annotations

import time
from pathlib import Path

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.accounts import Accounts, AccountsDatabase
from mailapp.errors import LoginsBusy
from mailapp.testing import cheap_password_hasher


class LoginStormTests(TestCase):
    def accounts(self, hash_threads: int) -> Accounts:
        """alice's accounts, cheap hashes, no login cache, at most 3 checks waiting for C{hash_threads} threads."""
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        hasher = cheap_password_hasher()
        database = AccountsDatabase(path, ["example.test"], hasher=hasher)
        database.add_user("alice@example.test", "alice-secret")
        database.close()
        accounts = Accounts(
            path, ["example.test"], reactor, hasher=hasher, hash_threads=hash_threads, max_queued_verifications=3, auth_cache_seconds=0
        )
        self.addCleanup(accounts.close)
        return accounts

    @inlineCallbacks
    def test_logins_past_the_hashing_queue_bound_fail_at_once_with_logins_busy_and_the_queue_stays_bounded(self):
        accounts = self.accounts(hash_threads=1)
        slow_verify = accounts._verify
        peak = []

        def verify(*args):  # type: ignore[no-untyped-def]
            peak.append(accounts.verifications)
            time.sleep(0.05)
            return slow_verify(*args)

        accounts._verify = verify  # type: ignore[method-assign]
        started = time.monotonic()
        # A guessing storm: every attempt a different password, so none can share a check.
        attempts = [accounts.authenticate("alice@example.test", b"guess-%d" % n) for n in range(20)]
        results = yield DeferredList(attempts, consumeErrors=True)
        busy = [r for ok, r in results if not ok and r.check(LoginsBusy)]
        refused = [r for ok, r in results if not ok and r.check(UnauthorizedLogin)]

        self.assertEqual((len(refused), len(busy)), (3, 17))
        self.assertLessEqual(max(peak), 3)
        self.assertEqual(accounts.verifications, 0)
        self.assertLess(time.monotonic() - started, 2)
        # Once the storm has passed, logins work again; a wrong password is still a plain failure.
        yield accounts.authenticate("alice@example.test", b"alice-secret")
        with self.assertRaises(UnauthorizedLogin):
            yield accounts.authenticate("alice@example.test", b"wrong-password")

    @inlineCallbacks
    def test_a_burst_of_logins_with_one_password_waits_for_one_check_instead_of_paying_for_each(self):
        accounts = self.accounts(hash_threads=2)
        slow_verify = accounts._verify
        checks = []

        def verify(*args):  # type: ignore[no-untyped-def]
            checks.append(args[0])
            time.sleep(0.05)
            return slow_verify(*args)

        accounts._verify = verify  # type: ignore[method-assign]
        good = [accounts.authenticate("alice@example.test", b"alice-secret") for _ in range(20)]
        wrong = [accounts.authenticate("alice@example.test", b"the-same-wrong-guess") for _ in range(10)]
        results = yield DeferredList(good + wrong, consumeErrors=True)

        self.assertEqual([r for ok, r in results[:20]], ["alice@example.test"] * 20)
        self.assertTrue(all(not ok and r.check(UnauthorizedLogin) for ok, r in results[20:]))
        self.assertEqual(len(checks), 2)  # one for the right password, one for the repeated wrong one
        self.assertEqual(accounts.verifications, 0)
