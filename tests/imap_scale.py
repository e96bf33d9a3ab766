"""
IMAP timings on a large INBOX (not a test; run by hand):

    .venv/bin/python -m tests.imap_scale [--messages 10000] [--bodies 1000]

Fills a fresh INBOX with Maildir files (the index is built from them on first
open, as after a migration), starts the real service in a subprocess, and
times over a real socket: LOGIN+SELECT, ``UID FETCH 1:* (UID FLAGS)``,
FETCH of N full bodies, SORT and THREAD. It also reports how many bytes the
server read from disk (``/proc/PID/io`` rchar) during SELECT and the UID
FETCH, to show they are answered from the index without opening message
files, and during each SORT/THREAD, to show each file is read once (the
first SORT fills the structure cache; the second reads no file).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.imap_helpers import PASSWORD, Raw, start_server


def _rchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def fill(maildir: Path, count: int) -> int:
    new = maildir / "new"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 1 + "\r\n") * 60
    total = 0
    for n in range(count):
        data = (
            f"From: Sender {n} <sender{n}@remote.test>\r\nTo: user1@example.test\r\nSubject: message {n}\r\n"
            f"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <{n}@remote.test>\r\n\r\n{body}"
        ).encode()
        (new / f"{1700000000 + n}.M{n}P1.scale").write_bytes(data)
        total += len(data)
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--bodies", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        server = start_server(root)
        user = "user1@example.test"
        try:
            server.terminate()
            size = fill(server.maildir(user), args.messages)
            server.start()
            pid = server.process.pid
            warm = Raw(server.port("imap"))  # first open builds the index from the Maildir
            started = time.monotonic()
            warm.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
            warm.command(b"b", b"SELECT INBOX")
            build = time.monotonic() - started
            warm.close()

            raw = Raw(server.port("imap"))
            before = _rchar(pid)
            started = time.monotonic()
            raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
            login = time.monotonic() - started
            lines = raw.command(b"b", b"SELECT INBOX")
            select = time.monotonic() - started
            assert b"* %d EXISTS" % args.messages in lines
            started = time.monotonic()
            lines = raw.command(b"c", b"UID FETCH 1:* (UID FLAGS)")
            uid_fetch = time.monotonic() - started
            assert len(lines) == args.messages + 1
            read_index = _rchar(pid) - before
            started = time.monotonic()
            lines = raw.command(b"d", b"FETCH 1:%d BODY.PEEK[]" % args.bodies)
            bodies = time.monotonic() - started
            assert len(lines) == args.bodies + 1
            fetched = sum(len(line) for line in lines)
            sorts = []
            for tag, command in (
                (b"d1", b"SORT (ARRIVAL) UTF-8 ALL"),
                (b"e", b"SORT (SUBJECT) UTF-8 ALL"),
                (b"e2", b"SORT (SUBJECT) UTF-8 ALL"),
                (b"f", b"SORT (REVERSE DATE) UTF-8 SUBJECT message"),
                (b"g", b"THREAD REFERENCES UTF-8 ALL"),
            ):
                before = _rchar(pid)
                started = time.monotonic()
                lines = raw.command(tag, command)
                sorts.append((command.decode(), time.monotonic() - started, _rchar(pid) - before))
                assert lines[-1].startswith(tag + b" OK"), lines[-1]
            raw.close()
            print(f"INBOX: {args.messages} messages, {size / 1e6:.1f} MB")
            print(f"first open (index built from the Maildir) + LOGIN + SELECT: {build * 1000:.0f} ms")
            print(f"LOGIN + SELECT: {select * 1000:.0f} ms (LOGIN alone, an argon2id check: {login * 1000:.0f} ms)")
            print(f"UID FETCH 1:* (UID FLAGS): {uid_fetch * 1000:.0f} ms")
            print(f"bytes read by the server during LOGIN+SELECT+UID FETCH: {read_index / 1e6:.2f} MB (the messages are {size / 1e6:.1f} MB)")
            print(f"FETCH 1:{args.bodies} BODY.PEEK[]: {bodies * 1000:.0f} ms ({fetched / 1e6:.1f} MB)")
            for command, took, read in sorts:
                print(f"{command}: {took * 1000:.0f} ms, {read / 1e6:.1f} MB read (the messages are {size / 1e6:.1f} MB)")
        finally:
            server.terminate()


if __name__ == "__main__":
    main()
