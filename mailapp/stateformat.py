"""
The version of the state directory's layout, kept in ``state_dir/FORMAT``.

The file holds one integer and a newline. It is written at the first start
(under a temporary name, fsync'd, renamed), and checked at every start: a
server refuses to run on a state directory written by a newer mailapp, whose
layout it does not know, rather than misreading or damaging it. An older
format is migrated here, one step at a time (L{_UPGRADES}), before anything
else opens the directory; ``FORMAT`` is rewritten after each step, so a
start interrupted between steps resumes where it stopped.

Format 1: ``mail/`` (Maildir++ with the per-folder index), ``accounts.sqlite3``,
``queue/`` (JSON envelopes and message files), ``tls/`` (generated certificate).
Message files have CRLF line ends and names with ``S=<size>``.

Format 2: Maildir message files are written with LF line ends, named with
``S=<file size>,W=<wire size>`` as Dovecot does (L{mailapp.store.messagefile}).
Format-1 files stay as they are and are read as before. A format-1 mailapp
must not run on it: it would send LF files to IMAP and POP3 clients as they
are, contradicting the sizes it announces.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from twisted.logger import Logger

from mailapp import logevents

__all__ = ["CURRENT_FORMAT", "FORMAT_FILE", "StateFormatError", "check_state_format"]

log = Logger()

#: The layout this mailapp reads and writes.
CURRENT_FORMAT = 2

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
    for number in range(found, current):
        _UPGRADES[number](state_dir)
        _write(path, number + 1)
        log.info(
            "state directory {state_dir} upgraded from format {from_format} to {state_format}",
            log_event=logevents.STATE_FORMAT_UPGRADED,
            state_dir=str(state_dir),
            from_format=number,
            state_format=number + 1,
        )
    return current


def _upgrade_1_to_2(state_dir: Path) -> None:
    """
    Format 1 to 2 (LF message files): nothing on disk is rewritten. The
    store reads a format-1 file (CRLF, no ``W=`` in its name) as it always
    did, so the index, UIDs, flags and the hard links shared by several
    recipients stay exactly as they were, the start takes no longer for a
    large store, and a crash can leave nothing half converted. The cost:
    messages received before the upgrade keep their CRLF line ends (Maildir
    tools show them with ``^M``), new ones have LF. The relay queue's message
    files are CRLF in both formats.
    """


#: The step that migrates format N to N + 1, by N.
_UPGRADES: dict[int, Callable[[Path], None]] = {1: _upgrade_1_to_2}


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
