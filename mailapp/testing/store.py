"""
FakeStore: every mailbox in memory, with the Maildir store's contracts
(UIDs, flags, expunges, folder events), for protocol tests.
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from mailapp.errors import BadFolderName, FolderExists, NoSuchFolder, NoSuchMessage, StoreError
from mailapp.interfaces import IFolder, IFreeSpace, IMailbox, IMessageStore, IMessageWriter
from mailapp.store.events import ADDED, EXPUNGED, FLAGS_CHANGED, EventBus, FolderEvent
from mailapp.store.filenames import DELETED_FLAG
from mailapp.store.names import DELIMITER, INBOX, SPECIAL_FOLDERS, normalize_folder
from mailapp.records import (
    FOLDER_CREATED,
    FOLDER_DELETED,
    FOLDER_RENAMED,
    SUBSCRIBED,
    UNSUBSCRIBED,
    Appended,
    ChangesSince,
    Expunged,
    FlagChange,
    FolderPlacement,
    MessageOrigin,
)
from mailapp.store.records import FolderInfo, FolderStatus, MessageInfo, Usage

if TYPE_CHECKING:
    from mailapp.records import TextMatches


@implementer(IMessageWriter)
class FakeMessageWriter:
    """A message being received, kept in memory."""

    def __init__(self, store: "FakeStore") -> None:
        self._store = store
        self._chunks: list[bytes] = []
        self.size = 0
        self.finished = False
        self.discarded = False
        self.internaldate = time.time()

    def write(self, data: bytes) -> Deferred[None]:
        self._chunks.append(data)
        self.size += len(data)
        return succeed(None)

    def finish(self) -> Deferred[None]:
        if self._store.failFinish:
            return fail(StoreError())
        self.finished = True
        return succeed(None)

    def discard(self) -> Deferred[None]:
        self.discarded = True
        self._chunks = []
        return succeed(None)

    def data(self) -> bytes:
        return b"".join(self._chunks)


#: The fakes' MAILBOXIDs and EMAILIDs: unique within the process.
_object_ids = itertools.count(1)


class _FakeFolderState:
    def __init__(self, uidvalidity: int, subscribed: bool = False) -> None:
        self.uidvalidity = uidvalidity
        #: RFC 8474: moves with the state on a rename; a folder made again is a new state.
        self.mailboxid = "F%d" % next(_object_ids)
        self.uidnext = 1
        #: As the Maildir store: INBOX and the special folders start subscribed, a created folder not.
        self.subscribed = subscribed
        #: uid -> [bytes, flags, internaldate, modseq, emailid, savedate]
        self.messages: dict[int, list[Any]] = {}
        #: RFC 7162, as the Maildir store keeps them: raised by every change of a message and every expunge.
        self.highestmodseq = 1
        #: (modseq, uid) of each expunge; those at or below C{vanished_before} are forgotten.
        self.vanished: list[tuple[int, int]] = []
        self.vanished_before = 1
        #: The lowest UID no L{FakeFolder.claimRecent} has taken (IMAP's \Recent).
        self.first_recent = 1
        #: uid -> bytes of expunged messages, still readable as the Maildir store's are for a while
        #: (clear it to play that while over).
        self.expunged: dict[int, bytes] = {}
        #: uid -> EMAILID of the messages in C{expunged} (answered while they are held, as the Maildir store does).
        self.expunged_emailids: dict[int, str] = {}
        #: uid -> (version, blob): L{FakeFolder.saveStructures}
        self.structures: dict[int, tuple[int, bytes]] = {}
        #: Every UID L{FakeFolder.openMessage} or L{FakeFolder.readMessage} was asked for, in order
        #: (and every one L{FakeFolder.readMessages} returned).
        self.opened: list[int] = []
        #: The UIDs of each L{FakeFolder.readMessages} call: one entry per trip a real store makes.
        self.batches: list[list[int]] = []

    def nextModseq(self) -> int:
        self.highestmodseq += 1
        return self.highestmodseq

    def info(self, uid: int) -> MessageInfo:
        m = self.messages[uid]
        return MessageInfo(uid, m[1], len(m[0]), m[2], m[3])

    def remove(self, uid: int) -> list[Any]:
        """Take a message out (expunge, move), remembered as vanished."""
        self.vanished.append((self.nextModseq(), uid))
        return self.messages.pop(uid)

    def forgetVanished(self, kept: int) -> None:
        """Forget all but the C{kept} newest expunges, as the Maildir store prunes its table."""
        if len(self.vanished) > kept:
            dropped, self.vanished = self.vanished[: len(self.vanished) - kept], self.vanished[len(self.vanished) - kept :]
            self.vanished_before = max(self.vanished_before, dropped[-1][0])


@implementer(IFolder)
class FakeFolder:
    def __init__(self, mailbox: "FakeMailbox", name: str) -> None:
        self.mailbox = mailbox
        self.account = mailbox.account
        self.name = name

    @property
    def _state(self) -> _FakeFolderState:
        state = self.mailbox._folders.get(self.name)
        if state is None:
            raise NoSuchFolder(f"no such folder: {self.name}")
        return state

    def _publish(self, kind: str, uids: Iterable[int], source: str | None = None) -> None:
        ordered = tuple(sorted(uids))
        if ordered:
            self.mailbox.store.events.publish(FolderEvent(kind, self.account, self.name, ordered, source))

    def _add(self, data: bytes, flags: Iterable[str], internaldate: float, emailid: str | None = None) -> int:
        """A message saved now; a copy or move passes its original's EMAILID (RFC 8474 5.1), a new message gets one."""
        state = self._state
        uid, state.uidnext = state.uidnext, state.uidnext + 1
        emailid = emailid or "M%d" % next(_object_ids)
        state.messages[uid] = [data, frozenset(flags), internaldate, state.nextModseq(), emailid, self.mailbox.store.clock()]
        return uid

    def refresh(self) -> Deferred[None]:
        """Nothing but this fake changes its messages."""
        return succeed(None)

    def status(self, refresh: bool = False) -> Deferred[FolderStatus]:
        state = self._state
        unseen = sum(1 for m in state.messages.values() if "\\Seen" not in m[1])
        messages = state.messages
        return succeed(
            FolderStatus(
                state.uidvalidity, state.uidnext, len(messages), unseen, state.highestmodseq,
                recent=sum(1 for uid in messages if uid >= state.first_recent),
                size=sum(len(m[0]) for m in messages.values()),
                deleted=sum(1 for m in messages.values() if DELETED_FLAG in m[1]),
            )
        )

    def messages(self) -> Deferred[list[MessageInfo]]:
        state = self._state
        return succeed([state.info(uid) for uid in sorted(state.messages)])

    def messagesIfChanged(self, known: tuple[int, int] | None) -> Deferred[tuple[tuple[int, int], int, list[MessageInfo] | None]]:
        """The token is a digest of the messages' UIDs and flags: however a test changed them, it changes."""
        state = self._state
        listed = [state.info(uid) for uid in sorted(state.messages)]
        token = _token(state, listed)
        return succeed((token, state.uidnext, None if token == known else listed))

    def changesSince(self, modseq: int) -> Deferred[ChangesSince]:
        state = self._state
        listed = [state.info(uid) for uid in sorted(state.messages)]
        vanished = None if modseq < state.vanished_before else sorted(uid for m, uid in state.vanished if m > modseq)
        changed = [m for m in listed if m.modseq > modseq]
        return succeed(ChangesSince(_token(state, listed), state.uidnext, state.highestmodseq, changed, vanished))

    def messagesAfter(self, uid: int) -> Deferred[list[MessageInfo]]:
        state = self._state
        return succeed([state.info(u) for u in sorted(state.messages) if u > uid])

    def _data(self, uid: int) -> bytes | None:
        state = self._state
        message = state.messages.get(uid)
        return message[0] if message is not None else state.expunged.get(uid)

    def openMessage(self, uid: int) -> Deferred[IO[bytes]]:
        self._state.opened.append(uid)
        data = self._data(uid)
        if data is None:
            return fail(NoSuchMessage(f"no such message: {uid}"))
        return succeed(io.BytesIO(data))

    def readMessage(self, uid: int, limit: int) -> Deferred[bytes | None]:
        self._state.opened.append(uid)
        data = self._data(uid)
        if data is None:
            return fail(NoSuchMessage(f"no such message: {uid}"))
        return succeed(data if len(data) <= limit else None)

    def readMessages(self, uids: Sequence[int], limit: int) -> Deferred[dict[int, bytes]]:
        self._state.batches.append(list(uids))
        found = {}
        for uid in uids:
            data = self._data(uid)
            if data is not None and len(data) <= limit:
                self._state.opened.append(uid)
                found[uid] = data
        return succeed(found)

    def cachedStructures(self, uids: Sequence[int], version: int) -> Deferred[dict[int, bytes]]:
        state = self._state
        found = {}
        for uid in uids:
            kept = state.structures.get(uid)
            if kept is not None and kept[0] == version and uid in state.messages:
                found[uid] = kept[1]
        return succeed(found)

    def mailboxId(self) -> Deferred[str]:
        try:
            return succeed(self._state.mailboxid)
        except NoSuchFolder as e:
            return fail(e)

    def origins(self, uids: Sequence[int]) -> Deferred[dict[int, MessageOrigin]]:
        state = self._state
        found = {uid: MessageOrigin(state.messages[uid][4], state.messages[uid][5]) for uid in uids if uid in state.messages}
        for uid in uids:
            if uid not in found and uid in state.expunged:
                found[uid] = MessageOrigin(state.expunged_emailids[uid], None)
        return succeed(found)

    def saveStructures(self, blobs: Mapping[int, bytes], version: int) -> Deferred[None]:
        state = self._state
        for uid, blob in blobs.items():
            if uid in state.messages:
                state.structures[uid] = (version, bytes(blob))
        return succeed(None)

    def searchText(
        self, terms: Sequence[tuple[str, str]], approximate: Sequence[tuple[str, str]] = ()
    ) -> Deferred[TextMatches | None]:
        """No full-text index: every search reads the messages."""
        _ = self._state  # NoSuchFolder, as the real store fails
        return succeed(None)

    def setFlags(self, uids: Iterable[int], flags: Iterable[str], mode: str = "replace") -> Deferred[dict[int, frozenset[str]]]:
        return self.changeFlags(uids, flags, mode).addCallback(lambda change: change.flags)

    def changeFlags(
        self, uids: Iterable[int], flags: Iterable[str], mode: str = "replace", unchangedSince: int | None = None
    ) -> Deferred[FlagChange]:
        state = self._state
        wanted = frozenset(flags)
        result = {}
        modseqs = {}
        modified = []
        for uid in sorted(set(uids)):
            message = state.messages.get(uid)
            if message is None:
                continue
            if unchangedSince is not None and message[3] > unchangedSince:
                modified.append(uid)
            else:
                old = message[1]
                message[1] = wanted if mode == "replace" else (old | wanted if mode == "add" else old - wanted)
                if message[1] != old:
                    message[3] = state.nextModseq()
            result[uid] = message[1]
            modseqs[uid] = message[3]
        self._publish(FLAGS_CHANGED, [uid for uid in result if uid not in modified])
        return succeed(FlagChange(result, modseqs, tuple(modified)))

    def highestModseq(self) -> Deferred[int]:
        return succeed(self._state.highestmodseq)

    def firstRecent(self) -> Deferred[int]:
        try:
            return succeed(self._state.first_recent)
        except NoSuchFolder as e:
            return fail(e)

    def claimRecent(self, uid: int) -> Deferred[range]:
        """As the Maildir store's: each UID handed out once (kept with the folder, so across sessions and factories)."""
        try:
            state = self._state
        except NoSuchFolder as e:
            return fail(e)
        first = state.first_recent
        if uid < first:
            return succeed(range(first, first))
        state.first_recent = uid + 1
        return succeed(range(first, uid + 1))

    def vanishedSince(self, modseq: int) -> Deferred[list[int] | None]:
        state = self._state
        if modseq < state.vanished_before:
            return succeed(None)
        return succeed(sorted(uid for m, uid in state.vanished if m > modseq))

    def expunge(self, uids: Iterable[int]) -> Deferred[list[int]]:
        state = self._state
        removed = [uid for uid in sorted(set(uids)) if uid in state.messages]
        for uid in removed:
            message = state.remove(uid)
            state.expunged[uid] = message[0]
            state.expunged_emailids[uid] = message[4]
        self._publish(EXPUNGED, removed)
        return succeed(removed)

    def expungeDeleted(self, wanted: Callable[[int], bool] | None = None) -> Deferred[Expunged]:
        state = self._state
        removed = self.expunge(
            [uid for uid, message in state.messages.items() if DELETED_FLAG in message[1] and (wanted is None or wanted(uid))]
        )
        return removed.addCallback(lambda uids: Expunged(uids, state.highestmodseq))

    def append(self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None) -> Deferred[int]:
        uid = self._add(data, flags, time.time() if internaldate is None else internaldate)
        self._publish(ADDED, [uid])
        return succeed(uid)

    def appendMessage(
        self, message: FakeMessageWriter, flags: Iterable[str] = (), internaldate: float | None = None
    ) -> Deferred[Appended]:
        added = self.append(message.data(), flags, message.internaldate if internaldate is None else internaldate)
        return added.addCallback(lambda uid: Appended(uid, self._state.uidvalidity))

    def copyTo(self, uids: Iterable[int], target: IFolder) -> Deferred[dict[int, int]]:
        target = _fake(target)
        mapping = {}
        for uid in sorted(set(uids)):
            message = self._state.messages.get(uid)
            if message is not None:
                mapping[uid] = target._add(message[0], message[1], message[2], message[4])
        target._publish(ADDED, mapping.values(), source=self.name)
        return succeed(mapping)

    def moveTo(self, uids: Iterable[int], target: IFolder) -> Deferred[dict[int, int]]:
        target = _fake(target)
        mapping = {}
        for uid in sorted(set(uids)):
            message = self._state.remove(uid) if uid in self._state.messages else None
            if message is not None:
                mapping[uid] = target._add(message[0], message[1], message[2], message[4])
        target._publish(ADDED, mapping.values(), source=self.name)
        self._publish(EXPUNGED, mapping)
        return succeed(mapping)


