"""
Where mail to an address goes: users, aliases, C{+tag}s, catch-alls and
postmaster, by one set of rules.

The rules are pure functions over an L{AddressDirectory} (three lookups),
so that the SQLite database and the in-memory fake in L{mailapp.testing}
resolve every address alike, and a change that would break an alias chain
is refused by the same code that would later have to skip it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from twisted.logger import Logger

from mailapp import logevents
from mailapp.accounts.addresses import address_key, split_address
from mailapp.accounts.records import Resolution
from mailapp.errors import AccountError

__all__ = [
    "DOMAIN_DIRECTORY_LIMIT",
    "MAX_ALIAS_DEPTH",
    "AddressDirectory",
    "DomainDirectory",
    "OutsideDirectory",
    "check_alias",
    "owns_address",
    "resolve_address",
    "target_names_user",
]

log = Logger()

#: How many alias hops one address may take before the expansion gives up.
#: Real setups need two or three; the limit only stops pathological chains.
MAX_ALIAS_DEPTH = 10

_ALIAS_BROKEN = logevents.ALIAS_BROKEN


def target_names_user(target_key: str, user_key: str) -> bool:
    """Whether an alias target (by key) reaches the user: their address, or a C{+tag} of it."""
    if target_key == user_key:
        return True
    local, _, domain = target_key.rpartition("@")
    user_local, _, user_domain = user_key.rpartition("@")
    return domain == user_domain and "+" in local and local.split("+", 1)[0] == user_local


class AddressDirectory(Protocol):
    """
    The three lookups the resolution rules need. Every argument has its
    domain lower-cased; implementations match local parts case-insensitively.
    """

    def is_local_domain(self, domain: str) -> bool:
        """Whether mail for C{domain} is delivered here."""

    def find_user(self, address: str) -> str | None:
        """The canonical account of the user C{address}, or C{None}."""

    def find_alias(self, source: str) -> tuple[str, ...] | None:
        """The targets of alias C{source} (an address or C{@domain}), or C{None}."""

    def first_user(self, domain: str) -> str | None:
        """The first user added in C{domain}, else the first of any domain, or C{None}: who reads postmaster's mail."""


#: The most users and aliases a domain may have for L{DomainDirectory} to hold
#: them all: a bigger domain's recipients are looked up one by one. Reading a
#: directory of this size costs a few lookups of one address (measured: 69 us
#: for 10 users against 45 us for one resolve; 442 us for 195 users).
DOMAIN_DIRECTORY_LIMIT = 64


class OutsideDirectory(Exception):
    """A L{DomainDirectory} was asked about another domain: resolve through the accounts instead."""


@dataclass(frozen=True)
class DomainDirectory:
    """
    One domain's whole share of the accounts (whether it is ours, its users,
    its aliases and catch-all, who reads its postmaster's mail), read in one
    lookup, so that the same rules (L{resolve_address}) resolve every
    recipient of a message in that domain in memory: the second RCPT of a
    transaction in a domain fetches it, the ones after it cost no lookup
    (L{mailapp.delivery.Transaction}). Held for one transaction only, so a
    change to the accounts is seen by the next message.

    Whether another domain is ours is answered from C{local_domains} (all
    of them, when there are not too many); any other question about another
    domain (a user an alias points to there) raises L{OutsideDirectory}:
    that address is resolved by the accounts as before.
    """

    domain: str  #: as L{domain_key} gives it
    local: bool
    users: Mapping[str, str] = field(default_factory=dict)  #: address_key -> canonical address
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  #: source key (an address's, or C{@domain}) -> targets
    first: str | None = None  #: L{AddressDirectory.first_user} of the domain, when it has a user
    local_domains: frozenset[str] | None = None  #: every local domain, or None when there were too many to hold

    def _mine(self, address: str) -> str:
        key = address_key(address)
        if key.rpartition("@")[2] != self.domain:
            raise OutsideDirectory(address)
        return key

    def is_local_domain(self, domain: str) -> bool:
        if domain == self.domain:
            return self.local
        if self.local_domains is None:
            raise OutsideDirectory(domain)
        return domain in self.local_domains

    def find_user(self, address: str) -> str | None:
        return self.users.get(self._mine(address))

    def find_alias(self, source: str) -> tuple[str, ...] | None:
        return self.aliases.get(self._mine(source))

    def first_user(self, domain: str) -> str | None:
        if domain != self.domain or self.first is None:
            raise OutsideDirectory(domain)
        return self.first


class _BrokenAlias(Exception):
    """An alias chain that loops, goes too deep, or ends at nobody."""


