"""
Each folder's listing as SELECT last read it, kept per process
(L{FolderSnapshots}, on the IMAP factory), so that a warm SELECT of a large
folder costs one read by primary key instead of a pass over every message:
the store's token (UIDVALIDITY and a change counter its triggers keep,
L{mailapp.interfaces.IFolder.messagesIfChanged}) says whether the folder is
as it was, whichever process changed it. What SELECT answers from the
listing (the keywords, the first unseen) is computed once per snapshot.

Snapshots are immutable: a view copies the UID list and the entries it
changes (C-level copies, a fraction of a millisecond for 10,000
messages). Bounded: the least recently selected are dropped beyond
L{MAX_SNAPSHOT_MESSAGES} messages in all. A folder that changed since its
snapshot is brought up to date from what changed after the snapshot's
mod-sequence (L{mailapp.interfaces.IFolder.changesSince}) rather than
read whole again, unless the store no longer remembers that far back.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from mailapp.records import ChangesSince, FolderStatus, MessageInfo

__all__ = ["MAX_SNAPSHOT_MESSAGES", "FolderSnapshot", "FolderSnapshots"]

#: Messages kept in all the snapshots of a process (about 200 bytes each).
MAX_SNAPSHOT_MESSAGES = 200_000

_SEEN = "\\Seen"


@dataclass(frozen=True)
class FolderSnapshot:
    """One folder as last read: its status, its messages, and what SELECT says of them."""

    token: tuple[int, int]
    status: FolderStatus
    messages: list[MessageInfo]
    uids: list[int]
    info: dict[int, MessageInfo]
    keywords: tuple[str, ...]
    #: The sequence number of the first message without \\Seen (None: every one has it).
    first_unseen: int | None
    #: A mod-sequence the listing is complete up to (RFC 7162): what changed after it is
    #: all a reader needs to bring the listing up to date (L{FolderSnapshots.read}).
    modseq: int = 0

    @classmethod
    def of(
        cls, token: tuple[int, int], uidnext: int, messages: list[MessageInfo], modseq: int | None = None
    ) -> FolderSnapshot:
        keywords: set[str] = set()
        first_unseen = None
        unseen = 0
        highest = 0
        for position, m in enumerate(messages):
            if m.modseq > highest:
                highest = m.modseq
            if m.flags:
                keywords.update(f for f in m.flags if not f.startswith("\\"))
            if _SEEN not in m.flags:
                unseen += 1
                if first_unseen is None:
                    first_unseen = position + 1
        return cls(
            token,
            FolderStatus(token[0], uidnext, len(messages), unseen),
            messages,
            [m.uid for m in messages],
            {m.uid: m for m in messages},
            tuple(sorted(keywords)),
            first_unseen,
            # The highest of the messages' own is safe: every change after it is still to be read.
            highest if modseq is None else modseq,
        )


class FolderSnapshots:
    """The snapshots of one process, by (account, folder)."""

    def __init__(self, limit: int = MAX_SNAPSHOT_MESSAGES) -> None:
        self._limit = limit
        self._held = 0
        self._snapshots: OrderedDict[tuple[str, str], FolderSnapshot] = OrderedDict()

    async def read(self, account: str | None, folder: Any) -> FolderSnapshot:
        """The folder as it is now: the kept snapshot if its token still holds, else read afresh (and kept)."""
        snapshot, _ = await self.readWithHighest(account, folder, highest=False)
        return snapshot

    async def readWithHighest(self, account: str | None, folder: Any, highest: bool) -> tuple[FolderSnapshot, int]:
        """
        L{read}, and with C{highest} the folder's HIGHESTMODSEQ as of the
        listing or from before it (0 without): read in the same transaction
        that checks the kept snapshot, so a SELECT with CONDSTORE of a
        folder this process listed before makes no read of its own for it;
        otherwise read before the listing, so that a change in between is
        told again, never missed.
        """
        key = ((account or "").lower(), folder.name)
        kept = self._snapshots.get(key)
        if kept is not None and kept.modseq:
            found = await folder.changesSince(kept.modseq)
            if found.token == kept.token:
                return self._still(key, kept, found.uidnext), found.highestmodseq
            if found.vanished is not None and found.token[0] == kept.token[0] and found.highestmodseq >= kept.modseq:
                # Changed since: the kept listing with what changed after its mod-sequence (RFC 7162's
                # mod-sequences make that exact), not a read of every message. Only for the same folder:
                # its UIDVALIDITY, and a HIGHESTMODSEQ that never went back (a folder made again starts
                # again at 1: its changes after the kept one's are not all there is since).
                snapshot = _merged(kept, found)
                self._keep(key, snapshot)
                return snapshot, found.highestmodseq
            kept = None  # too far back for the store's memory of expunges: read it whole
        before = await folder.highestModseq() if highest else 0
        token, uidnext, messages = await folder.messagesIfChanged(kept.token if kept is not None else None)
        if messages is None and kept is not None and kept.token == token:
            return self._still(key, kept, uidnext), before
        if messages is None:  # pragma: no cover - a store answers None only for the token it was given
            token, uidnext, messages = await folder.messagesIfChanged(None)
            assert messages is not None
        snapshot = FolderSnapshot.of(token, uidnext, messages)
        self._keep(key, snapshot)
        return snapshot, before

    def _still(self, key: tuple[str, str], kept: FolderSnapshot, uidnext: int) -> FolderSnapshot:
        """The kept snapshot holds; UIDNEXT may have moved without a message changing."""
        if kept.status.uidnext != uidnext:
            # (An expunge of the last message is a change; a UIDNEXT raised by a reconcile is not.)
            status = kept.status
            kept = FolderSnapshot(kept.token, FolderStatus(status.uidvalidity, uidnext, status.messages, status.unseen),
                                  kept.messages, kept.uids, kept.info, kept.keywords, kept.first_unseen, kept.modseq)
            self._snapshots[key] = kept
        self._snapshots.move_to_end(key)
        return kept

    def _keep(self, key: tuple[str, str], snapshot: FolderSnapshot) -> None:
        old = self._snapshots.pop(key, None)
        if old is not None:
            self._held -= len(old.messages)
        if len(snapshot.messages) > self._limit:
            return
        self._snapshots[key] = snapshot
        self._held += len(snapshot.messages)
        while self._held > self._limit:
            _, dropped = self._snapshots.popitem(last=False)
            self._held -= len(dropped.messages)


def _merged(kept: FolderSnapshot, found: ChangesSince) -> FolderSnapshot:
    """
    The kept snapshot less what vanished, with the changed entries replaced
    and the new ones (higher UIDs) after: C-level copies and an edit per
    change, not a pass in Python over every message. Keywords no longer in
    use stay listed (FLAGS may name more than are set).
    """
    uids, messages, info = list(kept.uids), list(kept.messages), dict(kept.info)
    unseen = kept.status.unseen
    keywords = set(kept.keywords)
    gone = []
    for uid in found.vanished or ():
        old = info.pop(uid, None)
        if old is not None:
            gone.append(bisect.bisect_left(uids, uid))
            unseen -= _SEEN not in old.flags
    for position in sorted(gone, reverse=True):
        del uids[position]
        del messages[position]
    added = []
    for m in found.changed:
        old = info.get(m.uid)
        info[m.uid] = m
        if m.flags:
            keywords.update(f for f in m.flags if not f.startswith("\\"))
        unseen += (_SEEN not in m.flags) - (old is not None and _SEEN not in old.flags)
        if old is None:
            added.append(m)
        else:
            messages[bisect.bisect_left(uids, m.uid)] = m
    if added and uids and added[0].uid < uids[-1]:  # a UID a reconcile gave below the highest: rare
        messages.extend(added)
        messages.sort(key=lambda m: m.uid)
        return FolderSnapshot.of(found.token, found.uidnext, messages, found.highestmodseq)
    messages.extend(added)
    uids.extend(m.uid for m in added)
    first_unseen = next((position + 1 for position, m in enumerate(messages) if _SEEN not in m.flags), None)
    return FolderSnapshot(
        found.token,
        FolderStatus(found.token[0], found.uidnext, len(messages), unseen),
        messages,
        uids,
        info,
        tuple(sorted(keywords)),
        first_unseen,
        found.highestmodseq,
    )
