"""
Noticing changes other tools make to a Maildir while the server runs.

Another delivery agent (procmail, maildrop, a ``cp`` into ``new/``) adds
files, and a user's script or a backup restore deletes or renames them,
without going through the store. The index would then list a file that is
gone (a ghost: counted in EXISTS, unreadable by FETCH) and miss a file that
came, until the next start reconciled it.

Dovecot's way, not inotify: a folder's ``new/`` and ``cur/`` directories
get a new modification time whenever a name in them is added, removed or
renamed, so two ``stat(2)`` calls tell whether anything may have changed
since we last looked, whatever the folder's size. Our own changes would
change those times too; every change the store makes is therefore wrapped
in L{own_change}, which takes the new times as the known ones when nothing
else had changed before, so our own writes never cause a rescan. (inotify
would report our own writes as well, one event per file, with no cheaper
way to tell them apart than asking the index about every name.)

A directory's time has a granularity (ext4 takes it from a clock that
ticks every few milliseconds), so a change made by someone else in the same
tick as ours, or as our look, leaves the time as it was. A stamp taken
within L{GRANULARITY} of the time it shows is therefore checked once more
when next asked, by counting the names in ``new/`` and ``cur/`` against the
index (one directory listing, no per-file ``stat``), until it is older than
that. What can still go unseen is, within one such tick, a rename in
``cur/`` by another tool, or one file removed and another added: until the
next change or the next start.

The stamps are per process and per folder directory, like the first-open
reconcile in L{mailapp.store.reconcile}, and kept in memory only: the first
look after a start compares with the stamp that reconcile took.
Everything here is synchronous and runs on a worker thread.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

#: Seconds: longer than the tick of any file system clock a directory's
#: modification time comes from (ext4, XFS, btrfs: one jiffy, at most 10 ms).
GRANULARITY = 0.05

_SUBDIRECTORIES = ("new", "cur")


@dataclass(frozen=True)
class Stamp:
    """What C{stat(2)} said about a folder's C{new/} and C{cur/}, and whether it may hide a change."""

    #: (st_dev, st_ino, st_mtime_ns) of new/, then of cur/.
    key: tuple[int, ...]
    #: Taken within L{GRANULARITY} of the directories' last change: a change
    #: in the same clock tick would not show in the times.
    unsettled: bool


def stamp(directory: Path) -> Stamp | None:
    """The folder at C{directory}'s stamp now; None when its C{new/} or C{cur/} is missing."""
    key: list[int] = []
    newest = 0
    try:
        for sub in _SUBDIRECTORIES:
            st = os.stat(directory / sub)
            key += (st.st_dev, st.st_ino, st.st_mtime_ns)
            newest = max(newest, st.st_mtime_ns)
    except OSError:
        return None
    return Stamp(tuple(key), time.time_ns() - newest < GRANULARITY * 1e9)


_lock = threading.Lock()
_known: dict[Path, Stamp] = {}
#: Own changes under way per folder directory (L{own_change}).
_changing: dict[Path, int] = {}


def remember(directory: Path, taken: Stamp | None) -> None:
    """C{taken}, from before a full scan of the folder, is now the folder's known state."""
    with _lock:
        if taken is None:
            _known.pop(directory, None)
        else:
            _known[directory] = taken


def forget_all() -> None:
    """Forget every stamp, so each folder is scanned at its next look: what a restart does (tests)."""
    with _lock:
        _known.clear()


@contextmanager
def own_change(directory: Path) -> Iterator[None]:
    """
    Around a change the store makes to the folder at C{directory}: when the
    folder was as last known just before it, its state after is known too,
    so the change does not make the next L{changed} say yes. When it was
    not, someone else changed it first, and the stamp is left to say so.
    The new stamp is unsettled (taken right after a change), so the next
    look counts names once, in case another tool wrote in the same tick.
    A L{changed} asked meanwhile, from another thread, says no: it would
    see our change half made (a file in ``cur/`` whose row is not
    committed yet) and send a reader to reconcile the folder on the
    writer, behind the change itself; under imaptest's stress that was one
    refresh in five, and a STATUS took a quarter of a second.
    """
    with _lock:
        _changing[directory] = _changing.get(directory, 0) + 1
    try:
        before = stamp(directory)
        yield
        after = stamp(directory)
        with _lock:
            known = _known.get(directory)
            if known is not None and before is not None and after is not None and known.key == before.key:
                _known[directory] = Stamp(after.key, True)
    finally:
        with _lock:
            left = _changing.pop(directory) - 1
            if left:
                _changing[directory] = left


def changed(directory: Path, index_counts: Callable[[], tuple[int, int]]) -> bool:
    """
    Whether the folder at C{directory} may have changed since we last knew
    it: two C{stat} calls, and, while the known stamp is unsettled, one
    listing of C{new/} and C{cur/} compared with C{index_counts()} (the
    index's number of messages in C{new/} and in C{cur/}). True also when
    the folder was never looked at by this process.
    """
    now = stamp(directory)
    with _lock:
        known = _known.get(directory)
        if _changing.get(directory):
            # Our own change is under way: the times and counts are between
            # its steps. It leaves an unsettled stamp (own_change), so the
            # next look still counts names for what another tool did meanwhile.
            return False
    if now is None or known is None or now.key != known.key:
        return True
    if not known.unsettled:
        return False
    try:
        on_disk = tuple(_count_names(directory / sub) for sub in _SUBDIRECTORIES)
    except OSError:
        return True
    if on_disk != index_counts():
        return True
    if not now.unsettled:
        with _lock:
            if _known.get(directory) == known:
                _known[directory] = now
    return False


def _count_names(directory: Path) -> int:
    """Message files as L{mailapp.store.rebuild} counts them: names not starting with a dot."""
    with os.scandir(directory) as entries:
        return sum(1 for entry in entries if not entry.name.startswith("."))
