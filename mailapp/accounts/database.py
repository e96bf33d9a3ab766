"""
The accounts in SQLite, synchronously: the queries and the changes behind
every ``mailapp`` command and every lookup of the running server.

One L{AccountsDatabase} is one connection for one thread; the command uses
one directly, the server one per worker thread (L{mailapp.accounts.server}).
What the file looks like and how it is opened is L{mailapp.accounts.schema};
the rules it enforces on names and aliases are the pure functions of
L{mailapp.accounts.addresses} and L{mailapp.accounts.resolution}, which the
in-memory fake shares.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from argon2 import PasswordHasher

from mailapp.accounts.addresses import (
    address_key,
    domain_key,
    check_address,
    check_alias_source,
    check_domain,
    is_encodable,
    split_address,
)
from mailapp.accounts.passwords import default_password_hasher
from mailapp.accounts.profiles import check_profile
from mailapp.accounts.records import AliasInfo, DomainInfo, Profile, QuotaOverride, RemovedUser, Resolution, SenderRule, SenderVerdict
from mailapp.accounts.resolution import (
    DOMAIN_DIRECTORY_LIMIT,
    DomainDirectory,
    check_alias,
    owns_address,
    resolve_address,
    target_names_user,
)
from mailapp.accounts.senderlists import check_action, check_sender_pattern, sender_verdict
from mailapp.accounts.schema import open_database, transaction
from mailapp.errors import AccountError

__all__ = ["AccountsDatabase"]

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
        self._config_domains = frozenset(domain_key(domain) for domain in config_domains)
        self._hasher = hasher if hasher is not None else default_password_hasher()
        self._connection = open_database(self.path)

    # -- connection and schema --

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
        with transaction(self._connection):
            return change(self._connection)

    # -- the AddressDirectory lookups --

    def is_local_domain(self, domain: str) -> bool:
        """Whether C{domain} is in the config file or the database (any case, U-labels or A-labels)."""
        name = domain_key(domain)
        if name in self._config_domains:
            return True
        return bool(self._rows("SELECT 1 FROM domains WHERE name = ?", name))

    def find_user(self, address: str) -> str | None:
        """The canonical address of user C{address} (any case), or C{None}."""
        rows = self._rows("SELECT address FROM users WHERE key = ?", address_key(address))
        return rows[0][0] if rows else None

    def first_user(self, domain: str) -> str | None:
        """See L{AddressDirectory.first_user}."""
        for condition, arguments in (("WHERE domain = ?", (domain_key(domain),)), ("", ())):
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
            connection.execute("DELETE FROM sender_rules WHERE owner = ?", (domain,))

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
            # Its lists go too: a user created later under this address starts with none.
            connection.execute("DELETE FROM sender_rules WHERE owner = ?", (key,))
            connection.execute("DELETE FROM profiles WHERE key = ?", (key,))
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
        if split_address(address) is None or not is_encodable(address):
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

    # -- profiles --

    def profile(self, address: str) -> Profile | None:
        """User C{address}'s display name and signature (empty when never set), or C{None} when no such user."""
        if split_address(address) is None or not is_encodable(address):
            return None
        key = address_key(address)
        if not self._rows("SELECT 1 FROM users WHERE key = ?", key):
            return None
        rows = self._rows("SELECT display_name, signature FROM profiles WHERE key = ?", key)
        return Profile(rows[0][0], rows[0][1]) if rows else Profile()

    def set_profile(self, address: str, display_name: str, signature: str) -> Profile:
        """Set user C{address}'s display name and signature (L{check_profile}); the profile stored."""
        profile = check_profile(display_name, signature)
        key = address_key(check_address(address))

        def change(connection: sqlite3.Connection) -> None:
            if connection.execute("SELECT 1 FROM users WHERE key = ?", (key,)).fetchone() is None:
                raise AccountError(f"no such user {address}")
            connection.execute(
                "INSERT INTO profiles (key, display_name, signature) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET display_name = excluded.display_name, signature = excluded.signature",
                (key, profile.display_name, profile.signature),
            )

        self._write(change)
        return profile

    # -- quotas --

    def quota_override(self, address: str) -> QuotaOverride | None:
        """User C{address}'s own quota (C{None} fields: the config's default), or C{None} when no such user."""
        if split_address(address) is None or not is_encodable(address):
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

    # -- allow and block lists of senders --

    def _list_owner(self, owner: str) -> str:
        """
        The stored owner of the list C{owner} names (a user's L{address_key},
        or a local domain), or L{AccountError} when it is neither a user nor a
        local domain: a list nobody's mail passes through would do nothing.
        """
        if "@" in owner:
            canonical = check_address(owner)
            if self.find_user(canonical) is None:
                raise AccountError(f"no such user {owner}")
            return address_key(canonical)
        domain = check_domain(owner)
        self._require_local_domain(domain)
        return domain

    def set_sender_rule(self, owner: str, pattern: str, action: str) -> tuple[SenderRule, str | None]:
        """
        Put C{pattern} on C{owner}'s list with C{action} (C{allow} or
        C{block}), replacing the entry's action if it is there already.

        @return: the entry, and the action it had before (C{None}: new).
        """
        action = check_action(action)
        entry = check_sender_pattern(pattern)
        stored = self._list_owner(owner)

        def change(connection: sqlite3.Connection) -> str | None:
            row = connection.execute(
                "SELECT action FROM sender_rules WHERE owner = ? AND pattern = ?", (stored, entry)
            ).fetchone()
            connection.execute(
                "INSERT INTO sender_rules (owner, pattern, action) VALUES (?, ?, ?) "
                "ON CONFLICT (owner, pattern) DO UPDATE SET action = excluded.action",
                (stored, entry, action),
            )
            return str(row[0]) if row else None

        return SenderRule(stored, entry, action), self._write(change)

    def remove_sender_rule(self, owner: str, pattern: str) -> SenderRule:
        """Take C{pattern} off C{owner}'s list; return the entry removed."""
        entry = check_sender_pattern(pattern)
        stored = self._list_owner(owner)

        def change(connection: sqlite3.Connection) -> SenderRule:
            row = connection.execute(
                "SELECT action FROM sender_rules WHERE owner = ? AND pattern = ?", (stored, entry)
            ).fetchone()
            if row is None:
                raise AccountError(f"{entry} is not on the list of {stored}")
            connection.execute("DELETE FROM sender_rules WHERE owner = ? AND pattern = ?", (stored, entry))
            return SenderRule(stored, entry, str(row[0]))

        return self._write(change)

    def sender_rules(self, owner: str | None = None) -> list[SenderRule]:
        """C{owner}'s list, or every list when C{None}; by owner, action, then entry."""
        if owner is None:
            rows = self._rows("SELECT owner, pattern, action FROM sender_rules ORDER BY owner, action, pattern")
        else:
            rows = self._rows(
                "SELECT owner, pattern, action FROM sender_rules WHERE owner = ? ORDER BY action, pattern",
                self._list_owner(owner),
            )
        return [SenderRule(str(row[0]), str(row[1]), str(row[2])) for row in rows]

    def _rules_of(self, owner: str) -> dict[str, str]:
        return {str(pattern): str(action) for pattern, action in self._rows(
            "SELECT pattern, action FROM sender_rules WHERE owner = ?", owner
        )}

    def sender_verdict(self, recipient: str, sender: str) -> SenderVerdict | None:
        """
        What the lists of C{recipient} say about envelope sender C{sender}:
        the user's (when the recipient reaches exactly one user here, through
        a C{+tag} or an alias too), then the recipient's domain's. C{None}
        when neither names the sender.
        """
        if split_address(recipient) is None or not is_encodable(recipient) or not is_encodable(sender):
            return None
        resolution = resolve_address(recipient, self)
        return sender_verdict(self._rules_of, resolution, recipient.rpartition("@")[2], sender)

    # -- resolution --

    def resolve(self, address: str) -> Resolution | None:
        """See L{resolve_address}."""
        return resolve_address(address, self)

    def domain_directory(self, domain: str, limit: int = DOMAIN_DIRECTORY_LIMIT) -> DomainDirectory | None:
        """
        All of C{domain} in one L{DomainDirectory}, or C{None} when it has
        more than C{limit} users and aliases (look its addresses up one by one).
        """
        name = domain_key(domain)
        listed = self._rows("SELECT name FROM domains LIMIT ?", limit + 1)
        local_domains = frozenset(self._config_domains | {row[0] for row in listed}) if len(listed) <= limit else None
        if not self.is_local_domain(name):
            return DomainDirectory(name, local=False, local_domains=local_domains)
        users = self._rows("SELECT key, address FROM users WHERE domain = ? ORDER BY created, rowid LIMIT ?", name, limit + 1)
        aliases = self._rows(
            "SELECT source_key, target FROM aliases WHERE domain = ? ORDER BY source_key, position LIMIT ?", name, limit + 1
        )
        if len(users) + len(aliases) > limit:
            return None
        targets: dict[str, list[str]] = {}
        for source_key, target in aliases:
            targets.setdefault(source_key, []).append(target)
        return DomainDirectory(
            name,
            local=True,
            users={key: address for key, address in users},
            aliases={key: tuple(found) for key, found in targets.items()},
            first=users[0][1] if users else None,
            local_domains=local_domains,
        )

    def owns_address(self, account: str, address: str) -> bool:
        """See L{owns_address}."""
        return owns_address(account, address, self)