def _token(state: _FakeFolderState, listed: list[MessageInfo]) -> tuple[int, int]:
    """The token is a digest of the messages' UIDs and flags: however a test changed them, it changes."""
    return (state.uidvalidity, hash(tuple((m.uid, m.flags, m.size, m.modseq) for m in listed)))


def _fake(folder: IFolder) -> FakeFolder:
    """A copy or move goes between folders of one store: here, both fakes."""
    if not isinstance(folder, FakeFolder):
        raise TypeError(f"a FakeFolder copies and moves only to another FakeFolder, not {folder!r}")
    return folder


@implementer(IMailbox)
class FakeMailbox:
    def __init__(self, store: "FakeStore", account: str) -> None:
        self.store = store
        self.account = account
        self._folders = store._mailboxes.setdefault(account.lower(), {})
        #: Subscribed names whose folders were deleted (RFC 3501 6.3.9).
        self._lost: set[str] = store._lost_subscriptions.setdefault(account.lower(), set())
        for name in (INBOX, *SPECIAL_FOLDERS):
            self._folders.setdefault(name, _FakeFolderState(store._nextValidity(), subscribed=True))

    def _announce(self, kind: str, name: str, source: str | None = None) -> None:
        self.store.events.publish(FolderEvent(kind, self.account, name, (), source))

    def usage(self) -> Deferred[Usage]:
        sizes = [len(m[0]) for state in self._folders.values() for m in state.messages.values()]
        return succeed(Usage(len(sizes), sum(sizes)))

    def listFolders(self) -> Deferred[list[FolderInfo]]:
        folders = [FolderInfo(n, SPECIAL_FOLDERS.get(n), s.subscribed) for n, s in self._folders.items()]
        return succeed(sorted(folders, key=lambda f: (f.name != INBOX, f.name)))

    def createFolder(self, name: str) -> Deferred[None]:
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return fail(e)
        if name in self._folders:
            return fail(FolderExists(f"folder exists: {name}"))
        parts = name.split(DELIMITER)
        created = []
        for depth in range(1, len(parts) + 1):
            each = DELIMITER.join(parts[:depth])
            if each not in self._folders:
                self._folders[each] = _FakeFolderState(self.store._nextValidity())
                created.append(each)
        if name in self._lost:
            self._lost.discard(name)
            self._folders[name].subscribed = True
        for each in created:
            self._announce(FOLDER_CREATED, each)
        return succeed(None)

    def deleteFolder(self, name: str) -> Deferred[None]:
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return fail(e)
        if name == INBOX:
            return fail(BadFolderName("INBOX cannot be deleted"))
        state = self._folders.pop(name, None)
        if state is None:
            return fail(NoSuchFolder(f"no such folder: {name}"))
        if state.subscribed:
            self._lost.add(name)
        self._announce(FOLDER_DELETED, name)
        return succeed(None)

    def renameFolder(self, old: str, new: str) -> Deferred[None]:
        try:
            old, new = normalize_folder(old), normalize_folder(new)
        except BadFolderName as e:
            return fail(e)
        if old not in self._folders:
            return fail(NoSuchFolder(f"no such folder: {old}"))
        if new in self._folders:
            return fail(FolderExists(f"folder exists: {new}"))
        for name in [n for n in self._folders if n == old or n.startswith(old + DELIMITER)]:
            self._folders[new + name[len(old):]] = self._folders.pop(name)
            self._announce(FOLDER_RENAMED, new + name[len(old):], name)
        return succeed(None)

    def setSubscribed(self, name: str, subscribed: bool) -> Deferred[bool]:
        state = self._folders.get(name)
        if state is None:
            if not subscribed and name in self._lost:
                self._lost.discard(name)
                self._announce(UNSUBSCRIBED, name)
                return succeed(True)
            return succeed(False)
        state.subscribed = bool(subscribed)
        self._announce(SUBSCRIBED if subscribed else UNSUBSCRIBED, name)
        return succeed(True)

    def subscribedWithoutFolder(self) -> Deferred[list[str]]:
        return succeed(sorted(self._lost))

    def folder(self, name: str) -> Deferred[IFolder]:
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return fail(e)
        if name not in self._folders:
            return fail(NoSuchFolder(f"no such folder: {name}"))
        return succeed(FakeFolder(self, name))


