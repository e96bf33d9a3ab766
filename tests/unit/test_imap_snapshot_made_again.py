"""
A process's kept snapshot of a folder (L{mailapp.imap.snapshots}) is never
brought up to date from a folder made again under the same name, even one
another worker gave the same UIDVALIDITY (as each process's own counter
could before schema 7): its mod-sequences start again, so what changed
after the kept one's is not what changed since the kept listing. That
stale listing was imaptest's ``append`` flake with ``workers = 2``: the
second worker's SELECT showed the deleted folder's message 1, and its
NOOP answered the new message 1 as a FETCH of changed flags, not EXISTS.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import TestCase

from mailapp.imap.snapshots import FolderSnapshot, FolderSnapshots
from mailapp.records import ChangesSince, MessageInfo

UIDVALIDITY = 1_700_000_000


class _Folder:
    """A folder as the store answers: C{changesSince} and C{messagesIfChanged} over one listing."""

    name = "Same"

    def __init__(self, token: tuple[int, int], highestmodseq: int, messages: list[MessageInfo]) -> None:
        self.token, self.highestmodseq, self.listing = token, highestmodseq, messages

    def changesSince(self, modseq: int) -> Deferred[ChangesSince]:
        changed = [m for m in self.listing if m.modseq > modseq]
        uidnext = max((m.uid for m in self.listing), default=0) + 1
        return succeed(ChangesSince(self.token, uidnext, self.highestmodseq, changed, []))

    def messagesIfChanged(self, known: Any) -> Deferred[tuple[tuple[int, int], int, list[MessageInfo] | None]]:
        uidnext = max((m.uid for m in self.listing), default=0) + 1
        return succeed((self.token, uidnext, None if known == self.token else list(self.listing)))


class SnapshotOfAFolderMadeAgainTests(TestCase):
    def test_a_folder_made_again_with_the_same_uidvalidity_is_read_whole_not_merged_into_the_old_listing(self) -> None:
        snapshots = FolderSnapshots()
        old = [MessageInfo(1, frozenset({"\\Seen"}), 10, 0.0, modseq=4), MessageInfo(2, frozenset(), 10, 0.0, modseq=5)]
        kept = FolderSnapshot.of((UIDVALIDITY, 17), 3, old, 5)
        snapshots._keep(("alice@example.test", "Same"), kept)
        # Made again: the same name and UIDVALIDITY, a new change counter, mod-sequences from 1, empty.
        again = _Folder((UIDVALIDITY, 9), 1, [])
        snapshot = self.successResultOf(Deferred.fromCoroutine(snapshots.read("alice@example.test", again)))
        self.assertEqual(snapshot.uids, [])
        self.assertEqual(snapshot.status.messages, 0)
