"""
Public in-memory fakes of mailapp's interfaces, for tests of protocols and of code that uses mailapp.
"""

from __future__ import annotations

# =============================================================================
# Accounts: FakeAccounts and a cheap password hasher.
# Self-contained section; the store fakes follow below it.
# =============================================================================

import hmac
from collections.abc import Iterable

from argon2 import PasswordHasher
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from mailapp.accounts import (
    QuotaOverride,
    Resolution,
    address_key,
    check_address,
    check_alias,
    check_alias_source,
    check_domain,
    owns_address,
    resolve_address,
    target_names_user,
)
from mailapp.errors import AccountError
from mailapp.interfaces import IAccounts


def cheap_password_hasher() -> PasswordHasher:
    """
    An argon2id hasher with the smallest parameters argon2 accepts, so that a
    test suite can create and check hundreds of hashes in well under a
    second. Never use it outside tests: it offers no protection at all.

    Pass it as C{hasher=} to L{mailapp.accounts.AccountsDatabase} and
    L{mailapp.accounts.Accounts}, or as C{password_hasher=} to
    L{mailapp.cli.main}.
    """
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@implementer(IAccounts)
class FakeAccounts:
    """
    L{IAccounts} in memory, with the same address rules and alias
    resolution as the real database (they share L{resolve_address}).

    Passwords are kept in plain text and compared in constant time. Every
    method returns an already-fired Deferred.

        accounts = FakeAccounts(domains=["example.test"])
        accounts.add_user("alice@example.test", "secret")
        accounts.add_alias("postmaster@example.test", ["alice@example.test"])
    """

    def __init__(self, domains: Iterable[str] = ()) -> None:
        self._domains: set[str] = set()
        self._users: dict[str, tuple[str, bytes]] = {}  # key -> (canonical, password)
        self._aliases: dict[str, tuple[str, list[str]]] = {}  # key -> (source, targets)
        self._quotas: dict[str, QuotaOverride] = {}  # key -> what set_quota set
        #: Every C{(username, password)} given to L{authenticate}, in order.
        self.attempts: list[tuple[str, bytes]] = []
        for domain in domains:
            self.add_domain(domain)

    # -- setting up --

    def add_domain(self, domain: str) -> str:
        """Make C{domain} local."""
        name = check_domain(domain)
        self._domains.add(name)
        return name

    def add_user(self, address: str, password: str | bytes) -> str:
        """Create a user in a local domain; return its canonical address."""
        canonical = check_address(address, mailbox=True)
        if not self.is_local_domain(canonical.rpartition("@")[2]):
            raise AccountError(f"unknown domain {canonical.rpartition('@')[2]}")
        key = address_key(canonical)
        if key in self._users:
            raise AccountError(f"user {self._users[key][0]} exists already")
        if key in self._aliases:
            raise AccountError(f"{canonical} is an alias; remove the alias first")
        self._users[key] = (canonical, _password_bytes(password))
        return canonical

    def set_quota(self, address: str, override: QuotaOverride) -> None:
        """Give user C{address} its own quota, as C{mailapp user quota} does."""
        key = address_key(address)
        if key not in self._users:
            raise AccountError(f"no such user {address}")
        self._quotas[key] = override

    def remove_user(self, address: str) -> None:
        """Delete a user and the alias targets naming it, as the database does."""
        key = address_key(address)
        if key not in self._users:
            raise AccountError(f"no such user {address}")
        del self._users[key]
        for source_key, (source, targets) in list(self._aliases.items()):
            kept = [target for target in targets if not target_names_user(address_key(target), key)]
            if kept:
                self._aliases[source_key] = (source, kept)
            else:
                del self._aliases[source_key]

    def add_alias(self, source: str, targets: Iterable[str]) -> None:
        """Add targets to alias C{source}; refused if it would loop, as in the database."""
        canonical = check_alias_source(source)
        if not self.is_local_domain(canonical.rpartition("@")[2]):
            raise AccountError(f"unknown domain {canonical.rpartition('@')[2]}")
        key = address_key(canonical)
        if key in self._users:
            raise AccountError(f"{canonical} is a user; an address cannot be both a user and an alias")
        previous = self._aliases.get(key)
        existing = list(previous[1]) if previous else []
        for target in targets:
            target = check_address(target)
            if address_key(target) in map(address_key, existing):
                raise AccountError(f"alias {canonical} -> {target} exists already")
            existing.append(target)
        if not existing:
            raise AccountError("an alias needs at least one target")
        self._aliases[key] = (canonical, existing)
        try:
            check_alias(canonical, self)
        except AccountError:
            if previous is None:
                del self._aliases[key]
            else:
                self._aliases[key] = previous
            raise

    # -- the AddressDirectory lookups (synchronous) --

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self._domains

    def find_user(self, address: str) -> str | None:
        found = self._users.get(address_key(address))
        return found[0] if found else None

    def find_alias(self, source: str) -> tuple[str, ...] | None:
        found = self._aliases.get(address_key(source))
        return tuple(found[1]) if found else None

    def first_user(self, domain: str) -> str | None:
        users = [canonical for canonical, _ in self._users.values()]
        in_domain = [user for user in users if user.rpartition("@")[2].lower() == domain.lower()]
        return next(iter(in_domain or users), None)

    # -- IAccounts --

    def isLocalDomain(self, domain: str) -> Deferred[bool]:
        return succeed(self.is_local_domain(domain))

    def resolve(self, address: str) -> Deferred[Resolution | None]:
        return succeed(resolve_address(address, self))

    def ownsAddress(self, account: str, address: str) -> Deferred[bool]:
        return succeed(owns_address(account, address, self))

    def authenticate(self, username: str, password: bytes) -> Deferred[str]:
        self.attempts.append((username, password))
        found = self._users.get(address_key(username))
        expected = found[1] if found else b"\x00unknown user\x00"
        matches = hmac.compare_digest(expected, _password_bytes(password))
        if found is None or not matches:
            return fail(UnauthorizedLogin("Invalid credentials"))
        return succeed(found[0])

    def countUsers(self) -> Deferred[int]:
        return succeed(len(self._users))

    def quotaOverride(self, account: str) -> Deferred[QuotaOverride | None]:
        key = address_key(account)
        if key not in self._users:
            return succeed(None)
        return succeed(self._quotas.get(key, QuotaOverride()))


