"""
The server's side of the signing process (L{mailapp.dkim.worker}): starts
the child when the first message needs signing, sends it requests over its
stdin and reads the answers from its stdout, all on the reactor (writing to
and reading from a pipe, never the disk: a spooled message is named by its
path and read by the child).

What happens when the child fails:

- it exits or is killed: every request it had not answered is sent again,
  once, to a new child; a request that has been sent twice fails (the
  Router answers 451 and the client tries again later: never unsigned
  mail, never lost mail);
- it stops answering: a request unanswered after C{timeout} seconds kills
  the child, which is then the case above;
- what it writes on stderr (a traceback) goes to the log as a warning.

At most C{max_in_flight} requests are in the pipe at once; the rest wait
here, in order. L{stop} sends what waits, closes the child's stdin and
fires when the child has answered everything and exited.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import logevents
from mailapp.dkim.worker import FrameReader, encode_frame

__all__ = ["SigningFailed", "SigningProcess"]

_log = Logger()

#: Times a request is sent before it fails: once, and once more to a new child.
ATTEMPTS: Final = 2


class SigningFailed(Exception):
    """The signing process could not sign a message (it died twice, or said why)."""


@dataclass
class _Job:
    id: int
    header: dict[str, Any]
    payload: bytes
    done: Deferred[tuple[dict[str, Any], bytes]] = field(default_factory=Deferred)
    attempts: int = 0
    timer: IDelayedCall | None = None


class _Child(ProcessProtocol):
    """One child process: passes its answers and its end to the L{SigningProcess}."""

    def __init__(self, owner: "SigningProcess") -> None:
        self.owner = owner
        self.frames = FrameReader()
        self.errors = bytearray()
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            try:
                frames = self.frames.feed(data)
            except ValueError as error:
                _log.error("{log_event}: {error}; restarting it", log_event=logevents.DKIM_SIGNER_FAILED, error=str(error))
                self.kill()
                return
            for header, payload in frames:
                self.owner._answered(self, header, payload)
        elif childFD == 2:
            self.errors += data
            *lines, rest = bytes(self.errors).split(b"\n")
            self.errors = bytearray(rest[-4096:])
            for line in lines:
                _log.warn(
                    "{log_event}: {line}", log_event=logevents.DKIM_SIGNER_FAILED, line=line.decode("utf-8", "replace")
                )

    def kill(self) -> None:
        transport = self.transport
        if transport is not None and getattr(transport, "pid", None) is not None:
            transport.signalProcess("KILL")

    def processEnded(self, reason: Failure) -> None:
        self.owner._ended(self, reason)
        self.ended.callback(None)


class SigningProcess:
    """
    One signing child, started on demand by L{request}. C{argv} is the
    child's command line (the server's own Python running
    L{mailapp.dkim.worker} on C{state_dir} unless a test gives another).
    """

    def __init__(
        self,
        reactor: Any,
        state_dir: Path,
        *,
        argv: list[str] | None = None,
        max_in_flight: int = 64,
        timeout: float = 30.0,
    ) -> None:
        self._reactor = reactor
        #: The child's own command line: ours names this process, which the child dies with
        #: (L{mailapp.dkim.worker.main}), given when it starts (under workers, the worker's pid).
        self.argv = argv or [sys.executable, "-m", "mailapp.dkim.worker", str(state_dir)]
        self._names_parent = argv is None
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self._child: _Child | None = None
        self._waiting: deque[_Job] = deque()
        self._sent: dict[int, _Job] = {}
        self._next_id = 0
        self._stopping = False
        #: Children started so far (the first one included): what a test of a restart counts.
        self.started = 0

    def request(self, header: dict[str, Any], payload: bytes = b"") -> Deferred[tuple[dict[str, Any], bytes]]:
        """Fire with the child's answer to one request (header and payload), or fail with L{SigningFailed}."""
        if self._stopping:
            raise SigningFailed("the signing process is stopping")
        self._next_id += 1
        job = _Job(self._next_id, dict(header, id=self._next_id), payload)
        self._waiting.append(job)
        self._pump()
        return job.done

    @property
    def pending(self) -> int:
        """Requests not yet answered (sent and waiting)."""
        return len(self._sent) + len(self._waiting)

    def _start(self) -> _Child:
        child = _Child(self)
        self.started += 1
        argv = self.argv + [str(os.getpid())] if self._names_parent else self.argv
        transport = self._reactor.spawnProcess(
            child, argv[0], argv, env=os.environ.copy(), childFDs={0: "w", 1: "r", 2: "r"}
        )
        self._child = child
        _log.info(
            "{log_event}: pid {pid}",
            log_event=logevents.DKIM_SIGNER_STARTED,
            pid=getattr(transport, "pid", None),
            started=self.started,
        )
        return child

    def _pump(self) -> None:
        while self._waiting and (self._stopping or len(self._sent) < self.max_in_flight):
            child = self._child or self._start()
            job = self._waiting.popleft()
            job.attempts += 1
            self._sent[job.id] = job
            job.timer = self._reactor.callLater(self.timeout, self._timed_out, child, job)
            child.transport.write(encode_frame(job.header, job.payload))  # type: ignore[union-attr]

    def _answered(self, child: _Child, header: dict[str, Any], payload: bytes) -> None:
        job = self._sent.pop(header.get("id", -1), None)
        if job is None or child is not self._child:
            return
        if job.timer is not None and job.timer.active():
            job.timer.cancel()
        job.done.callback((header, payload))
        self._pump()

    def _timed_out(self, child: _Child, job: _Job) -> None:
        job.timer = None
        _log.error(
            "{log_event}: no answer in {timeout} s; restarting it",
            log_event=logevents.DKIM_SIGNER_FAILED,
            timeout=self.timeout,
        )
        child.kill()

    def _ended(self, child: _Child, reason: Failure) -> None:
        if child is not self._child:
            return
        self._child = None
        unanswered = sorted(self._sent.values(), key=lambda job: job.id)
        self._sent.clear()
        if unanswered or not reason.check(ProcessDone):
            _log.error(
                "{log_event}: the signing process ended ({reason}) with {count} requests unanswered",
                log_event=logevents.DKIM_SIGNER_FAILED,
                reason=reason.getErrorMessage(),
                count=len(unanswered),
            )
        retried = []
        for job in unanswered:
            if job.timer is not None and job.timer.active():
                job.timer.cancel()
            if job.attempts >= ATTEMPTS or self._stopping:
                job.done.errback(SigningFailed(f"the signing process ended twice while signing: {reason.getErrorMessage()}"))
            else:
                retried.append(job)
        self._waiting.extendleft(reversed(retried))
        self._pump()

    def stop(self) -> Deferred[None]:
        """Send every waiting request, close the child's stdin; fire once it has answered them all and exited."""
        self._stopping = True
        self._pump()
        child = self._child
        if child is None:
            return succeed(None)
        child.transport.closeStdin()  # type: ignore[union-attr]
        return child.ended
