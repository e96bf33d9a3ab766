"""
How the ``mailapp queue`` command changes the queue, whether or not the
server runs, without two processes ever writing one envelope.

The running relay manager holds an exclusive ``flock`` on
``state_dir/queue/lock`` for as long as it runs. A command that changes the
queue (``retry``, ``delete``, ``bounce``) first tries to take that lock:

  - it gets it: no server runs; the command changes the envelopes itself
    (atomic rename, fsync'd), holding the lock so that a server starting
    meanwhile waits for it;
  - it does not: the command writes a request, ``control/REQUEST.json``
    (temporary name, then rename), and waits (bounded) for the manager's
    answer, ``control/REQUEST.result``. The manager looks for requests every
    L{POLL_INTERVAL} seconds, applies them on the reactor thread in the
    order written, and answers each. A request left unanswered (the server
    stopped first) is applied at the next start.

Reading (``list``, ``show``) needs no lock: envelopes are only ever replaced
by rename, so a reader sees a whole old one or a whole new one.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from mailapp.relay.queue import FAILED, PENDING, Envelope, QueueLayout

__all__ = ["ADMIN_BOUNCE_REPLY", "POLL_INTERVAL", "VERBS", "apply_to_envelope", "try_lock"]

POLL_INTERVAL = 1.0
VERBS = ("retry", "delete", "bounce")
ADMIN_BOUNCE_REPLY = "550 5.0.0 returned to the sender by the postmaster"
_REQUEST_SUFFIX = ".json"
_RESULT_SUFFIX = ".result"


def try_lock(layout: QueueLayout) -> int | None:
    """Take the queue lock without waiting: the open descriptor, or C{None} if someone holds it."""
    layout.create()
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def apply_to_envelope(envelope: Envelope, verb: str, now: float) -> Envelope | None:
    """
    The change one verb makes to one entry: the new envelope, or C{None} when
    the entry is to be removed. Used by the command (server stopped) and the
    manager alike, so both mean the same.
    """
    if verb == "delete":
        return None
    if verb == "retry":
        envelope.next_attempt = now
        return envelope
    if verb == "bounce":
        for recipient in envelope.recipients:
            if recipient.state == PENDING:
                recipient.state = FAILED
                recipient.last_reply = ADMIN_BOUNCE_REPLY
                recipient.notified = False
        envelope.fence += 1
        envelope.next_attempt = now
        return envelope
    raise ValueError(f"unknown verb {verb!r}")


def submit(layout: QueueLayout, verb: str, entry_id: str | None) -> str:
    """Write a request for the running manager; return its name."""
    layout.create()
    name = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
    temporary = layout.tmp / f"control-{name}"
    temporary.write_text(json.dumps({"verb": verb, "id": entry_id}), encoding="utf-8")
    os.rename(temporary, layout.control / f"{name}{_REQUEST_SUFFIX}")
    return name


def wait_for_result(layout: QueueLayout, name: str, timeout: float) -> dict[str, Any] | None:
    """The manager's answer to request C{name}, or C{None} after C{timeout} seconds."""
    path = layout.control / f"{name}{_RESULT_SUFFIX}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            time.sleep(0.05)
            continue
        path.unlink(missing_ok=True)
        return result
    return None


def read_requests(layout: QueueLayout) -> list[tuple[str, dict[str, Any]]]:
    """Manager side (worker thread): pending requests, oldest first. Malformed ones are answered at once."""
    requests = []
    for item in sorted(os.scandir(layout.control), key=lambda e: e.name):
        if not item.name.endswith(_REQUEST_SUFFIX):
            continue
        name = item.name[: -len(_REQUEST_SUFFIX)]
        try:
            request = json.loads(Path(item.path).read_text(encoding="utf-8"))
            if not isinstance(request, dict) or request.get("verb") not in VERBS:
                raise ValueError("not a request")
            if request.get("id") is not None and not isinstance(request["id"], str):
                raise ValueError("bad id")
        except (OSError, ValueError) as error:
            write_result(layout, name, {"ok": False, "error": f"malformed request: {error}"})
            continue
        requests.append((name, request))
    return requests


def write_result(layout: QueueLayout, name: str, result: dict[str, Any]) -> None:
    """Manager side: answer request C{name} (atomically) and remove the request."""
    temporary = layout.tmp / f"control-{name}.result"
    temporary.write_text(json.dumps(result), encoding="utf-8")
    os.rename(temporary, layout.control / f"{name}{_RESULT_SUFFIX}")
    (layout.control / f"{name}{_REQUEST_SUFFIX}").unlink(missing_ok=True)


def clean_results(layout: QueueLayout, max_age: float = 3600) -> None:
    """Remove answers nobody collected (the command gave up waiting)."""
    cutoff = time.time() - max_age
    for item in os.scandir(layout.control):
        try:
            if item.name.endswith(_RESULT_SUFFIX) and item.stat().st_mtime < cutoff:
                os.unlink(item.path)
        except OSError:
            pass