def _password_bytes(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password


# =============================================================================
# End of the accounts section.
# =============================================================================


# =============================================================================
# The store: FakeStore (IMessageStore) with its mailboxes, folders and writers.
# =============================================================================

import io  # noqa: E402
import time  # noqa: E402
from typing import IO, Any  # noqa: E402

from mailapp.errors import BadFolderName, FolderExists, NoSuchFolder, NoSuchMessage, StoreError  # noqa: E402
from mailapp.interfaces import IFolder, IMailbox, IMessageStore, IMessageWriter  # noqa: E402
from mailapp.store.events import ADDED, EXPUNGED, FLAGS_CHANGED, EventBus, FolderEvent  # noqa: E402
from mailapp.store.names import DELIMITER, INBOX, SPECIAL_FOLDERS, normalize_folder  # noqa: E402
from mailapp.store.records import FolderInfo, FolderStatus, MessageInfo, Usage  # noqa: E402


@implementer(IMessageWriter)
class FakeMessageWriter:
    """A message being received, kept in memory."""

    def __init__(self, store: "FakeStore") -> None:
        self._store = store
        self._chunks: list[bytes] = []
        self.size = 0
        self.finished = False
        self.discarded = False
        self.internaldate = time.time()

    def write(self, data: bytes) -> Deferred[None]:
        self._chunks.append(data)
        self.size += len(data)
        return succeed(None)

    def finish(self) -> Deferred[None]:
        if self._store.failFinish:
            return fail(StoreError())
        self.finished = True
        return succeed(None)

    def discard(self) -> Deferred[None]:
        self.discarded = True
        self._chunks = []
        return succeed(None)

    def data(self) -> bytes:
        return b"".join(self._chunks)


class _FakeFolderState:
    def __init__(self, uidvalidity: int) -> None:
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.subscribed = True
        #: uid -> [bytes, flags, internaldate]
        self.messages: dict[int, list[Any]] = {}


@implementer(IFolder)
class FakeFolder:
    def __init__(self, mailbox: "FakeMailbox", name: str) -> None:
        self.mailbox = mailbox
        self.account = mailbox.account
        self.name = name

    @property
    def _state(self) -> _FakeFolderState:
        state = self.mailbox._folders.get(self.name)
        if state is None:
            raise NoSuchFolder(f"no such folder: {self.name}")
        return state

    def _publish(self, kind: str, uids) -> None:  # type: ignore[no-untyped-def]
        uids = tuple(sorted(uids))
        if uids:
            self.mailbox.store.events.publish(FolderEvent(kind, self.account, self.name, uids))

    def _add(self, data: bytes, flags, internaldate: float) -> int:  # type: ignore[no-untyped-def]
        state = self._state
        uid, state.uidnext = state.uidnext, state.uidnext + 1
        state.messages[uid] = [data, frozenset(flags), internaldate]
        return uid

    def refresh(self) -> Deferred[None]:
        """Nothing but this fake changes its messages."""
        return succeed(None)

    def status(self) -> Deferred[FolderStatus]:
        state = self._state
        unseen = sum(1 for _, flags, _ in state.messages.values() if "\\Seen" not in flags)
        return succeed(FolderStatus(state.uidvalidity, state.uidnext, len(state.messages), unseen))

    def messages(self) -> Deferred[list[MessageInfo]]:
        state = self._state
        return succeed([MessageInfo(uid, m[1], len(m[0]), m[2]) for uid, m in sorted(state.messages.items())])

    def messagesAfter(self, uid: int) -> Deferred[list[MessageInfo]]:
        state = self._state
        return succeed([MessageInfo(u, m[1], len(m[0]), m[2]) for u, m in sorted(state.messages.items()) if u > uid])

    def openMessage(self, uid: int) -> Deferred[IO[bytes]]:
        message = self._state.messages.get(uid)
        if message is None:
            return fail(NoSuchMessage(f"no such message: {uid}"))
        return succeed(io.BytesIO(message[0]))

    def readMessage(self, uid: int, limit: int) -> Deferred[bytes | None]:
        message = self._state.messages.get(uid)
        if message is None:
            return fail(NoSuchMessage(f"no such message: {uid}"))
        return succeed(message[0] if len(message[0]) <= limit else None)

    def setFlags(self, uids, flags, mode: str = "replace") -> Deferred[dict[int, frozenset[str]]]:  # type: ignore[no-untyped-def]
        wanted = frozenset(flags)
        result = {}
        for uid in sorted(set(uids)):
            message = self._state.messages.get(uid)
            if message is None:
                continue
            old = message[1]
            message[1] = wanted if mode == "replace" else (old | wanted if mode == "add" else old - wanted)
            result[uid] = message[1]
        self._publish(FLAGS_CHANGED, result)
        return succeed(result)

    def expunge(self, uids) -> Deferred[list[int]]:  # type: ignore[no-untyped-def]
        removed = [uid for uid in sorted(set(uids)) if self._state.messages.pop(uid, None) is not None]
        self._publish(EXPUNGED, removed)
        return succeed(removed)

    def append(self, data: bytes, flags=(), internaldate: float | None = None) -> Deferred[int]:  # type: ignore[no-untyped-def]
        uid = self._add(data, flags, time.time() if internaldate is None else internaldate)
        self._publish(ADDED, [uid])
        return succeed(uid)

    def appendMessage(self, message, flags=(), internaldate: float | None = None) -> Deferred[int]:  # type: ignore[no-untyped-def]
        return self.append(message.data(), flags, message.internaldate if internaldate is None else internaldate)

    def copyTo(self, uids, target) -> Deferred[dict[int, int]]:  # type: ignore[no-untyped-def]
        mapping = {}
        for uid in sorted(set(uids)):
            message = self._state.messages.get(uid)
            if message is not None:
                mapping[uid] = target._add(message[0], message[1], message[2])
        target._publish(ADDED, mapping.values())
        return succeed(mapping)

    def moveTo(self, uids, target) -> Deferred[dict[int, int]]:  # type: ignore[no-untyped-def]
        mapping = {}
        for uid in sorted(set(uids)):
            message = self._state.messages.pop(uid, None)
            if message is not None:
                mapping[uid] = target._add(message[0], message[1], message[2])
        target._publish(ADDED, mapping.values())
        self._publish(EXPUNGED, mapping)
        return succeed(mapping)


@implementer(IMailbox)
class FakeMailbox:
    def __init__(self, store: "FakeStore", account: str) -> None:
        self.store = store
        self.account = account
        self._folders = store._mailboxes.setdefault(account.lower(), {})
        for name in (INBOX, *SPECIAL_FOLDERS):
            self._folders.setdefault(name, _FakeFolderState(store._nextValidity()))

    def usage(self) -> Deferred[Usage]:
        sizes = [len(data) for state in self._folders.values() for data, _, _ in state.messages.values()]
        return succeed(Usage(len(sizes), sum(sizes)))

    def listFolders(self) -> Deferred[list[FolderInfo]]:
        folders = [FolderInfo(n, SPECIAL_FOLDERS.get(n), s.subscribed) for n, s in self._folders.items()]
        return succeed(sorted(folders, key=lambda f: (f.name != INBOX, f.name)))

    def createFolder(self, name: str) -> Deferred[None]:
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return fail(e)
        if name in self._folders:
            return fail(FolderExists(f"folder exists: {name}"))
        parts = name.split(DELIMITER)
        for depth in range(1, len(parts) + 1):
            self._folders.setdefault(DELIMITER.join(parts[:depth]), _FakeFolderState(self.store._nextValidity()))
        return succeed(None)

    def deleteFolder(self, name: str) -> Deferred[None]:
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return fail(e)
        if name == INBOX:
            return fail(BadFolderName("INBOX cannot be deleted"))
        if self._folders.pop(name, None) is None:
            return fail(NoSuchFolder(f"no such folder: {name}"))
        return succeed(None)

    def renameFolder(self, old: str, new: str) -> Deferred[None]:
        try:
            old, new = normalize_folder(old), normalize_folder(new)
        except BadFolderName as e:
            return fail(e)
        if old not in self._folders:
            return fail(NoSuchFolder(f"no such folder: {old}"))
        if new in self._folders:
            return fail(FolderExists(f"folder exists: {new}"))
        for name in [n for n in self._folders if n == old or n.startswith(old + DELIMITER)]:
            self._folders[new + name[len(old):]] = self._folders.pop(name)
        return succeed(None)

    def setSubscribed(self, name: str, subscribed: bool) -> Deferred[bool]:
        state = self._folders.get(name)
        if state is None:
            return succeed(False)
        state.subscribed = bool(subscribed)
        return succeed(True)

    def folder(self, name: str) -> Deferred[IFolder]:
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return fail(e)
        if name not in self._folders:
            return fail(NoSuchFolder(f"no such folder: {name}"))
        return succeed(FakeFolder(self, name))


@implementer(IMessageStore)
class FakeStore:
    """
    Every mailbox in memory, with the same contracts as the Maildir store.
    Set C{failDeliver} (or C{failFinish}) to make the next deliveries fail with
    L{StoreError}, as a full disk would; C{deliveries} records each delivery.
    """

    def __init__(self) -> None:
        self.events = EventBus()
        self._mailboxes: dict[str, dict[str, _FakeFolderState]] = {}
        self._validity = 1000
        self.failDeliver = False
        self.failFinish = False
        #: (accounts, folder, bytes) for every successful delivery, in order.
        self.deliveries: list[tuple[tuple[str, ...], str, bytes]] = []

    def _nextValidity(self) -> int:
        self._validity += 1
        return self._validity

    def mailbox(self, account: str) -> FakeMailbox:
        return FakeMailbox(self, account)

    def newMessage(self) -> FakeMessageWriter:
        return FakeMessageWriter(self)

    def deliver(self, message: FakeMessageWriter, accounts, folder: str = INBOX) -> Deferred[dict[str, int]]:  # type: ignore[no-untyped-def]
        if not message.finished:
            raise RuntimeError("deliver() before the message's finish() fired")
        if self.failDeliver:
            return fail(StoreError())
        unique: dict[str, str] = {}
        for account in accounts:
            unique.setdefault(account.lower(), account)
        data = message.data()
        result = {}
        for account in unique.values():
            target = FakeFolder(self.mailbox(account), normalize_folder(folder))
            result[account] = target._add(data, (), message.internaldate)
        for account, uid in result.items():
            self.events.publish(FolderEvent(ADDED, account, normalize_folder(folder), (uid,)))
        self.deliveries.append((tuple(unique.values()), folder, data))
        return succeed(result)
