"""
Log output formats: human-readable text (the default) or JSON lines.

Every log call passes a stable ``log_event`` name and named fields (see
:mod:`mailapp.logevents`); JSON keeps them all, one object a line, for a log
shipper. Three ways to get JSON:

- ``twist --log-format=json mailapp --config FILE`` (Twisted's own switch);
- ``twistd --logger=mailapp.logformat.json_observer mailapp --config FILE``;
- ``[server] log_format = "json"`` in the config, which :func:`apply_log_format`
  turns into the first or second when the command line did not choose.

Nothing here writes a password or a message body: those are never put in a
log event in the first place (a test scans a whole session's log for them).

The log file. twistd's own (``--logfile``, or ``twistd.log`` when it
daemonises) rotates at 1 MB and never deletes a rotated file, so a busy
server fills its disk with logs. When twistd is to write a file and its
command line named no ``--logger``, :func:`apply_log_format` hands it
:func:`file_observer` instead: the same file, rotated at ``[server]
log_file_max_bytes`` with ``log_file_keep`` rotated files kept (the oldest
deleted), SIGUSR1 rotating it as before, in the chosen format. Under
systemd, ``twistd -n`` without ``--logfile`` logs to stdout, which the
journal keeps and ages itself.

The text file is for people: it leaves out debug events (a second line
per delivered message, ``delivery.stored``, besides the protocol's
``smtp.accepted``; ``relay.queued``, ``dkim.signed``,
``relay.tls_session``), which cost the reactor a formatted, written line
each. They are still events: the metrics and the workers' telemetry
observe them, and the JSON file keeps every event.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from dataclasses import dataclass

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEventAsClassicLogText,
    formatTime,
    jsonFileLogObserver,
)
from twisted.python import logfile, usage
from zope.interface import implementer

__all__ = ["apply_log_format", "file_observer", "json_observer"]


@dataclass
class _FileSettings:
    """What L{file_observer} opens: set while options are parsed, read when twistd starts logging."""

    path: str = "twistd.log"
    log_format: str = "text"
    max_bytes: int = 10 * 1024 * 1024
    keep: int = 10


_file = _FileSettings()


def file_observer() -> ILogObserver:
    """
    A log observer factory for ``twistd --logger``: the log file of
    L{_file}, rotated at its size with its number of rotated files kept
    (Twisted's C{LogFile} deletes the oldest), rotated on SIGUSR1 too;
    text without the debug events (see the module docstring).
    """
    import signal

    # maxRotatedFiles=None would keep every file; 0 keeps none (Twisted removes .1 at once).
    output = logfile.LogFile.fromFullPath(_file.path, rotateLength=_file.max_bytes, maxRotatedFiles=_file.keep)
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(number: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(output.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    if _file.log_format == "json":
        return jsonFileLogObserver(output, recordSeparator="")
    return FilteringLogObserver(text_file_observer(output), [_NotDebug()])


def text_file_observer(output: IO[str]) -> FileLogObserver:
    """
    Twisted's C{textFileLogObserver}, line for line, with the time stamp
    made once per second (L{_SecondStamps}) instead of once per event.
    """
    stamps = _SecondStamps()
    return FileLogObserver(output, lambda event: formatEventAsClassicLogText(event, formatTime=stamps))


class _SecondStamps:
    """
    Twisted's C{formatTime} for the RFC 3339 stamp, remembered for the
    second it names: the stamp has no fraction of a second, and computing
    the local time zone's offset for every event was half the cost of a
    log line (the one line per accepted message).
    """

    def __init__(self) -> None:
        self._second: int | None = None
        self._stamp = ""

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second = int(when // 1)
        if second != self._second:
            self._stamp = formatTime(float(second))
            self._second = second
        return self._stamp


@implementer(ILogFilterPredicate)
class _NotDebug:
    """
    Leaves out a debug event only: Twisted's level filter would leave out
    an event without a level too (a raw one, published by a library).
    """

    def __call__(self, event: dict[str, Any]) -> Any:
        return PredicateResult.no if event.get("log_level") is LogLevel.debug else PredicateResult.maybe


def json_observer(stream: IO[str] | None = None) -> FileLogObserver:
    """
    A log observer factory for ``twistd --logger``: JSON lines (record
    separator free, one event a line) on ``stream``, by default the
    process's standard output as it is now, before twistd redirects it into
    the log (writing to the redirected one would loop).
    """
    return jsonFileLogObserver(stream if stream is not None else sys.stdout, recordSeparator="")


def apply_log_format(options: usage.Options, log_format: str, max_bytes: int = _file.max_bytes, keep: int = _file.keep) -> None:
    """
    Make the ``twist`` or ``twistd`` run that parsed ``options`` (our
    subcommand's options) log in ``log_format``, unless its own command line
    already chose: ``twist --log-format`` or ``twistd --logger`` win; and
    make twistd's log file one that is rotated at C{max_bytes} and keeps
    C{keep} rotated files (see the module docstring).

    Called while options are parsed, before the runner starts logging.
    """
    parent: Any = getattr(options, "parent", None)
    if parent is None:
        return
    if not hasattr(parent, "opt_log_format") and "logger" in parent and parent["logger"] is None:
        # twistd: a file unless it runs in the foreground without --logfile (stdout), or logs to syslog.
        path = parent.get("logfile") or ("" if parent.get("nodaemon") else "twistd.log")
        if path and path != "-" and not parent.get("syslog"):
            _file.path, _file.log_format, _file.max_bytes, _file.keep = path, log_format, max_bytes, keep
            parent["logger"] = "mailapp.logformat.file_observer"
            return
    if log_format != "json":
        return
    if hasattr(parent, "opt_log_format"):
        # twist: its postOptions picks text only when nothing was chosen.
        if "fileLogObserverFactory" not in parent:
            parent["fileLogObserverFactory"] = _json_file_observer
    elif "logger" in parent and parent["logger"] is None:
        # twistd: ServerOptions.postOptions resolves the dotted name after us.
        parent["logger"] = "mailapp.logformat.json_observer"


def _json_file_observer(output: IO[str]) -> ILogObserver:
    return jsonFileLogObserver(output, recordSeparator="")
