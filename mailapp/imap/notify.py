"""
NOTIFY (RFC 5465): what a session asked to be told of, and the watch that
tells it, at any time, not only while it idles.

A L{NotifySpec} is the parsed ``NOTIFY SET``: its event groups in order,
each a mailbox filter (RFC 5465 6) and the events wanted for the mailboxes
it matches (or NONE). A mailbox's events are those of the first group that
matches it with the event, unless a group with NONE matched it before; the
selected mailbox's message events are its SELECTED or SELECTED-DELAYED
group's alone (6.1), while its name and subscription events are matched
like any other mailbox's.

A L{Notifier} follows the store's event bus with one subscription for the
whole account (L{mailapp.interfaces.IEventBus.subscribeAccount}), the same
bus that wakes IDLE: no poll, and what a delivery costs a watching session
is a match of the folder's name against the groups, however many folders
the account has. What it has to say is gathered, one STATUS per mailbox
however many changes it had, and sent between commands (never inside a
command's responses), while further commands wait (L{IMAPServer.holdFor}):

  - another mailbox's MessageNew, MessageExpunge, FlagChange: ``STATUS``
    with MESSAGES, UIDNEXT, UIDVALIDITY, UNSEEN (and HIGHESTMODSEQ once
    CONDSTORE is on), read when it is sent;
  - MailboxName: ``LIST`` (``\\NonExistent`` once deleted, ``OLDNAME`` for
    a rename); SubscriptionChange: ``LIST`` with or without ``\\Subscribed``;
  - the selected mailbox: the EXISTS, FETCH and EXPUNGE (VANISHED with
    QRESYNC) that IDLE sends, and the MessageNew fetch-atts' FETCH for the
    new messages; with SELECTED-DELAYED, expunges wait for a command that
    may report them (5.3). While the client idles, IDLE tells it.

The watch is bounded: a NOTIFY SET matching more than L{MAX_WATCHED}
mailboxes is refused with ``NO [NOTIFICATIONOVERFLOW]``; when folders
created since push it over, or more than L{MAX_PENDING} responses wait
for a client that does not read, the session says ``* OK
[NOTIFICATIONOVERFLOW]`` and stops notifying, as after NOTIFY NONE
(RFC 5465 5.8).
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import logevents
from mailapp.errors import MailboxGone, NoSuchFolder
from mailapp.imap.wire import format_mailbox
from mailapp.records import (
    ADDED,
    DELIMITER,
    EXPUNGED,
    FLAGS_CHANGED,
    FOLDER_CREATED,
    FOLDER_DELETED,
    FOLDER_RENAMED,
    INBOX,
    SUBSCRIBED,
    UNSUBSCRIBED,
    FolderEvent,
    FolderStatus,
)

if TYPE_CHECKING:
    from mailapp.imap.commands.fetch import FetchItem
    from mailapp.imap.session import IMAPServer

__all__ = [
    "EVENTS",
    "MAX_PENDING",
    "MAX_WATCHED",
    "SUPPORTED_EVENTS",
    "EventGroup",
    "Notifier",
    "NotifySpec",
    "StatusReads",
]

_log = Logger()

#: The most mailboxes one NOTIFY SET may watch (and the most mailbox names it may list).
MAX_WATCHED = 500
#: The most LIST responses and mailboxes with a STATUS to send that may wait for a client that does not read.
MAX_PENDING = 1000

MESSAGE_NEW = "MessageNew"
MESSAGE_EXPUNGE = "MessageExpunge"
FLAG_CHANGE = "FlagChange"
ANNOTATION_CHANGE = "AnnotationChange"
MAILBOX_NAME = "MailboxName"
SUBSCRIPTION_CHANGE = "SubscriptionChange"

#: Every event RFC 5465 names, by upper-case spelling (event names are case-insensitive).
EVENTS: dict[str, str] = {
    name.upper(): name
    for name in (
        MESSAGE_NEW,
        MESSAGE_EXPUNGE,
        FLAG_CHANGE,
        ANNOTATION_CHANGE,
        MAILBOX_NAME,
        SUBSCRIPTION_CHANGE,
        "MailboxMetadataChange",
        "ServerMetadataChange",
    )
}
#: What this server notifies, in BADEVENT's order: no ANNOTATE, no METADATA here.
SUPPORTED_EVENTS: tuple[str, ...] = (MESSAGE_NEW, MESSAGE_EXPUNGE, FLAG_CHANGE, MAILBOX_NAME, SUBSCRIPTION_CHANGE)
#: The events about messages (the only ones SELECTED and SELECTED-DELAYED take).
MESSAGE_EVENTS = frozenset({MESSAGE_NEW, MESSAGE_EXPUNGE, FLAG_CHANGE, ANNOTATION_CHANGE})

_MESSAGE_EVENT_OF = {ADDED: MESSAGE_NEW, EXPUNGED: MESSAGE_EXPUNGE, FLAGS_CHANGED: FLAG_CHANGE}
#: Where the Router files mail besides INBOX (the spam verdict's folder): INBOXES watches it too.
_DELIVERED_TO = frozenset({"Junk"})

SELECTED_FILTERS = frozenset({"SELECTED", "SELECTED-DELAYED"})
FILTERS = frozenset({*SELECTED_FILTERS, "INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"})


@dataclass(frozen=True)
class EventGroup:
    """One ``(filter events)`` of a NOTIFY SET."""

    #: One of L{FILTERS}, upper case.
    filter: str
    #: SUBTREE's and MAILBOXES' names, as the store names folders.
    mailboxes: tuple[str, ...] = ()
    #: The events wanted (canonical spelling); None for NONE.
    events: frozenset[str] | None = frozenset()
    #: MessageNew's fetch-atts (SELECTED and SELECTED-DELAYED only).
    fetch: tuple[FetchItem, ...] = ()

    def matches(self, name: str, subscribed: set[str]) -> bool:
        """Whether this group's filter names folder C{name} (never for the SELECTED filters: see L{NotifySpec})."""
        kind = self.filter
        if kind == "PERSONAL":
            return True
        if kind == "INBOXES":
            return name == INBOX or name.startswith(INBOX + DELIMITER) or name in _DELIVERED_TO
        if kind == "SUBSCRIBED":
            return name in subscribed
        if kind == "MAILBOXES":
            return name in self._names
        if kind == "SUBTREE":
            # The name and each of its ancestors: as many lookups as levels, however many roots are listed.
            names = self._names
            levels = name.split(DELIMITER)
            return any(DELIMITER.join(levels[:depth]) in names for depth in range(1, len(levels) + 1))
        return False

    @functools.cached_property
    def _names(self) -> frozenset[str]:
        return frozenset(self.mailboxes)


