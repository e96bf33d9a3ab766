"""
The ``submission-dkim`` workload: durable submission ingest of mail for
remote recipients, DKIM-signed against unsigned (issue 15: "signing must
not cut durable SMTP ingest by more than 15%").

Each run is a pair, one server each, in alternating order (unsigned first
in odd runs, signed first in even ones), so that a drift in the machine's
load falls on both sides alike. Both servers are the same but for
``[dkim] sign``: users log in with AUTH PLAIN on a submission listener
(plaintext auth is allowed on loopback in the bench's config), send from
their own address to ten recipients in ``remote.test``, and the domain has
keys made by ``mailapp dkim keygen``. ``[relay] transports`` sends
remote.test to a socket that listens but never accepts (a blackhole), so
the relay's connections wait for a greeting that never comes and the queue
only fills: the figure is ingest, not delivery. A message counts once its
envelope is in ``queue/envelopes`` (published, synced before its 250).
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import server as bench_server

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "example.test"
USERS = [f"bench{i}@{DOMAIN}" for i in range(10)]
RECIPIENTS = [f"r{i}@remote.test" for i in range(10)]
PASSWORD = "bench-password"


class Blackhole:
    """A TCP socket on loopback that listens and never accepts: a peer that never answers."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(1024)
        self.port: int = self.socket.getsockname()[1]

    def close(self) -> None:
        self.socket.close()


def _keygen(state_dir: Path) -> None:
    """The domain's keys, made the way an admin makes them."""
    mailapp = Path(sys.executable).parent / "mailapp"
    subprocess.run(
        [str(mailapp), "--config", str(state_dir / "mailapp.toml"), "dkim", "keygen", DOMAIN],
        check=True, capture_output=True, timeout=120,
    )


def _warm_logins(port: int, timeout: float) -> None:
    """Every user logs in once before the clock starts: the timed logins are the server's cached ones, not argon2id checks."""
    for user in USERS:
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as client:
            client.login(user, PASSWORD)


def _queued_copy_is_signed(state_dir: Path) -> bool:
    """Whether one of the queue's copies has our signatures (below its Return-Path:)."""
    first = min((state_dir / "queue" / "messages").iterdir())
    head = first.read_bytes()[:8192]
    return head.startswith(b"Return-Path:") and b"\r\nDKIM-Signature: " in head.split(b"\r\n\r\n", 1)[0]


def one_run(workdir: Path, timeout: float, *, sign: bool, messages: int, size: int, concurrency: int, per_connection: int) -> dict[str, Any]:
    """One server, C{messages} submitted; messages/s from the first connect to the last envelope on disk."""
    blackhole = Blackhole()
    extra = (
        "# Past 10,000 messages a run, ten senders would pass the default 1,000 each per hour.\n"
        "max_messages_per_hour = 1000000\n"
        f'\n[relay]\ntransports = {{ "remote.test" = "127.0.0.1:{blackhole.port}" }}\n'
        f"\n[dkim]\nsign = {'true' if sign else 'false'}\n"
        # Twenty logins at once from one address would pass ban_after_failures' count of logins in progress.
        '\n[security]\nban_exempt_networks = ["127.0.0.0/8"]\n'
    )
    load = os.getloadavg()[0]
    server = bench_server.start(
        USERS, workdir, domain=DOMAIN, listeners={"submission": ("submission", "none")},
        production_hash_users=USERS, extra=extra, prepare=_keygen,
    )
    try:
        port = server.ports["submission"]
        _warm_logins(port, timeout)
        cpu_before = server.cpu_seconds()
        command = [
            sys.executable, "-m", "bench.smtp_load", "--port", str(port), "--messages", str(messages), "--size", str(size),
            "--concurrency", str(concurrency), "--per-connection", str(per_connection), "--timeout", str(timeout),
            "--maildir", str(server.state_dir / "queue" / "envelopes"), "--expect", str(messages), "--password", PASSWORD,
        ]
        for user in USERS:
            command += ["--auth", user]
        for recipient in RECIPIENTS:
            command += ["--recipient", recipient]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=timeout + 30, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed: {done.stderr[-2000:]}")
        figures: dict[str, Any] = json.loads(done.stdout)
        figures["server_cpu_ms_per_message"] = (server.cpu_seconds() - cpu_before) * 1000 / messages
        figures["load_average_before"] = load
        signed = _queued_copy_is_signed(server.state_dir)
        if signed != sign:
            raise RuntimeError(f"the queue's copy is {'signed' if signed else 'unsigned'} with [dkim] sign = {sign}")
        if figures["accepted"] != messages:
            raise RuntimeError(f"{figures['refused']} of {messages} messages refused")
    finally:
        server.stop()
        blackhole.close()
    figures["_cleanup"] = server
    return figures


def submission_dkim_workload(messages: int, size: int, concurrency: int, per_connection: int) -> Callable[[Path, float], dict[str, Any]]:
    """A signed and an unsigned run per call, in alternating order; see the module docstring."""
    calls = [0]

    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        calls[0] += 1
        order = (False, True) if calls[0] % 2 else (True, False)
        results: dict[bool, dict[str, Any]] = {}
        for sign in order:
            results[sign] = one_run(
                workdir, timeout, sign=sign, messages=messages, size=size, concurrency=concurrency, per_connection=per_connection
            )
            time.sleep(1)
        signed, unsigned = results[True], results[False]
        return {
            "unsigned_messages_per_second": unsigned["messages_per_second"],
            "signed_messages_per_second": signed["messages_per_second"],
            "signed_share": signed["messages_per_second"] / unsigned["messages_per_second"],
            "unsigned_server_cpu_ms_per_message": unsigned["server_cpu_ms_per_message"],
            "signed_server_cpu_ms_per_message": signed["server_cpu_ms_per_message"],
            "load_average_before": max(signed["load_average_before"], unsigned["load_average_before"]),
            "order": "unsigned, signed" if order[0] is False else "signed, unsigned",
            "unsigned": {k: v for k, v in unsigned.items() if k != "_cleanup"},
            "signed": {k: v for k, v in signed.items() if k != "_cleanup"},
            "_cleanup": [unsigned["_cleanup"], signed["_cleanup"]],
        }

    return run
