"""
LIST and LSUB patterns (RFC 3501 6.3.8) are matched in time linear in the
name, whatever the client sends: a backtracking regular expression once
took seconds (40 stars) or never finished, on the reactor, stalling every
session of every protocol.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator

import pytest

from mailapp.imap.wire import MAX_PATTERN, BadCommand, MailboxPattern, mailbox_pattern
from tests.imap_helpers import PASSWORD, Raw, Users, start_server
from tests.service_runner import ServiceProcess


def _reference(pattern: str) -> re.Pattern[str]:
    """The RFC's meaning as a regular expression, safe only on short patterns."""
    return re.compile("".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern) + r"\Z", re.S)


def test_wildcards_select_what_the_rfc_says_on_random_patterns() -> None:
    generator = random.Random(3501)
    for _ in range(5000):
        pattern = "".join(generator.choice("ab/*%") for _ in range(generator.randint(0, 8)))
        name = "".join(generator.choice("ab/") for _ in range(generator.randint(0, 10)))
        assert MailboxPattern(pattern).match(name) == bool(_reference(pattern).match(name)), (pattern, name)


def test_the_reference_is_joined_with_the_delimiter() -> None:
    assert mailbox_pattern("Work", "%").match("Work/2026") and not mailbox_pattern("Work", "%").match("Work/2026/q1")


@pytest.mark.parametrize(
    "pattern",
    ["*" * 200 + "x", "%" * 200 + "x", "*%" * 100 + "x", "*a" * 300 + "x", "%a" * 300 + "/x"],
)
def test_hundreds_of_wildcards_against_a_long_name_take_milliseconds(pattern: str) -> None:
    matcher = MailboxPattern(pattern)
    names = ["a" * 1000, "a/" * 500, "a" * 999 + "y"]
    started = time.perf_counter()
    for name in names:
        matcher.match(name)
    assert time.perf_counter() - started < 0.05


def test_a_pattern_longer_than_the_bound_is_a_bad_command() -> None:
    with pytest.raises(BadCommand):
        MailboxPattern("*" * (MAX_PATTERN + 1))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = start_server(tmp_path_factory.mktemp("imap-list"))
    yield running
    running.terminate()


def test_list_with_hundreds_of_wildcards_answers_at_once_and_others_keep_being_served(server: ServiceProcess) -> None:
    user = Users().take()
    client, other = Raw(server.port("imap")), Raw(server.port("imap"))
    try:
        for raw in (client, other):
            assert raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())[-1].startswith(b"a OK")
        assert client.command(b"c", b"CREATE " + b"a" * 200)[-1].startswith(b"c OK")
        noop_times: list[float] = []
        stop = threading.Event()

        def ping() -> None:
            while not stop.is_set() and len(noop_times) < 200:
                started = time.perf_counter()
                other.command(b"n", b"NOOP")
                noop_times.append(time.perf_counter() - started)

        pinger = threading.Thread(target=ping)
        pinger.start()
        try:
            for pattern in (b"*" * 200 + b"x", b"%" * 200 + b"x", b"*a" * 200 + b"x"):
                started = time.perf_counter()
                reply = client.command(b"l", b'LIST "" "' + pattern + b'"')
                assert reply[-1].startswith(b"l OK"), reply
                assert time.perf_counter() - started < 1.0
        finally:
            stop.set()
            pinger.join(10)
        assert noop_times and max(noop_times) < 1.0
        reply = client.command(b"t", b'LIST "" "' + b"*" * (MAX_PATTERN + 1) + b'"')
        assert reply[-1].startswith(b"t BAD"), reply
    finally:
        client.close()
        other.close()
