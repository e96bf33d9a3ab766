"""
The running server's L{IAccounts}: the accounts database off the reactor.

Every database call runs in a worker thread, each thread with its own
L{AccountsDatabase} connection, and every password check in a small pool of
its own, bounded, so that a storm of logins queues (or is refused with
L{LoginsBusy}) instead of starving the threads every delivery waits for.
Nothing is cached past one call but recent password successes
(L{VerifiedPasswords}), so a change the ``mailapp`` command makes is seen at
the next lookup.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailapp import logevents
from mailapp.accounts.addresses import domain_key
from mailapp.accounts.database import AccountsDatabase
from mailapp.accounts.resolution import DomainDirectory
from mailapp.accounts.passwords import VerifiedPasswords, check_new_password, default_password_hasher
from mailapp.accounts.records import Profile, QuotaOverride, Resolution, SenderRule, SenderVerdict
from mailapp.errors import AccountError, LoginsBusy
from mailapp.interfaces import IAccounts

__all__ = ["Accounts"]

log = Logger()

_PASSWORD_REHASHED = logevents.PASSWORD_REHASHED
_REHASH_FAILED = logevents.REHASH_FAILED

_T = TypeVar("_T")


@implementer(IAccounts)
class Accounts:
    """
    L{IAccounts} over an L{AccountsDatabase} file, for the running server.

    Database calls run on C{threadpool} (the reactor's by default), each
    thread with its own connection. Password hashing runs on a small pool of
    its own (C{hash_threads} threads), so that a storm of logins queues there
    instead of starving the threads that do disk I/O; L{close} stops it, and
    is also called when the reactor shuts down.

    @param hasher: the argon2 hasher for verifying and upgrading hashes;
        tests pass one with cheap parameters.
    """

    def __init__(
        self,
        database_path: Path,
        config_domains: Iterable[str],
        reactor: Any = None,
        threadpool: ThreadPool | None = None,
        hasher: PasswordHasher | None = None,
        *,
        hash_threads: int = 2,
        auth_cache_seconds: float = 300,
        max_queued_verifications: int = 64,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _global_reactor

            reactor = _global_reactor
        self._reactor: IReactorFromThreads = reactor
        self._path = Path(database_path)
        self._config_domains = tuple(config_domains)
        self._threadpool = threadpool if threadpool is not None else IReactorThreads(reactor).getThreadPool()
        self._hasher = hasher if hasher is not None else default_password_hasher()
        # Open once here so that a bad path or a too-new schema fails at
        # startup rather than at the first login.
        AccountsDatabase(self._path, self._config_domains, hasher=self._hasher).close()
        # An unknown user is checked against a hash made with the same
        # parameters as new hashes, so that both failures take the same
        # time. It is made in the hashing pool when first needed
        # (L{_dummyHash}), not here: a start (which every restart waits
        # for) would pay for it on the reactor thread.
        self._dummy_hash: str | None = None
        self._local = threading.local()
        self._connections: list[AccountsDatabase] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        self._verified = VerifiedPasswords(IReactorTime(reactor).seconds, auth_cache_seconds)
        #: Password checks waiting for or running in a hashing thread, and
        #: how many may: past it a login fails at once with LoginsBusy (each
        #: argon2id check holds 64 MiB while it runs, and a storm of queued
        #: ones would only answer later than the client waits).
        self.verifications = 0
        #: Checks in the hashing pool now, by (stored hash, password HMAC): the logins waiting on each.
        self._verifying: dict[tuple[str, bytes], list[Deferred[tuple[bool, bool]]]] = {}
        self.max_queued_verifications = max_queued_verifications
        self._hash_pool = ThreadPool(minthreads=0, maxthreads=hash_threads, name="mailapp-password-hashing")
        self._hash_pool.start()
        # "after": once the reactor's thread pool has stopped ("during"), so no
        # thread is still in a query on a connection closed here (closing a
        # connection under a running query can crash the process).
        self._shutdown_trigger = IReactorCore(reactor).addSystemEventTrigger("after", "shutdown", self.close)

    def close(self) -> None:
        """
        Stop the hashing threads and close every thread's connection.
        Idempotent; the object must not be used afterwards.
        """
        if self._closed:
            return
        self._closed = True
        try:
            IReactorCore(self._reactor).removeSystemEventTrigger(self._shutdown_trigger)
        except (ValueError, KeyError):
            pass  # already fired: we are being called by the trigger itself
        self._hash_pool.stop()
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for database in connections:
            database.close()

    def set_config_domains(self, config_domains: Iterable[str]) -> None:
        """
        The config's ``[domains] local`` changed (a reload): every thread's
        connection sees the new set from its next query on.
        """
        self._config_domains = tuple(config_domains)
        with self._connections_lock:
            for database in self._connections:
                database._config_domains = frozenset(domain_key(domain) for domain in self._config_domains)

    # -- threads --

    def _database(self) -> AccountsDatabase:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise RuntimeError("Accounts is closed")
        database: AccountsDatabase | None = getattr(self._local, "database", None)
        if database is None:
            database = AccountsDatabase(self._path, self._config_domains, hasher=self._hasher)
            with self._connections_lock:
                self._connections.append(database)
            self._local.database = database
        return database

    def _inDatabase(self, call: Callable[[AccountsDatabase], _T]) -> Deferred[_T]:
        return deferToThreadPool(self._reactor, self._threadpool, lambda: call(self._database()))

    def _inHashPool(self, call: Callable[..., _T], *args: Any) -> Deferred[_T]:
        return deferToThreadPool(self._reactor, self._hash_pool, call, *args)

    # -- IAccounts --

    def isLocalDomain(self, domain: str) -> Deferred[bool]:
        return self._inDatabase(lambda database: database.is_local_domain(domain))

    def resolve(self, address: str) -> Deferred[Resolution | None]:
        return self._inDatabase(lambda database: database.resolve(address))

    def domainDirectory(self, domain: str) -> Deferred[DomainDirectory | None]:
        return self._inDatabase(lambda database: database.domain_directory(domain))

    def ownsAddress(self, account: str, address: str) -> Deferred[bool]:
        return self._inDatabase(lambda database: database.owns_address(account, address))

    def countUsers(self) -> Deferred[int]:
        return self._inDatabase(lambda database: database.count_users())

    def quotaOverride(self, account: str) -> Deferred[QuotaOverride | None]:
        return self._inDatabase(lambda database: database.quota_override(account))

    def senderVerdict(self, recipient: str, sender: str) -> Deferred[SenderVerdict | None]:
        return self._inDatabase(lambda database: database.sender_verdict(recipient, sender))

    def senderRules(self, account: str) -> Deferred[list[SenderRule]]:
        return self._inDatabase(lambda database: _user_only(account, database.sender_rules, account))

    def setSenderRule(self, account: str, pattern: str, action: str) -> Deferred[SenderRule]:
        return self._inDatabase(lambda database: _user_only(account, database.set_sender_rule, account, pattern, action)[0])

    def removeSenderRule(self, account: str, pattern: str) -> Deferred[SenderRule]:
        return self._inDatabase(lambda database: _user_only(account, database.remove_sender_rule, account, pattern))

    def setPassword(self, account: str, password: str) -> Deferred[None]:
        return ensureDeferred(self._setPassword(account, password))

    async def _setPassword(self, account: str, password: str) -> None:
        found = await self._inDatabase(lambda database: database.lookup_password_hash(account))
        if found is None or "@" not in account:
            raise AccountError(f"no such user {account}")
        canonical = found[0]
        check_new_password(canonical, password)
        if "\x00" in password:
            raise AccountError("password contains a NUL character; nothing was changed")
        # Hashed in the hashing pool, like every check: never a database thread's minute.
        new_hash = await self._inHashPool(self._hasher.hash, password)
        await self._inDatabase(lambda database: database.update_hash(canonical, new_hash))
        log.info("password of {account} changed", log_event=logevents.PASSWORD_CHANGED, account=canonical)

    def profile(self, account: str) -> Deferred[Profile]:
        def read(database: AccountsDatabase) -> Profile:
            found = _user_only(account, database.profile, account)
            if found is None:
                raise AccountError(f"no such user {account}")
            return found

        return self._inDatabase(read)

    def setProfile(self, account: str, display_name: str, signature: str) -> Deferred[Profile]:
        return self._inDatabase(lambda database: _user_only(account, database.set_profile, account, display_name, signature))

    def authenticate(self, username: str, password: bytes) -> Deferred[str]:
        return ensureDeferred(self._authenticate(username, password))

    async def _authenticate(self, username: str, password: bytes) -> str:
        found = await self._inDatabase(lambda database: database.lookup_password_hash(username))
        if found is None:
            await self._queuedVerify(await self._dummyHash(), password)
            raise UnauthorizedLogin("Invalid credentials")
        canonical, password_hash = found
        if self._verified.check(canonical, password_hash, password):
            return canonical
        verified, needs_rehash = await self._queuedVerify(password_hash, password)
        if not verified:
            raise UnauthorizedLogin("Invalid credentials")
        if needs_rehash:
            await self._rehash(canonical, password)
        else:
            self._verified.remember(canonical, password_hash, password)
        return canonical

    async def _dummyHash(self) -> str:
        """
        The hash an unknown user's password is checked against, made the
        first time one is (logins that race to be first may each make one;
        the last made is kept).
        """
        if self._dummy_hash is None:
            self._dummy_hash = await self._inHashPool(self._hasher.hash, os.urandom(16).hex())
        return self._dummy_hash

    async def _queuedVerify(self, password_hash: str, password: bytes) -> tuple[bool, bool]:
        """
        L{_verify} once for every login that asks the same question at the
        same time: a burst of logins of one account with one password (a
        client opening ten connections at once, a phone reconnecting them
        all) waits for one argon2id check instead of paying for each. They
        are told apart by the stored hash and the password's keyed HMAC
        (L{VerifiedPasswords.fingerprint}), never the password itself. A
        wrong guess repeated in a burst is one check too; different guesses
        each pay the KDF and count against the queue's bound.
        """
        key = (password_hash, self._verified.fingerprint(password))
        waiting = self._verifying.get(key)
        if waiting is not None:
            shared: Deferred[tuple[bool, bool]] = Deferred()
            waiting.append(shared)
            return await shared
        self._verifying[key] = waiting = []
        try:
            result = await self._boundedVerify(password_hash, password)
        except BaseException:
            failure = Failure()
            del self._verifying[key]
            for each in waiting:
                each.errback(failure)
            raise
        del self._verifying[key]
        for each in waiting:
            each.callback((result[0], False))  # the first login upgrades an old hash, once
        return result

    async def _boundedVerify(self, password_hash: str, password: bytes) -> tuple[bool, bool]:
        """L{_verify} in the hashing pool, or L{LoginsBusy} at once when too many checks wait there."""
        if self.verifications >= self.max_queued_verifications:
            raise LoginsBusy()
        self.verifications += 1
        try:
            return await self._inHashPool(self._verify, password_hash, password)
        finally:
            self.verifications -= 1

    def _verify(self, password_hash: str, password: bytes) -> tuple[bool, bool]:
        """In a hashing thread: (password matches, hash should be upgraded)."""
        try:
            self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False, False
        return True, self._hasher.check_needs_rehash(password_hash)

    async def _rehash(self, canonical: str, password: bytes) -> None:
        """
        Upgrade a hash made with older parameters, now that we know the
        password. A failure here is logged and never fails the login.
        """
        try:
            new_hash = await self._inHashPool(self._hasher.hash, password)
            await self._inDatabase(lambda database: database.update_hash(canonical, new_hash))
        except Exception:
            log.failure("could not store the upgraded hash of {account}", log_event=_REHASH_FAILED, account=canonical)
        else:
            log.info("upgraded the password hash of {account}", log_event=_PASSWORD_REHASHED, account=canonical)


def _user_only(account: str, call: Callable[..., _T], *args: Any) -> _T:
    """
    C{call(*args)} for a user's own list only: the interface's list methods
    take an account, and a domain's name must never reach the database's
    owner argument through them (a webmail user could edit the domain's list).
    """
    if "@" not in account:
        raise AccountError(f"no such user {account}")
    return call(*args)
