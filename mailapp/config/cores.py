"""
The default of ``[server] workers``: one worker process per core this
server may run on, so that a server nobody tuned uses the machine it got.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

__all__ = ["MAX_DEFAULT_WORKERS", "default_workers"]

#: The default stops here: past it each worker's memory (a store, caches, a
#: reactor: about 130 MiB) costs more than a mail server gains from another
#: core, and a big machine is usually shared. Set ``workers`` to go further.
MAX_DEFAULT_WORKERS: Final = 8


def default_workers(affinity: Callable[[int], set[int]] | None = None) -> int:
    """
    The cores this process may run on (C{os.sched_getaffinity}, which
    honours taskset, cgroup cpusets and systemd's C{CPUAffinity=}, unlike
    C{os.cpu_count}), at least 1 and at most L{MAX_DEFAULT_WORKERS}.

    @param affinity: C{os.sched_getaffinity} or a stand-in; where the
        platform has none (macOS), C{os.cpu_count} counts.
    """
    if affinity is None:
        affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        cores = len(affinity(0))
    else:
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))
