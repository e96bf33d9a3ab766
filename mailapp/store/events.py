"""
The in-process event bus: per-folder notifications of added messages,
changed flags and expunges, and per-mailbox ones of folders created,
deleted, renamed, subscribed and unsubscribed.

A notification is a hint: subscribers (IMAP sessions, the webmail) re-read
the folder from the store when told, and also on a slow timer, so a lost
notification delays an update but never loses one. A multi-node backend
replaces this bus (for example with PostgreSQL LISTEN/NOTIFY) behind the same
L{IEventBus} interface. Between the worker processes of one server
(L{mailapp.workers}) the supervisor carries each process's events to the
others, which hand them to L{EventBus.wake}.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

from twisted.logger import Logger
from zope.interface import implementer

from mailapp.interfaces import IEventBus

# What the bus carries is part of the contract (L{mailapp.records}); importable from here as before.
from mailapp.records import ADDED, EXPUNGED, FLAGS_CHANGED, FolderEvent

__all__ = ["ADDED", "EXPUNGED", "FLAGS_CHANGED", "EventBus", "FolderEvent", "Listener"]

_NO_LISTENERS: tuple[Listener, ...] = ()

Listener = Callable[[FolderEvent], object]


def _key(account: str, folder: str) -> tuple[str, str]:
    return (account.lower(), folder)


def _add(table: dict[Any, list[Listener]], key: Any, listener: Listener) -> Callable[[], None]:
    """Add C{listener} under C{key}; the callable that removes it (and the key once it has none)."""
    table[key].append(listener)

    def unsubscribe() -> None:
        listeners = table.get(key)
        if listeners and listener in listeners:
            listeners.remove(listener)
            if not listeners:
                del table[key]

    return unsubscribe


@implementer(IEventBus)
class EventBus:
    """Subscribers by (account, folder); a failing listener is logged and never stops the others."""

    _log = Logger()

    def __init__(self) -> None:
        self._listeners: dict[tuple[str, str], list[Listener]] = defaultdict(list)
        self._everything: list[Listener] = []
        #: Subscribers to every folder of one account (IMAP NOTIFY), by lower-cased account.
        self._accounts: dict[str, list[Listener]] = defaultdict(list)

    def subscribeAll(self, listener: Listener) -> Callable[[], None]:
        self._everything.append(listener)

        def unsubscribe() -> None:
            if listener in self._everything:
                self._everything.remove(listener)

        return unsubscribe

    def subscribe(self, account: str, folder: str, listener: Listener) -> Callable[[], None]:
        return _add(self._listeners, _key(account, folder), listener)

    def subscribeAccount(self, account: str, listener: Listener) -> Callable[[], None]:
        return _add(self._accounts, account.lower(), listener)

    def publish(self, event: FolderEvent) -> None:
        folder = self._listeners.get(_key(event.account, event.folder), _NO_LISTENERS)
        account = self._accounts.get(event.account.lower(), _NO_LISTENERS) if self._accounts else _NO_LISTENERS
        for listener in [*folder, *account, *self._everything]:
            try:
                listener(event)
            except Exception:
                self._log.failure("store.event_listener_failed {kind} {folder}", kind=event.kind, folder=event.folder)

    def watched(self, account: str, folder: str) -> bool:
        return _key(account, folder) in self._listeners

    def wake(self, event: FolderEvent) -> None:
        """
        Tell the sessions of a change another process made: the folder's
        subscribers (the sessions that have it open) and the account's
        (IMAP NOTIFY). The server-wide subscribers are not told, since they
        act on this process's own changes (the full-text indexer, the Junk
        learner) and the other process has already done so.
        """
        folder = self._listeners.get(_key(event.account, event.folder), _NO_LISTENERS)
        account = self._accounts.get(event.account.lower(), _NO_LISTENERS) if self._accounts else _NO_LISTENERS
        for listener in [*folder, *account]:
            try:
                listener(event)
            except Exception:
                self._log.failure("store.event_listener_failed {kind} {folder}", kind=event.kind, folder=event.folder)

    def subscriberCount(self) -> int:
        return sum(len(v) for v in self._listeners.values()) + sum(len(v) for v in self._accounts.values()) + len(self._everything)
