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
remote.test to a socket that listens but does not accept yet (a gate), so
the relay's connections wait for a greeting and the queue only fills: the
first figure is ingest, and a message counts once its envelope is in
``queue/envelopes`` (published, synced before its 250).

The relay signs our mail as it leaves (L{mailapp.relay.signing}), so the
signatures are paid at delivery: once every message is in, the gate opens
(a null SMTP sink, L{bench.null_sink}, starts accepting on that socket)
and the second figure is delivery, from then until the queue is empty,
with the server's and the signing process's CPU per message.
"""

from __future__ import annotations

import asyncio
import json
import os
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import null_sink
from bench import server as bench_server

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "example.test"
USERS = [f"bench{i}@{DOMAIN}" for i in range(10)]
RECIPIENTS = [f"r{i}@remote.test" for i in range(10)]
PASSWORD = "bench-password"


class Gate:
    """
    A TCP socket on loopback that listens and does not accept until
    L{open}: then a null SMTP sink (L{bench.null_sink}) answers every
    connection, those already waiting included, in a thread of the bench.
    """

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(1024)
        self.port: int = self.socket.getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        started = threading.Event()

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            loop.run_until_complete(asyncio.start_server(null_sink.handle, sock=self.socket))
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name="null-sink", daemon=True)
        self._thread.start()
        started.wait(10)

    def close(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
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


def _queued_to_be_signed(state_dir: Path) -> bool:
    """Whether one of the queue's entries is marked to be signed as it leaves (its envelope's C{sign})."""
    first = min((state_dir / "queue" / "envelopes").iterdir())
    return bool(json.loads(first.read_bytes()).get("sign"))


def _wait_until_empty(directory: Path, timeout: float) -> float:
    """Seconds until C{directory} has no files left (the relay sent everything), or raise after C{timeout}."""
    start = time.monotonic()
    while any(directory.iterdir()):
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{sum(1 for _ in directory.iterdir())} entries still queued after {timeout:.0f} s")
        time.sleep(0.02)
    return time.monotonic() - start


def one_run(workdir: Path, timeout: float, *, signing: str, messages: int, size: int, concurrency: int, per_connection: int) -> dict[str, Any]:
    """
    One server, C{messages} submitted; messages/s from the first connect to
    the last envelope on disk. C{signing} is "off", "threads" (the server's
    own threads: ``signing_process = false``) or "process" (the default).
    """
    sign = signing != "off"
    gate = Gate()
    extra = (
        "# Past 10,000 messages a run, ten senders would pass the default 1,000 each per hour.\n"
        "max_messages_per_hour = 1000000\n"
        f'\n[relay]\ntransports = {{ "remote.test" = "127.0.0.1:{gate.port}" }}\n'
        f"\n[dkim]\nsign = {'true' if sign else 'false'}\n"
        f"signing_process = {'false' if signing == 'threads' else 'true'}\n"
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
        if _queued_to_be_signed(server.state_dir) is not True:
            raise RuntimeError("the queue's entries are not marked to be signed: mail of ours always is")
        if figures["accepted"] != messages:
            raise RuntimeError(f"{figures['refused']} of {messages} messages refused")
        # Delivery: the gate opens, the relay signs (or not) and sends everything.
        cpu_before, children_before = server.cpu_seconds(), server.children_cpu_seconds()
        gate.open()
        seconds = _wait_until_empty(server.state_dir / "queue" / "envelopes", timeout)
        figures["delivery_messages_per_second"] = messages / seconds
        figures["delivery_server_cpu_ms_per_message"] = (server.cpu_seconds() - cpu_before) * 1000 / messages
        figures["delivery_signing_process_cpu_ms_per_message"] = (server.children_cpu_seconds() - children_before) * 1000 / messages
    finally:
        server.stop()
        gate.close()
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
            "unsigned_delivery_messages_per_second": unsigned["delivery_messages_per_second"],
            "signed_delivery_messages_per_second": signed["delivery_messages_per_second"],
            "signed_delivery_share": signed["delivery_messages_per_second"] / unsigned["delivery_messages_per_second"],
            "threads_delivery_share": threads["delivery_messages_per_second"] / unsigned["delivery_messages_per_second"],
            "unsigned_delivery_server_cpu_ms_per_message": unsigned["delivery_server_cpu_ms_per_message"],
            "signed_delivery_server_cpu_ms_per_message": signed["delivery_server_cpu_ms_per_message"],
            "signed_delivery_signing_process_cpu_ms_per_message": signed["delivery_signing_process_cpu_ms_per_message"],
            "threads_delivery_server_cpu_ms_per_message": threads["delivery_server_cpu_ms_per_message"],
            "load_average_before": max(r["load_average_before"] for r in results.values()),
            "order": ", ".join(order),
            **{mode: {k: v for k, v in result.items() if k != "_cleanup"} for mode, result in results.items()},
            "_cleanup": [result["_cleanup"] for result in results.values()],
        }

    return run
