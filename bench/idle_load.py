"""
The IDLE workload's generator: a separate process that holds many
authenticated IMAP connections in IDLE at once (asyncio, raw sockets), reads
the server's RSS before and after, then delivers messages by SMTP to a few
of the idling users, one at a time, and times each until every connection of
that user has its untagged EXISTS. Prints one JSON object.

Users log in once each first (one argon2id check per user, on the server's
two hashing threads); the other connections of a user then hit the server's
cache of verified passwords, as a client that opens several connections does.

    python -m bench.idle_load --imap-port P --smtp-port Q --server-pid PID \
        --user-prefix idle --users 100 --connections 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from pathlib import Path

from bench.imap_client import IMAP, SMTP, percentile
from bench.server import child_pids
from bench.smtp_load import make_message


def _own_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss(pid: int) -> int:
    """
    The server's resident memory: the process's own and its children's (the
    worker processes, the DKIM signing process), so that C{workers = 2}
    counts every process holding connections, not only the idle parent.
    """
    return _own_rss(pid) + sum(_own_rss(child) for child in child_pids(pid))


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft open-files limit to C{wanted} (at most the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Watch:
    """Deliveries to one user: how many EXISTS the current one still waits for, and when they came."""

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.target = 0
        self.times: list[float] = []
        self.done = asyncio.Event()

    def seen(self, count: int, when: float) -> None:
        if count == self.target:
            self.times.append(when)
            if len(self.times) >= self.connections:
                self.done.set()


async def run(args: argparse.Namespace) -> dict[str, object]:
    users = [f"{args.user_prefix}{i}@{args.domain}" for i in range(args.users)]
    owner = [users[i % len(users)] for i in range(args.connections)]
    nofile = raise_nofile(args.connections + 256)
    if nofile < args.connections + 64:
        raise RuntimeError(f"the generator may open {nofile} files, fewer than {args.connections} connections need")
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    result: dict[str, object] = {"connections": args.connections, "users": len(users), "generator_open_files_limit": nofile}
    rss_before = rss(args.server_pid)
    watches = {user: Watch(owner.count(user)) for user in users}
    sessions: list[IMAP] = []
    listeners: list[asyncio.Future[None]] = []
    gate = asyncio.Semaphore(args.connect_concurrency)

    async def open_one(user: str) -> None:
        async with gate:
            session = await IMAP.connect(args.host, args.imap_port, args.timeout)
            sessions.append(session)
            await session.login(user, args.password)
            await session.command(b"SELECT INBOX")
            session.on_exists = watches[user].seen
            await session.idle()
            listeners.append(asyncio.ensure_future(session.listen()))

    try:
        started = time.perf_counter()
        await asyncio.gather(*(open_one(user) for user in users))  # one argon2id check per user
        result["first_logins_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.gather(*(open_one(user) for user in owner[len(users):]))
        result["connect_seconds"] = time.perf_counter() - started
        result["connects_per_second"] = (args.connections - len(users)) / max(result["connect_seconds"], 1e-9)  # type: ignore[operator]
        await asyncio.sleep(args.settle)
        rss_after = rss(args.server_pid)
        result["server_rss_before_mb"] = rss_before / 2**20
        result["server_rss_mb"] = rss_after / 2**20
        result["server_rss_kb_per_connection"] = (rss_after - rss_before) / args.connections / 1024

        smtp = await SMTP.connect(args.host, args.smtp_port, args.timeout)
        targets = users[: args.push_users]
        counts = {user: 0 for user in targets}
        to_last, to_first = [], []
        for n in range(args.pushes):
            user = targets[n % len(targets)]
            watch = watches[user]
            counts[user] += 1
            watch.target, watch.times = counts[user], []
            watch.done.clear()
            _, reply = await smtp.send(user, make_message(n, 4096))
            await asyncio.wait_for(watch.done.wait(), args.timeout)
            to_first.append(min(watch.times) - reply)
            to_last.append(max(watch.times) - reply)
        await smtp.quit()
        result.update(
            {
                "pushes": len(to_last),
                "push_users": len(targets),
                "push_connections_per_user": watches[targets[0]].connections,
                "idle_push_p50_ms": percentile(to_last, 0.50) * 1000,
                "idle_push_p99_ms": percentile(to_last, 0.99) * 1000,
                "idle_push_first_p50_ms": percentile(to_first, 0.50) * 1000,
                "idle_push_first_p99_ms": percentile(to_first, 0.99) * 1000,
                "server_rss_after_pushes_mb": rss(args.server_pid) / 2**20,
            }
        )
    finally:
        for task in listeners:
            task.cancel()
        for session in sessions:
            session.writer.transport.abort()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    result["generator_cpu_seconds"] = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--imap-port", type=int, required=True)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True, help="the server's process, for its RSS")
    parser.add_argument("--user-prefix", default="idle")
    parser.add_argument("--domain", default="example.test")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--password", default="bench-password")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--connect-concurrency", type=int, default=100, help="connections being opened at once")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to wait after the last IDLE before reading RSS")
    parser.add_argument("--pushes", type=int, default=100)
    parser.add_argument("--push-users", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on each step, seconds")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(asyncio.wait_for(run(args), args.timeout * 10))))


if __name__ == "__main__":
    main()
