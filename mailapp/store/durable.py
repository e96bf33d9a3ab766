"""
The few filesystem calls that make a message durable, in one place.

Every durability step goes through these functions (called as
``durable.name(...)``, never imported by name) so that a test can spy on the
order: file fsync, then link or rename into ``new/``, then directory fsync.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write fewer than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_file(fd: int) -> None:
    os.fsync(fd)


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


def unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
