"""
EXPUNGE and UID EXPUNGE (RFC 3501 6.4.3, RFC 4315 2.1): remove the
messages flagged \\Deleted (of a UID set, for UID EXPUNGE) in one store
change, then tell the client what went (with CONDSTORE on, and the
folder's new HIGHESTMODSEQ: RFC 7162 3.2.10).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Coroutine

from mailapp.errors import NoSuchFolder
from mailapp.imap.commands.condstore import in_ranges
from mailapp.imap.wire import Token, as_string, expect_count, parse_sequence_set

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = ["expunge", "uid_expunge"]


def expunge(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 0, "EXPUNGE")
    return _expunge(session, tag, None)


def uid_expunge(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 1, "UID EXPUNGE")
    ranges = parse_sequence_set(as_string(arguments[0], "UID set"))
    return _expunge(session, tag, ranges)


async def _expunge(session: IMAPServer, tag: bytes, ranges: list[tuple[int | None, int | None]] | None) -> None:
    selected = session.selected
    assert selected is not None
    if selected.readonly:
        session.tagged(tag, b"NO", b"[READ-ONLY] Mailbox is read-only")
        return
    # One writer trip: the \Deleted flags are read where the messages are removed. A UID
    # EXPUNGE's ``*`` is the session's last message, as for every UID set it sends.
    last = selected.uids[-1] if selected.uids else 0
    wanted = None if ranges is None else lambda uid: in_ranges(uid, ranges, last)
    done = await selected.folder.expungeDeleted(wanted)
    text = b"EXPUNGE completed"
    # What other tools did to the Maildir is looked for, and what this process's sessions changed
    # is known from the store's events, applied from their deltas where they link up.
    selected.look_outside = True
    force = False
    if session.condstore:
        # RFC 7162 3.2.10: an expunge raises HIGHESTMODSEQ with no FETCH to show it. Read in the
        # expunge's own transaction, before the update that follows: that update must tell
        # everything up to it, so unless the events brought the view that far (another worker's
        # change may not have reached this one yet), it reads the folder.
        text = b"[HIGHESTMODSEQ %d] EXPUNGE completed" % done.highestmodseq
        try:
            await session.update(allow_expunge=True)
        except NoSuchFolder:
            pass  # the update of complete() tells it
        force = session.selected is selected and selected.mark < done.highestmodseq
    await session.complete(tag, text, force=force)
