"""
The relay workload's two helper processes (the load itself is instance A
emptying its queue into instance B):

``fill``: write C{--count} queue entries of about C{--size} bytes straight
into A's queue directory while A is stopped (message file + envelope, due
now), as the queue would after a burst of submissions::

    python -m bench.relay_load fill --queue A/queue --count 1000 --size 4096 --recipient bob@b.test

``watch``: wait until C{--expect} files are in B's Maildir (polling, bounded
by C{--timeout}), then print the wall-clock time (Unix seconds) the last one
was seen and the first and last file times, as JSON::

    python -m bench.relay_load watch --maildir B/mail/b.test/bob/new --expect 1000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def fill(args: argparse.Namespace) -> dict[str, object]:
    from mailapp.relay.queue import Envelope, QueueLayout, Recipient

    layout = QueueLayout(Path(args.queue))
    layout.create()
    body = f"From: <{args.sender}>\r\nTo: <{args.recipient}>\r\nSubject: relay bench\r\n\r\n".encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-+=_0123456789ab\r\n"
    while len(body) + len(line) <= args.size:
        body += line
    now = time.time()
    started = time.perf_counter()
    for n in range(args.count):
        entry_id = f"BENCH{n:06d}"
        layout.message(entry_id).write_bytes(body)
        envelope = Envelope(id=entry_id, sender=args.sender, created=now, size=len(body), recipients=[Recipient(args.recipient)], next_attempt=now)
        layout.envelope(entry_id).write_bytes(envelope.to_bytes())
    return {"entries": args.count, "message_bytes": len(body), "fill_seconds": time.perf_counter() - started}


def watch(args: argparse.Namespace) -> dict[str, object]:
    directory = Path(args.maildir)
    deadline = time.monotonic() + args.timeout
    count = 0
    while time.monotonic() < deadline:
        count = len(os.listdir(directory)) if directory.is_dir() else 0
        if count >= args.expect:
            last_seen = time.time()
            times = sorted(entry.stat().st_mtime for entry in os.scandir(directory))
            return {"delivered": count, "last_seen": last_seen, "first_file": times[0], "last_file": times[-1]}
        time.sleep(0.01)
    raise SystemExit(f"only {count} of {args.expect} messages in {directory} after {args.timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    filling = commands.add_parser("fill")
    filling.add_argument("--queue", required=True)
    filling.add_argument("--count", type=int, default=1000)
    filling.add_argument("--size", type=int, default=4096)
    filling.add_argument("--sender", default="alice@a.test")
    filling.add_argument("--recipient", required=True)
    watching = commands.add_parser("watch")
    watching.add_argument("--maildir", required=True)
    watching.add_argument("--expect", type=int, required=True)
    watching.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    print(json.dumps(fill(args) if args.command == "fill" else watch(args)))


if __name__ == "__main__":
    main()
