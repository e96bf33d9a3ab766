"""
RecordingStore: a delivery target that records what was delivered where,
and that a test can make fail, or wait, at each phase of a delivery
(a writer's C{write} and C{finish}, the store's C{deliver}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from mailapp.errors import StorageFull, StoreError
from mailapp.interfaces import IMessageStore, IMessageWriter
from mailapp.records import FolderPlacement
from mailapp.store.names import INBOX
from mailapp.testing.store import FakeMessageWriter, FakeStore

__all__ = ["Delivery", "Phase", "RecordingStore", "RecordingWriter"]

#: The phases a test can make fail or wait.
Phase: TypeAlias = Literal["write", "finish", "deliver"]
PHASES: tuple[Phase, ...] = ("write", "finish", "deliver")

_T = TypeVar("_T")


@dataclass(frozen=True)
class Delivery:
    """One successful C{deliver}: the (distinct) accounts, the folder, the message's bytes."""

    accounts: tuple[str, ...]
    folder: str
    data: bytes
    #: The flags a Sieve script gave the copy (L{FakeStore.deliverPlacements}).
    flags: frozenset[str] = frozenset()


class _Faults:
    """What the next calls of each phase do instead of succeeding: fail once, or wait for the test."""

    def __init__(self) -> None:
        self._next: dict[Phase, list[Exception | Deferred[None]]] = {phase: [] for phase in PHASES}

    def fail(self, phase: Phase, error: Exception) -> None:
        self._check(phase)
        self._next[phase].append(error)

    def hold(self, phase: Phase) -> Deferred[None]:
        self._check(phase)
        held: Deferred[None] = Deferred()
        self._next[phase].append(held)
        return held

    def gate(self, phase: Phase) -> Deferred[None]:
        """What the next call of C{phase} waits for: nothing (fired), its error (failed), or the test (held)."""
        if not self._next[phase]:
            return succeed(None)
        fault = self._next[phase].pop(0)
        return fail(fault) if isinstance(fault, Exception) else fault

    def run(self, phase: Phase, action: Callable[[], Deferred[_T]]) -> Deferred[_T]:
        return self.gate(phase).addCallback(lambda _: action())

    @staticmethod
    def _check(phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"a phase is one of {', '.join(PHASES)}, not {phase!r}")


@implementer(IMessageWriter)
class RecordingWriter(FakeMessageWriter):
    """
    A message being received by a L{RecordingStore}; its faults are the
    store's. As the Maildir store's spool writer does, it lands its writes in
    order, and keeps a write's error: the write's Deferred only says "ready
    for more" and fires anyway, later writes land nothing, and L{finish}
    fails with the error.
    """

    _store: RecordingStore

    def __init__(self, store: RecordingStore) -> None:
        super().__init__(store)
        self._tail: Deferred[None] = succeed(None)
        #: The first write's error, which L{finish} fails with.
        self.error: Exception | None = None

    def write(self, data: bytes) -> Deferred[None]:
        gate = self._store.faults.gate("write")

        def land(_: object) -> None:
            if self.error is None:
                FakeMessageWriter.write(self, data)

        def keep(failure: Failure) -> None:
            if self.error is None:
                self.error = failure.value if isinstance(failure.value, Exception) else StoreError()

        return self._afterWrites(lambda: gate.addCallbacks(land, keep))

    def finish(self) -> Deferred[None]:
        def finish() -> Deferred[None]:
            if self.error is not None:
                return fail(self.error)
            return self._store.faults.run("finish", lambda: FakeMessageWriter.finish(self))

        return self._afterWrites(finish)

    def _afterWrites(self, action: Callable[[], Deferred[None]]) -> Deferred[None]:
        """Run C{action} once every earlier write has landed; its result is the returned Deferred's."""
        result: Deferred[None] = Deferred()

        def run(_: object) -> Deferred[None]:
            landed: Deferred[None] = Deferred()

            def settle(outcome: None | Failure) -> None:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(None)
                landed.callback(None)  # the next step waits for this one, whatever its outcome

            action().addBoth(settle)
            return landed

        self._tail.addCallback(run)
        return result

    @property
    def pending(self) -> bytes | None:
        """The whole message once finished, as the Maildir store's small-message path keeps it."""
        return self.data() if self.finished else None


@implementer(IMessageStore)
class RecordingStore(FakeStore):
    """
    A L{FakeStore} (delivered messages can be read back through its
    mailboxes) that records every delivery in C{delivered}, and fails or
    waits at the phase a test names:

        store = RecordingStore()
        store.failNext("finish", StorageFull())  # the next finish() fails, once
        held = store.hold("deliver")             # the next deliver() waits ...
        held.callback(None)                      # ... until the test lets it go on
        held.errback(StorageFull())              # (or fail)
        store.inbox("alice@example.test")        # [bytes, ...] delivered to alice

    A held C{write} lands its bytes (and those written after it) when the
    test fires it; a failed write is kept until C{finish}, as the spool keeps it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.faults = _Faults()
        #: Every successful delivery, in order.
        self.delivered: list[Delivery] = []

    def failNext(self, phase: Phase, error: Exception | None = None) -> None:
        """Make the next call of C{phase} fail with C{error} (a full disk, L{StorageFull}, by default)."""
        self.faults.fail(phase, StorageFull() if error is None else error)

    def hold(self, phase: Phase) -> Deferred[None]:
        """Make the next call of C{phase} wait for the returned Deferred: fired, it goes on; failed, it fails so."""
        return self.faults.hold(phase)

    def newMessage(self) -> RecordingWriter:
        return RecordingWriter(self)

    def deliver(
        self, message: FakeMessageWriter, accounts: Iterable[str], folder: str = INBOX
    ) -> Deferred[dict[str, int]]:
        accounts = tuple(accounts)

        def deliver() -> Deferred[dict[str, int]]:
            done = FakeStore.deliver(self, message, accounts, folder)
            return done.addCallback(self._record, message, folder)

        return self.faults.run("deliver", deliver)

    def deliverPlacements(self, message: FakeMessageWriter, placements: Sequence[FolderPlacement]) -> Deferred[list[int]]:
        placements = tuple(placements)

        def deliver() -> Deferred[list[int]]:
            def record(uids: list[int]) -> list[int]:
                for placement in placements:
                    self.delivered.append(Delivery((placement.account,), placement.folder, message.data(), placement.flags))
                return uids

            return FakeStore.deliverPlacements(self, message, placements).addCallback(record)

        return self.faults.run("deliver", deliver)

    def _record(self, result: dict[str, int], message: FakeMessageWriter, folder: str) -> dict[str, int]:
        self.delivered.append(Delivery(tuple(result), folder, message.data()))
        return result

    def inbox(self, account: str) -> list[bytes]:
        """The bytes of every message delivered to C{account} (any folder), in order."""
        key = account.lower()
        return [d.data for d in self.delivered if key in (a.lower() for a in d.accounts)]
