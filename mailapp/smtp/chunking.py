"""
CHUNKING and BINARYMIME (RFC 3030): ``BDAT <size> [LAST]``, a message sent
in chunks of announced size instead of DATA's dot-stuffed lines.

L{ChunkingServer} adds BDAT to the SMTP session. Its rules:

  - a chunk is exactly the announced octets, read raw by
    L{mailapp.smtp.data._ChunkReceiver} (nothing unstuffed, no line end
    looked for or changed) and streamed to the spool by the same path as
    DATA's bytes (its header checks, size limit and back-pressure);
  - every BDAT gets its own reply (RFC 3030 2): 250 for a chunk taken
    (once the spool has taken it), and for the last chunk the reply DATA's
    end would get (the same end-of-message processing and commit);
  - a refused BDAT (no MAIL, no recipient, over the size limit) has its
    chunk read and thrown away before the reply, so the session stays in
    step with a pipelining client; a refusal over the size limit ends the
    transaction (RFC 3030 2: the client sends no more chunks of it, and
    those already in the pipeline get 503, not counted as errors);
  - DATA is refused in a transaction that used BDAT, and in one whose MAIL
    FROM said BODY=BINARYMIME (503 5.5.1);
  - RSET, a new EHLO, a closed connection or a shutdown between chunks
    drop the partial message (its spool file goes with the transaction).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mailapp.smtp.data import _ChunkReceiver
from mailapp.smtp.transaction import ESMTPServer

__all__ = ["ChunkingServer"]

#: Digits a chunk size may have: RFC 3030 allows any, a 10**18-octet chunk is an attack.
_MAX_SIZE_DIGITS = 18


class ChunkingServer(ESMTPServer):
    """The SMTP session with BDAT; see the module docstring."""

    def __init__(self, factory: Any) -> None:
        super().__init__(factory)
        #: The message being received in chunks, from a transaction's first BDAT to its last.
        self._chunks: _ChunkReceiver | None = None
        #: Whether the current chunk's octets are being read (after its BDAT line).
        self._inChunk = False
        #: Octets of a refused chunk still to throw away, and the reply that then answers its BDAT.
        self._skipping = 0
        self._skipReply: tuple[int, bytes, bool] | None = None
        #: A chunk of the last transaction was refused: the BDATs the client had
        #: pipelined behind it get 503 without counting as errors (RFC 3030 2).
        self._chunkRefused = False

    # -- the chunk's octets ------------------------------------------------------------

    def consumeRaw(self) -> bool | None:
        if self._skipReply is not None:
            taken = min(self._skipping, len(self._buffer))
            self._buffer = self._buffer[taken:]
            self._skipping -= taken
            if self._skipping:
                return False
            self._answerSkipped()
            return True
        receiver = self._chunks
        if receiver is None or not self._inChunk:
            return super().consumeRaw()
        before = len(self._buffer)
        self._buffer = receiver.feed(self._buffer)
        self.deadlines.dataReceived(before - len(self._buffer))
        if receiver.remaining:
            self._pauseReadingUntil(receiver.lastWrite)
            return False
        self._inChunk = False
        self._chunkReceived()
        return True

    def busyElsewhere(self) -> bool:
        # A shutdown lets a chunk being read finish (its reply comes first); between chunks it closes.
        return super().busyElsewhere() or self._inChunk or self._skipReply is not None

    def _resetTransaction(self) -> None:
        super()._resetTransaction()
        if self._chunks is not None:
            self.deadlines.dataEnded()
        self._chunks = None
        self._inChunk = False

    # -- BDAT, DATA ------------------------------------------------------------------------

    def smtp_BDAT(self, argument: bytes) -> None:
        words = argument.split()
        if (
            not 1 <= len(words) <= 2
            or not words[0].isdigit()
            or len(words[0]) > _MAX_SIZE_DIGITS
            or (len(words) == 2 and words[1].upper() != b"LAST")
        ):
            # The size is unknown: what follows is read as commands (a client that sent it cannot be in step anyway).
            self._error(501, b"5.5.4 Syntax: BDAT size [LAST]")
            return
        size = int(words[0])
        last = len(words) == 2
        txn = self._txn
        if txn is None:
            self._skip(size, 503, b"5.5.1 Error: need MAIL command", counted=not self._chunkRefused)
            return
        self._chunkRefused = False
        if not txn.recipients:
            self._skip(size, 503, b"5.5.1 Error: need RCPT command")
            return
        received = self._chunks.size if self._chunks is not None else 0
        if received + size > self.policy.max_message_size:
            # Known from the size alone: the chunk is not stored, and the transaction is over.
            self._resetTransaction()
            self._skip(size, 552, b"5.3.4 Message size exceeds fixed maximum message size", counted=False)
            self._chunkRefused = True
            return
        if self._chunks is None:
            self._chunks = self._openMessage(txn, _ChunkReceiver)
            self.deadlines.dataStarted()
        self._chunks.expect(size, last)
        if size:
            self._inChunk = True
        else:
            self._chunkReceived()

    def smtp_RSET(self, argument: bytes) -> None:
        self._chunkRefused = False
        super().smtp_RSET(argument)

    def smtp_DATA(self, argument: bytes) -> None:
        if self._chunks is not None:
            self._error(503, b"5.5.1 Error: DATA after BDAT in the same transaction")
            return
        if self._txn is not None and self._txn.binarymime:
            self._error(503, b"5.5.1 Error: BODY=BINARYMIME requires BDAT")
            return
        super().smtp_DATA(argument)

    def _skip(self, size: int, code: int, text: bytes, counted: bool = True) -> None:
        """Refuse a BDAT once its C{size} octets are read and thrown away; a refused chunk ends its message."""
        if self._chunks is not None:
            self._resetTransaction()
        self._skipping = size
        self._skipReply = (code, text, counted)
        if not size:
            self._answerSkipped()

    def _answerSkipped(self) -> None:
        assert self._skipReply is not None
        (code, text, counted), self._skipReply = self._skipReply, None
        if counted:
            self._error(code, text)
        else:
            self.sendCode(code, text)

    def _chunkReceived(self) -> None:
        """A chunk is in: the last one ends the message as DATA's end does; another gets its 250 once the spool has it."""
        receiver = self._chunks
        assert receiver is not None
        if receiver.done:
            self._chunks = None
            self._data = receiver
            self.deadlines.dataEnded()
            self._endData()
            return
        reply = b"2.0.0 Ok: %d octets received" % receiver.chunk
        write = receiver.lastWrite
        if write is None or write.called:
            self.sendCode(250, reply)
            return
        taken: defer.Deferred[None] = defer.Deferred()

        def landed(result: object) -> object:
            taken.callback(None)
            return result

        write.addBoth(landed)
        self._wait(taken.addCallback(lambda _: self.sendCode(250, reply)))
