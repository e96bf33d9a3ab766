"""
``[server] workers = 2`` and IMAP's ``\\Recent`` (RFC 3501 2.3.2): a message
is recent in exactly one session, the first to select its folder after it
arrived, whichever worker each session is on; EXAMINE and STATUS take
nothing; and what was claimed stays claimed across a restart.

The sessions are imaplib's, each put on a chosen worker (the harness of
L{tests.e2e.test_workers_e2e}, which reads ``/proc`` to know).
"""

from __future__ import annotations

import imaplib
import re
import time


from tests.e2e.test_workers_e2e import Workers, imap_on, pytestmark  # noqa: F401  (the Linux-only mark; the workers fixture is in conftest.py)

#: Bound on waiting for a delivery by one worker to reach a session on the other (it takes a hint's trip).
ARRIVAL_TIMEOUT = 20.0


def _selected(client: imaplib.IMAP4, readonly: bool = False) -> tuple[int, int]:
    """SELECT (or EXAMINE) INBOX: its EXISTS and RECENT."""
    typ, data = client.select("INBOX", readonly=readonly)
    assert typ == "OK", data
    [recent] = client.response("RECENT")[1]
    return int(data[0]), int(recent)


def _recent_flags(client: imaplib.IMAP4, count: int) -> list[bool]:
    """Whether each of the first C{count} messages has \\Recent, as FETCH FLAGS says."""
    typ, data = client.fetch(f"1:{count}", "(FLAGS)")
    assert typ == "OK", data
    lines = [d for d in data if isinstance(d, bytes)]
    assert len(lines) == count, lines
    return [b"\\Recent" in line for line in lines]


def _noop_until_exists(client: imaplib.IMAP4, count: int) -> int:
    """NOOP until the session is told of C{count} messages (bounded); the last RECENT it was told."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    recent = None
    while time.monotonic() < deadline:
        client.noop()
        exists = client.response("EXISTS")[1]
        told = client.response("RECENT")[1]
        if told and told[-1] is not None:
            recent = int(told[-1])
        if exists and exists[-1] is not None and int(exists[-1]) == count:
            assert recent is not None, "EXISTS without RECENT"
            return recent
        time.sleep(0.05)
    raise AssertionError(f"never told of {count} messages")


def test_a_new_message_is_recent_in_exactly_one_of_two_sessions_on_different_workers(workers: Workers) -> None:
    first, second = workers.pids()
    one, other = imap_on(workers, first), imap_on(workers, second)
    try:
        assert _selected(one) == (0, 0) and _selected(other) == (0, 0)
        workers.deliver_through(first, "for one of them")
        told = [_noop_until_exists(one, 1), _noop_until_exists(other, 1)]
        assert sorted(told) == [0, 1], told
        # FETCH agrees with RECENT in each session: the one told RECENT 1 alone sees \Recent.
        assert [_recent_flags(one, 1), _recent_flags(other, 1)] == [[told[0] == 1], [told[1] == 1]]
        # A second message, delivered by the other worker: again exactly one of them has it.
        workers.deliver_through(second, "and another")
        told_again = [_noop_until_exists(one, 2), _noop_until_exists(other, 2)]
        flags = [_recent_flags(one, 2), _recent_flags(other, 2)]
        assert flags[0][1] + flags[1][1] == 1, flags
        # RECENT counts this session's own: the first message's and the second's, if it got them.
        assert told_again == [sum(flags[0]), sum(flags[1])], (told_again, flags)
    finally:
        one.logout()
        other.logout()


def test_the_first_select_on_either_worker_claims_the_recent_and_a_restart_keeps_the_claim(workers: Workers) -> None:
    first, second = workers.pids()
    workers.deliver_through(first, "one")
    workers.deliver_through(second, "two")
    looker = imap_on(workers, second)
    try:
        # STATUS and EXAMINE on the second worker show both as recent and take neither.
        status = looker.status("INBOX", "(MESSAGES RECENT)")[1][0]
        assert re.search(rb"MESSAGES 2 RECENT 2", status), status
        assert _selected(looker, readonly=True) == (2, 2)
        assert _recent_flags(looker, 2) == [True, True]
        looker.close()
        selector = imap_on(workers, first)
        try:
            assert _selected(selector) == (2, 2)
            assert _recent_flags(selector, 2) == [True, True]
        finally:
            selector.logout()
        # Claimed by the session on the first worker: none of them is recent on the second any more.
        assert _selected(looker) == (2, 0)
        assert _recent_flags(looker, 2) == [False, False]
        status = looker.status("INBOX", "(RECENT)")[1][0]
        assert re.search(rb"RECENT 0", status), status
    finally:
        looker.logout()
    workers.stop()
    workers.server.start()
    # The log is appended to: the first run's parent and two workers, this run's parent, and two more workers.
    workers.wait_ready(2 + 1 + 2)
    first, second = workers.pids()
    workers.deliver_through(first, "three")
    after = imap_on(workers, second)
    try:
        # The claim outlived the restart: only the message delivered since is recent.
        assert _selected(after) == (3, 1)
        assert _recent_flags(after, 3) == [False, False, True]
    finally:
        after.logout()
