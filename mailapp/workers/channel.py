"""
What the supervisor and a worker process say to each other: one JSON
object a line, over the worker's stdin (parent to worker) and stdout
(worker to parent).

Worker to parent:

- ``{"kind": "log", "event": ...}``: a log event (Twisted's
  ``eventAsJSON``), which the parent writes into the one server log;
- ``{"kind": "queued", "id": ...}``: the worker published a relay queue
  entry, which the parent, the queue's one owner, must now send;
- ``{"kind": "changed", "event": {...}}``: a folder changed in the worker's
  store (a delivery, a flag, an expunge), which the parent passes on to the
  other workers' IMAP sessions;
- ``{"kind": "abuse", "fact": ..., "fields": {...}}``: a failed login, a
  ban, a recipient probe, an accepted message (L{mailapp.abuse.AbuseGuard.share}),
  which the other workers' guards count too;
- ``{"kind": "connections", "client": ..., "delta": 1 or -1}``: the worker
  opened or closed a connection of that client
  (L{mailapp.sessions.ConnectionCounts.share}), or a session joined or left
  a listener's budget (``"client"`` is then L{mailapp.sessions.budget_key}'s
  ``@NAME`` or ``@NAME/unauthenticated``), which the parent counts and
  passes on to the other workers with ``"origin"`` (the worker's number) added;
- ``{"kind": "passed", "listener": ..., "ip": ..., "seconds": ...}``: a
  client passed the MX listener's early-talker checks
  (L{mailapp.postscreen.earlytalk.PassMemory.share}), which the other
  workers remember too, so it is greeted at once whichever worker it reaches;
- ``{"kind": "ready"}``: the worker's service has started and handles
  ``SIGHUP`` (the parent passes a reload on only then: before, the signal's
  default action would kill the worker);
- ``{"kind": "telemetry", "event": {...}}``: a per-command timing (the
  telemetry publisher's events, too many for the log), sent only when a
  metrics listener is configured: the parent serves the metrics, counted
  from every worker's log and telemetry.

Parent to worker: ``changed``, ``abuse`` and ``passed``, the same lines, and
``connections`` with its ``origin``, for what happened elsewhere; and
``{"kind": "connections", "origin": ..., "forget": true}`` when a worker
died with its connections. A worker starts with the parent's view of the
others' connections. ``{"kind": "accepting", "workers": [1, 2, ...]}``:
the workers that are ready now, sent to every worker whenever that
changes, so that a worker takes turns only with those
(L{mailapp.workers.accepting}).

A line is a hint like the event bus's events, never the truth: a lost one
delays an IDLE update until the session's own timer, never loses it.
"""

from __future__ import annotations

import json
from typing import Any, Final

from mailapp.records import FolderEvent

__all__ = ["ACCEPTING", "ABUSE", "CHANGED", "CONNECTIONS", "FANNED_OUT", "READY", "TELEMETRY", "plain_fields", "LOG", "MAX_LINE", "PASSED", "QUEUED", "LineBuffer", "decode", "encode", "event_from_fields", "event_to_fields"]

LOG: Final = "log"
QUEUED: Final = "queued"
CHANGED: Final = "changed"
ABUSE: Final = "abuse"
TELEMETRY: Final = "telemetry"
CONNECTIONS: Final = "connections"
READY: Final = "ready"
ACCEPTING: Final = "accepting"
PASSED: Final = "passed"
#: What the parent passes on, as it is, to every other worker.
FANNED_OUT: Final = frozenset({CHANGED, ABUSE, PASSED})

#: A longer line is dropped, not buffered without end (a log event with a
#: long traceback stays far below it).
MAX_LINE: Final = 1 << 20


def encode(kind: str, **fields: Any) -> bytes:
    """One message as its line."""
    return json.dumps({"kind": kind, **fields}, separators=(",", ":")).encode("utf-8") + b"\n"


def decode(line: bytes) -> dict[str, Any] | None:
    """A line as its message; None for what is not one (never raises)."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("kind"), str):
        return None
    return message


def plain_fields(event: dict[str, Any]) -> dict[str, Any]:
    """An event's fields that JSON carries as they are (strings, numbers, booleans, None)."""
    return {key: value for key, value in event.items() if value is None or isinstance(value, (str, int, float, bool))}


def event_to_fields(event: FolderEvent) -> dict[str, Any]:
    return {"kind": event.kind, "account": event.account, "folder": event.folder, "uids": list(event.uids), "source": event.source}


def event_from_fields(fields: Any) -> FolderEvent | None:
    """The event a ``changed`` line carries; None if it is not a well-formed one."""
    if not isinstance(fields, dict):
        return None
    kind, account, folder, uids, source = (fields.get(name) for name in ("kind", "account", "folder", "uids", "source"))
    if not (isinstance(kind, str) and isinstance(account, str) and isinstance(folder, str) and isinstance(uids, list)):
        return None
    if not all(isinstance(uid, int) for uid in uids) or not (source is None or isinstance(source, str)):
        return None
    return FolderEvent(kind, account, folder, tuple(uids), source)


class LineBuffer:
    """Bytes as they arrive -> whole lines; an over-long line is dropped whole."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._pending = b""
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        self._pending += data
        while True:
            end = self._pending.find(b"\n")
            if end < 0:
                break
            line, self._pending = self._pending[:end], self._pending[end + 1 :]
            if self._discarding:
                self._discarding = False
            else:
                lines.append(line)
        if len(self._pending) > self.max_line:
            self._pending = b""
            self._discarding = True
        return lines
