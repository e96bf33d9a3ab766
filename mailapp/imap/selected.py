"""
A session's view of its selected folder: the sequence number <-> UID map,
each message's index entry as last told to the client, and C{\\Recent}.

The view stays still between commands, so a client never sees a sequence
number go stale in the middle of a FETCH: it changes only when the session
asks (L{SelectedFolder.update}, at command boundaries and during IDLE) and
says so to the client as it changes, in RFC 3501's order: EXPUNGE
(descending, only where the command allows it, 7.4.1), FETCH FLAGS for
changed flags, then EXISTS and RECENT for new mail. A keyword the client
has not been told of yet (set by this session, another one, or on mail
delivered) is announced with FLAGS and PERMANENTFLAGS before the first
response that shows it (RFC 3501 7.2.6: FLAGS lists what a client may see).

The store's event bus is a hint (L{SelectedFolder.hint}): the view re-reads
the folder when told, and just the messages above what it has announced
when every hint since the last read was new mail. A flag change or an
expunge this process made carries its transaction's L{FolderDelta}, which
says exactly what changed from one HIGHESTMODSEQ to the next: when every
hint since the last read carried one and they link up from where the view
is complete to the end, the view applies them without reading anything
(under imaptest's stress on one shared INBOX, that read was a quarter of
every thread trip the sessions made).

\\Recent is claimed in the folder's index (L{RecentMarkers.claimRecent},
L{mailapp.store.recent}): the first session to select the folder after a
message arrived, or to be told of it while it has the folder selected,
owns it, in whichever process, and a restart changes nothing. EXAMINE
claims nothing: its view shows what no session has claimed yet.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any, Callable, Iterable, Protocol

from twisted.internet import defer

from mailapp.imap.flags import RECENT, SYSTEM_FLAGS
from mailapp.imap.snapshots import FolderSnapshot
from mailapp.imap.wire import format_flags, format_uid_set
from mailapp.records import ADDED, FolderDelta, MessageInfo, MessageOrigin

__all__ = ["RecentMarkers", "SelectedFolder"]


class RecentMarkers(Protocol):
    """What the view reads through, shared by the sessions of a process (the factory)."""

    def claimRecent(self, account: str | None, folder: Any, uidvalidity: int, uid: int) -> defer.Deferred[range]:
        """The UIDs up to C{uid} no session had claimed, now this caller's (L{mailapp.interfaces.IFolder.claimRecent})."""

    def messagesAfter(self, folder: Any, uid: int) -> defer.Deferred[list[MessageInfo]]:
        """The folder's messages above C{uid}, one store read shared by every session asking."""

    def folderSnapshot(self, account: str | None, folder: Any, highest: bool = False) -> defer.Deferred[tuple[FolderSnapshot, int]]:
        """The folder's listing now, kept by the process while the store says it holds; with C{highest}, its HIGHESTMODSEQ as of it or before."""


#: Deltas a view keeps between two updates at most, and the messages and expunged UIDs in them;
#: past either, it reads the folder at the next update (a session that sends nothing keeps little).
MAX_LINKS = 64
MAX_LINKED_ROWS = 512


