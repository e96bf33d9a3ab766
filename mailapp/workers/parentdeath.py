"""
A worker dies with its parent, as the one process of ``workers = 1`` would.

A SIGKILL (the OOM killer, ``systemctl kill -s KILL``, a test of durability)
reaches only the parent. Its workers would see their pipe close and then
stop as SIGTERM stops them, draining their sessions for up to the drain
timeout: meanwhile they still accept on the inherited listening sockets,
hold the store's locks, and a server started again over the same state
meets a half of the old one. Linux's C{PR_SET_PDEATHSIG} has the kernel
send the worker SIGKILL the moment its parent dies; elsewhere the closed
pipe remains the only sign.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Final

__all__ = ["die_with_parent"]

#: From <linux/prctl.h>.
_PR_SET_PDEATHSIG: Final = 1


def die_with_parent(parent: int) -> bool:
    """
    Ask the kernel for SIGKILL when the parent process dies, then exit at
    once if C{parent} is already gone (it died between the fork and this
    call, so no signal will come: this process was adopted by init or a
    subreaper, and C{getppid()} names that one instead).

    Call it first thing in the worker: the request is not inherited across
    the fork, only across the exec that started this interpreter, and
    whatever the worker does before it is done by a process the kernel
    would leave running.

    @param parent: the process id of the supervisor that started this worker.
    @return: whether the kernel will send the signal (False off Linux).
    """
    armed = False
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        armed = bool(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0)
    if os.getppid() != parent:
        os._exit(1)
    return armed
