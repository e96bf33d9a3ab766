"""
L{mailapp.workers.parentdeath}: a worker dies with its parent, so that a
SIGKILL of the server leaves no worker accepting on its sockets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.paths import REPOSITORY

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

#: A parent (this script) that starts a worker calling die_with_parent, prints the worker's pid, and sleeps.
_PARENT = r"""
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])
print(worker.pid, flush=True)
time.sleep(60)
"""
_WORKER = r"""
import sys, time
from mailapp.workers.parentdeath import die_with_parent
assert die_with_parent(int(sys.argv[1]))
print("armed", flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    """Whether C{pid} runs (a zombie nobody reaped yet counts as dead)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_worker_is_killed_when_its_parent_is_killed() -> None:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, _WORKER], stdout=subprocess.PIPE, env=environment, text=True
    )
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        assert parent.stdout.readline() == "armed\n"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _alive(worker)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_a_worker_whose_parent_died_before_it_asked_exits_at_once() -> None:
    # The worker's parent is this test, not the pid it is given: as if that one had died already.
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    not_the_parent = os.getpid() + 1_000_000
    worker = subprocess.run(
        [sys.executable, "-c", _WORKER, str(not_the_parent)], env=environment, capture_output=True, text=True, timeout=30
    )
    assert (worker.returncode, worker.stdout) == (1, "")
