"""
``[server] workers = 2`` and UIDVALIDITY (RFC 3501/9051 2.3.1.1): a name
deleted and made again, or renamed onto, gets a UIDVALIDITY it never had,
whichever worker makes it and however fast, as imaplib sees it on both.

The sessions are imaplib's, each put on a chosen worker (the harness of
L{tests.e2e.test_workers_e2e}, which reads ``/proc`` to know).
"""

from __future__ import annotations

import imaplib
import re


from tests.e2e.test_workers_e2e import Workers, imap_on, pytestmark  # noqa: F401  (the Linux-only mark; the workers fixture is in conftest.py)


def _ok(reply: tuple[str, list]) -> list:
    typ, data = reply
    assert typ == "OK", data
    return data


def _uidvalidity(client: imaplib.IMAP4, name: str) -> int:
    """C{name}'s UIDVALIDITY, as STATUS answers it."""
    [line] = _ok(client.status(name, "(UIDVALIDITY)"))
    found = re.search(rb"UIDVALIDITY (\d+)", line)
    assert found, line
    return int(found.group(1))


def test_a_name_deleted_and_made_again_on_either_worker_never_repeats_a_uidvalidity(workers: Workers) -> None:
    first, second = workers.pids()
    sessions = [imap_on(workers, first), imap_on(workers, second)]
    try:
        seen: list[int] = []
        for round_ in range(20):  # bounded: 20 rounds, two DELETE + CREATE each, well within a few seconds
            for maker, other in (sessions, sessions[::-1]):
                if round_ or maker is not sessions[0]:
                    _ok(maker.delete("Again"))
                _ok(maker.create("Again"))
                made = _uidvalidity(maker, "Again")
                # The other worker sees the same folder: the same UIDVALIDITY.
                assert _uidvalidity(other, "Again") == made
                seen.append(made)
        assert len(set(seen)) == len(seen) == 40, seen
    finally:
        for session in sessions:
            session.logout()


def test_a_folder_renamed_onto_a_name_deleted_on_the_other_worker_gets_a_uidvalidity_that_name_never_had(workers: Workers) -> None:
    first, second = workers.pids()
    one, other = imap_on(workers, first), imap_on(workers, second)
    try:
        given: set[int] = set()
        for round_ in range(10):  # bounded: 10 rounds of two CREATEs, a DELETE and a RENAME
            _ok(one.create("Target"))
            given.add(_uidvalidity(one, "Target"))
            _ok(other.create(f"Source{round_}"))
            source = _uidvalidity(other, f"Source{round_}")
            _ok(one.delete("Target"))
            _ok(other.rename(f"Source{round_}", "Target"))
            # The folder keeps its own UIDVALIDITY, one "Target" never had.
            assert _uidvalidity(one, "Target") == source
            assert source not in given, (source, given)
            given.add(source)
            _ok(one.delete("Target"))
    finally:
        one.logout()
        other.logout()
