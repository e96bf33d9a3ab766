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
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, jsonFileLogObserver
from twisted.python import usage

__all__ = ["apply_log_format", "json_observer"]


def json_observer(stream: IO[str] | None = None) -> FileLogObserver:
    """
    A log observer factory for ``twistd --logger``: JSON lines (record
    separator free, one event a line) on ``stream``, by default the
    process's standard output as it is now, before twistd redirects it into
    the log (writing to the redirected one would loop).
    """
    return jsonFileLogObserver(stream if stream is not None else sys.stdout, recordSeparator="")


def apply_log_format(options: usage.Options, log_format: str) -> None:
    """
    Make the ``twist`` or ``twistd`` run that parsed ``options`` (our
    subcommand's options) log in ``log_format``, unless its own command line
    already chose: ``twist --log-format`` or ``twistd --logger`` win.

    Called while options are parsed, before the runner starts logging.
    """
    if log_format != "json":
        return
    parent: Any = getattr(options, "parent", None)
    if parent is None:
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
