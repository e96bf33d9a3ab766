"""
CONDSTORE and QRESYNC (RFC 7162): what the commands share.

A session turns CONDSTORE on with ENABLE or with its first command that
uses a mod-sequence (SELECT/EXAMINE (CONDSTORE), FETCH MODSEQ or
CHANGEDSINCE, STORE UNCHANGEDSINCE, SEARCH MODSEQ, STATUS HIGHESTMODSEQ;
3.1), and from then on every untagged FETCH carries MODSEQ. QRESYNC is
turned on by ENABLE only (3.2.3), implies CONDSTORE, and makes expunges
``VANISHED`` responses. The mod-sequences themselves are the store's
(L{mailapp.interfaces.IFolder}: C{changeFlags}, C{highestModseq},
C{vanishedSince}).

Here: turning them on, mod-sequence numbers, the FETCH and STORE
modifiers, SELECT's QRESYNC parameter, and the VANISHED (EARLIER) a
resync answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from mailapp.imap.wire import Atom, BadCommand, String, Token, as_string, format_flags, format_uid_set, parse_sequence_set

if TYPE_CHECKING:
    from mailapp.imap.selected import SelectedFolder
    from mailapp.imap.session import IMAPServer

__all__ = [
    "QResync",
    "enable_condstore",
    "enable_qresync",
    "fetch_responses",
    "parse_modseq",
    "parse_qresync",
    "parse_select_parameters",
    "vanished_earlier",
]

#: RFC 7162's mod-sequence-value: 1 to 2^63 - 1.
MAX_MODSEQ = 2**63 - 1


def parse_modseq(token: Token, what: str = "mod-sequence", zero: bool = True) -> int:
    """A mod-sequence value (mod-sequence-valzer where C{zero}), or L{BadCommand}."""
    if isinstance(token, (Atom, String)) and token.isdigit() and len(token) <= 20:
        value = int(token)
        if (value > 0 or zero) and value <= MAX_MODSEQ:
            return value
    raise BadCommand(f"Expected a {what}")


async def enable_condstore(session: IMAPServer) -> None:
    """
    Turn CONDSTORE on for the session (idempotent). Enabled while a folder
    is selected, the client is told the folder's HIGHESTMODSEQ at once
    (3.1: it could not have seen it at SELECT).
    """
    if session.condstore:
        return
    session.condstore = True
    selected = session.selected
    if selected is not None:
        selected.modseqs = True
        highest = await selected.folder.highestModseq()
        session.untagged(b"OK [HIGHESTMODSEQ %d] Highest" % highest)


def enable_qresync(session: IMAPServer) -> None:
    """Turn QRESYNC (and with it CONDSTORE) on: ENABLE only, so never with a folder selected to tell."""
    session.qresync = True
    session.condstore = True
    if session.selected is not None:
        session.selected.modseqs = True
        session.selected.vanished = True


@dataclass(frozen=True)
class QResync:
    """SELECT's (QRESYNC (uidvalidity modseq [known-uids [seq-match]])) parameter (3.2.5)."""

    uidvalidity: int
    modseq: int
    known_uids: list[tuple[int | None, int | None]] | None = None


def parse_select_parameters(session: IMAPServer, parameters: list[Token]) -> tuple[bool, QResync | None]:
    """
    SELECT/EXAMINE's parameter list: (whether CONDSTORE was asked for, the
    QRESYNC parameter if any). BAD for an unknown parameter or QRESYNC
    without ENABLE QRESYNC first (3.2.5).
    """
    condstore = False
    qresync = None
    position = 0
    while position < len(parameters):
        name = as_string(parameters[position], "select parameter").upper()
        position += 1
        if name == b"CONDSTORE":
            condstore = True
        elif name == b"QRESYNC":
            if not session.qresync:
                raise BadCommand("QRESYNC must be enabled first")
            if position >= len(parameters) or not isinstance(parameters[position], list):
                raise BadCommand("QRESYNC needs (uidvalidity modseq [known-uids [seq-match]])")
            qresync = parse_qresync(parameters[position])  # type: ignore[arg-type]
            position += 1
        else:
            raise BadCommand("Unknown SELECT parameter")
    return condstore, qresync


