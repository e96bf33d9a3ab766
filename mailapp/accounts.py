"""
Domains, users and aliases: who receives mail here, and who may log in.

Three layers, from pure to asynchronous:

* :func:`resolve_address` and the address checks are pure functions over an
  :class:`AddressDirectory`, so that the SQLite database and the in-memory
  fake in :mod:`mailapp.testing` share one set of rules.
* :class:`AccountsDatabase` is the synchronous SQLite store used directly by
  the ``mailapp`` command and, one connection per thread, by the server.
* :class:`Accounts` is the server's :class:`~mailapp.interfaces.IAccounts`:
  every database call and every password hash runs in a thread, so the
  reactor never blocks.

The command changes the database while the server runs; nothing here caches
past a single call, so the server sees a change at its next call.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailapp import logevents
from mailapp.errors import AccountError, LoginsBusy
from mailapp.interfaces import IAccounts

__all__ = [
    "ACCOUNTS_FILENAME",
    "MAX_ALIAS_DEPTH",
    "MIN_PASSWORD_LENGTH",
    "SCHEMA_VERSION",
    "QuotaOverride",
    "Accounts",
    "AccountsDatabase",
    "AddressDirectory",
    "AliasInfo",
    "DomainInfo",
    "RemovedUser",
    "Resolution",
    "accounts_path",
    "address_key",
    "check_address",
    "check_alias",
    "check_alias_source",
    "check_domain",
    "check_new_password",
    "default_password_hasher",
    "resolve_address",
    "target_names_user",
]

log = Logger()

#: The database file inside the state directory.
ACCOUNTS_FILENAME = "accounts.sqlite3"

#: Bumped whenever the schema changes; stored with ``PRAGMA user_version``.
#: 2 added each user's quota override (C{quota_bytes}, C{quota_messages}).
SCHEMA_VERSION = 2

#: How many alias hops one address may take before the expansion gives up.
#: Real setups need two or three; the limit only stops pathological chains.
MAX_ALIAS_DEPTH = 10

#: How long a connection waits for another process's write lock (the CLI and
#: the server share the file) before failing with "database is locked".
BUSY_TIMEOUT_MS = 10_000

_ALIAS_BROKEN = logevents.ALIAS_BROKEN
_PASSWORD_REHASHED = logevents.PASSWORD_REHASHED
_REHASH_FAILED = logevents.REHASH_FAILED

_MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1, in octets
_MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2, in octets
_MAX_ADDRESS = 254  # RFC 5321 path of 256 octets, minus the angle brackets
_MAX_LABEL = 63  # RFC 1035 2.3.4

# RFC 5322 "atext" specials allowed in a dot-atom local part; letters, digits
# and (RFC 6531) any non-ASCII character are allowed as well.
_ATEXT_SPECIALS = frozenset("!#$%&'*+-/=?^_`{|}~")
# Characters a mailbox owner's local part must not contain even though RFC
# 5322 allows them: they are path separators in the Maildir under state_dir.
_NOT_IN_ACCOUNT = frozenset("/\\")
_DOMAIN_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


#: The shortest password a person may choose (NIST SP 800-63B 5.1.1.2: at least 8).
MIN_PASSWORD_LENGTH = 8


def check_new_password(address: str, password: str) -> None:
    """
    Raise L{AccountError} unless C{password} may be chosen for C{address}:
    at least L{MIN_PASSWORD_LENGTH} characters, and not the address or its
    local part (any case), the first guesses of anyone who knows the
    address. The one policy for every place a person sets a password
    (``mailapp user add``, ``mailapp user passwd``, and any password change
    offered later); the database below it stores what it is given.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            f"the password is too short: at least {MIN_PASSWORD_LENGTH} characters, please; nothing was changed"
        )
    local = address.rpartition("@")[0]
    folded = password.casefold()
    if folded in (address.casefold(), local.casefold()):
        raise AccountError("the password must not be the address or its local part; nothing was changed")


