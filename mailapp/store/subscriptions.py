"""
Subscriptions that outlive their folders (RFC 3501 6.3.9: "The server MUST
NOT unilaterally remove an existing mailbox name from the subscription list
even if a mailbox by that name no longer exists").

A folder's own subscription is a column of its row in the index; when a
subscribed folder is deleted its name moves here, to C{mailapp-subscriptions}
in the mailbox directory (one UTF-8 name per line, replaced atomically, as
Dovecot keeps its ``subscriptions`` file), until the folder is created again
(subscribed, as it was) or the client unsubscribes the name. Outside the
index, so a rebuild keeps it.

Blocking file I/O: call it from the store's writer (or a worker thread, to read).
"""

from __future__ import annotations

from pathlib import Path

from mailapp.store import durable

__all__ = ["FILE_NAME", "forget", "read", "remember"]

FILE_NAME = "mailapp-subscriptions"


def read(directory: Path) -> set[str]:
    """The subscribed names without a folder in the mailbox at C{directory}."""
    try:
        text = (directory / FILE_NAME).read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return set()
    return {line for line in text.split("\n") if line}


def _write(directory: Path, names: set[str]) -> None:
    path = directory / FILE_NAME
    if not names:
        durable.unlink(path)
        return
    durable.replace_file(path, "".join(n + "\n" for n in sorted(names)).encode("utf-8"), directory)


def remember(directory: Path, name: str) -> None:
    names = read(directory)
    if name not in names:
        _write(directory, names | {name})


def forget(directory: Path, name: str) -> bool:
    """Drop C{name}; whether it was there."""
    names = read(directory)
    if name not in names:
        return False
    _write(directory, names - {name})
    return True
