"""
The records the accounts hand out: where an address goes, a user's own
quota, and what the command lists and changes.

Frozen dataclasses with no behaviour, in a module of their own so that the
database, the server's L{mailapp.interfaces.IAccounts}, the quota checks and
the fakes share them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AliasInfo", "DomainInfo", "Profile", "QuotaOverride", "RemovedUser", "Resolution", "SenderRule", "SenderVerdict"]


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


@dataclass(frozen=True)
class SenderRule:
    """
    One entry of an allow or block list.

    @ivar owner: whose list: a user's canonical address, or a domain.
    @ivar pattern: the sender it names: an address, a domain or C{*.domain}
        (L{mailapp.accounts.senderlists}), lower-cased.
    @ivar action: C{"allow"} or C{"block"}.
    """

    owner: str
    pattern: str
    action: str


@dataclass(frozen=True)
class SenderVerdict:
    """
    What a recipient's lists say about one sender: the entry that matched.

    @ivar action: C{"allow"} or C{"block"}.
    @ivar owner: whose list decided: the user's L{address_key}, or its domain.
    @ivar pattern: the entry that matched.
    @ivar accounts: the local accounts the recipient reaches (its copies the
        verdict covers), in the order of L{Resolution.local}.
    """

    action: str
    owner: str
    pattern: str
    accounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """
    What a user set about themselves: the display name of their From
    (empty: the bare address) and the signature compose offers below
    "-- " (empty: none).
    """

    display_name: str = ""
    signature: str = ""
