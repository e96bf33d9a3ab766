"""
Selecting a folder and letting it go (RFC 3501 6.3.1, 6.3.2, 6.4.1, 6.4.2;
RFC 3691): SELECT, EXAMINE, CHECK, CLOSE, UNSELECT.

SELECT and EXAMINE take RFC 7162's parameters: (CONDSTORE) answers
HIGHESTMODSEQ, (QRESYNC (...)) resyncs the client in the same command
(L{condstore}).

SELECT makes the session's view of the folder
(L{mailapp.imap.selected.SelectedFolder}); every later command of the
selected state reads and updates that view.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any, Coroutine

from mailapp.errors import NoSuchFolder
from mailapp.imap.commands.condstore import QResync, fetch_responses, in_ranges, parse_select_parameters, vanished_earlier
from mailapp.imap.commands.mailboxes import open_folder
from mailapp.imap.policy import FETCH_BATCH
from mailapp.imap.selected import SelectedFolder
from mailapp.imap.wire import Token, expect_count

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["check", "close", "examine", "select", "unselect"]


def select(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _select(session, tag, arguments, readonly=False)


def examine(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _select(session, tag, arguments, readonly=True)


async def _select(session: IMAPServer, tag: bytes, arguments: list[Token], readonly: bool) -> None:
    condstore, qresync = False, None
    if len(arguments) == 2 and isinstance(arguments[1], list):
        condstore, qresync = parse_select_parameters(session, arguments[1])
        arguments = arguments[:1]
    expect_count(arguments, 1, "SELECT")
    if session.selected is not None:
        session.unselect()
        if session.qresync or session.rev2:
            # RFC 7162 3.2.11, RFC 9051 6.3.2: with UIDs alone, the client must know where the old folder's responses end.
            session.untagged(b"OK [CLOSED] Previous mailbox closed")
    if condstore or qresync is not None:
        session.condstore = True
    folder = await open_folder(session, tag, arguments[0])
    if folder is None:
        return
    # RFC 8474 4.1: asked for while the view is read (one small file, in parallel).
    mailboxid = folder.mailboxId()
    try:
        view, snapshot = await SelectedFolder.open(
            folder, readonly, session.account, session.factory, session.write, modseq=session.condstore
        )
    except BaseException:
        mailboxid.addErrback(lambda _: None)
        raise
    try:
        mailboxid_code = await mailboxid
    except NoSuchFolder:
        view.close()  # deleted by another session meanwhile
        session.tagged(tag, b"NO", b"[NONEXISTENT] No such mailbox")
        return
    session.select(view)
    session.write(view.flagsResponses())
    session.untagged(b"%d EXISTS" % len(view.uids))
    if not session.rev2:  # RFC 9051 appendix E: no RECENT, no UNSEEN code
        session.untagged(b"%d RECENT" % len(view.recent))
    if snapshot.first_unseen is not None and not session.rev2:
        session.untagged(b"OK [UNSEEN %d] First unseen" % snapshot.first_unseen)
    session.untagged(b"OK [UIDVALIDITY %d] UIDs valid" % view.uidvalidity)
    session.untagged(b"OK [UIDNEXT %d] Predicted next UID" % view.uidnext)
    if session.condstore:
        session.untagged(b"OK [HIGHESTMODSEQ %d] Highest" % view.highestmodseq)
    session.untagged(b"OK [MAILBOXID (%s)] Ok" % mailboxid_code.encode("ascii"))
    if qresync is not None and qresync.uidvalidity == view.uidvalidity:
        await _resync(session, view, qresync)
    mode = b"[READ-ONLY]" if readonly else b"[READ-WRITE]"
    session.tagged(tag, b"OK", mode + (b" EXAMINE completed" if readonly else b" SELECT completed"))


async def _resync(session: IMAPServer, view: SelectedFolder, qresync: QResync) -> None:
    """
    RFC 7162 3.2.5.1: what the client missed since its mod-sequence, within
    its known UIDs: VANISHED (EARLIER) for the expunged, FETCH (UID FLAGS
    MODSEQ) for the changed (and the new). A pass over the view in memory
    (a few ms for 10,000 messages), no read of the folder beyond the
    store's vanished list.
    """
    since, known, info, uids = qresync.modseq, qresync.known_uids, view.info, view.uids
    # One read of what changed since, in time proportional to the changes. It is as new as the
    # view or newer: a message the view holds with a mod-sequence above C{since} is in it (or
    # expunged since, which the view's next update tells).
    found = await view.folder.changesSince(since)
    await vanished_earlier(session, view, since, known, found.vanished)
    last = uids[-1] if uids else 0
    changed = [
        bisect.bisect_left(uids, m.uid)
        for m in found.changed
        if m.uid in info and info[m.uid].modseq > since and (known is None or in_ranges(m.uid, known, last))
    ]
    flow = session.flow
    for start in range(0, len(changed), FETCH_BATCH):
        session.write(b"".join(fetch_responses(view, changed[start : start + FETCH_BATCH])))
        if flow.paused:
            await flow.wait()


def check(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 0, "CHECK")
    return session.complete(tag, b"CHECK completed", force=True)


def unselect(session: IMAPServer, tag: bytes, arguments: list[Token]) -> None:
    expect_count(arguments, 0, "UNSELECT")
    session.unselect()
    session.tagged(tag, b"OK", b"UNSELECT completed")


def close(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 0, "CLOSE")
    selected = session.selected
    assert selected is not None

    async def close() -> None:
        session.unselect()
        if not selected.readonly:
            await selected.folder.expungeDeleted()
        session.tagged(tag, b"OK", b"CLOSE completed")

    return close()
