"""
FakeAccounts: L{IAccounts} in memory, with the real database's address
rules, and a password hasher cheap enough for a test suite.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from argon2 import PasswordHasher
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from mailapp.accounts import (
    Profile,
    QuotaOverride,
    Resolution,
    SenderRule,
    SenderVerdict,
    address_key,
    check_action,
    check_address,
    check_alias,
    check_alias_source,
    check_domain,
    check_new_password,
    check_profile,
    check_sender_pattern,
    owns_address,
    resolve_address,
    sender_verdict,
    target_names_user,
)
from mailapp.accounts.addresses import domain_key, split_address
from mailapp.accounts.resolution import DOMAIN_DIRECTORY_LIMIT, DomainDirectory
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
        self._sender_rules: dict[str, dict[str, str]] = {}  # owner (user key or domain) -> pattern -> action
        self._profiles: dict[str, Profile] = {}  # key -> what setProfile stored
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

    def set_sender_rule(self, owner: str, pattern: str, action: str) -> SenderRule:
        """
        Put C{pattern} on the list of C{owner} (a user or a local domain),
        as C{mailapp senders allow|block} does.
        """
        action = check_action(action)
        entry = check_sender_pattern(pattern)
        stored = self._list_owner(owner)
        self._sender_rules.setdefault(stored, {})[entry] = action
        return SenderRule(stored, entry, action)

    def _list_owner(self, owner: str) -> str:
        if "@" in owner:
            key = address_key(check_address(owner))
            if key not in self._users:
                raise AccountError(f"no such user {owner}")
            return key
        domain = check_domain(owner)
        if not self.is_local_domain(domain):
            raise AccountError(f"unknown domain {domain}")
        return domain

    def remove_user(self, address: str) -> None:
        """Delete a user and the alias targets naming it, as the database does."""
        key = address_key(address)
        if key not in self._users:
            raise AccountError(f"no such user {address}")
        del self._users[key]
        self._sender_rules.pop(key, None)
        self._profiles.pop(key, None)
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
        return domain_key(domain) in self._domains

    def find_user(self, address: str) -> str | None:
        found = self._users.get(address_key(address))
        return found[0] if found else None

    def find_alias(self, source: str) -> tuple[str, ...] | None:
        found = self._aliases.get(address_key(source))
        return tuple(found[1]) if found else None

    def first_user(self, domain: str) -> str | None:
        users = [canonical for canonical, _ in self._users.values()]
        in_domain = [user for user in users if domain_key(user.rpartition("@")[2]) == domain_key(domain)]
        return next(iter(in_domain or users), None)

    # -- IAccounts --

    def isLocalDomain(self, domain: str) -> Deferred[bool]:
        return succeed(self.is_local_domain(domain))

    def resolve(self, address: str) -> Deferred[Resolution | None]:
        return succeed(resolve_address(address, self))

    def domainDirectory(self, domain: str) -> Deferred[DomainDirectory | None]:
        name = domain_key(domain)
        local_domains = frozenset(self._domains)
        if not self.is_local_domain(name):
            return succeed(DomainDirectory(name, local=False, local_domains=local_domains))
        users = {key: canonical for key, (canonical, _) in self._users.items() if key.rpartition("@")[2] == name}
        aliases = {key: tuple(targets) for key, (_, targets) in self._aliases.items() if key.rpartition("@")[2] == name}
        if len(users) + sum(map(len, aliases.values())) > DOMAIN_DIRECTORY_LIMIT:
            return succeed(None)
        first = next(iter(users.values()), None)
        return succeed(DomainDirectory(name, local=True, users=users, aliases=aliases, first=first, local_domains=local_domains))

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

    def senderVerdict(self, recipient: str, sender: str) -> Deferred[SenderVerdict | None]:
        if split_address(recipient) is None:
            return succeed(None)
        rules_of = lambda owner: self._sender_rules.get(owner, {})  # noqa: E731
        return succeed(sender_verdict(rules_of, resolve_address(recipient, self), recipient.rpartition("@")[2], sender))

    def senderRules(self, account: str) -> Deferred[list[SenderRule]]:
        try:
            owner = self._user_owner(account)
        except AccountError as error:
            return fail(error)
        rules = self._sender_rules.get(owner, {})
        ordered = sorted(rules.items(), key=lambda item: (item[1], item[0]))
        return succeed([SenderRule(owner, pattern, action) for pattern, action in ordered])

    def setSenderRule(self, account: str, pattern: str, action: str) -> Deferred[SenderRule]:
        try:
            self._user_owner(account)
            return succeed(self.set_sender_rule(account, pattern, action))
        except AccountError as error:
            return fail(error)

    def removeSenderRule(self, account: str, pattern: str) -> Deferred[SenderRule]:
        try:
            owner = self._user_owner(account)
            entry = check_sender_pattern(pattern)
        except AccountError as error:
            return fail(error)
        action = self._sender_rules.get(owner, {}).pop(entry, None)
        if action is None:
            return fail(AccountError(f"{entry} is not on the list of {owner}"))
        return succeed(SenderRule(owner, entry, action))

    def setPassword(self, account: str, password: str) -> Deferred[None]:
        try:
            key = self._user_owner(account)
            check_new_password(self._users[key][0], password)
        except AccountError as error:
            return fail(error)
        self._users[key] = (self._users[key][0], _password_bytes(password))
        return succeed(None)

    def profile(self, account: str) -> Deferred[Profile]:
        try:
            key = self._user_owner(account)
        except AccountError as error:
            return fail(error)
        return succeed(self._profiles.get(key, Profile()))

    def setProfile(self, account: str, display_name: str, signature: str) -> Deferred[Profile]:
        try:
            key = self._user_owner(account)
            profile = check_profile(display_name, signature)
        except AccountError as error:
            return fail(error)
        self._profiles[key] = profile
        return succeed(profile)

    def _user_owner(self, account: str) -> str:
        """A user's own list only, as the server's L{IAccounts} allows."""
        if "@" not in account:
            raise AccountError(f"no such user {account}")
        return self._list_owner(account)


def _password_bytes(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password

__all__ = ["FakeAccounts", "cheap_password_hasher"]
