"""
The ``imap-10k`` workload's client: one separate process that times the
commands of issue 19 against one IMAP server (mailapp or Dovecot, the same
client for both) and prints one JSON object of seconds.

  1. LOGIN + ``SELECT INBOX`` on a first connection: the server's first
     look at the INBOX the harness wrote (``select_cold``: both index the
     Maildir's files here);
  2. ``--settle`` seconds later (Dovecot rescans a Maildir whose directory
     changed in the last moments, as its first SELECT's renames into cur/
     just did), on a second connection, ``SELECT INBOX`` again ``--repeat``
     times (``select_warm``: the best of them);
  3. on that connection, each of ``FETCH 1:* (FLAGS UID RFC822.SIZE)``,
     ``FETCH 1:* (ENVELOPE)``, ``FETCH 1:* (BODYSTRUCTURE)``, ``UID SEARCH
     SUBJECT "<word>"``, ``UID SEARCH BODY "<word>"``, ``UID SORT (SUBJECT)``,
     ``UID SORT (REVERSE DATE)``, ``UID THREAD REFERENCES``: once
     (``<op>_first``: what a server caches it fills here), then
     ``--repeat`` times more (``<op>``: the best of them, on a machine
     shared with other work).
  4. RFC 7162's resync: a third connection enables QRESYNC and selects
     the INBOX (its UIDVALIDITY and HIGHESTMODSEQ), the second one
     changes the flags of 10 messages, and the third selects again with
     ``SELECT INBOX (QRESYNC (uidvalidity modseq))``, once and
     ``--repeat`` times more (``select_qresync_first``,
     ``select_qresync``), counting its FETCH responses (10 expected)
     and VANISHED lines (none).
  5. ``UID SEARCH BODY "<word>"`` again every half second until it has not
     got 2% faster for five tries (or ``--index-wait`` seconds):
     ``search_body_settled`` is the best, ``search_body_settled_after``
     when (seconds after step 5 began). A server that indexes text in the
     background (mailapp's full-text index fills after the first SELECT)
     gets there; one that scans settles at once.

    python -m bench.imap10k_load --port P --user U --password W --messages 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time

from bench.imap_client import IMAP

#: (name, command, what each untagged line must start with to be counted)
OPERATIONS = [
    ("fetch_index", b"FETCH 1:* (FLAGS UID RFC822.SIZE)", b"* "),
    ("fetch_envelope", b"FETCH 1:* (ENVELOPE)", b"* "),
    ("fetch_bodystructure", b"FETCH 1:* (BODYSTRUCTURE)", b"* "),
    ("search_subject", b'UID SEARCH SUBJECT "{subject}"', b"* SEARCH"),
    ("search_body", b'UID SEARCH BODY "{body}"', b"* SEARCH"),
    ("sort_subject", b"UID SORT (SUBJECT) UTF-8 ALL", b"* SORT"),
    ("sort_date", b"UID SORT (REVERSE DATE) UTF-8 ALL", b"* SORT"),
    ("thread_references", b"UID THREAD REFERENCES UTF-8 ALL", b"* THREAD"),
]


async def _timed(session: IMAP, command: bytes) -> tuple[float, list[bytes]]:
    started = time.perf_counter()
    untagged, _ = await session.command(command)
    return time.perf_counter() - started, untagged


async def run(args: argparse.Namespace) -> dict[str, object]:
    result: dict[str, object] = {}
    first = await IMAP.connect(args.host, args.port, args.timeout)
    await first.login(args.user, args.password)
    seconds, untagged = await _timed(first, b"SELECT INBOX")
    exists = next((int(line.split()[1]) for line in untagged if line.endswith(b" EXISTS\r\n")), -1)
    if exists != args.messages:
        raise RuntimeError(f"expected {args.messages} messages, SELECT says {exists}")
    result["select_cold"] = seconds
    await first.command(b"LOGOUT")
    first.close()

    await asyncio.sleep(args.settle)
    session = await IMAP.connect(args.host, args.port, args.timeout)
    await session.login(args.user, args.password)
    warm = []
    for _ in range(args.repeat):
        seconds, _ = await _timed(session, b"SELECT INBOX")
        warm.append(seconds)
    result["select_warm"] = min(warm)
    for name, template, counted in OPERATIONS:
        command = template.replace(b"{subject}", args.subject_word.encode()).replace(b"{body}", args.body_word.encode())
        seconds, untagged = await _timed(session, command)
        result[name + "_first"] = seconds
        again = []
        for _ in range(args.repeat):
            seconds, _ = await _timed(session, command)
            again.append(seconds)
        result[name] = min(again)
        lines = [line for line in untagged if line.startswith(counted)]
        if counted == b"* SEARCH":
            result[name + "_matches"] = len(lines[0].split()) - 2 if lines else 0
        else:
            result[name + "_responses"] = len(lines)
            result[name + "_bytes"] = sum(len(line) for line in lines)
    await _resync(args, session, result)
    command = b'UID SEARCH BODY "' + args.body_word.encode() + b'"'
    began = time.perf_counter()
    best, best_at, since, matches = float("inf"), 0.0, 0, -1
    while since < 5 and time.perf_counter() - began < args.index_wait:
        seconds, untagged = await _timed(session, command)
        if seconds < best * 0.98:
            best, best_at, since = seconds, time.perf_counter() - began, 0
            lines = [line for line in untagged if line.startswith(b"* SEARCH")]
            matches = len(lines[0].split()) - 2 if lines else 0
        else:
            best = min(best, seconds)
            since += 1
        await asyncio.sleep(0.5)
    result["search_body_settled"] = best
    result["search_body_settled_after"] = round(best_at, 1)
    result["search_body_settled_matches"] = matches
    await session.command(b"LOGOUT")
    session.close()
    return result


#: The messages whose flags change before the resync (sequence numbers, spread over the folder).
CHANGED = [1 + n * 997 for n in range(10)]


async def _resync(args: argparse.Namespace, other: IMAP, result: dict[str, object]) -> None:
    """Step 4: SELECT (QRESYNC (uidvalidity modseq)) after 10 flag changes by another connection."""
    client = await IMAP.connect(args.host, args.port, args.timeout)
    await client.login(args.user, args.password)
    await client.command(b"ENABLE QRESYNC")
    untagged, _ = await client.command(b"SELECT INBOX")
    text = b"".join(untagged)
    validity = re.search(rb"\[UIDVALIDITY (\d+)\]", text)
    highest = re.search(rb"\[HIGHESTMODSEQ (\d+)\]", text)
    if validity is None or highest is None:
        raise RuntimeError("SELECT after ENABLE QRESYNC gave no UIDVALIDITY or HIGHESTMODSEQ")
    await client.command(b"UNSELECT")
    for seq in CHANGED:
        if seq <= args.messages:
            await other.command(b"STORE %d +FLAGS.SILENT (\\Flagged)" % seq)
    command = b"SELECT INBOX (QRESYNC (%s %s))" % (validity.group(1), highest.group(1))
    seconds, untagged = await _timed(client, command)
    result["select_qresync_first"] = seconds
    again = []
    for _ in range(args.repeat):
        seconds, _ = await _timed(client, command)
        again.append(seconds)
    result["select_qresync"] = min(again)
    result["select_qresync_fetches"] = sum(1 for line in untagged if re.match(rb"^\* \d+ FETCH ", line))
    result["select_qresync_vanished"] = sum(1 for line in untagged if line.startswith(b"* VANISHED"))
    await client.command(b"LOGOUT")
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--messages", type=int, required=True, help="messages expected in the INBOX")
    parser.add_argument("--subject-word", default="quarterly")
    parser.add_argument("--body-word", default="invoice")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of each command after the first (the best is reported)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between the first SELECT and the rest")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on each reply, seconds")
    parser.add_argument("--index-wait", type=float, default=90.0, help="bound on step 4 (SEARCH BODY until it settles), seconds")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(asyncio.wait_for(run(args), args.timeout * 4))))


if __name__ == "__main__":
    main()
