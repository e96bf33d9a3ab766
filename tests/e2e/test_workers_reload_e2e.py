"""
SIGHUP with worker processes (``[server] workers = 2``), on a real ``twist
mailapp``: a half-made edit the parent refuses never reaches the workers,
a worker restarted while the file is broken starts with what the parent
runs (the parent's copy, L{mailapp.workers.configcopy}), a good edit reaches
every worker, and a SIGHUP right after the start kills no worker. Loopback
only, port 0, every wait bounded.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.e2e.test_ops_reload import _config
from tests.ops_runner import TwistServer, client_context, read_reply, served_name, write_certificate

pytestmark = pytest.mark.timeout(120)


def _two_workers(root: Path) -> str:
    return _config(root).replace("[server]\n", "[server]\nworkers = 2\n", 1)


def _worker_pids(server: TwistServer) -> dict[int, int]:
    """Worker number -> pid of its latest start."""
    return {e["worker"]: e["pid"] for e in server.events() if e.get("log_event") == "workers.started"}


def _ended(server: TwistServer, after: int) -> list[dict[str, object]]:
    return [e for e in server.events()[after:] if e.get("log_event") == "workers.ended"]


def test_a_sighup_as_the_workers_start_kills_none_of_them(tmp_path: Path) -> None:
    write_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", "old.example.test")
    server = TwistServer(tmp_path, _two_workers(tmp_path))
    server.start(listeners=2)
    try:
        # The parent listens before its workers have started their services.
        server.signal(signal.SIGHUP)
        server.wait_for_reload()
        assert _ended(server, 0) == [], "a worker was killed by a SIGHUP sent while it started"
    finally:
        assert server.stop() in (0, -signal.SIGTERM)


def test_a_broken_edit_never_reaches_the_workers_not_even_a_restarted_one(tmp_path: Path) -> None:
    write_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", "old.example.test")
    server = TwistServer(tmp_path, _two_workers(tmp_path))
    server.start(listeners=2)
    try:
        server.wait_for(lambda events: {e.get("worker") for e in events if e.get("log_event") == "service.starting"} >= {1, 2}, "both workers to start")
        good = server.config_path.read_text()
        server.config_path.write_text(good.replace("max_message_size", "bogus"))
        seen = len(server.events())
        server.signal(signal.SIGHUP)
        server.wait_for_event("service.reload_failed", after=seen)

        # A worker dies while the file is broken: its restart must not read the file.
        number, pid = sorted(_worker_pids(server).items())[0]
        os.kill(pid, signal.SIGKILL)
        server.wait_for(lambda events: _worker_pids(server)[number] != pid, "the worker's restart")
        restarted = _worker_pids(server)[number]
        server.wait_for(
            lambda events: any(e.get("worker") == number and e.get("log_event") == "service.starting" for e in events[seen:]),
            "the restarted worker's service to start",
        )
        for _ in range(6):  # whichever worker takes each connection
            with client_context().wrap_socket(server.connect("submissions")) as tls:
                assert read_reply(tls).startswith(b"220")
        assert [e for e in _ended(server, seen) if e.get("pid") == restarted] == [], "the restarted worker could not start"

        # The edit finished: the parent and both workers apply it.
        write_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", "new.example.test")
        server.config_path.write_text(good)
        seen = len(server.events())
        server.signal(signal.SIGHUP)
        server.wait_for_reload(after=seen)
        for _ in range(6):
            with client_context().wrap_socket(server.connect("submissions")) as tls:
                assert served_name(tls.getpeercert(binary_form=True)) == "new.example.test"
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
