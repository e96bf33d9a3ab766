"""
The accounts database file: where it lives, its tables, how an older one
is upgraded, and how it is opened and written.

Kept apart from the queries (L{mailapp.accounts.database}) because it is
what a schema change touches: bump L{SCHEMA_VERSION}, change L{_SCHEMA} for
new files and add the step to L{_MIGRATIONS} for old ones. The ``mailapp``
command and the server open the same file at once; the settings here
(WAL, the busy timeout, C{BEGIN IMMEDIATE}) are what make that safe.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from twisted.logger import Logger

from mailapp import logevents
from mailapp.errors import AccountError

__all__ = ["ACCOUNTS_FILENAME", "BUSY_TIMEOUT_MS", "SCHEMA_VERSION", "accounts_path", "open_database", "transaction"]

log = Logger()

#: The database file inside the state directory.
ACCOUNTS_FILENAME = "accounts.sqlite3"

#: Bumped whenever the schema changes; stored with ``PRAGMA user_version``.
#: 2 added each user's quota override (C{quota_bytes}, C{quota_messages});
#: 3 the allow and block lists of senders (C{sender_rules});
#: 4 each user's display name and signature (C{profiles}).
SCHEMA_VERSION = 4

#: How long a connection waits for another process's write lock (the CLI and
#: the server share the file) before failing with "database is locked".
BUSY_TIMEOUT_MS = 10_000


def accounts_path(state_dir: Path) -> Path:
    """Where the accounts database of a state directory lives."""
    return Path(state_dir) / ACCOUNTS_FILENAME


_SENDER_RULES = """
CREATE TABLE sender_rules (
    owner TEXT NOT NULL,                -- address_key(user), or a domain: whose list
    pattern TEXT NOT NULL,              -- an address, a domain or *.domain, lower-cased
    action TEXT NOT NULL CHECK (action IN ('allow', 'block')),
    created INTEGER NOT NULL DEFAULT (strftime('%s', 'now')),
    PRIMARY KEY (owner, pattern)
)
"""

_PROFILES = """
CREATE TABLE profiles (
    key TEXT PRIMARY KEY NOT NULL,      -- address_key(user)
    display_name TEXT NOT NULL DEFAULT '',
    signature TEXT NOT NULL DEFAULT ''
)
"""

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
""" + _SENDER_RULES + ";" + _PROFILES

#: What brings a database of version N - 1 to N, run in the same transaction
#: that sets the new C{user_version}: a crash leaves the old version whole.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE users ADD COLUMN quota_bytes INTEGER",
        "ALTER TABLE users ADD COLUMN quota_messages INTEGER",
    ),
    3: (_SENDER_RULES,),
    4: (_PROFILES,),
}


def open_database(path: Path) -> sqlite3.Connection:
    """
    A connection to the accounts database at C{path}, created (owner-only)
    or upgraded to L{SCHEMA_VERSION} first; L{AccountError} if it was made
    by a newer mailapp.
    """
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
        with transaction(connection):
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


class transaction:
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
