"""
The few filesystem calls that make a message durable, in one place.

Every durability step goes through these functions (called as
``durable.name(...)``, never imported by name) so that a test can spy on the
order: file fsync, then link or rename into ``new/``, then directory fsync.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

from mailapp.errors import StorageFull, StoreError


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write fewer than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_file(fd: int) -> None:
    os.fsync(fd)


def _load_syncfs() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    return function


_syncfs = _load_syncfs()


def has_syncfs() -> bool:
    return _syncfs is not None


def sync_files(paths: list[Path], anchor: Path, use_syncfs: bool = True) -> None:
    """
    Make the data of every file in C{paths} durable, in one step where the
    system allows it: syncfs(2) on the filesystem of C{anchor} flushes them
    all with one journal commit (Linux), instead of one fsync each.
    """
    if use_syncfs and _syncfs is not None:
        fd = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(fd) != 0:
                error = ctypes.get_errno()
                raise OSError(error, os.strerror(error))
        finally:
            os.close(fd)
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            fsync_file(fd)
        finally:
            os.close(fd)


def sync_directories(paths: list[Path], anchor: Path, use_syncfs: bool = True) -> None:
    """Make new names in every directory of C{paths} durable; one syncfs where available."""
    if use_syncfs and _syncfs is not None:
        sync_files([], anchor)
        return
    for path in paths:
        fsync_directory(path)


def fsync_directory(path: Path) -> None:
    """Make a rename or link in C{path} survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link(source: Path, target: Path) -> None:
    """
    Give an already-durable file a second name. Across filesystems (EXDEV)
    fall back to a copy that is itself fsync'd before it gets its name.
    """
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        temporary = target.parent.parent / "tmp" / (target.name.split(":")[0] + ".copy")
        shutil.copyfile(source, temporary)
        fd = os.open(temporary, os.O_RDONLY)
        try:
            fsync_file(fd)
        finally:
            os.close(fd)
        rename(temporary, target)


def rename(source: Path, target: Path) -> None:
    os.rename(source, target)


def replace_file(target: Path, data: bytes, scratch: Path) -> None:
    """
    Replace C{target} with C{data} atomically and durably: written under a
    name of this process and thread in C{scratch} (a directory on the same
    filesystem, such as a Maildir's ``tmp/``), fsync'd, renamed over
    C{target}, and C{target}'s directory fsync'd. A reader sees the old file
    or the new one, never half of one; after a crash, the same.
    """
    temporary = scratch / f"{target.name}.{os.getpid()}.{threading.get_ident()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data)
        fsync_file(fd)
    finally:
        os.close(fd)
    rename(temporary, target)
    fsync_directory(target.parent)


def unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def is_disk_full(error: BaseException) -> bool:
    """
    Whether C{error}, or an error it was raised from, says the disk is full:
    ENOSPC (or EDQUOT, the filesystem's own quota) from a file call, or
    SQLITE_FULL from the index. Callers turn it into
    L{mailapp.errors.StorageFull}, which every protocol answers as "try again
    when there is space" instead of an internal error.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(current, sqlite3.Error) and (
            getattr(current, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(current)
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def store_error_for(error: BaseException) -> StoreError:
    """The public error for a failed store change: L{StorageFull} when the disk is full, else L{StoreError}."""
    return StorageFull() if is_disk_full(error) else StoreError()