@implementer(IFreeSpace)
class FakeFreeSpace:
    """
    What a fake store says of its disk: C{free} bytes, as the test sets it
    (C{store.freeSpace.free = 0}: full); C{None}, the default, cannot say,
    so nothing is refused.
    """

    def __init__(self, free: int | None = None) -> None:
        self.free = free

    def available(self) -> int | None:
        return self.free


@implementer(IMessageStore)
class FakeStore:
    """
    Every mailbox in memory, with the same contracts as the Maildir store.
    Set C{failDeliver} (or C{failFinish}) to make the next deliveries fail with
    L{StoreError}, as a full disk would; C{deliveries} records each delivery.
    """

    def __init__(self) -> None:
        self.events = EventBus()
        #: Its disk's free space: set C{freeSpace.free} to make it (nearly) full.
        self.freeSpace = FakeFreeSpace()
        self._mailboxes: dict[str, dict[str, _FakeFolderState]] = {}
        self._lost_subscriptions: dict[str, set[str]] = {}
        self._validity = 1000
        #: What save dates are taken from (RFC 8514): set it to a test's clock (C{lambda: clock.seconds()}).
        self.clock: Callable[[], float] = time.time
        self.failDeliver = False
        self.failFinish = False
        #: (accounts, folder, bytes) for every successful delivery, in order.
        self.deliveries: list[tuple[tuple[str, ...], str, bytes]] = []

    def _nextValidity(self) -> int:
        self._validity += 1
        return self._validity

    def mailbox(self, account: str) -> FakeMailbox:
        return FakeMailbox(self, account)

    def newMessage(self) -> FakeMessageWriter:
        return FakeMessageWriter(self)

    def deliverPlacements(self, message: FakeMessageWriter, placements: Sequence[FolderPlacement]) -> Deferred[list[int]]:
        if not message.finished:
            raise RuntimeError("deliverPlacements() before the message's finish() fired")
        if self.failDeliver:
            return fail(StoreError())
        data = message.data()
        folders = {p: normalize_folder(p.folder) for p in placements}
        for placement, folder in folders.items():
            if folder not in self.mailbox(placement.account)._folders:
                return fail(NoSuchFolder(f"no such folder: {folder}"))
        # One file linked into every placement, as the Maildir store does: one EMAILID (RFC 8474 5.1).
        emailid = "M%d" % next(_object_ids)
        uids = [
            FakeFolder(self.mailbox(p.account), folders[p])._add(data, tuple(p.flags), message.internaldate, emailid)
            for p in placements
        ]
        for placement, uid in zip(placements, uids):
            self.events.publish(FolderEvent(ADDED, placement.account, folders[placement], (uid,)))
            self.deliveries.append(((placement.account,), folders[placement], data))
        return succeed(uids)

    def deliver(self, message: FakeMessageWriter, accounts: Iterable[str], folder: str = INBOX) -> Deferred[dict[str, int]]:
        if not message.finished:
            raise RuntimeError("deliver() before the message's finish() fired")
        if self.failDeliver:
            return fail(StoreError())
        unique: dict[str, str] = {}
        for account in accounts:
            unique.setdefault(account.lower(), account)
        data = message.data()
        emailid = "M%d" % next(_object_ids)
        result = {}
        for account in unique.values():
            target = FakeFolder(self.mailbox(account), normalize_folder(folder))
            result[account] = target._add(data, (), message.internaldate, emailid)
        for account, uid in result.items():
            self.events.publish(FolderEvent(ADDED, account, normalize_folder(folder), (uid,)))
        self.deliveries.append((tuple(unique.values()), folder, data))
        return succeed(result)