def parse_qresync(values: list[Token]) -> QResync:
    """The inside of (QRESYNC (...)): the seq-match data is accepted and not needed (the store remembers the expunges)."""
    if len(values) < 2 or len(values) > 4:
        raise BadCommand("QRESYNC needs (uidvalidity modseq [known-uids [seq-match]])")
    uidvalidity = parse_modseq(values[0], "UIDVALIDITY", zero=False)
    modseq = parse_modseq(values[1], "mod-sequence", zero=False)
    known = None
    rest = values[2:]
    if rest and not isinstance(rest[0], list):
        known = parse_sequence_set(as_string(rest[0], "known UIDs"))
        rest = rest[1:]
    if rest:
        match = rest[0]
        if not isinstance(match, list) or len(match) != 2:
            raise BadCommand("Bad QRESYNC sequence match data")
        parse_sequence_set(as_string(match[0], "known sequence set"))
        parse_sequence_set(as_string(match[1], "known UIDs"))
    return QResync(uidvalidity, modseq, known)


def in_ranges(uid: int, ranges: list[tuple[int | None, int | None]], last: int) -> bool:
    """Whether C{uid} is in a UID set (``*`` being C{last})."""
    for low, high in ranges:
        a = last if low is None else low
        b = last if high is None else high
        if min(a, b) <= uid <= max(a, b):
            return True
    return False


async def vanished_earlier(
    session: IMAPServer,
    view: SelectedFolder,
    modseq: int,
    ranges: list[tuple[int | None, int | None]] | None,
    vanished: list[int] | None | bool = False,
) -> None:
    """
    ``* VANISHED (EARLIER) uids``: the UIDs within C{ranges} (None: all)
    expunged after C{modseq} (C{vanished}, when the caller has read them;
    otherwise read here). When the store no longer remembers that far
    back, every UID below UIDNEXT in C{ranges} that is not in the folder
    (3.2.5.1 allows UIDs the client never saw).
    """
    found = await view.folder.vanishedSince(modseq) if vanished is False else vanished
    assert found is None or isinstance(found, list)
    last = view.uidnext - 1
    uids: Iterable[int]
    if found is None:
        present = set(view.uids)
        uids = _absent(ranges if ranges is not None else [(1, None)], present, last)
    else:
        uids = [uid for uid in found if ranges is None or in_ranges(uid, ranges, last)]
    text = format_uid_set(sorted(set(uids)))
    if text:
        session.untagged(b"VANISHED (EARLIER) " + text)


def _absent(ranges: list[tuple[int | None, int | None]], present: set[int], last: int) -> list[int]:
    """The UIDs up to C{last} in C{ranges} that are not C{present}; bounded by UIDNEXT, not by the ranges' width."""
    out: set[int] = set()
    for low, high in ranges:
        a = last if low is None else low
        b = last if high is None else high
        a, b = min(a, b), min(max(a, b), last)
        out.update(uid for uid in range(max(a, 1), b + 1) if uid not in present)
    return sorted(out)


def fetch_responses(view: SelectedFolder, positions: Iterable[int], flags: bool = True) -> list[bytes]:
    """Untagged FETCH (UID FLAGS MODSEQ) for C{positions} of the view: what a resync sends for the changed messages."""
    out = []
    for position in positions:
        uid = view.uids[position]
        entry = view.info[uid]
        shown = view.shownFlags(uid, entry.flags)
        items = b"UID %d" % uid
        if flags:
            items += b" FLAGS " + format_flags(shown)
        out.append(b"* %d FETCH (%s MODSEQ (%d))\r\n" % (position + 1, items, entry.modseq))
    return out