def default_password_hasher() -> PasswordHasher:
    """
    The production argon2id hasher: argon2-cffi's defaults (RFC 9106, low
    memory profile). Raising its parameters later is safe: hashes made with
    the old ones are upgraded at the user's next successful login.
    """
    return PasswordHasher()


def accounts_path(state_dir: Path) -> Path:
    """Where the accounts database of a state directory lives."""
    return Path(state_dir) / ACCOUNTS_FILENAME


# --- addresses ---------------------------------------------------------------


def address_key(address: str) -> str:
    """
    The case-insensitive identity of an address: local parts match without
    regard to case, and domains are case-insensitive by definition.
    """
    return address.lower()


def check_domain(domain: str) -> str:
    """
    Return C{domain} lower-cased, or raise L{AccountError} saying what is wrong.

    Only ASCII host names are accepted; an internationalised domain is given
    in its C{xn--} form, which is what arrives in SMTP without SMTPUTF8.
    """
    if not isinstance(domain, str) or not domain:
        raise AccountError("domain name is empty")
    _reject_unsafe_characters(domain, "domain name")
    name = domain.lower()
    if not name.isascii():
        raise AccountError(
            f"domain {domain!r} is not ASCII: give an internationalised domain in its xn-- form"
        )
    if len(name) > _MAX_DOMAIN:
        raise AccountError(f"domain {domain!r} is longer than {_MAX_DOMAIN} characters")
    for label in name.split("."):
        if not label:
            raise AccountError(f"domain {domain!r} has an empty label (leading, trailing or double dot)")
        if len(label) > _MAX_LABEL:
            raise AccountError(f"domain {domain!r} has a label longer than {_MAX_LABEL} characters")
        if not set(label) <= _DOMAIN_LABEL_CHARS:
            raise AccountError(
                f"domain {domain!r} may contain only letters, digits, hyphens and dots"
            )
        if label.startswith("-") or label.endswith("-"):
            raise AccountError(f"domain {domain!r} has a label that starts or ends with a hyphen")
    return name


def check_address(address: str, *, mailbox: bool = False) -> str:
    """
    Return C{address} with its domain lower-cased and its local part as
    given, or raise L{AccountError} saying what is wrong.

    @param mailbox: C{True} for an address that names a user here, whose
        local part must also be usable as a directory name.
    """
    if not isinstance(address, str) or not address:
        raise AccountError("address is empty")
    _reject_unsafe_characters(address, "address")
    local, at, domain = address.rpartition("@")
    if not at:
        raise AccountError(f"address {address!r} has no @domain part")
    if not local:
        raise AccountError(f"address {address!r} has an empty local part")
    if not domain:
        raise AccountError(f"address {address!r} has an empty domain")
    try:
        domain = check_domain(domain)
    except AccountError as error:
        raise AccountError(f"address {address!r}: {error}") from None
    _check_local_part(local, address)
    if mailbox and (set(local) & _NOT_IN_ACCOUNT or local.startswith(".")):
        raise AccountError(
            f"address {address!r} cannot name a mailbox: '/' and '\\' are not allowed in a user's name"
        )
    canonical = f"{local}@{domain}"
    if len(canonical.encode("utf-8")) > _MAX_ADDRESS:
        raise AccountError(f"address {address!r} is longer than {_MAX_ADDRESS} octets")
    return canonical


def check_alias_source(source: str) -> str:
    """
    Return an alias source in canonical form: an address, or C{@domain} for
    a domain's catch-all.
    """
    if isinstance(source, str) and source.startswith("@"):
        return "@" + check_domain(source[1:])
    return check_address(source)


def _reject_unsafe_characters(text: str, what: str) -> None:
    for character in text:
        if character.isspace() or ord(character) < 0x20 or ord(character) == 0x7F:
            raise AccountError(f"{what} {text!r} contains whitespace or a control character")
        if character in "<>":
            raise AccountError(f"{what} {text!r} contains '<' or '>': give the bare address")


