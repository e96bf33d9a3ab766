"""
The version of the state directory's layout, kept in ``state_dir/FORMAT``.

The file holds one integer and a newline. It is written at the first start
(under a temporary name, fsync'd, renamed), and checked at every start: a
server refuses to run on a state directory written by a newer mailapp, whose
layout it does not know, rather than misreading or damaging it. An older
format would be migrated here, step by step, before anything else opens the
directory; format 1 is the first, so there is nothing to migrate yet.

Format 1: ``mail/`` (Maildir++ with the per-folder index), ``accounts.sqlite3``,
``queue/`` (JSON envelopes and message files), ``tls/`` (generated certificate).
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.logger import Logger

from mailapp import logevents

__all__ = ["CURRENT_FORMAT", "FORMAT_FILE", "StateFormatError", "check_state_format"]

log = Logger()

#: The layout this mailapp reads and writes.
CURRENT_FORMAT = 1

#: Its name inside ``state_dir``.
FORMAT_FILE = "FORMAT"


class StateFormatError(Exception):
    """The state directory is of a format this mailapp cannot use; the message is one line for the operator."""


def check_state_format(state_dir: Path, current: int = CURRENT_FORMAT) -> int:
    """
    Make sure ``state_dir`` (which exists) is of a format this code knows;
    write ``FORMAT`` when it is missing. Returns the format found or written.
    Blocking file I/O: call it before the reactor runs.

    @raise StateFormatError: the file names a newer format, or is unreadable.
    """
    path = state_dir / FORMAT_FILE
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        _write(path, current)
        log.info(
            "state directory {state_dir} is format {state_format}",
            log_event=logevents.STATE_FORMAT_CREATED,
            state_dir=str(state_dir),
            state_format=current,
        )
        return current
    except (OSError, UnicodeDecodeError) as error:
        raise StateFormatError(f"cannot read {path}: {error}") from None
    try:
        found = int(text.strip())
    except ValueError:
        raise StateFormatError(f"{path} does not hold a format number: {text.strip()[:40]!r}") from None
    if found > current:
        raise StateFormatError(
            f"{state_dir} is in state format {found}, newer than this mailapp knows ({current}): "
            "run the newer mailapp that wrote it, or restore a backup made before the upgrade"
        )
    if found < 1:
        raise StateFormatError(f"{path} holds an impossible format number {found}")
    return found


def _write(path: Path, number: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="ascii") as file:
        file.write(f"{number}\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
