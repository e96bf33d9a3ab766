"""
How a message is kept in its Maildir file, and read back in wire form.

On the wire (SMTP, IMAP, POP3) every line of a message ends in CRLF; in a
Maildir lines end in LF, which is what mutt, formail and Dovecot expect (a
CRLF file shows a ``^M`` on every line). So a message is written with LF,
and its name carries both sizes, as Dovecot's do: ``,S=<size>`` is the
file's size, ``,W=<size>`` the size with every line end a CRLF, which is
RFC822.SIZE and what POP3 LIST reports. Sizes never need the file read.

Reading a file back follows Dovecot's rule: every LF not preceded by a CR
goes out as CRLF, anything else as it is. A file is in one of three forms:

  - named with ``W=`` different from ``S=``: stored with LF, expanded on
    the way out (mailapp's own files, Dovecot's);
  - named with ``W=`` equal to ``S=``: sent as it is. mailapp writes this
    for a message whose CRs and LFs are not all in CRLF pairs (only IMAP
    APPEND can bring one; SMTP turns bare CR and LF into CRLF), since LF
    storage could not give it back byte for byte; Dovecot for a file it
    stored with CRLF;
  - named without ``W=``: state format 1 (every mailapp file before LF
    storage, CRLF) or a tool that does not write it. The first line end
    decides: CRLF means sent as it is, LF means expanded.

The writer converts as data streams in (L{LFEncoder}), and the reader
expands a chunk at a time (L{open_message}), remembering where each chunk
starts in both forms so that a seek (IMAP's partial FETCH, a MIME section)
does not read from the top again. Memory stays bounded by a chunk either way.

Everything here is blocking file I/O: call it on a worker thread.
"""

from __future__ import annotations

import io
import os
from bisect import bisect_right
from pathlib import Path
from typing import IO, Any

from mailapp.store import durable

__all__ = [
    "CHUNK_SIZE",
    "LFEncoder",
    "encode",
    "measure",
    "open_message",
    "read_message",
    "held_bytes",
    "restore_received_form",
    "wire_bytes",
]

#: Bytes of the file read at a time.
CHUNK_SIZE = 64 * 1024

#: How much of a file without ``W=`` is looked at to find its first line end.
_SNIFF_SIZE = 8 * 1024


# -- writing ---------------------------------------------------------------------------------------


class LFEncoder:
    """
    Turns a message arriving in wire form (CRLF) into its stored form (LF),
    a piece at a time, and notices when that would lose bytes: a bare CR or
    a bare LF could not be told apart from a line end when the file is read
    back. From then on (L{lf} false) pieces pass through as they are, and
    the caller must rewrite what it already stored with
    L{restore_received_form}, so the whole file is as received.
    """

    def __init__(self) -> None:
        #: Still storing with LF line ends.
        self.lf = True
        #: Bytes fed in (the wire size) and bytes handed back (the file size).
        self.wire_size = 0
        self.stored_size = 0
        self._held_cr = False

    def feed(self, data: bytes) -> bytes:
        """Return what to append to the file for C{data}."""
        self.wire_size += len(data)
        if not self.lf:
            self.stored_size += len(data)
            return data
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        body = data
        if body.endswith(b"\r"):
            # It may be the first half of a CRLF split across two pieces.
            self._held_cr = True
            body = body[:-1]
        # Dropping every CR and expanding every LF again gives the piece
        # back exactly when its CRs and LFs all come as CRLF pairs; two
        # one-byte passes and a compare are much faster than replacing CRLF.
        out = body.replace(b"\r", b"")
        if out.replace(b"\n", b"\r\n") == body:
            self.stored_size += len(out)
            return out
        self._give_up()
        return data

    def close(self) -> bytes:
        """Return what to append at the end (a final bare CR, which ends LF storage)."""
        if not self._held_cr:  # (a CR is only ever held while storing with LF)
            return b""
        self._give_up()
        return b"\r"

    def _give_up(self) -> None:
        self.lf = False
        self._held_cr = False
        # Once the caller has restored what it wrote, the file is the wire form.
        self.stored_size = self.wire_size


