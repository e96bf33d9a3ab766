"""
The signing process: a child of the server that makes DKIM signatures, so
that their CPU is spent on another core instead of in threads that share
the server's GIL with its reactor.

Why a process: in one process the signing threads and the reactor take
turns at one GIL, and a signed submission cost the server 2.2 ms more CPU
than the 0.7 ms the signatures themselves take (threads waking, handing
off and waiting for the GIL); durable submission ingest fell to about half
of the unsigned rate (BENCHMARKS.md, ``submission-dkim``). With the work in
a child the reactor only writes a request to a pipe and reads the answer.

The child is a plain blocking loop (no reactor): read a request, sign,
write the answer. Requests and answers are frames (L{write_frame},
L{read_frame}): two 4-byte big-endian lengths, a JSON header and a payload.

- request header: ``{"id": N, "path": P, "queue_id": Q}``;
  the payload is the message in wire form, or empty when C{path} names the
  queue's copy to read it from (the child reads it, so that the reactor
  never touches the disk).
- answer header: ``{"id": N, "status": "signed" | "unsigned" | "error",
  "domain": D, "selector": S, "reason": R}``; the payload is the fields to
  put on top of the message (empty unless signed).

The keys are the child's own L{KeyStore} on the same state directory: it
notices a rotation as the server's would (the key index's stat), so
``mailapp dkim rotate`` needs no restart here either.

Run as ``python -m mailapp.dkim.worker STATE_DIR``.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import IO, Any, Final

import dkim

from mailapp.dkim.keys import KeyStore
from mailapp.dkim.signing import from_domain, sign_message
from mailapp.workers.parentdeath import die_with_parent

__all__ = ["FrameReader", "encode_frame", "main", "read_frame", "sign_request", "write_frame"]

_LENGTHS: Final = struct.Struct(">II")
#: A header larger than this is not ours: the stream is out of step.
MAX_HEADER: Final = 64 * 1024


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One frame: the two lengths, C{header} as JSON, C{payload}."""
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return _LENGTHS.pack(len(encoded), len(payload)) + encoded + payload


def write_frame(stream: IO[bytes], header: dict[str, Any], payload: bytes = b"") -> None:
    stream.write(encode_frame(header, payload))
    stream.flush()


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: IO[bytes]) -> tuple[dict[str, Any], bytes] | None:
    """The next frame of C{stream}, or None at its end (the parent closed the pipe)."""
    lengths = _read_exactly(stream, _LENGTHS.size)
    if lengths is None:
        return None
    header_size, payload_size = _LENGTHS.unpack(lengths)
    if header_size > MAX_HEADER:
        raise ValueError(f"frame header of {header_size} bytes: the stream is out of step")
    header = _read_exactly(stream, header_size)
    payload = _read_exactly(stream, payload_size)
    if header is None or payload is None:
        return None
    decoded: dict[str, Any] = json.loads(header)
    return decoded, payload


class FrameReader:
    """
    The parent's side of L{read_frame}, for bytes as they arrive from the
    pipe: L{feed} them, and it returns every frame they complete.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= _LENGTHS.size:
            header_size, payload_size = _LENGTHS.unpack_from(self._buffer)
            if header_size > MAX_HEADER:
                raise ValueError(f"frame header of {header_size} bytes: the stream is out of step")
            end = _LENGTHS.size + header_size + payload_size
            if len(self._buffer) < end:
                break
            header = json.loads(bytes(self._buffer[_LENGTHS.size : _LENGTHS.size + header_size]))
            payload = bytes(self._buffer[_LENGTHS.size + header_size : end])
            del self._buffer[:end]
            frames.append((header, payload))
        return frames


def _message(header: dict[str, Any], payload: bytes) -> bytes:
    path = header.get("path")
    if not path:
        return payload
    from mailapp.store.messagefile import open_message

    size = header.get("size")
    with open_message(Path(path), int(size) if size is not None else None) as file:
        data: bytes = file.read()
    return data


def sign_request(keys: KeyStore, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
    """
    The answer to one request: the signatures of the message's From: domain
    keys, "unsigned" (with why) when there are none or dkimpy cannot parse
    the message, "error" when signing with keys we have failed (the parent
    refuses the message rather than send it unsigned).
    """
    answer: dict[str, Any] = {"id": header.get("id")}
    try:
        data = _message(header, payload)
        domain = from_domain(data)
        signing = keys.signing_keys_for(domain) if domain is not None else None
        if signing is None:
            answer.update(status="unsigned", domain=domain or "(none)", reason="no keys")
            return answer, b""
        answer.update(domain=signing.domain, selector=signing.selector)
        try:
            fields = sign_message(data, signing)
        except dkim.MessageFormatError as error:
            answer.update(status="unsigned", reason=str(error))
            return answer, b""
    except Exception as error:
        answer.update(status="error", reason=f"{type(error).__name__}: {error}")
        return answer, b""
    answer["status"] = "signed"
    return answer, fields


def main(argv: list[str] | None = None) -> int:
    """
    Answer framed requests on stdin until it closes. With C{PARENT} (the
    server process that started it) the kernel also kills this process the
    moment that one dies (L{mailapp.workers.parentdeath}), as it does the
    workers: a SIGKILLed server leaves no signer finishing, or stuck in, a
    request nobody will read, whoever else still holds the pipe.
    """
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) not in (1, 2) or (len(arguments) == 2 and not arguments[1].isdigit()):
        print("usage: python -m mailapp.dkim.worker STATE_DIR [PARENT]", file=sys.stderr)
        return 2
    if len(arguments) == 2:
        die_with_parent(int(arguments[1]))
    keys = KeyStore(Path(arguments[0]))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        frame = read_frame(stdin)
        if frame is None:
            return 0
        answer, fields = sign_request(keys, *frame)
        write_frame(stdout, answer, fields)


if __name__ == "__main__":
    sys.exit(main())
