"""
Domains, users and aliases: who receives mail here, and who may log in.

Three layers, from pure to asynchronous:

* L{resolve_address} and the address checks are pure functions over an
  L{AddressDirectory} (L{mailapp.accounts.addresses},
  L{mailapp.accounts.resolution}), so that the SQLite database and the
  in-memory fake in L{mailapp.testing} share one set of rules.
* L{AccountsDatabase} (L{mailapp.accounts.database}, over the file of
  L{mailapp.accounts.schema}) is the synchronous SQLite store used directly
  by the ``mailapp`` command and, one connection per thread, by the server.
* L{Accounts} (L{mailapp.accounts.server}) is the server's
  L{mailapp.interfaces.IAccounts}: every database call and every password
  hash (L{mailapp.accounts.passwords}) runs in a thread, so the reactor
  never blocks.

The records they hand out are in L{mailapp.accounts.records}; the allow
and block lists of senders follow L{mailapp.accounts.senderlists}. The command
changes the database while the server runs; nothing here caches past a
single call, so the server sees a change at its next call.

This package re-exports every public name of its modules: import from
C{mailapp.accounts}, not from the module that happens to define a name.
"""

from mailapp.accounts.addresses import address_key, check_address, check_alias_source, check_domain
from mailapp.accounts.database import AccountsDatabase
from mailapp.accounts.passwords import (
    MIN_PASSWORD_LENGTH,
    VerifiedPasswords,
    check_new_password,
    default_password_hasher,
)
from mailapp.accounts.profiles import check_profile
from mailapp.accounts.records import AliasInfo, DomainInfo, Profile, QuotaOverride, RemovedUser, Resolution, SenderRule, SenderVerdict
from mailapp.accounts.resolution import (
    MAX_ALIAS_DEPTH,
    AddressDirectory,
    check_alias,
    owns_address,
    resolve_address,
    target_names_user,
)
from mailapp.accounts.senderlists import (
    ALLOW,
    BLOCK,
    SENDER_ACTIONS,
    check_action,
    check_sender_pattern,
    sender_candidates,
    sender_verdict,
)
from mailapp.accounts.schema import ACCOUNTS_FILENAME, BUSY_TIMEOUT_MS, SCHEMA_VERSION, accounts_path
from mailapp.accounts.server import Accounts
from mailapp.errors import AccountError

__all__ = [
    "ACCOUNTS_FILENAME",
    "ALLOW",
    "BLOCK",
    "SENDER_ACTIONS",
    "BUSY_TIMEOUT_MS",
    "MAX_ALIAS_DEPTH",
    "MIN_PASSWORD_LENGTH",
    "SCHEMA_VERSION",
    "AccountError",
    "Accounts",
    "AccountsDatabase",
    "AddressDirectory",
    "AliasInfo",
    "DomainInfo",
    "Profile",
    "QuotaOverride",
    "RemovedUser",
    "Resolution",
    "SenderRule",
    "SenderVerdict",
    "VerifiedPasswords",
    "accounts_path",
    "address_key",
    "check_action",
    "check_address",
    "check_alias",
    "check_alias_source",
    "check_domain",
    "check_new_password",
    "check_profile",
    "check_sender_pattern",
    "default_password_hasher",
    "owns_address",
    "resolve_address",
    "sender_candidates",
    "sender_verdict",
    "target_names_user",
]
