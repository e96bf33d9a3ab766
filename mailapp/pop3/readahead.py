"""
POP3's read-ahead: the small messages a session is about to send, read in
batches, so that a RETR is answered from memory and a worker-thread trip
serves many RETRs instead of one.

Clients fetch messages in order, one at a time (Thunderbird, Outlook) or
pipelined (RFC 2449: fetchmail, getmail). Either way the next RETRs name
the next numbers: after the one asked for, the following messages of at
most L{CHUNK_SIZE} are read in one L{IFolder.readMessages} call, within a
window of L{READ_AHEAD} messages and L{READ_AHEAD_BYTES} bytes, and the
window is topped up (one more trip) once half of it has been sent. A client
that fetches out of order pays one trip per message, as without
read-ahead, and what it skipped is dropped.

A message read ahead is the one of the login snapshot: if another client
expunges it before its RETR, the bytes read are sent (as a RETR a moment
earlier would have); one read ahead that had gone is simply not in the
batch, and its RETR reads it alone and says why it cannot be sent.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer

from mailapp.interfaces import IFolder
from mailapp.pop3.policy import CHUNK_SIZE, READ_AHEAD, READ_AHEAD_BYTES
from mailapp.records import MessageInfo

__all__ = ["ReadAhead"]


class ReadAhead:
    """
    The read-ahead of one session over its maildrop (see the module
    docstring). C{skip(number)} says which numbers never to read ahead
    (the deleted ones); C{messages[N - 1]} is message N.
    """

    def __init__(self, folder: IFolder, messages: list[MessageInfo], skip: Callable[[int], bool]) -> None:
        self._folder = folder
        self._messages = messages
        self._skip = skip
        #: The number last asked for (L{take}), to tell a client going in order.
        self._last = 0
        self._sequential = True
        #: The last number a batch covered (read, or passed over as too big or deleted).
        self._readTo = 0
        #: Message number -> its bytes, read and not yet sent.
        self._ready: dict[int, bytes] = {}
        #: The numbers of the batch being read, and who waits for it.
        self._reading: set[int] = set()
        self._waiters: list[defer.Deferred[None]] = []

    def __len__(self) -> int:
        """How many messages are held (read, not yet taken)."""
        return len(self._ready)

    def held(self) -> list[int]:
        """The numbers of the messages held, in order."""
        return sorted(self._ready)

    def take(self, number: int) -> bytes | None:
        """
        Message C{number}'s bytes if they are held (then no longer), else
        None; whatever is held outside the window that starts at C{number}
        is dropped (the client skipped it, or went backwards).
        """
        data = self._ready.pop(number, None)
        self._sequential = number == self._last + 1
        self._last = number
        if not self._sequential:
            # (In order, nothing held is behind: every batch starts at or after the RETR that asked.)
            window = range(number, number + READ_AHEAD)
            for stale in [n for n in self._ready if n not in window]:
                del self._ready[stale]
            self._readTo = max(self._ready, default=number)
        return data

    def forget(self, number: int) -> None:
        """Message C{number} will not be sent (DELE): let its bytes go."""
        self._ready.pop(number, None)

    def load(self, number: int) -> defer.Deferred[None]:
        """
        Fires once message C{number} is held, or its read is over without
        it (gone, too big, a failed read: L{take} then returns None and the
        caller reads it alone). One trip for it and the window after it.
        """
        if number in self._ready:
            return defer.succeed(None)
        if number not in self._reading:
            if self._reading:
                # A batch for other numbers is out: wait for it, then read ours.
                return self._whenRead().addCallback(lambda _: self.load(number))
            self._read(number, READ_AHEAD if self._sequential else 1)
        return self._whenRead()

    def topUp(self, after: int) -> None:
        """
        C{after} was just sent: if less than half of the window after it
        is held or being read, read the rest of it (one trip), unless a
        read is already out.
        """
        if self._reading or not self._sequential or self._readTo - after > READ_AHEAD // 2:
            return
        start = max(after + 1, self._readTo + 1)
        self._read(start, after + 1 + READ_AHEAD - start)

    def _read(self, first: int, count: int) -> None:
        """Read C{first} and the small messages of the C{count} after it, in one trip."""
        numbers: list[int] = []
        budget = READ_AHEAD_BYTES
        for n in range(first, min(first + count, len(self._messages) + 1)):
            info = self._messages[n - 1]
            if n in self._ready or info.size > CHUNK_SIZE or (n != first and self._skip(n)):
                self._readTo = max(self._readTo, n)
                continue
            if numbers and info.size > budget:
                break
            numbers.append(n)
            budget -= info.size
            self._readTo = max(self._readTo, n)
        if not numbers:
            return
        self._reading = set(numbers)
        uids = {self._messages[n - 1].uid: n for n in numbers}

        def arrived(found: dict[int, bytes]) -> None:
            for uid, data in found.items():
                self._ready[uids[uid]] = data

        def over(result: object) -> None:
            self._reading = set()
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

        d = self._folder.readMessages(list(uids), CHUNK_SIZE)
        # A failed batch is no error of any RETR's: each then reads its message alone.
        d.addCallbacks(arrived, lambda reason: None).addBoth(over)

    def _whenRead(self) -> defer.Deferred[None]:
        if not self._reading:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(waiter)
        return waiter
