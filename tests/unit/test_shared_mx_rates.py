"""
The MX's per-minute rates with worker processes: each process's guard tells
the others of every MX message and its bytes it counts
(L{mailapp.abuse.AbuseGuard.share}, relayed by the parent as an ``abuse``
line), so that C{mx_messages_per_minute} and C{mx_bytes_per_minute} hold for
the whole server, not N times over. Two guards linked directly play the two
workers here; the two-worker test with smtplib is in
L{tests.e2e.test_workers_rates_e2e}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from mailapp.abuse import MX_BYTES, MX_MESSAGE, AbuseGuard

CLIENT = "198.51.100.7"


def _linked(messages: int = 0, size: int = 0) -> tuple[AbuseGuard, AbuseGuard, Clock, list[tuple[str, dict[str, Any]]]]:
    clock = Clock()
    first = AbuseGuard(clock.seconds, mx_messages_per_minute=messages, mx_bytes_per_minute=size)
    second = AbuseGuard(clock.seconds, mx_messages_per_minute=messages, mx_bytes_per_minute=size)
    told: list[tuple[str, dict[str, Any]]] = []

    def to_second(fact: str, fields: dict[str, Any]) -> None:
        told.append((fact, fields))
        second.learn(fact, fields)

    first.share, second.share = to_second, first.learn
    return first, second, clock, told


def test_mx_messages_in_either_process_count_against_one_per_minute_rate() -> None:
    first, second, clock, told = _linked(messages=2)
    assert first.mx.messageStarted(CLIENT) is None
    assert second.mx.messageStarted(CLIENT) is None
    assert first.mx.messageStarted(CLIENT) == "messages"
    assert second.mx.messageStarted(CLIENT) == "messages"
    assert told == [(MX_MESSAGE, {"client": CLIENT})]
    # The minute slides on in both: the two messages leave it, everywhere.
    clock.advance(60)
    assert second.mx.messageStarted(CLIENT) is None


def test_mx_bytes_received_in_either_process_count_against_one_per_minute_rate() -> None:
    first, second, clock, told = _linked(size=10_000)
    assert first.mx.messageStarted(CLIENT) is None
    assert first.mx.dataReceived(CLIENT, 8_000)
    # 8,000 of the minute's 10,000 came in through the other process: 3,000 more are over.
    assert second.mx.messageStarted(CLIENT, declared=3_000) == "bytes"
    assert second.mx.messageStarted(CLIENT, declared=1_000) is None
    assert not second.mx.dataReceived(CLIENT, 3_000)
    assert (MX_BYTES, {"client": CLIENT, "size": 8_000}) in told


def test_nothing_is_told_of_the_mx_while_its_rates_are_off() -> None:
    first, second, clock, told = _linked()
    assert first.mx.messageStarted(CLIENT) is None
    assert first.mx.dataReceived(CLIENT, 8_000)
    assert told == []


def test_a_malformed_mx_fact_is_ignored() -> None:
    first, second, clock, told = _linked(messages=1, size=100)
    for fields in ({"client": 7}, {}, {"client": CLIENT, "size": "big"}, {"client": CLIENT, "size": -5}, {"client": CLIENT, "size": True}):
        second.learn(MX_BYTES, fields)
    second.learn(MX_MESSAGE, {"client": None})
    assert second.mx.messageStarted(CLIENT, declared=100) is None