def encode(data: bytes) -> tuple[bytes, bool]:
    """
    A whole message (small ones are kept in memory until the store writes
    them): its stored form, and whether that is the LF form.
    """
    encoder = LFEncoder()
    out = encoder.feed(data)
    tail = encoder.close()
    if not encoder.lf:
        return data, False
    return out + tail, True


def restore_received_form(path: Path, fd: int) -> int:
    """
    The file at C{path} (open for writing as C{fd}) holds the LF form of a
    message so far, every line end of which was a CRLF: rewrite it as it was
    received, close C{fd}, and return a descriptor that appends to the new
    file. Rare (an IMAP APPEND with a bare CR or LF), so a plain copy.
    """
    temporary = path.with_name(path.name + ".received")
    target = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(path, "rb") as source:
            while chunk := source.read(CHUNK_SIZE):
                durable.write_all(target, chunk.replace(b"\n", b"\r\n"))
    except BaseException:
        os.close(target)
        os.unlink(temporary)
        raise
    os.close(target)
    os.replace(temporary, path)
    os.close(fd)
    return os.open(path, os.O_WRONLY | os.O_APPEND)


# -- reading ---------------------------------------------------------------------------------------


def _expand(data: bytes, after_cr: bool) -> bytes:
    """
    The wire form of a piece of a file: each LF not preceded by a CR becomes
    CRLF. C{after_cr}: the piece before this one ended in a CR.
    """
    if after_cr and data.startswith(b"\n"):
        return b"\n" + _expand(data[1:], False)
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _bare_lfs(data: bytes, after_cr: bool) -> int:
    count = data.count(b"\n") - data.count(b"\r\n")
    if after_cr and data.startswith(b"\n"):
        count -= 1
    return count


def _sniffed_wire_size(fd: int, stored_size: int) -> int:
    """
    A file named without ``W=``: its size as it is sent. The first line end
    decides the form (see the module docstring); an LF file is counted, a
    full read, which only files other tools put in (and state format 1 never
    wrote) can need.
    """
    head = os.pread(fd, _SNIFF_SIZE, 0)
    first = head.find(b"\n")
    if first < 0 or (first > 0 and head[first - 1 : first] == b"\r"):
        return stored_size
    wire = 0
    offset = 0
    after_cr = False
    while chunk := os.pread(fd, CHUNK_SIZE, offset):
        wire += len(chunk) + _bare_lfs(chunk, after_cr)
        after_cr = chunk.endswith(b"\r")
        offset += len(chunk)
    return wire


