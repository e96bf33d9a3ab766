"""
Selecting a folder and letting it go (RFC 3501 6.3.1, 6.3.2, 6.4.1, 6.4.2;
RFC 3691): SELECT, EXAMINE, CHECK, CLOSE, UNSELECT.

SELECT makes the session's view of the folder
(L{mailapp.imap.selected.SelectedFolder}); every later command of the
selected state reads and updates that view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Coroutine

from mailapp.imap.commands.mailboxes import open_folder
from mailapp.imap.flags import DELETED
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
    if len(arguments) == 2 and isinstance(arguments[1], list):
        arguments = arguments[:1]  # select parameters (CONDSTORE...) we do not support: ignored
    expect_count(arguments, 1, "SELECT")
    if session.selected is not None and session.rev2:
        session.untagged(b"OK [CLOSED] Previous mailbox closed")  # RFC 9051 6.3.2
    session.unselect()
    folder = await open_folder(session, tag, arguments[0])
    if folder is None:
        return
    view, snapshot = await SelectedFolder.open(folder, readonly, session.account, session.factory, session.write)
    session.select(view)
    session.write(view.flagsResponses())
    session.untagged(b"%d EXISTS" % len(view.uids))
    if not session.rev2:  # RFC 9051 appendix E: no RECENT, no UNSEEN code
        session.untagged(b"%d RECENT" % len(view.recent))
    if snapshot.first_unseen is not None and not session.rev2:
        session.untagged(b"OK [UNSEEN %d] First unseen" % snapshot.first_unseen)
    session.untagged(b"OK [UIDVALIDITY %d] UIDs valid" % view.uidvalidity)
    session.untagged(b"OK [UIDNEXT %d] Predicted next UID" % view.uidnext)
    mode = b"[READ-ONLY]" if readonly else b"[READ-WRITE]"
    session.tagged(tag, b"OK", mode + (b" EXAMINE completed" if readonly else b" SELECT completed"))


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
            messages = await selected.folder.messages()
            deleted = [m.uid for m in messages if DELETED in m.flags]
            if deleted:
                await selected.folder.expunge(deleted)
        session.tagged(tag, b"OK", b"CLOSE completed")

    return close()
