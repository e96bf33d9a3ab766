"""
The intent record of a copy or move between folders of one mailbox: what
makes a MOVE atomic across a crash (and a COPY never half done).

Before its first link, a transfer writes ``mailapp-transfer`` in the mailbox
directory (under a temporary name, fsync'd, renamed, the directory fsync'd)
listing every (source file, target file) pair, relative to the mailbox
directory, and whether the sources go (MOVE) or stay (COPY). Once the record
is durable the transfer is decided: the store links the targets, commits the
index, removes the sources, then deletes the record. A process that dies on
the way leaves the record, and the next first open of the mailbox
(L{finish_interrupted}, before the index is reconciled with the Maildir)
redoes what is missing: link each target that is not there yet, then remove
each source whose target exists.

Redo rather than undo, because redo needs only the disk: the index's commits
are not fsync'd (``synchronous = NORMAL``), so after a power cut the index
cannot say whether the commit happened, while the files can. Redo is
idempotent (a recovery cut short by another crash is simply run again) and
leaves every message of a MOVE in exactly one folder, the target, whether or
not the client saw the reply; a client that retries finds the sources gone
and the messages in the target.

One transfer per mailbox at a time: an exclusive flock(2) on
``mailapp-transfer.lock``, held by a live transfer from before its record is
written until after it is deleted, and by a recovery, so that a recovery in
another thread or process never redoes a transfer that is still running.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from twisted.logger import Logger

from mailapp.store import durable

RECORD_NAME = "mailapp-transfer"
LOCK_NAME = "mailapp-transfer.lock"

_log = Logger()


@contextmanager
def lock(mailbox_dir: Path) -> Iterator[None]:
    """Hold the mailbox's transfer lock (blocking; between threads too: each holder opens its own file)."""
    fd = os.open(mailbox_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record(mailbox_dir: Path, pairs: list[tuple[str, str]], move: bool) -> None:
    """
    Make the intent durable: C{pairs} are (source, target) file paths
    relative to C{mailbox_dir}. Call with L{lock} held, before any link.
    """
    durable.replace_file(mailbox_dir / RECORD_NAME, json.dumps({"move": move, "pairs": pairs}).encode(), mailbox_dir / "tmp")


def forget(mailbox_dir: Path) -> None:
    """
    The transfer is complete (or undone): delete its record. Not fsync'd: a
    record that comes back after a power cut is redone, which changes nothing.
    """
    durable.unlink(mailbox_dir / RECORD_NAME)


def finish_interrupted(mailbox_dir: Path) -> int:
    """
    Redo the transfer a crash interrupted, if any (see the module
    docstring); returns how many files it linked or removed. Runs before the
    index is opened or rebuilt, so that both see each message once.
    """
    path = mailbox_dir / RECORD_NAME
    if not path.exists():
        return 0
    with lock(mailbox_dir):
        try:
            data = json.loads(path.read_bytes())
            move = bool(data["move"])
            pairs = [(str(source), str(target)) for source, target in data["pairs"]]
        except FileNotFoundError:
            return 0  # finished by the thread or process that held the lock before us
        except (OSError, ValueError, KeyError, TypeError) as e:
            # Never written by us (the record appears whole, by rename): keep it for a person to look at.
            _log.error("store.transfer_record_damaged {path}: {error}", path=str(path), error=str(e))
            os.replace(path, path.with_name(RECORD_NAME + ".damaged"))
            return 0
        changed = 0
        touched: set[Path] = set()
        for source_name, target_name in pairs:
            source, target = mailbox_dir / source_name, mailbox_dir / target_name
            if not os.path.lexists(target):
                if not os.path.lexists(source):
                    continue  # expunged before the transfer took its lock, or removed by another tool
                durable.link(source, target)
                touched.add(target.parent)
                changed += 1
            if move and os.path.lexists(source):
                durable.unlink(source)
                touched.add(source.parent)
                changed += 1
        for directory in sorted(touched):
            durable.fsync_directory(directory)
        forget(mailbox_dir)
    _log.warn(
        "store.transfer_completed {mailbox}: an interrupted {kind} of {count} messages was finished ({changed} files)",
        mailbox=str(mailbox_dir),
        kind="move" if move else "copy",
        count=len(pairs),
        changed=changed,
    )
    return changed