class SelectedFolder:
    """
    The selected folder as this session's client knows it: position + 1 in
    L{uids} is a message's sequence number, L{info} its index entry.
    """

    def __init__(
        self,
        folder: Any,
        readonly: bool,
        account: str | None,
        markers: RecentMarkers,
        write: Callable[[bytes], None],
        status: Any,
        messages: list[MessageInfo] | FolderSnapshot,
    ) -> None:
        #: The store's L{mailapp.interfaces.IFolder}.
        self.folder = folder
        self.readonly = readonly
        self._account = account
        self._markers = markers
        self._write = write
        if isinstance(messages, FolderSnapshot):
            # Copies (C-level): the snapshot is shared by every session of the process.
            self.uids = list(messages.uids)
            self.info = dict(messages.info)
            mark = messages.modseq
        else:
            self.uids = [m.uid for m in messages]
            self.info = {m.uid: m for m in messages}
            mark = max((m.modseq for m in messages), default=0)
        #: A mod-sequence the view is complete up to: an update reads only what changed after it
        #: (L{mailapp.interfaces.IFolder.changesSince}); 0: read the folder whole.
        self.mark = mark
        #: Highest UID this view has announced.
        self.highest = self.uids[-1] if self.uids else 0
        self.uidvalidity: int = status.uidvalidity
        self.uidnext = max(status.uidnext, self.highest + 1)
        #: The UIDs \\Recent in this session (L{claim}).
        self.recent: set[int] = set()
        #: What L{claim} took that L{announceNew} has not announced yet.
        self._owned: list[range] = []
        #: Cancels the store-event subscription (set by the session).
        self.unsubscribe: Callable[[], None] = lambda: None
        #: False once the session has let go of this view (an update in flight then stops).
        self.active = True
        self.dirty = False
        #: Every change hinted since the last full read was new mail: reading the
        #: messages above C{highest} is enough (a 10,000-message folder need not
        #: be read again for each delivery).
        self.only_added = True
        #: Ask the store, at the next update, whether other tools changed the folder.
        self.look_outside = False
        #: The deltas hinted since the last read, by the HIGHESTMODSEQ each starts from, and
        #: whether any hint since came without one (then only a read can tell what changed).
        self._links: dict[int, FolderDelta] = {}
        self._linked_rows = 0
        self._unlinked = False
        #: RFC 7162: untagged FETCH carry MODSEQ (CONDSTORE on); expunges are told as VANISHED (QRESYNC on).
        self.modseqs = False
        self.vanished = False
        #: The folder's HIGHESTMODSEQ as SELECT read it (L{open} with C{modseq}; 0 otherwise).
        self.highestmodseq = 0
        #: The keywords the client was told of (SELECT's FLAGS, and each since).
        self.keywords: set[str] = (
            set(messages.keywords)
            if isinstance(messages, FolderSnapshot)
            else {f for m in messages for f in m.flags if not f.startswith("\\")}
        )
        #: False for an IMAP4rev2 session (RFC 9051): no message is \\Recent, no RECENT response.
        self.shows_recent = True
        #: Told the UIDs about to be expunged, before their EXPUNGE responses (RFC 5267's REMOVEFROM).
        self.expunging: list[Callable[[list[int]], None]] = []
        #: The EMAILID and save date of the messages FETCH or SEARCH asked about (they never change
        #: for a UID: L{mailapp.imap.commands.fetch.load_origins}).
        self.origins: dict[int, MessageOrigin] = {}

    @classmethod
    async def open(
        cls,
        folder: Any,
        readonly: bool,
        account: str | None,
        markers: RecentMarkers,
        write: Callable[[bytes], None],
        modseq: bool = False,
    ) -> tuple[SelectedFolder, FolderSnapshot]:
        """
        Read the folder afresh and make its view; also the listing read, for
        SELECT's own answers. One read by primary key when the folder has not
        changed since this process last listed it (L{RecentMarkers.folderSnapshot}).
        With C{modseq}, the view's L{highestmodseq} is read too: with the
        listing, or before it, so that a change in between is sent again,
        never missed.
        """
        await folder.refresh()
        snapshot, highest = await markers.folderSnapshot(account, folder, highest=modseq)
        view = cls(folder, readonly, account, markers, write, snapshot.status, snapshot)
        view.highestmodseq = highest
        owned = await view.claim(view.uids)
        if owned:
            view.recent.update(view.uids[bisect.bisect_left(view.uids, owned.start) :])
        return view, snapshot

    async def claim(self, uids: list[int]) -> range:
        """
        Which of C{uids} (ascending: the view's at SELECT, or new mail about
        to be announced) are \\Recent in this session: those it is the
        first to claim, or, read-only (EXAMINE), those no session has
        claimed yet (a range of UIDs, of which only C{uids} matter). The
        claim is made before anything it is for is told, so that telling
        never waits in the middle.
        """
        if not uids:
            return range(0)
        if self.readonly:
            first = await self.folder.firstRecent()
            return range(first, uids[-1] + 1)
        owned: range = await self._markers.claimRecent(self._account, self.folder, self.uidvalidity, uids[-1])
        return owned

    async def _claimNew(self, messages: list[MessageInfo]) -> None:
        """Claim the messages above what the view has announced, for L{announceNew}."""
        owned = await self.claim([m.uid for m in messages if m.uid > self.highest])
        if owned:
            self._owned.append(owned)

    def close(self) -> None:
        self.active = False
        self.unsubscribe()

    def hint(self, event: Any = None) -> None:
        """The store says the folder changed: re-read it at the next update (or apply its delta, L{_linked})."""
        if not self.dirty:
            self.only_added = True
        self.dirty = True
        if getattr(event, "kind", None) != ADDED:
            self.only_added = False
        delta: FolderDelta | None = getattr(event, "delta", None)
        if self._unlinked:
            return
        if delta is not None and delta.after <= self.mark:
            return  # told already (every job of one delivery batch carries the batch's delta)
        rows = 0 if delta is None else delta.rows
        if (
            delta is None
            or delta.uidvalidity != self.uidvalidity
            or delta.after <= delta.before
            or len(self._links) >= MAX_LINKS
            or self._linked_rows + rows > MAX_LINKED_ROWS
        ):
            # A read is needed anyway: the deltas kept so far are of no more use.
            self._unlinked = True
            self._links.clear()
            self._linked_rows = 0
        elif delta.before not in self._links:
            self._links[delta.before] = delta
            self._linked_rows += rows

    def _linked(self) -> tuple[list[MessageInfo], list[int], int] | None:
        """
        What changed after L{mark}, from the hinted deltas alone: the
        messages changed (in UID order, as the last delta left them), the
        UIDs expunged, and the HIGHESTMODSEQ reached; the same as
        L{mailapp.interfaces.IFolder.changesSince} would read. None unless
        the deltas link up from L{mark} and no delta is left beyond the
        last one reached (a change in between that this view was not told
        of exactly).
        """
        links, mark = self._links, self.mark
        changed: dict[int, MessageInfo] = {}
        vanished: set[int] = set()
        reached = mark
        while (delta := links.get(reached)) is not None:
            for message in delta.changed:
                changed[message.uid] = message
            vanished.update(delta.vanished)
            reached = delta.after  # above its before (L{hint}): the walk ends
        if any(delta.after > reached for delta in links.values()):
            return None
        return [changed[uid] for uid in sorted(changed) if uid not in vanished], sorted(vanished), reached

    def flagsResponses(self) -> bytes:
        """The untagged FLAGS and PERMANENTFLAGS for the flags the client may see now."""
        flags = " ".join(list(SYSTEM_FLAGS) + sorted(self.keywords)).encode("utf-8", "replace")
        return b"* FLAGS (" + flags + b")\r\n* OK [PERMANENTFLAGS (" + flags + b" \\*)] Flags permitted\r\n"

    def announceKeywords(self, flag_sets: Iterable[frozenset[str]]) -> None:
        """FLAGS and PERMANENTFLAGS again if C{flag_sets} hold a keyword the client was not told of."""
        new = {f for flags in flag_sets for f in flags if not f.startswith("\\")} - self.keywords
        if new:
            self.keywords |= new
            self._write(self.flagsResponses())

    def shownFlags(self, uid: int, flags: frozenset[str]) -> frozenset[str]:
        """The flags as the client sees them: with \\Recent where this session has it."""
        return flags | {RECENT} if uid in self.recent else flags

    def setFlags(self, uid: int, flags: frozenset[str], modseq: int | None = None) -> None:
        """The flags (and mod-sequence) this session itself set (STORE, FETCH's implicit \\Seen), new keywords announced."""
        self.announceKeywords([flags])
        entry = self.info[uid]
        self.info[uid] = dataclasses.replace(entry, flags=flags, modseq=entry.modseq if modseq is None else modseq)

    def expunged(self, uids: set[int]) -> None:
        """Messages this session itself removed (MOVE): EXPUNGE each, in descending order (or one VANISHED)."""
        gone = [i for i, uid in enumerate(self.uids) if uid in uids]
        self._expunging(gone)
        self._tellExpunged(gone)
        for position in reversed(gone):
            self._forget(position)

    def _expunging(self, positions: list[int]) -> None:
        if positions:
            for listener in self.expunging:
                listener([self.uids[p] for p in positions])

    def _tellExpunged(self, gone: list[int]) -> None:
        """EXPUNGE for each of the positions C{gone} (ascending), highest first; with QRESYNC on, one VANISHED of their UIDs."""
        if not gone:
            return
        if self.vanished:
            self._write(b"* VANISHED " + format_uid_set(self.uids[p] for p in gone) + b"\r\n")
            return
        self._write(b"".join(b"* %d EXPUNGE\r\n" % (position + 1) for position in reversed(gone)))

    def _forget(self, position: int) -> None:
        uid = self.uids.pop(position)
        self.info.pop(uid, None)
        self.recent.discard(uid)

    async def update(self, allow_expunge: bool, force: bool = False, with_uid: bool = False) -> None:
        """
        Re-read the folder if it changed (or C{force}) and tell the client:
        EXPUNGE (descending, only where allowed), FETCH FLAGS for changed
        flags, EXISTS and RECENT for new messages.
        """
        if force or self.look_outside:
            # Other tools' changes come back as store events: they mark the view dirty.
            self.look_outside = False
            await self.folder.refresh()
            if not self.active:
                return
        if not (self.dirty or force):
            return
        self.dirty = False
        # Hints from here on count for the next update; what came before is this one's.
        unlinked, self._unlinked = self._unlinked, False
        if not unlinked and not force and self.mark:
            linked = self._linked()
            if linked is not None:
                changed, vanished, highest = linked
                await self._claimNew(changed)
                if not self.active:
                    return
                self._applyChanges(changed, vanished, highest, allow_expunge, with_uid)
                self._forgetLinks()
                return
        mark = self.mark
        try:
            await self._read(allow_expunge, force, with_uid)
        except BaseException:
            self._unlinked = True
            raise
        if self.dirty and self.mark == mark:
            # Told only in part (expunges this command may not show): the next update reads again.
            self._unlinked = True
        self._forgetLinks()

    def _forgetLinks(self) -> None:
        """Drop the deltas the view is complete past."""
        mark = self.mark
        for before in [before for before, delta in self._links.items() if delta.after <= mark]:
            self._linked_rows -= self._links.pop(before).rows

    async def _read(self, allow_expunge: bool, force: bool, with_uid: bool) -> None:
        """L{update} by reading the store: what is new, what changed since L{mark}, or the whole folder."""
        if self.only_added and not force:
            # Only new mail was announced: read just what lies above the view.
            added = await self._markers.messagesAfter(self.folder, self.highest)
            if not self.active:
                return
            await self._claimNew(added)
            if not self.active:
                return
            self.announceNew(added)
            return
        if self.mark:
            found = await self.folder.changesSince(self.mark)
            if not self.active:
                return
            if found.vanished is not None:
                await self._claimNew(found.changed)
                if not self.active:
                    return
                self._applyChanges(found.changed, found.vanished, found.highestmodseq, allow_expunge, with_uid)
                return
        messages: list[MessageInfo] = await self.folder.messages()
        if not self.active:
            return
        await self._claimNew(messages)
        if not self.active:
            return
        current = {m.uid: m for m in messages}
        gone = [i for i, uid in enumerate(self.uids) if uid not in current]
        if gone:
            if allow_expunge:
                self._expunging(gone)
                self._tellExpunged(gone)
                for position in reversed(gone):
                    self._forget(position)
            else:
                self.dirty = True
                self.only_added = False  # the expunges are still to tell: read it all again
        if not gone or allow_expunge:
            self.mark = max((m.modseq for m in messages), default=0)
        out = []
        self.announceKeywords(m.flags for m in messages)
        modseqs = self.modseqs
        with_uid = with_uid or self.vanished  # QRESYNC: a client may have no sequence numbers to go by
        for position, uid in enumerate(self.uids):
            now = current.get(uid)
            if now is None:
                continue
            known = self.info[uid]
            if now.flags != known.flags or (modseqs and now.modseq != known.modseq):
                self.info[uid] = now
                flags = now.flags | ({RECENT} if uid in self.recent else set())
                extra = b" UID %d" % uid if with_uid else b""
                if modseqs:
                    extra += b" MODSEQ (%d)" % now.modseq
                out.append(b"* %d FETCH (FLAGS %s%s)\r\n" % (position + 1, format_flags(flags), extra))
            elif now.modseq != known.modseq:
                self.info[uid] = now
        if out:
            self._write(b"".join(out))
        self.announceNew(messages)

    def _applyChanges(
        self, changed: list[MessageInfo], vanished: list[int], highest: int, allow_expunge: bool, with_uid: bool
    ) -> None:
        """
        L{update} from what changed after L{mark} alone (the same responses,
        in the same order, as a read of the whole folder would give): a
        flag change costs the changed messages, not the folder.
        """
        uids = self.uids
        gone = []
        for uid in vanished:
            position = bisect.bisect_left(uids, uid)
            if position < len(uids) and uids[position] == uid:
                gone.append(position)
        if gone:
            if allow_expunge:
                self._expunging(gone)
                self._tellExpunged(gone)
                for position in reversed(gone):
                    self._forget(position)
            else:
                self.dirty = True
                self.only_added = False
        self.announceKeywords(m.flags for m in changed)
        modseqs = self.modseqs
        with_uid = with_uid or self.vanished
        out = []
        for now in changed:
            known = self.info.get(now.uid)
            if known is None:
                continue
            if now.flags != known.flags or (modseqs and now.modseq != known.modseq):
                self.info[now.uid] = now
                position = bisect.bisect_left(uids, now.uid)
                flags = now.flags | ({RECENT} if now.uid in self.recent else set())
                extra = b" UID %d" % now.uid if with_uid else b""
                if modseqs:
                    extra += b" MODSEQ (%d)" % now.modseq
                out.append(b"* %d FETCH (FLAGS %s%s)\r\n" % (position + 1, format_flags(flags), extra))
            elif now.modseq != known.modseq:
                self.info[now.uid] = now
        if out:
            self._write(b"".join(out))
        self.announceNew(changed)
        if not gone or allow_expunge:
            self.mark = highest

    def announceNew(self, messages: list[MessageInfo]) -> None:
        """EXISTS and RECENT for the messages above what the view has announced (\\Recent: those L{claim} found)."""
        new = [m for m in messages if m.uid > self.highest]
        if new:
            self.announceKeywords(m.flags for m in new)
            owned, self._owned = self._owned, []
            for m in new:
                self.uids.append(m.uid)
                self.info[m.uid] = m
                if self.shows_recent and any(m.uid in r for r in owned):
                    self.recent.add(m.uid)
            self.highest = new[-1].uid
            self.uidnext = max(self.uidnext, self.highest + 1)
            self._write(b"* %d EXISTS\r\n" % len(self.uids))
            if self.shows_recent:
                self._write(b"* %d RECENT\r\n" % len(self.recent))