def _check_local_part(local: str, address: str) -> None:
    if len(local.encode("utf-8")) > _MAX_LOCAL_PART:
        raise AccountError(f"address {address!r} has a local part longer than {_MAX_LOCAL_PART} octets")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise AccountError(f"address {address!r} has a leading, trailing or double dot in its local part")
    for character in local:
        if character == ".":
            continue
        if character.isascii() and not (character.isalnum() or character in _ATEXT_SPECIALS):
            raise AccountError(
                f"address {address!r} contains {character!r}, which is not allowed in a local part"
            )


def _encodable(text: str) -> bool:
    """Lone surrogates (from undecodable bytes) cannot reach SQLite; they name nobody."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _split(address: str) -> tuple[str, str] | None:
    """Split leniently for lookups: anything without both parts is nobody's."""
    local, at, domain = address.rpartition("@")
    if not (at and local and domain):
        return None
    return local, domain.lower()


# --- resolution --------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    """
    Where mail to one address goes.

    @ivar local: canonical accounts here, in first-seen order, no duplicates.
    @ivar remote: addresses elsewhere, in first-seen order, no duplicates.
    @ivar local_domain: whether the address itself is in a local domain
        (mail to it needs no relay permission, wherever an alias sends it).
    """

    local: tuple[str, ...] = ()
    remote: tuple[str, ...] = ()
    local_domain: bool = True


@dataclass(frozen=True)
class QuotaOverride:
    """
    One user's own quota, as the admin set it: C{None} means the config's
    default (C{limits.mailbox_quota_bytes} / C{mailbox_quota_messages}),
    0 means unlimited.
    """

    bytes: int | None = None
    messages: int | None = None


@dataclass(frozen=True)
class DomainInfo:
    """A local domain, and whether the config file (not the database) names it."""

    name: str
    from_config: bool


@dataclass(frozen=True)
class AliasInfo:
    """One alias source (an address or C{@domain}) and its targets, as stored."""

    source: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class RemovedUser:
    """
    What removing a user changed in the database.

    @ivar address: the canonical address of the user removed.
    @ivar aliases_pruned: each alias that pointed at the user, with only the
        targets that were removed (the user's address or a C{+tag} of it).
    @ivar aliases_removed: the sources of the aliases left with no target,
        and so removed altogether.
    """

    address: str
    aliases_pruned: tuple[AliasInfo, ...] = ()
    aliases_removed: tuple[str, ...] = ()


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
    parts = _split(address)
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
        return _broken(f"alias loop: {' -> '.join(chain)}", strict)
    if depth >= MAX_ALIAS_DEPTH:
        return _broken(f"alias chain longer than {MAX_ALIAS_DEPTH} hops: {' -> '.join(chain)}", strict)
    found = False
    for target in targets:
        parts = _split(target)
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


# --- the database ------------------------------------------------------------

_SCHEMA = """
CREATE TABLE domains (
    name TEXT PRIMARY KEY NOT NULL
);
CREATE TABLE users (
    key TEXT PRIMARY KEY NOT NULL,      -- address_key(address): the unique identity
    address TEXT NOT NULL,              -- local part as created, domain lower-cased
    domain TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created INTEGER NOT NULL DEFAULT (strftime('%s', 'now')),
    quota_bytes INTEGER,                -- NULL: limits.mailbox_quota_bytes, 0: unlimited
    quota_messages INTEGER              -- NULL: limits.mailbox_quota_messages, 0: unlimited
);
CREATE INDEX users_domain ON users (domain);
CREATE TABLE aliases (
    source_key TEXT NOT NULL,           -- address_key(source), or '@domain' for the catch-all
    source TEXT NOT NULL,
    domain TEXT NOT NULL,
    target_key TEXT NOT NULL,
    target TEXT NOT NULL,
    position INTEGER NOT NULL,          -- keeps targets in the order they were given
    PRIMARY KEY (source_key, target_key)
);
CREATE INDEX aliases_domain ON aliases (domain);
CREATE INDEX aliases_target ON aliases (target_key);
"""

#: What brings a database of version N - 1 to N, run in the same transaction
#: that sets the new C{user_version}: a crash leaves the old version whole.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE users ADD COLUMN quota_bytes INTEGER",
        "ALTER TABLE users ADD COLUMN quota_messages INTEGER",
    ),
}

_T = TypeVar("_T")


class AccountsDatabase:
    """
    The accounts in SQLite, synchronously.

    Safe to use from several processes at once (the ``mailapp`` command and
    the running server): the database is in WAL mode, so readers never wait
    for the writer, and writers wait up to L{BUSY_TIMEOUT_MS} for each other.
    One instance is one connection, for one thread at a time.

    Domains named in the config file (C{config_domains}) are local without
    being stored, and cannot be removed here.
    """

    def __init__(
        self,
        path: Path,
        config_domains: Iterable[str] = (),
        *,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.path = Path(path)
        self._config_domains = frozenset(domain.lower() for domain in config_domains)
        self._hasher = hasher if hasher is not None else default_password_hasher()
        self._connection = self._open(self.path)

    # -- connection and schema --

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Password hashes live here: create the file readable by its owner
        # only (SQLite gives the -wal and -shm files the same permissions).
        # Only when it is missing: closing any descriptor of a file drops every
        # POSIX lock this process holds on it, SQLite's included, so reopening
        # an existing database this way would break its locking.
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        connection = sqlite3.connect(
            path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # transactions are explicit, see _write
            check_same_thread=False,  # Accounts closes every thread's connection from one thread
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL mode
            with _transaction(connection):
                version = connection.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            connection.execute(statement)
                    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version < SCHEMA_VERSION:
                    for step in range(version + 1, SCHEMA_VERSION + 1):
                        for statement in _MIGRATIONS[step]:
                            connection.execute(statement)
                    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    log.info(
                        "accounts database {path} upgraded from schema {old} to {new}",
                        log_event=logevents.ACCOUNTS_SCHEMA_UPGRADED,
                        path=str(path),
                        old=version,
                        new=SCHEMA_VERSION,
                    )
                elif version > SCHEMA_VERSION:
                    raise AccountError(
                        f"{path} has schema version {version}, newer than this mailapp "
                        f"understands ({SCHEMA_VERSION}): upgrade mailapp"
                    )
        except BaseException:
            connection.close()
            raise
        return connection

    def close(self) -> None:
        """Close the connection; the instance is unusable afterwards."""
        self._connection.close()

    def __enter__(self) -> AccountsDatabase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _rows(self, query: str, *parameters: Any) -> list[tuple[Any, ...]]:
        return self._connection.execute(query, parameters).fetchall()

    def _write(self, change: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run C{change} in one immediate transaction: all of it or none of it."""
        with _transaction(self._connection):
            return change(self._connection)

    # -- the AddressDirectory lookups --

    def is_local_domain(self, domain: str) -> bool:
        """Whether C{domain} is in the config file or the database (any case)."""
        name = domain.lower()
        if name in self._config_domains:
            return True
        return bool(self._rows("SELECT 1 FROM domains WHERE name = ?", name))

    def find_user(self, address: str) -> str | None:
        """The canonical address of user C{address} (any case), or C{None}."""
        rows = self._rows("SELECT address FROM users WHERE key = ?", address_key(address))
        return rows[0][0] if rows else None

    def first_user(self, domain: str) -> str | None:
        """See L{AddressDirectory.first_user}."""
        for condition, arguments in (("WHERE domain = ?", (domain.lower(),)), ("", ())):
            rows = self._rows(f"SELECT address FROM users {condition} ORDER BY created, rowid LIMIT 1", *arguments)
            if rows:
                return str(rows[0][0])
        return None

    def find_alias(self, source: str) -> tuple[str, ...] | None:
        """The targets of alias C{source} (any case) in the order given, or C{None}."""
        rows = self._rows(
            "SELECT target FROM aliases WHERE source_key = ? ORDER BY position", address_key(source)
        )
        return tuple(row[0] for row in rows) or None

    # -- domains --

    def add_domain(self, name: str) -> str:
        """Make C{name} local; return it lower-cased."""
        domain = check_domain(name)
        if domain in self._config_domains:
            raise AccountError(f"domain {domain} is already local: it is in the config file")

        def change(connection: sqlite3.Connection) -> None:
            if connection.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone():
                raise AccountError(f"domain {domain} exists already")
            connection.execute("INSERT INTO domains (name) VALUES (?)", (domain,))

        self._write(change)
        return domain

    def remove_domain(self, name: str) -> str:
        """
        Stop treating C{name} as local. Refused while users or aliases remain,
        so that no mailbox silently stops receiving mail.
        """
        domain = check_domain(name)
        if domain in self._config_domains:
            raise AccountError(
                f"domain {domain} comes from the config file; remove it there, not with this command"
            )

        def change(connection: sqlite3.Connection) -> None:
            if not connection.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone():
                raise AccountError(f"unknown domain {domain}")
            users = connection.execute("SELECT count(*) FROM users WHERE domain = ?", (domain,)).fetchone()[0]
            aliases = connection.execute(
                "SELECT count(DISTINCT source_key) FROM aliases WHERE domain = ?", (domain,)
            ).fetchone()[0]
            if users or aliases:
                raise AccountError(
                    f"domain {domain} still has {users} user(s) and {aliases} alias(es); remove them first"
                )
            connection.execute("DELETE FROM domains WHERE name = ?", (domain,))

        self._write(change)
        return domain

    def list_domains(self) -> list[DomainInfo]:
        """Every local domain, sorted, each marked with where it comes from."""
        stored = {row[0] for row in self._rows("SELECT name FROM domains")}
        names = sorted(stored | self._config_domains)
        return [DomainInfo(name, name in self._config_domains) for name in names]

    def _require_local_domain(self, domain: str) -> None:
        if not self.is_local_domain(domain):
            raise AccountError(
                f"unknown domain {domain}: add it with 'mailapp domain add {domain}' "
                "or list it under [domains] local in the config file"
            )

    # -- users --

    def check_new_user(self, address: str) -> str:
        """
        Raise L{AccountError} unless user C{address} could be created now;
        return its canonical address. Lets the command refuse before it
        prompts for a password.
        """
        canonical = check_address(address, mailbox=True)
        self._require_local_domain(canonical.rpartition("@")[2])
        key = address_key(canonical)
        existing = self.find_user(canonical)
        if existing is not None:
            raise AccountError(f"user {existing} exists already")
        if self._rows("SELECT 1 FROM aliases WHERE source_key = ?", key):
            raise AccountError(f"{canonical} is an alias; remove the alias first")
        return canonical

    def add_user(self, address: str, password: str) -> str:
        """Create user C{address}; return its canonical address."""
        canonical = check_address(address, mailbox=True)
        domain = canonical.rpartition("@")[2]
        self._require_local_domain(domain)
        password_hash = self._hash(password)
        key = address_key(canonical)

        def change(connection: sqlite3.Connection) -> None:
            existing = connection.execute("SELECT address FROM users WHERE key = ?", (key,)).fetchone()
            if existing:
                raise AccountError(f"user {existing[0]} exists already")
            if connection.execute("SELECT 1 FROM aliases WHERE source_key = ?", (key,)).fetchone():
                raise AccountError(f"{canonical} is an alias; remove the alias first")
            connection.execute(
                "INSERT INTO users (key, address, domain, password_hash) VALUES (?, ?, ?, ?)",
                (key, canonical, domain, password_hash),
            )

        self._write(change)
        return canonical

    def remove_user(self, address: str) -> RemovedUser:
        """
        Delete user C{address} from the database, and every alias target
        that names it (its own address or a C{+tag} of it), in one
        transaction: an alias left pointing at a deleted user would hand its
        mail to whoever is created under that address next. An alias whose
        last target goes is removed with it.

        The user's mail on disk is not touched here; the caller retires it
        (L{mailapp.store.retire_mailbox}).
        """
        canonical = check_address(address)
        key = address_key(canonical)

        def change(connection: sqlite3.Connection) -> RemovedUser:
            row = connection.execute("SELECT address FROM users WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise AccountError(f"no such user {address}")
            connection.execute("DELETE FROM users WHERE key = ?", (key,))
            pruned: dict[str, tuple[str, list[str]]] = {}
            for source_key, source, target_key, target in connection.execute(
                "SELECT source_key, source, target_key, target FROM aliases ORDER BY source_key, position"
            ).fetchall():
                if target_names_user(target_key, key):
                    pruned.setdefault(source_key, (source, []))[1].append(target)
                    connection.execute(
                        "DELETE FROM aliases WHERE source_key = ? AND target_key = ?", (source_key, target_key)
                    )
            emptied = [
                source
                for source_key, (source, _) in pruned.items()
                if not connection.execute("SELECT 1 FROM aliases WHERE source_key = ?", (source_key,)).fetchone()
            ]
            return RemovedUser(
                str(row[0]),
                tuple(AliasInfo(source, tuple(targets)) for source, targets in pruned.values()),
                tuple(emptied),
            )

        return self._write(change)

    def aliases_pointing_at(self, address: str) -> list[str]:
        """The alias sources that name C{address} as a target (for a warning)."""
        rows = self._rows(
            "SELECT DISTINCT source FROM aliases WHERE target_key = ? ORDER BY source",
            address_key(address),
        )
        return [row[0] for row in rows]

    def set_password(self, address: str, password: str) -> str:
        """Replace the password of user C{address}; return its canonical address."""
        key = address_key(check_address(address))
        password_hash = self._hash(password)

        def change(connection: sqlite3.Connection) -> str:
            row = connection.execute("SELECT address FROM users WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise AccountError(f"no such user {address}")
            connection.execute("UPDATE users SET password_hash = ? WHERE key = ?", (password_hash, key))
            return str(row[0])

        return self._write(change)

    def list_users(self, domain: str | None = None) -> list[str]:
        """Canonical addresses, by domain then name; only C{domain}'s if given."""
        if domain is None:
            rows = self._rows("SELECT address FROM users ORDER BY domain, key")
        else:
            name = check_domain(domain)
            self._require_local_domain(name)
            rows = self._rows("SELECT address FROM users WHERE domain = ? ORDER BY key", name)
        return [row[0] for row in rows]

    def count_users(self) -> int:
        """How many users there are."""
        return int(self._rows("SELECT count(*) FROM users")[0][0])

    # -- passwords --

    def _hash(self, password: str) -> str:
        if not isinstance(password, str) or password == "":
            raise AccountError("empty passwords are not allowed")
        if "\x00" in password:
            raise AccountError("password contains a NUL character")
        return self._hasher.hash(password)

    def lookup_password_hash(self, address: str) -> tuple[str, str] | None:
        """
        C{(canonical address, hash)} of the user C{address} in any case, or
        C{None} for anything that is not a user (malformed names included).
        """
        if _split(address) is None or not _encodable(address):
            return None
        rows = self._rows("SELECT address, password_hash FROM users WHERE key = ?", address_key(address))
        return (rows[0][0], rows[0][1]) if rows else None

    def update_hash(self, canonical: str, password_hash: str) -> None:
        """Store a new hash for an existing user (a rehash after login)."""
        self._write(
            lambda connection: connection.execute(
                "UPDATE users SET password_hash = ? WHERE key = ?", (password_hash, address_key(canonical))
            )
        )

    # -- quotas --

    def quota_override(self, address: str) -> QuotaOverride | None:
        """User C{address}'s own quota (C{None} fields: the config's default), or C{None} when no such user."""
        if _split(address) is None or not _encodable(address):
            return None
        rows = self._rows("SELECT quota_bytes, quota_messages FROM users WHERE key = ?", address_key(address))
        return QuotaOverride(rows[0][0], rows[0][1]) if rows else None

    def set_quota(self, address: str, override: QuotaOverride) -> str:
        """
        Replace user C{address}'s quota with C{override} (both fields: a
        C{None} goes back to the config's default); return its canonical address.
        """
        for value in (override.bytes, override.messages):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise AccountError(f"a quota is 0 (unlimited) or a positive integer, not {value!r}")
        key = address_key(check_address(address))

        def change(connection: sqlite3.Connection) -> str:
            row = connection.execute("SELECT address FROM users WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise AccountError(f"no such user {address}")
            connection.execute(
                "UPDATE users SET quota_bytes = ?, quota_messages = ? WHERE key = ?",
                (override.bytes, override.messages, key),
            )
            return str(row[0])

        return self._write(change)

    # -- aliases --

    def add_alias(self, source: str, targets: Iterable[str]) -> tuple[str, tuple[str, ...]]:
        """
        Make mail to C{source} (an address or C{@domain}) go to every one of
        C{targets} as well as to any targets it already has.

        Refused if the source is a user, a target is already there, a local
        target is nobody, or the change would make an alias loop.

        @return: the canonical source and the targets added.
        """
        canonical_source = check_alias_source(source)
        domain = canonical_source.rpartition("@")[2]
        self._require_local_domain(domain)
        canonical_targets = tuple(dict.fromkeys(check_address(target) for target in targets))
        if not canonical_targets:
            raise AccountError("an alias needs at least one target")
        source_key = address_key(canonical_source)
        for target in canonical_targets:
            if address_key(target) == source_key:
                raise AccountError(f"alias {canonical_source} cannot point at itself")

        def change(connection: sqlite3.Connection) -> None:
            if connection.execute("SELECT 1 FROM users WHERE key = ?", (source_key,)).fetchone():
                raise AccountError(f"{canonical_source} is a user; an address cannot be both a user and an alias")
            position = connection.execute(
                "SELECT coalesce(max(position), -1) FROM aliases WHERE source_key = ?", (source_key,)
            ).fetchone()[0]
            for target in canonical_targets:
                target_key = address_key(target)
                if connection.execute(
                    "SELECT 1 FROM aliases WHERE source_key = ? AND target_key = ?", (source_key, target_key)
                ).fetchone():
                    raise AccountError(f"alias {canonical_source} -> {target} exists already")
                position += 1
                connection.execute(
                    "INSERT INTO aliases (source_key, source, domain, target_key, target, position) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (source_key, canonical_source, domain, target_key, target, position),
                )
            # This transaction sees the new rows, so the check covers them.
            check_alias(canonical_source, self)

        self._write(change)
        return canonical_source, canonical_targets


    def remove_alias(self, source: str, target: str | None = None) -> list[str]:
        """
        Remove C{source} -> C{target}, or every target of C{source} when
        C{target} is C{None}. Returns the targets removed.
        """
        canonical_source = check_alias_source(source)
        source_key = address_key(canonical_source)
        target_key = None if target is None else address_key(check_address(target))

        def change(connection: sqlite3.Connection) -> list[str]:
            if target_key is None:
                rows = connection.execute(
                    "SELECT target FROM aliases WHERE source_key = ? ORDER BY position", (source_key,)
                ).fetchall()
                if not rows:
                    raise AccountError(f"no such alias {canonical_source}")
                connection.execute("DELETE FROM aliases WHERE source_key = ?", (source_key,))
            else:
                rows = connection.execute(
                    "SELECT target FROM aliases WHERE source_key = ? AND target_key = ?",
                    (source_key, target_key),
                ).fetchall()
                if not rows:
                    raise AccountError(f"no such alias {canonical_source} -> {target}")
                connection.execute(
                    "DELETE FROM aliases WHERE source_key = ? AND target_key = ?", (source_key, target_key)
                )
            return [row[0] for row in rows]

        return self._write(change)

    def list_aliases(self) -> list[AliasInfo]:
        """Every alias with its targets, by domain then source."""
        grouped: dict[str, list[str]] = {}
        sources: dict[str, str] = {}
        for source_key, source, target in self._rows(
            "SELECT source_key, source, target FROM aliases ORDER BY domain, source_key, position"
        ):
            sources.setdefault(source_key, source)
            grouped.setdefault(source_key, []).append(target)
        return [AliasInfo(sources[key], tuple(targets)) for key, targets in grouped.items()]

    # -- resolution --

    def resolve(self, address: str) -> Resolution | None:
        """See L{resolve_address}."""
        return resolve_address(address, self)

    def owns_address(self, account: str, address: str) -> bool:
        """See L{owns_address}."""
        return owns_address(account, address, self)


class _transaction:
    """
    C{BEGIN IMMEDIATE} … C{COMMIT}, or C{ROLLBACK} on any exception.

    IMMEDIATE takes the write lock at the start, so two writers queue on the
    busy timeout instead of one failing half-way with "database is locked".
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self._connection.execute("COMMIT")
        else:
            self._connection.execute("ROLLBACK")


# --- the server's view -------------------------------------------------------


class VerifiedPasswords:
    """
    Passwords verified recently, so that a client that logs in again and
    again (IMAP clients open several connections; phones reconnect all day)
    does not pay the KDF every time: Dovecot's auth cache, in short.

    Only successes are kept, so every failed guess still pays the full
    argon2id. An entry holds the stored hash it was verified against (a
    password change or reset invalidates it at once) and an HMAC-SHA256 of
    the password under a key made at random for this process, never the
    password; it expires after C{ttl} seconds. At most C{size} entries.
    """

    def __init__(self, clock: Callable[[], float], ttl: float, size: int = 10_000) -> None:
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._key = os.urandom(32)
        self._entries: OrderedDict[str, tuple[str, bytes, float]] = OrderedDict()

    def _mac(self, password: bytes) -> bytes:
        return hmac.new(self._key, password, hashlib.sha256).digest()

    def check(self, account: str, stored_hash: str, password: bytes) -> bool:
        entry = self._entries.get(account)
        if entry is None or self._ttl <= 0:
            return False
        hash_then, mac, expires = entry
        if expires <= self._clock() or hash_then != stored_hash:
            del self._entries[account]
            return False
        return hmac.compare_digest(mac, self._mac(password))

    def remember(self, account: str, stored_hash: str, password: bytes) -> None:
        if self._ttl <= 0:
            return
        self._entries[account] = (stored_hash, self._mac(password), self._clock() + self._ttl)
        self._entries.move_to_end(account)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


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
        # An unknown user is checked against this hash, made with the same
        # parameters as new hashes, so that both failures take the same time.
        self._dummy_hash = self._hasher.hash(os.urandom(16).hex())
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
                database._config_domains = frozenset(domain.lower() for domain in self._config_domains)

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

    def ownsAddress(self, account: str, address: str) -> Deferred[bool]:
        return self._inDatabase(lambda database: database.owns_address(account, address))

    def countUsers(self) -> Deferred[int]:
        return self._inDatabase(lambda database: database.count_users())

    def quotaOverride(self, account: str) -> Deferred[QuotaOverride | None]:
        return self._inDatabase(lambda database: database.quota_override(account))

    def authenticate(self, username: str, password: bytes) -> Deferred[str]:
        return ensureDeferred(self._authenticate(username, password))

    async def _authenticate(self, username: str, password: bytes) -> str:
        found = await self._inDatabase(lambda database: database.lookup_password_hash(username))
        if found is None:
            await self._queuedVerify(self._dummy_hash, password)
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

    async def _queuedVerify(self, password_hash: str, password: bytes) -> tuple[bool, bool]:
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

