"""
``make bench``: start mailapp on loopback, drive each workload from a separate
load-generator process, and print a table (also written as JSON).

Each workload runs ``--runs`` times (default 3) against a fresh state
directory; the table shows the median with min-max. Old state directories
are deleted only after the measured run, since mass unlinks just before a run
skew it. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import twisted

from bench import server as bench_server

USERS = [f"bench{i}@example.test" for i in range(10)]
ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cores": os.cpu_count(),
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor()),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "kernel": platform.release(),
    }


def run_generator(port: int, messages: int, size: int, concurrency: int, per_connection: int, maildirs: list[Path], timeout: float) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.smtp_load", "--port", str(port), "--messages", str(messages), "--size", str(size),
        "--concurrency", str(concurrency), "--per-connection", str(per_connection), "--timeout", str(timeout),
        "--expect", str(messages if maildirs else 0),
    ]
    for user in USERS:
        command += ["--recipient", user]
    for maildir in maildirs:
        command += ["--maildir", str(maildir)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=timeout + 30, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"load generator failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


def smtp_workload(messages: int, size: int, concurrency: int, per_connection: int) -> Callable[[Path, float], dict[str, Any]]:
    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        server = bench_server.start(USERS, workdir)
        try:
            cpu_before = server.cpu_seconds()
            result = run_generator(server.ports["smtp"], messages, size, concurrency, per_connection, [server.maildir_new(u) for u in USERS], timeout)
            result["server_cpu_ms_per_message"] = (server.cpu_seconds() - cpu_before) * 1000 / messages
            result["server_peak_rss_mb"] = server.peak_rss_bytes() / 2**20
        finally:
            server.stop()
        result["_cleanup"] = server
        return result

    return run


def null_sink_workload(messages: int, size: int, concurrency: int, per_connection: int) -> Callable[[Path, float], dict[str, Any]]:
    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        sink = subprocess.Popen([sys.executable, "-m", "bench.null_sink"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            port = int(sink.stdout.readline())  # type: ignore[union-attr]
            return run_generator(port, messages, size, concurrency, per_connection, [], timeout)
        finally:
            sink.terminate()
            sink.wait(timeout=10)

    return run


def pop3_workload(messages: int) -> Callable[[Path, float], dict[str, Any]]:
    """Fill one INBOX with C{messages} x 4 KiB over SMTP, then time one POP3 session."""

    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        server = bench_server.start(USERS, workdir)
        try:
            user = USERS[0]
            command = [
                sys.executable, "-m", "bench.smtp_load", "--port", str(server.ports["smtp"]), "--messages", str(messages),
                "--size", "4096", "--concurrency", "10", "--per-connection", "100", "--recipient", user,
                "--maildir", str(server.maildir_new(user)), "--expect", str(messages), "--timeout", str(timeout),
            ]
            subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=timeout + 30)
            result = subprocess.run(
                [sys.executable, "-m", "bench.pop3_load", "--port", str(server.ports["pop3"]), "--user", user, "--password", "bench-password", "--timeout", str(timeout)],
                cwd=ROOT, capture_output=True, text=True, timeout=timeout + 30,
            )
            if result.returncode != 0:
                raise RuntimeError(f"POP3 client failed: {result.stderr[-2000:]}")
            figures = json.loads(result.stdout)
            if figures["messages"] != messages:
                raise RuntimeError(f"expected {messages} messages, POP3 listed {figures['messages']}")
        finally:
            server.stop()
        figures["_cleanup"] = server
        return figures

    return run


def workloads(args: argparse.Namespace) -> dict[str, tuple[str, Callable[[Path, float], dict[str, Any]]]]:
    n, big = args.messages, args.large_messages
    return {
        "smtp-4k": (f"SMTP ingest, {n} x 4 KiB, {args.concurrency} connections, 50 per connection", smtp_workload(n, 4096, args.concurrency, 50)),
        "smtp-4k-single": (f"SMTP ingest, {n // 5} x 4 KiB, {args.concurrency} connections, 1 per connection", smtp_workload(n // 5, 4096, args.concurrency, 1)),
        "smtp-100k": (f"SMTP ingest, {big} x 100 KiB, {args.concurrency} connections, 10 per connection", smtp_workload(big, 100 * 1024, args.concurrency, 10)),
        "pop3": (f"POP3, one session over {args.pop3_messages} x 4 KiB: STAT, LIST, UIDL, RETR of each", pop3_workload(args.pop3_messages)),
        "null-sink-4k": (f"generator alone against a null sink, {n} x 4 KiB", null_sink_workload(n, 4096, args.concurrency, 50)),
    }


FIGURES = [
    ("messages_per_second", "msg/s", "{:.0f}"),
    ("megabytes_per_second", "MB/s", "{:.1f}"),
    ("server_cpu_ms_per_message", "srv CPU ms/msg", "{:.2f}"),
    ("server_peak_rss_mb", "srv peak RSS MiB", "{:.0f}"),
    ("generator_cpu_seconds", "gen CPU s", "{:.2f}"),
    ("seconds", "wall s", "{:.2f}"),
    ("stat_seconds", "STAT s", "{:.4f}"),
    ("list_seconds", "LIST s", "{:.4f}"),
    ("uidl_seconds", "UIDL s", "{:.4f}"),
    ("retr_seconds", "RETR all s", "{:.3f}"),
]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key, _, _ in FIGURES:
        values = [r[key] for r in runs if key in r]
        if values:
            summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="smtp-4k,smtp-4k-single,smtp-100k,pop3,null-sink-4k", help="comma-separated names")
    parser.add_argument("--messages", type=int, default=5000, help="4 KiB messages per run (default 5000)")
    parser.add_argument("--large-messages", type=int, default=1000, help="100 KiB messages per run (default 1000)")
    parser.add_argument("--pop3-messages", type=int, default=1000, help="messages in the POP3 maildrop (default 1000)")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on each run, seconds")
    parser.add_argument("--output", default=str(ROOT / "bench-results" / "latest.json"))
    args = parser.parse_args()
    available = workloads(args)
    chosen = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in available]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(available)}")

    info = machine()
    print(f"mailapp bench on {info['cores']} cores, {info['cpu']}, Python {info['python']}, Twisted {info['twisted']}")
    results: dict[str, Any] = {"machine": info, "workloads": {}}
    workdir = Path(tempfile.mkdtemp(prefix="mailapp-bench-"))
    previous: Any = None
    for name in chosen:
        title, run = available[name]
        runs = []
        for _ in range(args.runs):
            result = run(workdir, args.timeout)
            server = result.pop("_cleanup", None)
            if previous is not None:
                bench_server.remove(previous)
            previous = server
            runs.append(result)
        results["workloads"][name] = {"title": title, **summarize(runs)}
        print(f"\n{name}: {title}")
        for key, label, fmt in FIGURES:
            figure = results["workloads"][name].get(key)
            if figure:
                print(f"  {label:18} {fmt.format(figure['median']):>10}   ({fmt.format(figure['min'])} - {fmt.format(figure['max'])})")
    if previous is not None:
        bench_server.remove(previous)
    os.rmdir(workdir) if not any(workdir.iterdir()) else None
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(f"\nwritten to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
