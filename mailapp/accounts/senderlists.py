"""
Allow and block lists of senders, per user and per domain: what an entry
may be, and which entry a sender matches.

Pure functions, shared by the SQLite database (L{mailapp.accounts.database})
and the in-memory fake (L{mailapp.testing.accounts}), so that the command,
the webmail and the MX accept the same entries and decide alike.

An entry (a I{pattern}) is one of:

* an address, C{alice@example.org}: that sender only (any case);
* a domain, C{example.org}: every sender at that domain, not its subdomains;
* a wildcard, C{*.example.org}: every sender at a subdomain of
  C{example.org} (not C{example.org} itself: list both to mean both).

Within one list the most specific entry wins (the address, then the domain,
then the nearest wildcard), so that C{block example.org} with C{allow
boss@example.org} lets the boss through. Between the lists of one
recipient, the user's own list wins over its domain's: a domain's
administrator sets the default, the user the exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from mailapp.accounts.addresses import address_key, check_address, check_domain, split_address
from mailapp.accounts.records import Resolution, SenderVerdict
from mailapp.errors import AccountError

__all__ = ["ALLOW", "BLOCK", "SENDER_ACTIONS", "check_action", "check_sender_pattern", "list_verdict", "sender_candidates", "sender_verdict"]

#: The two actions an entry takes.
ALLOW = "allow"
BLOCK = "block"
SENDER_ACTIONS = (ALLOW, BLOCK)

_WILDCARD = "*."


def check_action(action: str) -> str:
    """C{action} if it is one of L{SENDER_ACTIONS}, else L{AccountError}."""
    if action not in SENDER_ACTIONS:
        raise AccountError(f"a sender list entry is 'allow' or 'block', not {action!r}")
    return action


def check_sender_pattern(pattern: str) -> str:
    """
    Return C{pattern} (an address, a domain or C{*.domain}) in its stored
    form, lower-cased, or raise L{AccountError} saying what is wrong.

    Lower-cased whole, address included: a sender list is matched without
    regard to case, as mailapp matches its own users (L{address_key}).
    """
    if not isinstance(pattern, str) or not pattern:
        raise AccountError("sender or domain is empty: give an address, a domain or *.domain")
    if "@" in pattern:
        if pattern.startswith("@"):
            raise AccountError(f"{pattern!r}: give a domain without the @ ({pattern[1:]}), or a whole address")
        return address_key(check_address(pattern))
    if pattern.startswith(_WILDCARD):
        return _WILDCARD + check_domain(pattern[len(_WILDCARD) :])
    if "*" in pattern:
        raise AccountError(f"{pattern!r}: a wildcard is only allowed as a leading '*.' (as in *.example.org)")
    return check_domain(pattern)


def sender_candidates(sender: str) -> list[str]:
    """
    The patterns that could match envelope sender C{sender}, most specific
    first: the address, its domain, then C{*.parent} for each parent domain
    from the nearest up. Empty for the null sender or a malformed one,
    which no list names.
    """
    parts = split_address(sender)
    if parts is None:
        return []
    domain = parts[1]
    labels = domain.split(".")
    return [address_key(sender), domain] + [_WILDCARD + ".".join(labels[index:]) for index in range(1, len(labels))]


def list_verdict(rules: Mapping[str, str], owner: str, sender: str) -> SenderVerdict | None:
    """The most specific of C{rules} (pattern -> action, one list) matching C{sender}, or C{None}."""
    for candidate in sender_candidates(sender):
        action = rules.get(candidate)
        if action is not None:
            return SenderVerdict(action, owner, candidate)
    return None


def sender_verdict(
    rules_of: Callable[[str], Mapping[str, str]], resolution: Resolution | None, domain: str, sender: str
) -> SenderVerdict | None:
    """
    What the lists of one recipient say about C{sender}: the user's own
    (when C{resolution}, where the recipient goes, is exactly one user
    here), then the recipient's C{domain}'s; the first that matches decides,
    and covers every local account the recipient reaches.

    @param rules_of: an owner (an account's L{address_key}, or a domain) ->
        its list, pattern -> action.
    """
    if not sender_candidates(sender):
        return None
    accounts = resolution.local if resolution is not None else ()
    single_user = resolution is not None and len(accounts) == 1 and not resolution.remote
    owners = ([address_key(accounts[0])] if single_user else []) + [domain.lower()]
    for owner in owners:
        verdict = list_verdict(rules_of(owner), owner, sender)
        if verdict is not None:
            return replace(verdict, accounts=accounts)
    return None
