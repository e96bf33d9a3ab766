"""
Expunged messages kept readable for a while, for the sessions that still
have them in their view.

An IMAP session is told of an expunge only between its commands (never
during a FETCH, STORE or SEARCH, RFC 3501 7.4.1), and a POP3 session not
at all until it ends; until then the message is still theirs to read. So an
expunge does not unlink the file: after the index commit that removes its
row, the file is renamed into the folder's ``mailapp-expunged/`` directory
(as ``<uid>.<unix time>.<its name>``), and a read by UID that no longer
finds the row looks there (L{find}). Such files are removed once they are
L{HOLD_SECONDS} old (L{purge}): at an expunge or a refresh of a folder
this process held files in once one is old enough (L{Holds}), by the
store's hourly sweep of those
folders, and at the first open of the mailbox in a process (the
reconcile), for what a restart left. A file held less than L{HOLD_SECONDS}
before a restart may so stay until the folder's next expunge or the next
process's first open: it is never read as a message meanwhile. A session still mapping a
message after that gets no FETCH response for it and ``OK [EXPUNGEISSUED]``
(as Dovecot answers).

Why this is safe:

- No mail is lost: only what an expunge has already removed from the index
  is moved, and only after the commit.
- Expunged mail never comes back: the directory is not ``cur/`` or
  ``new/``, so neither the reconcile (which trusts those) nor a rebuild,
  nor another Maildir tool, takes it for a message; and a new session never
  asks for it, since its view is read from the index.
- It stays inside the folder's directory, so it goes with the folder (a
  DELETE removes it, a RENAME moves it) and with the mailbox: a deleted
  account's Maildir is moved out whole (L{mailapp.store.retire}), and the
  sessions still open on it fail from then on, so no one reads its mail.
- It counts against nothing: the quota is the index's, and the files are
  gone within L{HOLD_SECONDS}.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DIRECTORY_NAME", "HOLD_SECONDS", "Holds", "find", "held_names", "hold", "purge"]

DIRECTORY_NAME = "mailapp-expunged"
#: How long an expunged message stays readable: far longer than any client
#: takes between its FETCH and its next command, short enough that expunged
#: mail does not linger on disk.
HOLD_SECONDS = 120


def hold(folder_directory: Path, filename: str, uid: int, now: float | None = None, unlink_if_stuck: bool = True) -> Path | None:
    """
    Move the file of expunged message C{uid} (C{filename}, relative to the
    folder: ``cur/...``) out of the Maildir into the hold (worker thread),
    and return where it went. A file already gone is no error (None); one
    that cannot be moved is unlinked (None), unless not C{unlink_if_stuck}:
    then it is left for the caller, which unlinks it once the expunge is
    committed (L{mailapp.store.folder}: the files go into the hold inside
    the expunge's transaction).
    """
    source = folder_directory / filename
    target_dir = folder_directory / DIRECTORY_NAME
    stamp = int(time.time() if now is None else now)
    target = target_dir / f"{uid}.{stamp}.{source.name}"
    for _ in range(3):  # a purge may remove the empty hold in between: make it again
        try:
            os.rename(source, target)
            return target
        except FileNotFoundError:
            if not source.exists():
                return None
            try:
                target_dir.mkdir(mode=0o700, exist_ok=True)
            except OSError:
                break
        except OSError:
            break
    # Never leave an expunged message where the reconcile would take it back.
    if unlink_if_stuck:
        _unlink(source)
    return None


def find(folder_directory: Path, uid: int) -> Path | None:
    """The held file of expunged message C{uid}, if it is still there (worker thread; scans the hold, which is small)."""
    prefix = f"{uid}."
    return next((Path(entry.path) for entry in _held(folder_directory) if entry.name.startswith(prefix)), None)


def held_names(folder_directory: Path) -> dict[int, str]:
    """UID -> the name its file had in the Maildir, for every message held now (worker thread; one scan of the hold)."""
    found: dict[int, str] = {}
    for entry in _held(folder_directory):
        uid, _, rest = entry.name.partition(".")
        name = rest.partition(".")[2]
        if uid.isdigit() and name:
            found[int(uid)] = name
    return found


def _held(folder_directory: Path) -> list[os.DirEntry[str]]:
    """The hold's entries (none when there is no hold)."""
    try:
        with os.scandir(folder_directory / DIRECTORY_NAME) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def purge(folder_directory: Path, now: float | None = None, max_age: float = HOLD_SECONDS) -> int:
    """Remove held files older than C{max_age} seconds, and the hold once it is empty (worker thread); how many went."""
    return _purge(folder_directory, time.time() if now is None else now, max_age)[0]


def _purge(folder_directory: Path, now: float, max_age: float) -> tuple[int, float | None]:
    """L{purge}'s work: how many went, and the stamp of the oldest file left (None: the hold is gone or empty)."""
    cutoff = now - max_age
    directory = folder_directory / DIRECTORY_NAME
    removed = 0
    try:
        entries = os.scandir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return 0, None
    oldest: float | None = None
    with entries:
        for entry in entries:
            stamp = entry.name.split(".", 2)[1] if entry.name.count(".") >= 2 else ""
            if not stamp.isdigit() or int(stamp) <= cutoff:
                _unlink(Path(entry.path))
                removed += 1
            else:
                oldest = int(stamp) if oldest is None else min(oldest, int(stamp))
    if oldest is None:
        try:
            directory.rmdir()
        except OSError:
            pass  # a file held meanwhile
    return removed, oldest


class Holds:
    """
    The folders this process holds expunged files in, and when each next
    has a file old enough to go: a L{purge} asked for before then costs no
    system call. Without it every expunge and every refresh scanned the
    whole hold, which under a busy shared mailbox (imaptest's stress:
    about 40 expunges a second, so thousands of held files) was 8% of the
    server's Python time, most of it on the store's one writer.

    A hold written by another process (or before a restart) is not known
    here: the reconcile at a mailbox's first open purges those.
    """

    def __init__(self) -> None:
        self._due: dict[Path, float] = {}

    def __contains__(self, folder_directory: object) -> bool:
        return folder_directory in self._due

    def __iter__(self) -> Iterator[Path]:
        return iter(list(self._due))

    def held(self, folder_directory: Path, now: float | None = None) -> None:
        """Files were just held in C{folder_directory}: the first can go in L{HOLD_SECONDS}."""
        due = (time.time() if now is None else now) + HOLD_SECONDS
        self._due[folder_directory] = min(self._due.get(folder_directory, due), due)

    def purge(self, folder_directory: Path, now: float | None = None) -> int:
        """L{purge} the folder's hold if a file in it is old enough by now (worker thread); how many went."""
        moment = time.time() if now is None else now
        due = self._due.get(folder_directory)
        if due is None or moment < due:
            return 0
        return self._purge(folder_directory, moment)

    def sweep(self, now: float | None = None) -> int:
        """Purge every known hold, due or not (the store's hourly sweep; worker thread): how many files went."""
        moment = time.time() if now is None else now
        return sum(self._purge(directory, moment) for directory in list(self._due))

    def _purge(self, folder_directory: Path, moment: float) -> int:
        removed, oldest = _purge(folder_directory, moment, HOLD_SECONDS)
        if oldest is None:
            self._due.pop(folder_directory, None)
        else:
            self._due[folder_directory] = oldest + HOLD_SECONDS
        return removed


def unlink_if_present(path: Path) -> None:
    """Remove C{path}; already gone is no error (worker thread)."""
    _unlink(path)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
