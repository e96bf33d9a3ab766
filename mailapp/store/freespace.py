"""
How much room is left on the disk that holds the store, cheaply enough to
ask on every SMTP ``MAIL FROM``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from mailapp.interfaces import IFreeSpace


@implementer(IFreeSpace)
class FreeSpace:
    """
    Free bytes (for an unprivileged writer: C{f_bavail}) on the filesystem of
    C{path}, from statvfs(2) at most once per C{ttl} seconds of C{clock}, so
    that the reactor makes one quick system call a second however busy SMTP
    is, and a disk freed again is seen within a second. The Maildir store's
    C{freeSpace}, over its root.
    """

    def __init__(
        self,
        path: Path,
        clock: IReactorTime,
        ttl: float = 1.0,
        statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.path = path
        self._clock = clock
        self._ttl = ttl
        self._statvfs = statvfs
        self._checked: float | None = None
        self._free: int | None = None

    def available(self) -> int | None:
        """Free bytes, or None when the filesystem cannot say (then nothing is refused)."""
        now = self._clock.seconds()
        if self._checked is None or now - self._checked >= self._ttl:
            self._checked = now
            try:
                result = self._statvfs(self.path)
                self._free = result.f_bavail * result.f_frsize
            except OSError:
                self._free = None
        return self._free
