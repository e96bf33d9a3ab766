"""
Taking a deleted account's mailbox out of the store, for the admin command.

One rename(2) out of the store's tree, so that a running server sees either
the whole old mailbox or none at that path, and a new account at the same
address starts empty; the server's sessions still open on the old one fail
from then on (L{mailapp.store.connections.MailboxPin}).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from mailapp.store import durable
from mailapp.store.names import mailbox_directory

#: Where deleted accounts' mailboxes go, under the state directory.
DELETED_NAME = "deleted"


def retire_mailbox(state_dir: Path, account: str, *, keep: bool, now: float | None = None) -> Path | None:
    """
    Take C{account}'s Maildir out of the store, synchronously (for the admin
    command): one rename(2) to C{state_dir/deleted/<domain>/<local>.<UTC
    time>}, so that a running server sees either the whole old mailbox or
    no mailbox at that path, and a new account at the same address starts
    empty. Unless C{keep}, the moved copy is then deleted.

    A server session still open on the old mailbox fails from then on with
    L{mailapp.errors.MailboxGone} (see L{mailapp.store.connections.MailboxPin}).

    @return: where the mailbox was moved (gone again unless C{keep}), or
        C{None} when the account had no mailbox on disk.
    """
    source = mailbox_directory(Path(state_dir) / "mail", account)
    return _retire_directory(Path(state_dir), source, keep=keep, now=now)


def retire_domain_mailboxes(state_dir: Path, domain: str, *, keep: bool, now: float | None = None) -> list[Path]:
    """
    Retire every mailbox left under C{domain} (each as L{retire_mailbox}
    does) and remove the domain's directory: what is left when a domain is
    deleted, so that re-adding it never revives old mail.

    @return: where each mailbox was moved.
    """
    domain_dir = mailbox_directory(Path(state_dir) / "mail", f"x@{domain}").parent
    moved: list[Path] = []
    if not domain_dir.is_dir():
        return moved
    for entry in sorted(domain_dir.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            target = _retire_directory(Path(state_dir), entry, keep=keep, now=now)
            if target is not None:
                moved.append(target)
    try:
        domain_dir.rmdir()
    except OSError:
        pass  # something that is not a mailbox is left there: not ours to delete
    return moved


def archive_stamp(now: float | None = None) -> str:
    """The UTC time in the name of what is moved under C{deleted/} (C{20261203T175700Z})."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def unused_path(path: Path) -> Path:
    """C{path}, or C{path.1}, C{path.2}, ...: the first that does not exist (rename(2) would silently replace an empty directory: never reuse a name)."""
    candidate, suffix = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{suffix}")
        suffix += 1
    return candidate


def _retire_directory(state_dir: Path, source: Path, *, keep: bool, now: float | None) -> Path | None:
    if not source.is_dir():
        return None
    archive = state_dir / DELETED_NAME / source.parent.name
    archive.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = unused_path(archive / f"{source.name}.{archive_stamp(now)}")
    os.rename(source, target)
    durable.fsync_directory(source.parent)
    durable.fsync_directory(archive)
    if not keep:
        shutil.rmtree(target)
    return target