@dataclass(frozen=True)
class NotifySpec:
    """A parsed NOTIFY SET: its groups in the client's order, and whether it asked for the initial STATUS."""

    groups: tuple[EventGroup, ...]
    status: bool = False

    @property
    def selected(self) -> EventGroup | None:
        """The SELECTED or SELECTED-DELAYED group, if any (there is at most one)."""
        for group in self.groups:
            if group.filter in SELECTED_FILTERS:
                return group
        return None

    def wants(self, name: str, event: str, subscribed: set[str]) -> bool:
        """Whether C{event} in folder C{name}, not the selected one for a message event, is to be told."""
        for group in self.groups:
            if group.filter in SELECTED_FILTERS or not group.matches(name, subscribed):
                continue
            if group.events is None:
                return False
            if event in group.events:
                return True
        return False

    def watches(self, name: str, subscribed: set[str]) -> bool:
        """Whether some event of folder C{name} is to be told: it counts against L{MAX_WATCHED}."""
        return any(self.wants(name, event, subscribed) for event in SUPPORTED_EVENTS)


class Notifier:
    """
    One session's NOTIFY SET in effect: the bus subscription, the folders
    watched, and what waits to be sent. Made by the NOTIFY command, which
    calls L{start}; L{stop} when replaced, at NOTIFY NONE and at the end.
    """

    def __init__(
        self,
        session: IMAPServer,
        spec: NotifySpec,
        subscribed: set[str],
        watched: set[str],
        fetchNew: Callable[[IMAPServer, list[int], list[FetchItem]], Awaitable[None]],
    ) -> None:
        self._session = session
        #: Sends the FETCH responses of MessageNew's fetch-atts (L{mailapp.imap.commands.fetch.fetch_unsolicited}).
        self._fetchNew = fetchNew
        self.spec = spec
        self._subscribed = subscribed
        #: The existing folders that L{NotifySpec.watches}: at most L{MAX_WATCHED}.
        self.watched = watched
        selected = spec.selected
        self._selectedEvents = selected.events or frozenset() if selected is not None else frozenset()
        self._delayed = selected is not None and selected.filter == "SELECTED-DELAYED"
        self._fetch = list(selected.fetch) if selected is not None else []
        #: Folders with a STATUS to send, each with the latest event that asked for it (its
        #: read is shared with the sessions told of the same event: L{StatusReads}); LIST lines
        #: to send; and whether the selected folder changed.
        self._statuses: dict[str, FolderEvent] = {}
        self._lines: list[bytes] = []
        self._selectedChanged = False
        #: The selected view last seen, and its highest UID whose MessageNew fetch-atts were sent (or not due).
        self._view: Any = None
        self._highest = 0
        self._draining = False
        self._unsubscribe: Any = None
        self.active = False

    def start(self) -> None:
        session = self._session
        assert session.account is not None
        self.active = True
        self._unsubscribe = session.store.events.subscribeAccount(session.account, self.event)

    def stop(self) -> None:
        """Tell nothing more (NOTIFY NONE, a new NOTIFY SET, an overflow, the end of the session)."""
        self.active = False
        self._statuses.clear()
        self._lines.clear()
        if self._unsubscribe is not None:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            unsubscribe()

    # -- what the store says -------------------------------------------------------------------

    def event(self, event: FolderEvent) -> None:
        """A bus event of one of the account's folders: note what it means to tell, and send it when the session may."""
        if not self.active:
            return
        name = event.folder
        kind = event.kind
        message_event = _MESSAGE_EVENT_OF.get(kind)
        session = self._session
        selected = session.selected
        if message_event is not None:
            if selected is not None and selected.folder.name == name:
                if self._view is not selected:
                    self._view, self._highest = selected, selected.highest  # what it showed before this event
                if message_event in self._selectedEvents and session.idling is None:
                    self._selectedChanged = True
                    self.resume()
                return
            if self.spec.wants(name, message_event, self._subscribed):
                self._statuses.pop(name, None)  # in the order of the latest change
                self._statuses[name] = event
        elif kind == FOLDER_CREATED:
            self._watch(name)
            if self.spec.wants(name, MAILBOX_NAME, self._subscribed):
                self._line(b"LIST () \"/\" " + self._mailbox(name))
        elif kind == FOLDER_DELETED:
            self.watched.discard(name)
            self._statuses.pop(name, None)
            if self.spec.wants(name, MAILBOX_NAME, self._subscribed):
                self._line(b"LIST (\\NonExistent) \"/\" " + self._mailbox(name))
        elif kind == FOLDER_RENAMED:
            old = event.source or name
            self.watched.discard(old)
            self._statuses.pop(old, None)
            self._watch(name)
            if self.spec.wants(name, MAILBOX_NAME, self._subscribed) or self.spec.wants(old, MAILBOX_NAME, self._subscribed):
                # RFC 5465 5.4 (and RFC 9051 7.3.1's OLDNAME).
                self._line(b"LIST () \"/\" " + self._mailbox(name) + b' ("OLDNAME" (' + self._mailbox(old) + b"))")
        elif kind in (SUBSCRIBED, UNSUBSCRIBED):
            if kind == SUBSCRIBED:
                self._subscribed.add(name)
            else:
                self._subscribed.discard(name)
            if self.spec.watches(name, self._subscribed):
                self._watch(name)
            else:
                self.watched.discard(name)
            if self.spec.wants(name, SUBSCRIPTION_CHANGE, self._subscribed):
                attributes = b"\\Subscribed" if kind == SUBSCRIBED else b""
                self._line(b"LIST (" + attributes + b") \"/\" " + self._mailbox(name))
        else:
            return
        if not self.active:
            self._lines.clear()  # it overflowed (L{_watch}): nothing more is said
            return
        if len(self._statuses) + len(self._lines) > MAX_PENDING:
            self.overflow()
            return
        if self._statuses or self._lines:
            self.resume()

    def _watch(self, name: str) -> None:
        if name not in self.watched and self.spec.watches(name, self._subscribed):
            self.watched.add(name)
            if len(self.watched) > MAX_WATCHED:
                self.overflow()

    def _mailbox(self, name: str) -> bytes:
        return format_mailbox(name, self._session.utf8)

    def _line(self, text: bytes) -> None:
        self._lines.append(text)

    def overflow(self) -> None:
        """RFC 5465 5.8: say so, and notify nothing more, as after NOTIFY NONE."""
        if not self.active:
            return
        self.stop()
        session = self._session
        _log.info("imap notify overflow {account}", log_event=logevents.IMAP_NOTIFY_OVERFLOW, account=session.account)
        if session.notify is self:
            session.notify = None
        if session.isConnected():
            session.untagged(b"OK [NOTIFICATIONOVERFLOW] Too many notifications; NOTIFY is now off")

    # -- telling the client --------------------------------------------------------------------

    def _pending(self) -> bool:
        return bool(self._statuses or self._lines or self._selectedChanged)

    def resume(self) -> None:
        """Send what waits, now if the session is between commands (else it calls again when it is)."""
        session = self._session
        if not self.active or self._draining or not self._pending() or not session.mayNotify():
            return
        self._draining = True
        session.holdFor(defer.Deferred.fromCoroutine(self._drain()))

    async def _drain(self) -> None:
        session = self._session
        try:
            while self.active and self._pending() and session.isConnected():
                if session.flow.paused:
                    await session.flow.wait()
                lines, self._lines = self._lines, []
                for line in lines:
                    session.untagged(line)
                if self._selectedChanged:
                    self._selectedChanged = False
                    if session.selected is not None and session.idling is None:
                        await self._tellSelected()
                statuses = list(self._statuses.items())
                self._statuses.clear()
                for name, cause in statuses:
                    await self._tellStatus(name, cause)
        except MailboxGone:
            session.untagged(b"BYE [UNAVAILABLE] This account was deleted")
            session.close()
        except Exception:
            if session.isConnected():
                _log.failure("imap notify failed", log_event=logevents.IMAP_INTERNAL_ERROR)
        finally:
            self._draining = False

    async def _tellSelected(self) -> None:
        """What changed in the selected folder, as IDLE tells it; the new messages' fetch-atts after their EXISTS."""
        session = self._session
        selected = session.selected
        assert selected is not None
        # From the view's highest UID before the event: new mail a command's reply told (EXISTS) meanwhile gets its FETCH too.
        before = self._highest if self._view is selected else selected.highest
        await session.update(allow_expunge=not self._delayed)
        if session.selected is not selected:
            return
        self._view, self._highest = selected, selected.highest
        if self._fetch and selected.highest > before:
            new = selected.uids[bisect.bisect_right(selected.uids, before) :]
            await self._fetchNew(session, new, self._fetch)

    async def _tellStatus(self, name: str, cause: FolderEvent) -> None:
        session = self._session
        if session.selected is not None and session.selected.folder.name == name:
            return  # the selected folder's changes are told as IDLE tells them, never as STATUS
        try:
            status = await session.factory.statusReads.read(session.mailbox, name, cause)
        except NoSuchFolder:
            return
        session.untagged(status_response(name, status, session.utf8, session.condstore))


