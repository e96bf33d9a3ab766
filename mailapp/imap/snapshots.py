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
L{MAX_SNAPSHOT_MESSAGES} messages in all.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from mailapp.records import FolderStatus, MessageInfo

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

    @classmethod
    def of(cls, token: tuple[int, int], uidnext: int, messages: list[MessageInfo]) -> FolderSnapshot:
        keywords: set[str] = set()
        first_unseen = None
        unseen = 0
        for position, m in enumerate(messages):
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
        )


class FolderSnapshots:
    """The snapshots of one process, by (account, folder)."""

    def __init__(self, limit: int = MAX_SNAPSHOT_MESSAGES) -> None:
        self._limit = limit
        self._held = 0
        self._snapshots: OrderedDict[tuple[str, str], FolderSnapshot] = OrderedDict()

    async def read(self, account: str | None, folder: Any) -> FolderSnapshot:
        """The folder as it is now: the kept snapshot if its token still holds, else read afresh (and kept)."""
        key = ((account or "").lower(), folder.name)
        kept = self._snapshots.get(key)
        token, uidnext, messages = await folder.messagesIfChanged(kept.token if kept is not None else None)
        if messages is None and kept is not None and kept.token == token:
            if kept.status.uidnext != uidnext:
                # UIDNEXT moved without a message changing (an expunge of the last one is a change): keep in step.
                kept = FolderSnapshot(kept.token, FolderStatus(token[0], uidnext, kept.status.messages, kept.status.unseen),
                                      kept.messages, kept.uids, kept.info, kept.keywords, kept.first_unseen)
                self._snapshots[key] = kept
            self._snapshots.move_to_end(key)
            return kept
        if messages is None:  # pragma: no cover - a store answers None only for the token it was given
            token, uidnext, messages = await folder.messagesIfChanged(None)
            assert messages is not None
        snapshot = FolderSnapshot.of(token, uidnext, messages)
        self._keep(key, snapshot)
        return snapshot

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