def resolve_address(
    address: str, directory: AddressDirectory, *, strict: bool = False
) -> Resolution | None:
    """
    Expand C{address} by the rules every part of mailapp shares.

    In order: a non-local domain is remote and is itself; an exact user wins;
    then an exact alias; then, for C{user+tag}, the user or alias C{user};
    then the domain's catch-all C{@domain}. Aliases expand recursively to
    users, other aliases and remote addresses.

    A broken branch (a loop, more than L{MAX_ALIAS_DEPTH} hops, or a local
    target nobody takes) is skipped with a logged warning, so that one bad
    alias cannot stop the rest of a one-to-many alias. With C{strict=True} it
    raises L{AccountError} instead: that is how a change that would create a
    loop is refused.

    @return: C{None} when the domain is local but nobody takes the address.
    """
    parts = split_address(address)
    if parts is None:
        return None
    local_part, domain = parts
    normalised = f"{local_part}@{domain}"
    if not directory.is_local_domain(domain):
        return Resolution(remote=(normalised,), local_domain=False)
    local: list[str] = []
    remote: list[str] = []
    try:
        found = _expand(normalised, directory, (), local, remote, strict)
    except _BrokenAlias as broken:
        raise AccountError(str(broken)) from None
    if not found:
        if local_part.lower() == "postmaster":
            # RFC 5321 4.5.1: postmaster must always be deliverable. Without
            # its own user or alias it goes to the domain's first user, the
            # one who set the domain up.
            reader = directory.first_user(domain)
            if reader is not None:
                return Resolution(local=(reader,))
        return None
    return Resolution(local=tuple(dict.fromkeys(local)), remote=tuple(dict.fromkeys(remote)))


def _expand(
    address: str,
    directory: AddressDirectory,
    path: tuple[str, ...],
    local: list[str],
    remote: list[str],
    strict: bool,
    depth: int = 0,
) -> bool | None:
    """
    Append where C{address} goes to C{local} and C{remote}. Return C{True}
    if anybody takes it, C{False} if nobody does, C{None} if it is an alias
    whose every branch was broken (and already reported). C{path} holds the keys of the aliases being expanded
    above this call (and the addresses that led to them), which is how a loop
    is told apart from a harmless diamond (two aliases naming one user).
    """
    local_part, _, domain = address.rpartition("@")
    if not directory.is_local_domain(domain):
        remote.append(address)
        return True
    user = directory.find_user(address)
    if user is not None:
        local.append(user)
        return True
    node = address
    targets = directory.find_alias(address)
    if targets is None and "+" in local_part:
        base = local_part.split("+", 1)[0]
        if base:
            node = f"{base}@{domain}"
            user = directory.find_user(node)
            if user is not None:
                local.append(user)
                return True
            targets = directory.find_alias(node)
    if targets is None:
        node = "@" + domain
        if address_key(node) in path:
            # Already inside this catch-all's expansion: the address is one of
            # its targets and nobody here. Falling back to the catch-all again
            # would only report a loop where the truth is a dangling target.
            return False
        targets = directory.find_alias(node)
    if targets is None:
        return False
    if node != address:
        path = (*path, address_key(address))
    return _expand_targets(node, targets, directory, path, local, remote, strict, depth)


def _expand_targets(
    node: str,
    targets: Sequence[str],
    directory: AddressDirectory,
    path: tuple[str, ...],
    local: list[str],
    remote: list[str],
    strict: bool,
    depth: int = 0,
) -> bool | None:
    """
    Expand every target of alias C{node}; a broken one is reported and
    skipped (or raised, when C{strict}). C{None} if no target delivers.
    """
    key = address_key(node)
    chain = (*path, key)
    if key in path:
        _broken(f"alias loop: {' -> '.join(chain)}", strict)
        return None
    if depth >= MAX_ALIAS_DEPTH:
        _broken(f"alias chain longer than {MAX_ALIAS_DEPTH} hops: {' -> '.join(chain)}", strict)
        return None
    found = False
    for target in targets:
        parts = split_address(target)
        if parts is None:
            _broken(f"alias {node} has an unusable target {target!r}", strict)
            continue
        target = f"{parts[0]}@{parts[1]}"
        if address_key(target) in chain:
            if directory.find_alias(target) is None and directory.find_user(target) is None:
                # On the path only because it fell through to a fallback (its
                # +tag base or the catch-all): nobody takes it, no alias loops.
                _broken(f"alias {node} points at {target}, which is not a user or alias here", strict)
            else:
                _broken(f"alias loop: {' -> '.join((*chain, address_key(target)))}", strict)
            continue
        result = _expand(target, directory, chain, local, remote, strict, depth + 1)
        if result:
            found = True
        elif result is False:
            _broken(f"alias {node} points at {target}, which is not a user or alias here", strict)
    return True if found else None


def check_alias(source: str, directory: AddressDirectory) -> None:
    """
    Raise L{AccountError} if alias C{source} (as C{directory} now has it)
    loops, goes deeper than L{MAX_ALIAS_DEPTH}, or names a local target that
    nobody takes. Run after adding targets, before committing them: every
    new loop passes through a new target, so expanding the source finds it.
    """
    targets = directory.find_alias(source)
    if targets is None:
        return
    try:
        _expand_targets(source, targets, directory, (), [], [], strict=True)
    except _BrokenAlias as broken:
        raise AccountError(str(broken)) from None


def _broken(message: str, strict: bool) -> None:
    if strict:
        raise _BrokenAlias(message)
    log.warn("{problem}", log_event=_ALIAS_BROKEN, problem=message)


def owns_address(account: str, address: str, directory: AddressDirectory) -> bool:
    """
    Whether C{account} may send as C{address}: the address reaches that
    account (its own address in any case, a C{+tag} of it, or an alias or
    catch-all that resolves to it). Nobody may send as an address whose mail
    would go to somebody else.
    """
    resolution = resolve_address(address, directory)
    if resolution is None:
        return False
    wanted = address_key(account)
    return any(address_key(candidate) == wanted for candidate in resolution.local)
