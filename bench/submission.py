"""
The ``submission-dkim`` workload: durable submission ingest of mail for
remote recipients, DKIM-signed against unsigned (issue 15: "signing must
not cut durable SMTP ingest by more than 15%").

Each run is three servers, one after the other in an order that rotates
from run to run, so that a drift in the machine's load falls on every side
alike: unsigned, signed in the signing process (the default) and signed in
the server's threads (``[dkim] signing_process = false``, what signing
cost before the process). They are the same but for ``[dkim]``; the
signing process's own CPU is reported beside the server's. In each: users log in with AUTH PLAIN on a submission listener
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


def one_run(workdir: Path, timeout: float, *, signing: str, messages: int, size: int, concurrency: int, per_connection: int) -> dict[str, Any]:
    """
    One server, C{messages} submitted; messages/s from the first connect to
    the last envelope on disk. C{signing} is "off", "threads" (the server's
    own threads: ``signing_process = false``) or "process" (the default).
    """
    sign = signing != "off"
    blackhole = Blackhole()
    extra = (
        "# Past 10,000 messages a run, ten senders would pass the default 1,000 each per hour.\n"
        "max_messages_per_hour = 1000000\n"
        f'\n[relay]\ntransports = {{ "remote.test" = "127.0.0.1:{blackhole.port}" }}\n'
        f"\n[dkim]\nsign = {'true' if sign else 'false'}\n"
        f"signing_process = {'false' if signing == 'threads' else 'true'}\n"
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
        children_before = server.children_cpu_seconds()
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
        figures["signing_process_cpu_ms_per_message"] = (server.children_cpu_seconds() - children_before) * 1000 / messages
        figures["load_average_before"] = load
        signed = _queued_copy_is_signed(server.state_dir)
        if signed != sign:
            raise RuntimeError(f"the queue's copy is {'signed' if signed else 'unsigned'} with signing {signing}")
        if figures["accepted"] != messages:
            raise RuntimeError(f"{figures['refused']} of {messages} messages refused")
    finally:
        server.stop()
        blackhole.close()
    figures["_cleanup"] = server
    return figures


def submission_dkim_workload(messages: int, size: int, concurrency: int, per_connection: int) -> Callable[[Path, float], dict[str, Any]]:
    """
    An unsigned run and two signed ones (in the signing process, the
    default, and in the server's threads) per call, the order rotating from
    call to call; see the module docstring.
    """
    calls = [0]
    modes = ("off", "process", "threads")

    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        order = modes[calls[0] % 3 :] + modes[: calls[0] % 3]
        calls[0] += 1
        results: dict[str, dict[str, Any]] = {}
        for signing in order:
            results[signing] = one_run(
                workdir, timeout, signing=signing, messages=messages, size=size, concurrency=concurrency, per_connection=per_connection
            )
            time.sleep(1)
        unsigned, signed, threads = results["off"], results["process"], results["threads"]
        return {
            "unsigned_messages_per_second": unsigned["messages_per_second"],
            "signed_messages_per_second": signed["messages_per_second"],
            "signed_share": signed["messages_per_second"] / unsigned["messages_per_second"],
            "threads_messages_per_second": threads["messages_per_second"],
            "threads_share": threads["messages_per_second"] / unsigned["messages_per_second"],
            "unsigned_server_cpu_ms_per_message": unsigned["server_cpu_ms_per_message"],
            "signed_server_cpu_ms_per_message": signed["server_cpu_ms_per_message"],
            "signed_signing_process_cpu_ms_per_message": signed["signing_process_cpu_ms_per_message"],
            "threads_server_cpu_ms_per_message": threads["server_cpu_ms_per_message"],
            "load_average_before": max(r["load_average_before"] for r in results.values()),
            "order": ", ".join(order),
            **{mode: {k: v for k, v in result.items() if k != "_cleanup"} for mode, result in results.items()},
            "_cleanup": [result["_cleanup"] for result in results.values()],
        }

    return run
