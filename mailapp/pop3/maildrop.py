"""
A POP3 session's maildrop (RFC 1939): the snapshot of INBOX taken at login,
the lock that keeps a second session off it, and the way a message goes out
(the whole of it for RETR, L{_TopFilter}'s cut for TOP), dot-stuffed by the
shared L{mailapp.dotstuffing.FileSender}.

One session per maildrop: L{MaildropLocks} refuses a second concurrent login
with C{-ERR [IN-USE]}. The lock lives in this process's memory, and, when
the server runs worker processes (L{mailapp.workers}), also in an ``flock``
on a file per account, which the kernel drops when a process dies; a
deployment with several nodes over one store needs a shared lock (a lease
with an expiry in the shared database) behind the same C{acquire}/C{release}.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable

from twisted.internet import defer
from mailapp.dotstuffing import Consumer, FileSender
from mailapp.pop3.policy import CHUNK_SIZE
from mailapp.interfaces import IFolder
from mailapp.records import MessageInfo

__all__ = ["MaildropLocks"]


class MaildropLocks:
    """
    The accounts that have a POP3 session past login, in this process (RFC
    1939 4: the server acquires an exclusive-access lock on the maildrop).

    In memory, so it holds within one process only: a multi-node backend must
    put a shared lock (a lease with an expiry, so that a dead node's lock
    lapses) behind the same two methods.

    The service makes one and hands it to every POP3 listener in its
    L{mailapp.context.ServiceContext} (C{maildrops}): a table of the
    server's, not of the module's, so that two servers (two tests) over one
    store never see each other's sessions.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._held: set[str] = set()
        #: Where the per-account lock files are, when sessions in other
        #: processes (the server's other workers) must be kept off too.
        self.directory = directory
        self._files: dict[str, int] = {}

    def acquire(self, account: str) -> bool:
        """Take the lock for C{account}; C{False} if a session (of any process sharing C{directory}) holds it."""
        key = account.lower()
        if key in self._held:
            return False
        if self.directory is not None:
            # A non-blocking open and flock of a small file: no wait on the
            # reactor, as twistd's own log writes.
            fd = _lock_file(self.directory, key)
            if fd is None:
                return False
            self._files[key] = fd
        self._held.add(key)
        return True

    def release(self, account: str) -> None:
        key = account.lower()
        self._held.discard(key)
        fd = self._files.pop(key, None)
        if fd is not None:
            os.close(fd)  # closing drops the flock


def _lock_file(directory: Path, key: str) -> int | None:
    """The open, exclusively locked lock file of account C{key}; None if another holds it."""
    # Hashed: an address is not a safe file name, and names need no escaping.
    name = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    fd = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd



@dataclass
class _Maildrop:
    """INBOX as it was at login; message N is C{messages[N - 1]}."""

    folder: IFolder
    uidvalidity: int
    messages: list[MessageInfo]
    deleted: set[int] = field(default_factory=set)
    retrieved: set[int] = field(default_factory=set)

    def live(self) -> Iterable[tuple[int, MessageInfo]]:
        return ((n, info) for n, info in enumerate(self.messages, 1) if n not in self.deleted)

    def totals(self) -> tuple[int, int]:
        count = size = 0
        for _, info in self.live():
            count += 1
            size += info.size
        return count, size

    def uidl(self, info: MessageInfo) -> bytes:
        return b"%d.%d" % (self.uidvalidity, info.uid)


def _number(argument: bytes) -> int | None:
    """A message number or line count: ASCII digits only, no sign (the line limit bounds its length)."""
    if not argument.isdigit():
        return None
    return int(argument)


class _TopFilter:
    """
    TOP's cut (RFC 1939 7): the header, the blank line after it, then C{lines}
    lines of the body, found in a stream of chunks.
    """

    def __init__(self, lines: int) -> None:
        self._remaining = lines
        self._inHeader = True
        self._lineStart = b""  # the first two bytes of the current line, to spot the blank line

    def feed(self, chunk: bytes) -> tuple[bytes, bool]:
        """The part of C{chunk} to send, and whether the cut is complete."""
        position = 0
        while self._inHeader or self._remaining > 0:
            end = chunk.find(b"\n", position)
            if end < 0:
                self._lineStart = (self._lineStart + chunk[position : position + 2])[:2]
                return chunk, False
            line = (self._lineStart + chunk[position : min(end, position + 2)])[:2]
            if self._inHeader:
                if line in (b"", b"\r"):
                    self._inHeader = False
            else:
                self._remaining -= 1
            self._lineStart = b""
            position = end + 1
        return chunk[:position], True


class _MessageSender(FileSender):
    """
    Streams one open message file to the transport, dot-stuffed, whole
    (C{lines} None: RETR) or cut after C{lines} body lines (TOP), with the
    transport's back-pressure; see L{FileSender}.
    """

    def __init__(
        self,
        transport: Consumer,
        file: IO[bytes],
        read: Callable[[IO[bytes], int], defer.Deferred[bytes]],
        lines: int | None,
        progress: Callable[[], None],
    ) -> None:
        super().__init__(transport, file, read, CHUNK_SIZE, progress, _TopFilter(lines).feed if lines is not None else None)
