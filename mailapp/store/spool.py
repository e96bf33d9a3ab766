"""
Receiving a message into a spool file with bounded memory.

Data arrives in small pieces from the network; it is buffered up to
L{SpoolWriter.FLUSH_AT} bytes and then written by a worker thread, so the
reactor never blocks on the disk and a 100 MiB message never sits in memory.
The spool lives inside the store's root so the finished file can be hard-linked
into every recipient's Maildir: written once, however many recipients.

Data arrives in wire form (CRLF) and is written in its Maildir form (LF), by
the same worker-thread steps (L{mailapp.store.messagefile}).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from mailapp.interfaces import IMessageWriter
from mailapp.store import durable, messagefile

_counter = itertools.count(1)
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072").replace(",", "\\054") or "localhost"


def unique_name() -> str:
    """A Maildir unique name: time, microseconds, pid, a counter, the host."""
    now = time.time()
    return f"{int(now)}.M{int((now % 1) * 1e6)}P{os.getpid()}Q{next(_counter)}.{_HOST}"


@implementer(IMessageWriter)
class SpoolWriter:
    """
    One message being received. Writes happen in order on worker threads;
    an I/O error is kept and reported by L{finish} (as L{mailapp.errors.StoreError};
    L{mailapp.errors.StorageFull} when the disk is full), so a
    caller streaming data need not handle errors on every write.
    """

    FLUSH_AT = 64 * 1024
    #: Bytes handed to worker threads and not yet written, past which write()
    #: asks its caller to wait (memory per message stays below this plus FLUSH_AT).
    HIGH_WATER = 4 * FLUSH_AT

    def __init__(self, spool_dir: Path, reactor: Any, threadpool: Any, sync: bool = True) -> None:
        self.base = unique_name()
        self.path = spool_dir / self.base
        #: Bytes written so far: the message's wire size (RFC822.SIZE).
        self.size = 0
        #: The file's size once finish() has fired (its LF form is smaller);
        #: None for a message kept in memory (C{pending}), which the store writes.
        self.stored_size: int | None = None
        self.internaldate = time.time()
        self.finished = False
        #: False when the store makes the file durable itself, together with others (group commit).
        self.sync = sync
        self._reactor = reactor
        self._threadpool = threadpool
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._fd: int | None = None
        self._error: Failure | None = None
        self._discarded = False
        self._started = False
        self._unwritten = 0
        self._encoder = messagefile.LFEncoder()
        #: The whole message, when it is small enough never to have been written (see finish).
        self.pending: bytes | None = None
        self._tail: Deferred[None] = succeed(None)

    def write(self, data: bytes) -> Deferred[None]:
        if self._discarded or self.finished:
            raise RuntimeError("write after finish or discard")
        self.size += len(data)
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered < self.FLUSH_AT:
            return succeed(None)
        chunk = self._takeBuffer()
        self._unwritten += len(chunk)
        written = self._enqueue(self._writeChunk, chunk)

        def landed(_: object) -> None:
            self._unwritten -= len(chunk)

        written.addCallback(landed)
        if self._unwritten <= self.HIGH_WATER:
            # A few chunks may be on their way to the disk at once; asking the
            # sender to pause for every one made the reactor toggle the socket.
            return succeed(None)
        return written

    def finish(self) -> Deferred[None]:
        """
        Fire when every byte is written: fsync'd too, unless C{sync} is off
        because the store's batch will make it durable with the others.
        """
        if not self.sync and not self._started and self._error is None:
            # A small message never touched the disk: hand its bytes to the
            # store's batch, which writes and syncs it with the others. This
            # saves a thread hop and a file creation racing the journal.
            self.pending = self._takeBuffer()
            self.finished = True
            return succeed(None)
        chunk = self._takeBuffer()
        done = self._enqueue(self._finishSync, chunk)

        def check(_: object) -> None:
            if self._error is not None:
                raise durable.store_error_for(self._error.value) from self._error.value
            self.finished = True

        return done.addCallback(check)

    def discard(self) -> Deferred[None]:
        if self._discarded:
            return succeed(None)
        self._discarded = True
        self._buffer = []
        self._buffered = 0
        self.pending = None
        if not self._started:
            return succeed(None)
        return self._enqueue(self._discardSync, always=True)

    # -- worker-thread side --------------------------------------------------

    def _takeBuffer(self) -> bytes:
        chunk = b"".join(self._buffer)
        self._buffer = []
        self._buffered = 0
        return chunk

    def _enqueue(self, function: Callable[..., None], *args: Any, always: bool = False) -> Deferred[None]:
        """
        Run C{function} after every earlier step. The returned Deferred only
        signals "done" (back-pressure); errors are kept in C{self._error}.
        """
        done: Deferred[None] = Deferred()
        self._started = True

        def step(_: object) -> Deferred[None] | None:
            if self._error is not None and not always:
                return None
            return deferToThreadPool(self._reactor, self._threadpool, function, *args)

        def record(result: object) -> None:
            if isinstance(result, Failure) and self._error is None:
                self._error = result
            done.callback(None)

        self._tail.addCallback(step).addBoth(record)
        return done

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return self._fd

    def _store(self, stored: bytes, was_lf: bool) -> None:
        """Append what the encoder made of a piece; first restore the file if it just gave up on LF."""
        if was_lf and not self._encoder.lf and self._fd is not None:
            self._fd = messagefile.restore_received_form(self.path, self._fd)
        if stored:
            durable.write_all(self._open(), stored)

    def _writeChunk(self, chunk: bytes) -> None:
        was_lf = self._encoder.lf
        self._store(self._encoder.feed(chunk), was_lf)

    def _finishSync(self, chunk: bytes) -> None:
        if chunk:
            self._writeChunk(chunk)
        was_lf = self._encoder.lf
        self._store(self._encoder.close(), was_lf)
        fd = self._open()
        self.stored_size = self._encoder.stored_size
        if self.sync:
            durable.fsync_file(fd)
        os.close(fd)
        self._fd = None

    def _discardSync(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        durable.unlink(self.path)
