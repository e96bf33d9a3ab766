"""
The IMAP workload's generator: a separate process that times one user's
large INBOX (filled by the harness) over real sockets, and prints one JSON
object. In order:

  1. one SMTP delivery to the user: the server's first open of the mailbox,
     where it indexes the Maildir files the harness wrote (reported as
     ``first_open_seconds``, kept out of every other figure);
  2. LOGIN + SELECT INBOX twice, on two connections: the first LOGIN checks
     the argon2id hash, the second is answered from the server's cache of
     verified passwords (300 s);
  3. on the second connection: ``UID FETCH 1:* (UID FLAGS)``, ``FETCH
     1:N BODY.PEEK[]``, ``SEARCH SUBJECT <term>`` (which reads every file);
  4. IDLE, then ``--pushes`` messages by SMTP one at a time: for each, the
     time from the 250 (and from the end of DATA) to the untagged EXISTS.

    python -m bench.imap_load --imap-port P --smtp-port Q --user U --messages 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

from bench.imap_client import IMAP, SMTP, percentile
from bench.smtp_load import make_message


async def _login_select(args: argparse.Namespace) -> tuple[IMAP, float, float, int]:
    session = await IMAP.connect(args.host, args.imap_port, args.timeout)
    started = time.perf_counter()
    await session.login(args.user, args.password)
    login = time.perf_counter() - started
    untagged, _ = await session.command(b"SELECT INBOX")
    select = time.perf_counter() - started
    exists = next(int(line.split()[1]) for line in untagged if line.endswith(b" EXISTS\r\n"))
    return session, login, select, exists


async def run(args: argparse.Namespace) -> dict[str, object]:
    result: dict[str, object] = {}
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    smtp = await SMTP.connect(args.host, args.smtp_port, args.timeout)
    sent, replied = await smtp.send(args.user, make_message(0, 4096))
    result["first_open_seconds"] = replied - sent

    first, login, select, exists = await _login_select(args)
    if exists != args.messages:
        raise RuntimeError(f"expected {args.messages} messages in the INBOX, SELECT says {exists}")
    result["first_login_seconds"], result["first_login_select_seconds"] = login, select
    await first.command(b"LOGOUT")
    first.close()

    session, login, select, _ = await _login_select(args)
    result["login_seconds"], result["login_select_seconds"] = login, select

    started = time.perf_counter()
    untagged, _ = await session.command(b"UID FETCH 1:* (UID FLAGS)")
    result["uid_fetch_seconds"] = time.perf_counter() - started
    if len(untagged) != exists:
        raise RuntimeError(f"UID FETCH returned {len(untagged)} lines for {exists} messages")

    bodies = min(args.bodies, exists)
    started = time.perf_counter()
    untagged, _ = await session.command(b"FETCH 1:%d BODY.PEEK[]" % bodies)
    result["fetch_bodies_seconds"] = time.perf_counter() - started
    result["fetch_bodies_megabytes"] = sum(len(line) for line in untagged) / 1e6
    if len(untagged) != bodies:
        raise RuntimeError(f"FETCH returned {len(untagged)} responses for {bodies} messages")

    started = time.perf_counter()
    untagged, _ = await session.command(b"SEARCH SUBJECT " + args.search_term.encode())
    result["search_seconds"] = time.perf_counter() - started
    hits = [line for line in untagged if line.startswith(b"* SEARCH")]
    result["search_matches"] = len(hits[0].split()) - 2 if hits else 0
    if args.search_expect >= 0 and result["search_matches"] != args.search_expect:
        raise RuntimeError(f"SEARCH found {result['search_matches']}, expected {args.search_expect}")

    # IDLE push latency: one delivery at a time, each waited for before the next.
    arrivals: dict[int, float] = {}
    arrived = asyncio.Event()

    def on_exists(count: int, when: float) -> None:
        arrivals.setdefault(count, when)
        arrived.set()

    session.on_exists = on_exists
    await session.idle()
    listener = asyncio.ensure_future(session.listen())
    from_reply, from_data = [], []
    count = exists
    try:
        for n in range(args.pushes):
            count += 1
            data_sent, reply = await smtp.send(args.user, make_message(100_000 + n, args.push_size))
            deadline = time.perf_counter() + args.timeout
            while count not in arrivals:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"no EXISTS {count} within {args.timeout} s")
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), max(0.001, deadline - time.perf_counter()))
                except TimeoutError:
                    pass
            from_reply.append(arrivals[count] - reply)
            from_data.append(arrivals[count] - data_sent)
    finally:
        session.writer.write(b"DONE\r\n")
        listener.cancel()
    await smtp.quit()
    session.close()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    result.update(
        {
            "messages": exists,
            "pushes": len(from_reply),
            "push_p50_ms": percentile(from_reply, 0.50) * 1000,
            "push_p99_ms": percentile(from_reply, 0.99) * 1000,
            "push_max_ms": max(from_reply) * 1000,
            "push_before_reply": sum(1 for v in from_reply if v < 0),
            "push_from_data_p50_ms": percentile(from_data, 0.50) * 1000,
            "push_from_data_p99_ms": percentile(from_data, 0.99) * 1000,
            "generator_cpu_seconds": (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime),
        }
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--imap-port", type=int, required=True)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", default="bench-password")
    parser.add_argument("--messages", type=int, required=True, help="messages expected in the INBOX after the first delivery")
    parser.add_argument("--bodies", type=int, default=1000)
    parser.add_argument("--search-term", default="quarterly")
    parser.add_argument("--search-expect", type=int, default=-1, help="matches expected (-1: do not check)")
    parser.add_argument("--pushes", type=int, default=100)
    parser.add_argument("--push-size", type=int, default=4096)
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on each reply, seconds")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(asyncio.wait_for(run(args), args.timeout * 10))))


if __name__ == "__main__":
    main()
