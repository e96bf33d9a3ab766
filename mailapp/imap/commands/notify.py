"""
NOTIFY (RFC 5465): ``NOTIFY NONE`` and ``NOTIFY SET [STATUS] (filter
events)...``; the watch it sets up is L{mailapp.imap.notify}'s.

The command is checked whole before anything changes: its syntax and
RFC 5465's rules (one SELECTED or SELECTED-DELAYED group, with message
events only; MessageNew and MessageExpunge together; FlagChange with them;
fetch-atts for the selected mailbox only) are ``BAD``; an event this server
does not notify (AnnotationChange, the METADATA ones, an unknown one) is
``NO [BADEVENT (what it supports)]``; a watch over more than
L{MAX_WATCHED} mailboxes is ``NO [NOTIFICATIONOVERFLOW]``. A refused
command leaves the watch in effect as it was (3.1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Coroutine

from mailapp.errors import NoSuchFolder
from mailapp.imap.commands.fetch import FetchItem, fetch_unsolicited, parse_fetch_items
from mailapp.imap.notify import (
    EVENTS,
    FILTERS,
    FLAG_CHANGE,
    ANNOTATION_CHANGE,
    MAX_WATCHED,
    MESSAGE_EVENTS,
    MESSAGE_EXPUNGE,
    MESSAGE_NEW,
    SELECTED_FILTERS,
    SUPPORTED_EVENTS,
    EventGroup,
    Notifier,
    NotifySpec,
    status_response,
)
from mailapp.imap.wire import Atom, BadCommand, BadMailboxName, Token, as_list, as_mailbox

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["notify", "parse_notify"]

_BADEVENT = b"[BADEVENT (" + " ".join(SUPPORTED_EVENTS).encode("ascii") + b")]"


class _BadEvent(Exception):
    """An event the server does not notify: NO [BADEVENT], not BAD (RFC 5465 4)."""


def _word(token: Token, what: str) -> str:
    if not isinstance(token, Atom):
        raise BadCommand(f"NOTIFY: expected {what}")
    return token.decode("ascii", "replace").upper()


def parse_notify(arguments: list[Token], utf8: bool = False) -> NotifySpec | None:
    """
    The NOTIFY command's arguments: None for NONE, else the L{NotifySpec}.
    Raises L{BadCommand} for what is ``BAD``; an unsupported event is
    reported after the whole command is checked (L{_BadEvent}).
    """
    if not arguments:
        raise BadCommand("NOTIFY NONE or NOTIFY SET")
    verb = _word(arguments[0], "NONE or SET")
    if verb == "NONE":
        if len(arguments) != 1:
            raise BadCommand("NOTIFY NONE takes no arguments")
        return None
    if verb != "SET":
        raise BadCommand("NOTIFY NONE or NOTIFY SET")
    rest = arguments[1:]
    status = False
    if rest and isinstance(rest[0], Atom) and rest[0].upper() == b"STATUS":
        status = True
        rest = rest[1:]
    if not rest:
        raise BadCommand("NOTIFY SET needs at least one event group")
    unsupported = False
    groups = []
    names = 0
    for token in rest:
        group, bad = _event_group(as_list(token, "event group"), utf8)
        unsupported = unsupported or bad
        names += len(group.mailboxes)
        if names > MAX_WATCHED:
            raise _Overflow()
        groups.append(group)
    if sum(1 for g in groups if g.filter in SELECTED_FILTERS) > 1:
        raise BadCommand("NOTIFY: only one SELECTED or SELECTED-DELAYED event group")
    if unsupported:
        raise _BadEvent()
    return NotifySpec(tuple(groups), status)


class _Overflow(Exception):
    """More mailboxes than L{MAX_WATCHED}: NO [NOTIFICATIONOVERFLOW]."""


def _event_group(tokens: list[Token], utf8: bool) -> tuple[EventGroup, bool]:
    """One ``(filter events)``: the group, and whether it names an event not supported here."""
    if len(tokens) < 2:
        raise BadCommand("NOTIFY: an event group is (filter events)")
    kind = _word(tokens[0], "a mailbox filter")
    if kind not in FILTERS:
        raise BadCommand("NOTIFY: unknown mailbox filter")
    mailboxes: tuple[str, ...] = ()
    if kind in ("SUBTREE", "MAILBOXES"):
        if len(tokens) != 3:
            raise BadCommand(f"NOTIFY: {kind} mailboxes events")
        listed = tokens[1] if isinstance(tokens[1], list) else [tokens[1]]
        if not listed:
            raise BadCommand(f"NOTIFY: {kind} needs a mailbox")
        try:
            mailboxes = tuple(as_mailbox(name, utf8) for name in listed)
        except BadMailboxName as e:
            raise BadCommand(f"NOTIFY: {e}")
        if len(mailboxes) > MAX_WATCHED:
            raise _Overflow()
    elif len(tokens) != 2:
        raise BadCommand("NOTIFY: an event group is (filter events)")
    events_token = tokens[-1]
    if isinstance(events_token, Atom) and events_token.upper() == b"NONE":
        return EventGroup(kind, mailboxes, None), False
    listed_events = as_list(events_token, "events")
    if not listed_events:
        raise BadCommand("NOTIFY: an empty event list (NONE says none)")
    events: set[str] = set()
    fetch: list[FetchItem] = []
    unsupported = False
    previous = ""
    for token in listed_events:
        if isinstance(token, list):
            if previous != MESSAGE_NEW or fetch:
                raise BadCommand("NOTIFY: fetch attributes follow MessageNew only")
            if kind not in SELECTED_FILTERS:
                raise BadCommand("NOTIFY: MessageNew fetch attributes are for SELECTED and SELECTED-DELAYED only")
            fetch = parse_fetch_items([token])
            previous = ""
            continue
        word = _word(token, "an event")
        name = EVENTS.get(word)
        if name is None or name not in SUPPORTED_EVENTS:
            unsupported = True
            name = name or word
        events.add(name)
        previous = name
    if (MESSAGE_NEW in events) != (MESSAGE_EXPUNGE in events):
        raise BadCommand("NOTIFY: MessageNew and MessageExpunge go together")
    if (FLAG_CHANGE in events or ANNOTATION_CHANGE in events) and MESSAGE_NEW not in events:
        raise BadCommand("NOTIFY: FlagChange and AnnotationChange need MessageNew and MessageExpunge")
    if kind in SELECTED_FILTERS and not events <= MESSAGE_EVENTS:
        raise BadCommand(f"NOTIFY: {kind} takes message events only")
    return EventGroup(kind, mailboxes, frozenset(events), tuple(fetch)), unsupported


def notify(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    try:
        spec = parse_notify(arguments, session.utf8)
        refusal = None
    except _BadEvent:
        spec, refusal = None, _BADEVENT + b" Event not supported"
    except _Overflow:
        spec, refusal = None, b"[NOTIFICATIONOVERFLOW] More than %d mailboxes" % MAX_WATCHED

    async def run() -> None:
        if refusal is not None:
            session.tagged(tag, b"NO", refusal)
            return
        if spec is None:
            session.setNotifier(None)
            await session.complete(tag, b"NOTIFY completed")
            return
        folders = await session.mailbox.listFolders()
        subscribed = {f.name for f in folders if f.subscribed}
        watched = {f.name for f in folders if spec.watches(f.name, subscribed)}
        if len(watched) > MAX_WATCHED:
            session.tagged(tag, b"NO", b"[NOTIFICATIONOVERFLOW] More than %d mailboxes" % MAX_WATCHED)
            return
        notifier = Notifier(session, spec, subscribed, watched, fetch_unsolicited)
        # RFC 5465 3.1: a NOTIFY SET is a NOOP first, for the selected mailbox.
        await session.update(allow_expunge=True)
        session.setNotifier(notifier)
        if spec.status:
            selected = session.selected.folder.name if session.selected is not None else None
            for info in folders:
                name = info.name
                if name == selected or name not in watched:
                    continue
                if not any(spec.wants(name, event, subscribed) for event in (MESSAGE_NEW, MESSAGE_EXPUNGE)):
                    continue
                if session.flow.paused:
                    await session.flow.wait()
                try:
                    folder = await session.mailbox.folder(name)
                    state = await folder.status()
                except NoSuchFolder:
                    continue  # deleted since the listing
                session.untagged(status_response(name, state, session.utf8, session.condstore))
        await session.complete(tag, b"NOTIFY completed")

    return run()
