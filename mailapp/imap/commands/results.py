"""
What SEARCH and SORT return when asked with ``RETURN (...)``: ESEARCH's
MIN, MAX, ALL and COUNT (RFC 4731, and for SORT, ESORT: RFC 5267 section
3), PARTIAL ranges of the result (RFC 5267 section 4.4), and SEARCHRES
(RFC 5182): the result kept by SAVE and named ``$`` by later commands.

The saved result is a list of UIDs kept per selected view (a new SELECT or
EXAMINE is a new view, so it starts empty, as section 2.1 wants); a message
expunged since simply is not found any more. ``$`` is put in a command's
place before its handler runs (L{accepting_saved}), as the sequence or
UID set that the saved UIDs are now, so FETCH, STORE, COPY, MOVE and UID
EXPUNGE need to know nothing of it; among search keys (SEARCH, SORT,
THREAD) ``$`` is parsed as a key of its own and matched against the saved
UIDs.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Sequence
from weakref import WeakKeyDictionary

from mailapp.imap.wire import MAX_NUMBER, Atom, BadCommand, Token, format_uid_set

if TYPE_CHECKING:
    from mailapp.imap.selected import SelectedFolder
    from mailapp.imap.session import IMAPServer

__all__ = ["ReturnOptions", "accepting_saved", "answer", "failed", "parse_return", "saved"]

_RANGE = re.compile(rb"^([0-9]{1,10}):([0-9]{1,10})$")
_SIMPLE = {b"MIN", b"MAX", b"ALL", b"COUNT", b"SAVE", b"UPDATE", b"CONTEXT"}

#: A command's handler (as in the command table).
Handler = Callable[["IMAPServer", bytes, list[Token]], "Awaitable[None] | None"]

#: SEARCHRES: each selected view's saved result, as UIDs in the order saved.
_saved: WeakKeyDictionary[SelectedFolder, list[int]] = WeakKeyDictionary()


@dataclass
class ReturnOptions:
    """The options of ``RETURN (...)``; an empty list means ALL (RFC 4731 section 3.1)."""

    min: bool = False
    max: bool = False
    all: bool = False
    count: bool = False
    save: bool = False
    #: PARTIAL low:high, 1-based positions in the result, low <= high.
    partial: tuple[int, int] | None = None
    #: RFC 5267 section 4: keep the search live (UPDATE); CONTEXT is only a hint that it may be.
    update: bool = False
    context: bool = False

    @property
    def answers(self) -> bool:
        """Whether an ESEARCH response is sent (SAVE alone sends none: RFC 5182 section 2.4)."""
        return self.min or self.max or self.all or self.count or self.partial is not None or self.update


def parse_return(arguments: list[Token]) -> tuple[ReturnOptions | None, list[Token]]:
    """``RETURN (options)`` at the start of C{arguments}, if there, and the rest; L{BadCommand} when malformed."""
    if not arguments or not isinstance(arguments[0], Atom) or arguments[0].upper() != b"RETURN":
        return None, arguments
    if len(arguments) < 2 or not isinstance(arguments[1], list):
        raise BadCommand("RETURN needs a parenthesized list of options")
    options = ReturnOptions()
    items = arguments[1]
    position = 0
    while position < len(items):
        item = items[position]
        position += 1
        if not isinstance(item, Atom):
            raise BadCommand("Bad RETURN option")
        name = item.upper()
        if name in _SIMPLE:
            setattr(options, name.decode().lower(), True)
        elif name == b"PARTIAL":
            if position >= len(items) or not isinstance(items[position], Atom):
                raise BadCommand("PARTIAL needs a range")
            options.partial = _partial_range(bytes(items[position]))
            position += 1
        else:
            raise BadCommand(f"Unknown RETURN option {name.decode('ascii', 'replace')}")
    if not items:
        options.all = True
    return options, arguments[2:]


def _partial_range(text: bytes) -> tuple[int, int]:
    match = _RANGE.match(text)
    if not match:
        raise BadCommand("PARTIAL range must be low:high")
    low, high = int(match.group(1)), int(match.group(2))
    if not (1 <= low <= MAX_NUMBER and 1 <= high <= MAX_NUMBER):
        raise BadCommand("PARTIAL range out of bounds")
    return (min(low, high), max(low, high))


def saved(session: IMAPServer) -> list[int]:
    """The UIDs of the selected view's saved result that still exist, in the order saved."""
    view = session.selected
    if view is None:
        return []
    return [uid for uid in _saved.get(view, []) if uid in view.info]


