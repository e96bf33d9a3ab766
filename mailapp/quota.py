"""
Mailbox quotas: how much one mailbox may hold, and whether one more message fits.

One home for the mechanism: SMTP (through the L{mailapp.delivery.Router}),
the webmail (the same Router) and IMAP APPEND/COPY/MOVE all ask L{Quotas}.

  - A quota is a number of bytes and a number of messages per mailbox (all
    folders together); 0 is unlimited. The default is the config's
    C{limits.mailbox_quota_bytes} / C{mailbox_quota_messages}; the admin
    command sets a user's own (L{mailapp.accounts.QuotaOverride}).
  - Usage is read from the mailbox index at every check: a total that
    SQLite triggers keep in the same transaction as every message row
    (L{mailapp.store.usage}), one read by primary key, never a counter of
    this module's: it is then right after a crash, a rebuilt index or a
    Maildir tool's changes, and expunging frees the space at once. Sizes
    are wire sizes (CRLF), what IMAP and POP3 report.
  - The override and the usage are read at once, each on its own pool's
    thread, when the default has a limit (the override rarely lifts it):
    a check then waits for one trip to a worker thread, not two.
  - A delivery checks each mailbox twice (at RCPT, and at the end of the
    data once the size is known): it hands L{Quotas.check} a dict of the
    quotas it has read (C{known}), so the override is read once per
    transaction, not per check. The usage is read at every check (it is
    what changes between the two); an override set by the admin applies
    from the next transaction on.
  - A mailbox at or over its quota, or a message larger than the whole
    quota, is L{MailboxFull} (552 5.2.2, permanent); a message that does not
    fit in the room left is L{MailboxWouldOverflow} (452 4.2.2, temporary:
    the owner can make room).

The check is against usage as committed: deliveries in flight to the same
mailbox at the same moment are not counted, so a mailbox can end over its
quota by what was in flight when it filled (at most one message per
concurrent transaction; the next one is refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from mailapp import logevents
from mailapp.accounts import QuotaOverride
from mailapp.errors import MailboxFull, MailboxWouldOverflow, OverQuota
from mailapp.store.records import Usage

__all__ = ["Quota", "Quotas", "Usage", "refusal"]

_log = Logger()


@dataclass(frozen=True)
class Quota:
    """How much one mailbox may hold: bytes and messages, 0 for unlimited."""

    bytes: int = 0
    messages: int = 0

    def with_override(self, override: QuotaOverride | None) -> Quota:
        """This default with what the admin set for one user (C{None} fields keep the default)."""
        if override is None:
            return self
        return Quota(
            self.bytes if override.bytes is None else override.bytes,
            self.messages if override.messages is None else override.messages,
        )


def refusal(quota: Quota, usage: Usage, size: int, messages: int = 1) -> OverQuota | None:
    """
    Why C{messages} more messages of C{size} bytes in all do not fit, or
    C{None} when they do. C{size} 0 asks whether the mailbox is full (an
    SMTP RCPT without C{SIZE=}).
    """
    if quota.bytes:
        if usage.bytes >= quota.bytes or size > quota.bytes:
            return MailboxFull()
        if usage.bytes + size > quota.bytes:
            return MailboxWouldOverflow()
    if quota.messages:
        if usage.messages >= quota.messages or messages > quota.messages:
            return MailboxFull()
        if usage.messages + messages > quota.messages:
            return MailboxWouldOverflow()
    return None


class Quotas:
    """
    The server's quotas over its accounts (the overrides) and store (the
    usage), with the config's default; see the module docstring.
    """

    def __init__(self, accounts: Any, store: Any, default: Quota) -> None:
        self.accounts = accounts
        self.store = store
        self.default = default

    @classmethod
    def fromConfig(cls, config: Any, accounts: Any, store: Any) -> Quotas:
        return cls(accounts, store, _default(config))

    def reconfigure(self, config: Any) -> None:
        """SIGHUP: the new default applies to the next check."""
        self.default = _default(config)

    def quota(self, account: str) -> Deferred[Quota]:
        """Fire with C{account}'s quota: its override over the default."""
        return self.accounts.quotaOverride(account).addCallback(self.default.with_override)  # type: ignore[no-any-return]

    def usage(self, account: str) -> Deferred[Usage]:
        """Fire with what C{account}'s mailbox holds now (from its index)."""
        return self.store.mailbox(account).usage()  # type: ignore[no-any-return]

    def check(
        self, account: str, size: int, messages: int = 1, known: dict[str, Quota] | None = None
    ) -> Deferred[OverQuota | None]:
        """
        Fire with why C{messages} messages of C{size} bytes in all would not
        fit in C{account}'s mailbox (logged as C{quota.refused}), or C{None}.
        With the default unlimited, a mailbox its override leaves unlimited
        is not even read; with a default limit the usage is read while the
        override is, and dropped if the override lifts the limit.
        C{known}: the quotas one transaction has read so far, by account
        (see the module docstring); a quota found there is not read again,
        one read is added to it.
        """
        return ensureDeferred(self._check(account, size, messages, known))

    async def _check(self, account: str, size: int, messages: int, known: dict[str, Quota] | None) -> OverQuota | None:
        quota = known.get(account) if known is not None else None
        if quota is None:
            reading = self.usage(account) if self.default.bytes or self.default.messages else None
            try:
                quota = await self.quota(account)
            except BaseException:
                _drop(reading)
                raise
            if known is not None:
                known[account] = quota
        else:
            reading = None
        if not quota.bytes and not quota.messages:
            _drop(reading)
            return None
        usage = await (reading if reading is not None else self.usage(account))
        refused = refusal(quota, usage, size, messages)
        if refused is not None:
            _log.info(
                "over quota {account} {code} usage={used_bytes}/{quota_bytes} bytes "
                "{used_messages}/{quota_messages} messages incoming={size}",
                log_event=logevents.QUOTA_REFUSED,
                account=account,
                code=refused.code,
                used_bytes=usage.bytes,
                quota_bytes=quota.bytes,
                used_messages=usage.messages,
                quota_messages=quota.messages,
                size=size,
            )
        return refused


def _drop(reading: Deferred[Usage] | None) -> None:
    """A usage read the check no longer needs: its failure is not an error either."""
    if reading is not None:
        reading.addErrback(lambda _: None)


def _default(config: Any) -> Quota:
    return Quota(config.limits.mailbox_quota_bytes, config.limits.mailbox_quota_messages)
