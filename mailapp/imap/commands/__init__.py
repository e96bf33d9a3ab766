"""
The IMAP command table: every command the server knows, its handler, the
states it is valid in, and the capability it brings.

This is the one place that lists IMAP commands. The session dispatches from
it (a name not in it is "Unknown command", a name in it but not valid now
"Command not valid in this state"), and the CAPABILITY response is built
from it. The handlers live in one module per group, after go-imap v2's
C{imapserver/<command>.go} and Stalwart's C{crates/imap/src/op/<command>.rs}:

  - L{auth}: CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN, AUTHENTICATE, ENABLE
  - L{mailboxes}: CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, NAMESPACE, LIST, LSUB, STATUS
  - L{select}: SELECT, EXAMINE, UNSELECT, CLOSE, CHECK
  - L{compress}: COMPRESS=DEFLATE (RFC 4978; the stream is the line base's)
  - L{idle}, L{append}, L{fetch}, L{store}, L{copy} (COPY and MOVE), L{expunge}, L{search}
  - L{notify}: NOTIFY (RFC 5465; the watch is L{mailapp.imap.notify})
  - L{sort}: SORT and THREAD; L{results}: what SEARCH and SORT RETURN, and ``$`` (SEARCHRES);
    L{context}: live searches (UPDATE, CANCELUPDATE)

Adding an extension is a new module with its handler and a row here.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from mailapp.imap.commands import append, auth, compress, context, copy, expunge, fetch, idle, mailboxes, notify, search, select, sort, store
from mailapp.imap.commands.results import accepting_saved
from mailapp.imap.state import State
from mailapp.imap.wire import Token

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["CAPABILITIES", "COMMANDS", "Command", "Handler", "State", "capabilities"]


#: A command's handler: answers at once (None), or when what it returns is done.
Handler = Callable[["IMAPServer", bytes, list[Token]], Awaitable[None] | None]

_ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
_NOT_AUTHENTICATED = frozenset({State.NOT_AUTHENTICATED})
_AUTHENTICATED = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})


@dataclass(frozen=True)
class Command:
    """One row of the table."""

    name: str
    handler: Handler
    states: frozenset[State]
    #: Announced in CAPABILITY, in the order of the table (whatever the state); several separated by spaces.
    capability: bytes | None = None
    #: Whether its latency counts in the command metrics (IDLE is a wait, not a command to time).
    timed: bool = True
    #: The states in which its capability is announced (COMPRESS only after login, so after any STARTTLS).
    announced: frozenset[State] = frozenset(State)


_TABLE = (
    # any state
    Command("CAPABILITY", auth.capability, _ANY),
    Command("NOOP", auth.noop, _ANY),
    Command("LOGOUT", auth.logout, _ANY),
    Command("ID", auth.id_, _ANY, capability=b"ID"),
    # not authenticated
    Command("STARTTLS", auth.starttls, _NOT_AUTHENTICATED),
    Command("AUTHENTICATE", auth.authenticate, _NOT_AUTHENTICATED),
    Command("LOGIN", auth.login, _NOT_AUTHENTICATED),
    # authenticated (and selected)
    Command("ENABLE", auth.enable, _AUTHENTICATED, capability=b"ENABLE UTF8=ACCEPT"),
    Command("IDLE", idle.idle, _AUTHENTICATED, capability=b"IDLE", timed=False),
    Command("COMPRESS", compress.compress, _AUTHENTICATED, capability=b"COMPRESS=DEFLATE", announced=_AUTHENTICATED),
    Command("NAMESPACE", mailboxes.namespace, _AUTHENTICATED, capability=b"NAMESPACE"),
    Command("CREATE", mailboxes.create, _AUTHENTICATED),
    Command("DELETE", mailboxes.delete, _AUTHENTICATED),
    Command("RENAME", mailboxes.rename, _AUTHENTICATED),
    Command("SUBSCRIBE", mailboxes.subscribe, _AUTHENTICATED),
    Command("UNSUBSCRIBE", mailboxes.unsubscribe, _AUTHENTICATED),
    Command("LIST", mailboxes.list_, _AUTHENTICATED, capability=b"LIST-EXTENDED LIST-STATUS"),
    Command("LSUB", mailboxes.lsub, _AUTHENTICATED),
    Command("STATUS", mailboxes.status, _AUTHENTICATED, capability=b"STATUS=SIZE"),
    Command("SELECT", select.select, _AUTHENTICATED),
    Command("EXAMINE", select.examine, _AUTHENTICATED),
    Command("APPEND", append.append, _AUTHENTICATED, capability=b"MULTIAPPEND CATENATE"),
    # selected; UIDPLUS is APPENDUID and COPYUID too, announced with UID EXPUNGE; accepting_saved:
    # a ``$`` sequence set (SEARCHRES) is replaced by the saved result before the handler runs
    Command("UID EXPUNGE", accepting_saved(expunge.uid_expunge, by_uid=True), _SELECTED, capability=b"UIDPLUS"),
    Command("MOVE", accepting_saved(copy.move, by_uid=False), _SELECTED, capability=b"MOVE"),
    Command("UID MOVE", accepting_saved(copy.uid_move, by_uid=True), _SELECTED),
    Command("UNSELECT", select.unselect, _SELECTED, capability=b"UNSELECT"),
    Command("CHECK", select.check, _SELECTED),
    Command("CLOSE", select.close, _SELECTED),
    Command("EXPUNGE", expunge.expunge, _SELECTED),
    # ESEARCH, SEARCHRES, CONTEXT (RFC 4731, 5182, 5267): commands/results.py, commands/context.py; FUZZY (RFC 6203)
    Command("SEARCH", search.search, _SELECTED, capability=b"ESEARCH SEARCHRES SEARCH=FUZZY"),
    Command("UID SEARCH", search.uid_search, _SELECTED),
    Command("CANCELUPDATE", context.cancelupdate, _SELECTED, capability=b"CONTEXT=SEARCH"),
    # RFC 5256, 5957, 5267 section 3
    Command("SORT", sort.sort, _SELECTED, capability=b"SORT SORT=DISPLAY ESORT CONTEXT=SORT"),
    Command("UID SORT", sort.uid_sort, _SELECTED),
    Command("THREAD", sort.thread, _SELECTED, capability=b"THREAD=ORDEREDSUBJECT THREAD=REFERENCES"),
    Command("UID THREAD", sort.uid_thread, _SELECTED),
    Command("FETCH", accepting_saved(fetch.fetch, by_uid=False), _SELECTED, capability=b"BINARY OBJECTID SAVEDATE PREVIEW"),
    Command("UID FETCH", accepting_saved(fetch.uid_fetch, by_uid=True), _SELECTED),
    Command("STORE", accepting_saved(store.store, by_uid=False), _SELECTED),
    Command("UID STORE", accepting_saved(store.uid_store, by_uid=True), _SELECTED),
    Command("COPY", accepting_saved(copy.copy, by_uid=False), _SELECTED),
    Command("UID COPY", accepting_saved(copy.uid_copy, by_uid=True), _SELECTED),
    # authenticated again: last, so that the capabilities clients saw before keep their order
    Command("NOTIFY", notify.notify, _AUTHENTICATED, capability=b"NOTIFY"),  # RFC 5465: mailapp/imap/notify.py
)

#: The table, by command name as sent (upper case; ``UID FETCH`` and the like as two words).
COMMANDS: dict[str, Command] = {command.name: command for command in _TABLE}

#: The commands' capabilities, in the table's order (whichever state they are announced in).
CAPABILITIES: tuple[bytes, ...] = tuple(c.capability for c in _TABLE if c.capability is not None)

_ANNOUNCED: dict[State, tuple[bytes, ...]] = {
    state: tuple(c.capability for c in _TABLE if c.capability is not None and state in c.announced) for state in State
}


def capabilities(state: State) -> tuple[bytes, ...]:
    """The commands' capabilities announced in C{state}, in the table's order."""
    return _ANNOUNCED[state]
