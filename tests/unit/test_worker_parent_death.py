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


def _gone_after_killing(parent: subprocess.Popen[str], child: int) -> bool:
    """SIGKILL C{parent}; whether C{child} is gone within 5 s."""
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _alive(child)


def test_a_worker_is_killed_when_its_parent_is_killed() -> None:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, _WORKER], stdout=subprocess.PIPE, env=environment, text=True
    )
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        assert parent.stdout.readline() == "armed\n"
        assert _gone_after_killing(parent, worker)
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


#: A server (this script) that starts the DKIM signing process as SigningProcess does, on a pipe
#: whose write end the test holds too, prints the signer's pid, and sleeps.
_SERVER = r"""
import os, subprocess, sys, time
signer = subprocess.Popen(
    [sys.executable, "-m", "mailapp.dkim.worker", sys.argv[1], str(os.getpid())],
    stdin=int(sys.argv[2]), pass_fds=(int(sys.argv[2]),),
)
print(signer.pid, flush=True)
time.sleep(60)
"""


def test_the_signing_process_is_killed_with_the_server_even_while_its_pipe_stays_open(tmp_path: Path) -> None:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    read_end, write_end = os.pipe()  # the write end stays open here: no end of file tells the signer to stop
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(tmp_path), str(read_end)],
        stdout=subprocess.PIPE, env=environment, text=True, pass_fds=(read_end,),
    )
    os.close(read_end)
    try:
        assert server.stdout is not None
        signer = int(server.stdout.readline())
        time.sleep(1.0)  # the signer has imported dkim and asked for the signal
        assert _alive(signer)
        assert _gone_after_killing(server, signer)
    finally:
        os.close(write_end)
        if server.poll() is None:
            server.kill()
            server.wait(10)


def test_the_server_starts_its_signer_naming_itself_as_the_parent(tmp_path: Path) -> None:
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from mailapp.dkim.process import SigningProcess

    class Spawning(Clock):
        spawned: list[str] = []

        def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):  # type: ignore[no-untyped-def]
            self.spawned = args
            transport = StringTransport()
            protocol.makeConnection(transport)
            return transport

    reactor = Spawning()
    SigningProcess(reactor, tmp_path).request({"id": 1})
    assert reactor.spawned[-2:] == [str(tmp_path), str(os.getpid())]
