"""
The SMTP load generator: a separate process that sends messages over many
concurrent connections (asyncio, PIPELINING) and times from the first
connect until the last message is durable in its Maildir (it counts files,
not replies). Prints one JSON object.

Run by the harness; also usable by hand::

    python -m bench.smtp_load --port 10025 --messages 1000 --size 4096 \
        --concurrency 20 --per-connection 50 --maildir DIR ... --expect 1000

With ``--auth USER`` (repeated) and ``--password``, it submits: each
connection logs in (AUTH PLAIN) as one of the users in turn and sends from
that address (envelope and ``From:``), as a mail client does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import time
from pathlib import Path


def make_message(index: int, size: int, sender: str = "load@bench.test") -> bytes:
    """A plain message of about C{size} bytes, CRLF lines of 76 characters, nothing to dot-stuff."""
    header = (
        f"From: <{sender}>\r\nTo: <user@example.test>\r\nSubject: bench {index}\r\n"
        f"Message-ID: <{index}.{os.getpid()}@bench.test>\r\n\r\n"
    ).encode()
    line = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-+=_0123456789ab" + b"\r\n")
    body = line * max(1, (size - len(header)) // len(line))
    return header + body


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return line


async def _login(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, login: tuple[str, str], timeout: float) -> None:
    user, password = login
    token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
    writer.write(b"AUTH PLAIN " + token + b"\r\n")
    line = await asyncio.wait_for(_reply(reader), timeout)
    if not line.startswith(b"235"):
        raise RuntimeError(f"AUTH PLAIN as {user} refused: {line!r}")


async def _session(
    host: str, port: int, jobs: list[tuple[str, bytes]], counters: dict[str, int], timeout: float,
    login: tuple[str, str] | None = None,
) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    sender = b"load@bench.test" if login is None else login[0].encode()
    try:
        await asyncio.wait_for(_reply(reader), timeout)
        writer.write(b"EHLO load.bench.test\r\n")
        await asyncio.wait_for(_reply(reader), timeout)
        if login is not None:
            await _login(reader, writer, login, timeout)
        for recipient, data in jobs:
            writer.write(b"MAIL FROM:<" + sender + b">\r\nRCPT TO:<" + recipient.encode() + b">\r\nDATA\r\n")
            for expected in (b"250", b"250", b"354"):
                line = await asyncio.wait_for(_reply(reader), timeout)
                if not line.startswith(expected):
                    raise RuntimeError(f"unexpected reply {line!r}")
            writer.write(data + b".\r\n")
            line = await asyncio.wait_for(_reply(reader), timeout)
            counters["accepted" if line.startswith(b"250") else "refused"] += 1
        writer.write(b"QUIT\r\n")
        await asyncio.wait_for(_reply(reader), timeout)
    finally:
        writer.close()


async def _count_durable(maildirs: list[Path], expect: int, deadline: float) -> float:
    """Poll the Maildirs until C{expect} files are there; return the time it happened."""
    while True:
        total = sum(len(os.listdir(d)) for d in maildirs)
        if total >= expect:
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {total} of {expect} messages durable in time")
        await asyncio.sleep(0.005)


async def run(args: argparse.Namespace) -> dict[str, object]:
    recipients = args.recipient
    per = args.per_connection
    logins: list[tuple[str, str] | None] = [(user, args.password) for user in args.auth] or [None]
    # Connection n (messages n*per to n*per+per-1) logs in as user n: every message from its own login.
    senders = [logins[(i // per) % len(logins)] for i in range(args.messages)]
    messages = [
        (recipients[i % len(recipients)], make_message(i, args.size, "load@bench.test" if login is None else login[0]))
        for i, login in enumerate(senders)
    ]
    batches = [(messages[i : i + per], senders[i]) for i in range(0, len(messages), per)]
    counters = {"accepted": 0, "refused": 0}
    queue: asyncio.Queue[tuple[list[tuple[str, bytes]], tuple[str, str] | None]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def worker() -> None:
        while not queue.empty():
            jobs, login = queue.get_nowait()
            await _session(args.host, args.port, jobs, counters, args.timeout, login)

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    deadline = start + args.timeout
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(args.concurrency))), args.timeout)
    replied = time.perf_counter()
    durable = await _count_durable([Path(d) for d in args.maildir], args.expect, deadline) if args.maildir else replied
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = durable - start
    return {
        "messages": args.messages,
        "accepted": counters["accepted"],
        "refused": counters["refused"],
        "seconds": elapsed,
        "seconds_to_last_reply": replied - start,
        "messages_per_second": args.messages / elapsed,
        "megabytes_per_second": sum(len(m[1]) for m in messages) / elapsed / 1e6,
        "generator_cpu_seconds": (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--per-connection", type=int, default=50)
    parser.add_argument("--recipient", action="append", required=True)
    parser.add_argument("--maildir", action="append", default=[])
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--auth", action="append", default=[], metavar="USER", help="submit: log in (AUTH PLAIN) as these users in turn")
    parser.add_argument("--password", default="bench-password")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