def failed(session: IMAPServer, options: ReturnOptions | None) -> None:
    """A SEARCH or SORT with SAVE that fails leaves the saved result empty (RFC 5182 section 2.1)."""
    if options is not None and options.save and session.selected is not None:
        _saved[session.selected] = []


def answer(
    session: IMAPServer,
    tag: bytes,
    options: ReturnOptions,
    uids: Sequence[int],
    by_uid: bool,
    modseq: bool = False,
    extra: bytes = b"",
) -> None:
    """
    Save and answer a result: C{uids} in the result's order (ascending for
    SEARCH, sorted for SORT). MIN and MAX are its first and last, ALL the
    whole in order with ascending runs collapsed. With C{modseq} (a search
    by MODSEQ), the highest mod-sequence of the messages returned ends it
    (RFC 7162 3.1.5: of MIN and MAX alone when only they are asked for).
    C{extra} is return data of an extension's (RFC 6203's RELEVANCY), added last.
    """
    view = session.selected
    assert view is not None
    if options.partial is not None:
        low, high = options.partial
        part = list(uids[low - 1 : high])
    if options.save:
        if options.partial is not None:
            _saved[view] = part
        elif (options.min or options.max) and not (options.all or options.count):
            _saved[view] = list(dict.fromkeys(([uids[0]] if options.min else []) + ([uids[-1]] if options.max else []))) if uids else []
        else:
            _saved[view] = list(uids)
    if not options.answers and not extra:
        return
    numbers = list(uids) if by_uid else _sequence_numbers(view, uids)
    out = [b'ESEARCH (TAG "' + tag + b'")']
    if by_uid:
        out.append(b"UID")
    if numbers and options.min:
        out.append(b"MIN %d" % numbers[0])
    if numbers and options.max:
        out.append(b"MAX %d" % numbers[-1])
    if numbers and options.all:
        out.append(b"ALL " + format_uid_set(numbers))
    if options.count:
        out.append(b"COUNT %d" % len(numbers))
    if options.partial is not None:
        low, high = options.partial
        shown = numbers[low - 1 : high]
        out.append(b"PARTIAL (%d:%d %s)" % (low, high, format_uid_set(shown) if shown else b"NIL"))
    if modseq and uids:
        returned: Sequence[int] = uids
        if not (options.all or options.count or options.partial is not None):
            returned = ([uids[0]] if options.min else []) + ([uids[-1]] if options.max else [])
        elif options.partial is not None and not (options.all or options.count):
            returned = part
        if returned:
            out.append(b"MODSEQ %d" % max(view.info[uid].modseq for uid in returned))
    if extra:
        out.append(extra)
    session.untagged(b" ".join(out))


def _sequence_numbers(view: SelectedFolder, uids: Sequence[int]) -> list[int]:
    return [bisect_left(view.uids, uid) + 1 for uid in uids]


# -- $ in later commands -----------------------------------------------------------------------------


def _saved_set(session: IMAPServer, by_uid: bool) -> bytes:
    """The saved result as a set this command reads: UIDs, or the sequence numbers they have now."""
    view = session.selected
    uids = sorted(saved(session))
    if view is None or not uids:
        # Names no message (UIDs never reach it; a sequence number beyond the view is dropped).
        return b"%d" % MAX_NUMBER
    if by_uid:
        return format_uid_set(uids)
    return format_uid_set(_sequence_numbers(view, uids))


def accepting_saved(handler: Handler, by_uid: bool) -> Handler:
    """
    C{handler} with ``$`` (RFC 5182) as its sequence set replaced by the
    saved result. (Among search keys, ``$`` is the search parser's: L{search.SAVED}.)
    """

    def with_saved_result(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Awaitable[None] | None:
        if arguments and isinstance(arguments[0], Atom) and bytes(arguments[0]) == b"$":
            arguments = [Atom(_saved_set(session, by_uid)), *arguments[1:]]
        return handler(session, tag, arguments)

    with_saved_result.__name__ = getattr(handler, "__name__", "handler")
    with_saved_result.__doc__ = handler.__doc__
    return with_saved_result