class StatusReads:
    """
    The STATUS reads NOTIFY has in flight, one per factory: the sessions of
    an account told of the same change (the same event) share one store read
    of the folder's counters, as IDLE's sessions share their read of new mail
    (L{mailapp.imap.factory.IMAPFactory.messagesAfter}). A session told of a
    later change never joins a read that began before it: it starts its own.
    """

    def __init__(self) -> None:
        self._reads: dict[tuple[str, str], tuple[object, list[defer.Deferred[FolderStatus]]]] = {}

    def read(self, mailbox: Any, name: str, cause: object) -> defer.Deferred[FolderStatus]:
        """Folder C{name}'s L{FolderStatus} as of (at least) C{cause}; fails as L{IFolder.status} does."""
        key = (mailbox.account.lower(), name)
        mine: defer.Deferred[FolderStatus] = defer.Deferred()
        current = self._reads.get(key)
        if current is not None and current[0] is cause:
            current[1].append(mine)
            return mine
        entry: tuple[object, list[defer.Deferred[FolderStatus]]] = (cause, [mine])
        self._reads[key] = entry

        def deliver(result: FolderStatus | Failure) -> None:
            if self._reads.get(key) is entry:
                del self._reads[key]
            for each in entry[1]:
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        defer.Deferred.fromCoroutine(_read_status(mailbox, name)).addBoth(deliver)
        return mine


async def _read_status(mailbox: Any, name: str) -> FolderStatus:
    folder = await mailbox.folder(name)
    status: FolderStatus = await folder.status()
    return status


def status_response(name: str, status: Any, utf8: bool, condstore: bool) -> bytes:
    """The untagged STATUS NOTIFY sends for a mailbox other than the selected one (without its ``* ``)."""
    body = b"MESSAGES %d UIDNEXT %d UIDVALIDITY %d UNSEEN %d" % (status.messages, status.uidnext, status.uidvalidity, status.unseen)
    if condstore:
        body += b" HIGHESTMODSEQ %d" % status.highestmodseq
    return b"STATUS " + format_mailbox(name, utf8) + b" (" + body + b")"