def measure(path: Path) -> tuple[int, int]:
    """
    The file's size and its size as it is sent, for a file named without
    ``W=`` that the store is about to name (a file another tool dropped in).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        stored = os.fstat(fd).st_size
        return stored, _sniffed_wire_size(fd, stored)
    finally:
        os.close(fd)


def open_message(path: Path, wire_size: int | None) -> IO[bytes]:
    """
    Open a message file for reading in wire form: a seekable binary file
    whose offsets and bytes are those of the message as sent (CRLF), and
    whose C{seek(0, SEEK_END)} is its wire size, found without reading the
    file. C{wire_size} is the ``W=`` of its name, or None when the name has
    none. The caller closes it.

    @raise FileNotFoundError: the file is gone (renamed by a flag change, or expunged).
    """
    raw = io.FileIO(path, "r")
    try:
        stored = os.fstat(raw.fileno()).st_size
        if wire_size is None:
            wire_size = _sniffed_wire_size(raw.fileno(), stored)
        if wire_size == stored:
            return io.BufferedReader(raw, CHUNK_SIZE)
        return io.BufferedReader(_WireView(raw, wire_size), CHUNK_SIZE)
    except BaseException:
        raw.close()
        raise


def read_message(path: Path, wire_size: int | None, limit: int) -> bytes | None:
    """
    The whole message in wire form when that is at most C{limit} bytes, else
    None: one read, for the small messages POP3 and IMAP send whole.

    @raise FileNotFoundError: the file is gone.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        stored = os.fstat(fd).st_size
        if wire_size is None:
            wire_size = _sniffed_wire_size(fd, stored)
        if wire_size > limit:
            return None
        parts = []
        offset = 0
        while chunk := os.pread(fd, max(stored - offset, CHUNK_SIZE), offset):
            parts.append(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(parts)
    if wire_size == stored:
        return data
    data = _expand(data, False)
    return data if len(data) <= wire_size else data[:wire_size]


class _WireView(io.RawIOBase):
    """
    An LF-form file seen in wire form. It reads the file a chunk at a time
    (with pread, so the file position never matters) and records, for each
    chunk it has converted, where the next one starts in wire form, so a
    seek lands with one chunk read once the file was read through, and at
    worst reads forward from the last known chunk.
    """

    def __init__(self, raw: io.FileIO, wire_size: int) -> None:
        super().__init__()
        self._raw = raw
        self._fd = raw.fileno()
        self._wire_size = wire_size
        self._position = 0
        #: Wire offset of chunk i (file offset i * CHUNK_SIZE), and whether the byte before it is a CR.
        self._starts = [0]
        self._after_cr = [False]
        self._chunk = memoryview(b"")
        self._chunk_start = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            position = offset
        elif whence == os.SEEK_CUR:
            position = self._position + offset
        elif whence == os.SEEK_END:
            position = self._wire_size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise ValueError("negative seek position")
        self._position = position
        return position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        target = memoryview(buffer).cast("B")
        # Never past the size the name promised: that is what the client was told.
        end = min(self._position + len(target), self._wire_size)
        written = 0
        while self._position < end:
            offset = self._position - self._chunk_start
            if not 0 <= offset < len(self._chunk):
                if not self._load(self._position):
                    break
                offset = self._position - self._chunk_start
            count = min(len(self._chunk) - offset, end - self._position)
            target[written : written + count] = self._chunk[offset : offset + count]
            written += count
            self._position += count
        return written

    def _load(self, position: int) -> bool:
        """Make the chunk holding wire offset C{position} current; False past the end of the file."""
        number = bisect_right(self._starts, position) - 1
        while True:
            data = os.pread(self._fd, CHUNK_SIZE, number * CHUNK_SIZE)
            if not data:
                return False
            converted = _expand(data, self._after_cr[number])
            start = self._starts[number]
            if number + 1 == len(self._starts):
                self._starts.append(start + len(converted))
                self._after_cr.append(data.endswith(b"\r"))
            if position < start + len(converted):
                self._chunk = memoryview(converted)
                self._chunk_start = start
                return True
            number += 1

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def wire_bytes(message: Any) -> bytes:
    """
    Blocking: the whole of a finished L{mailapp.interfaces.IMessageWriter}'s
    message in wire form (CRLF), as the relay will send it. The Maildir
    store's writer keeps a small one in memory (C{pending}) and a large one
    in its spool file (C{path}, perhaps with LF line ends); a fake of
    L{mailapp.testing} has C{data()}. What DKIM signs and ARC seals.
    """
    held = held_bytes(message)
    if held is not None:
        return held
    with open_message(Path(message.path), int(message.size)) as file:
        return file.read()


def held_bytes(message: Any) -> bytes | None:
    """
    A finished message's wire form when it is held in memory (the Maildir
    writer's C{pending}, a fake's C{data()}), or None when it is only in its
    spool file (C{path}, C{size}): what may be read on the reactor.
    """
    pending = getattr(message, "pending", None)
    if pending is not None:
        return bytes(pending)
    data = getattr(message, "data", None)
    if callable(data):
        return bytes(data())
    return None
