"""
Each listener's own budgets with worker processes: a factory tells the other
processes of every session it opens, logs in and closes under its
listener's keys (L{mailapp.sessions.budget_key}, on the connection counts'
channel), and admits against its own sessions plus theirs; the server-wide
total leaves those keys out. Over C{StringTransport}, one factory playing
this worker, what it learns playing the others; the two-worker test is in
L{tests.e2e.test_workers_rates_e2e}.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet.testing import StringTransport

from mailapp.sessions import ConnectionCounts, budget_key
from mailapp.testing import FakeStore, build_factory, service_context
from tests.protocol.accounts import make_accounts

CONFIG_LISTENER = {"max_connections": 3, "max_unauthenticated": 2}


def _factory() -> tuple[Any, list[tuple[str, int]]]:
    context = service_context(store=FakeStore(), accounts=make_accounts())
    factory = build_factory(context, "imap", allow_plaintext_auth=True)
    factory.listener_name = "imap"
    factory.policy = dataclasses.replace(factory.policy, **CONFIG_LISTENER)
    shared: list[tuple[str, int]] = []
    factory.counts.share = lambda key, delta: shared.append((key, delta))
    return factory, shared


def _connect(factory: Any) -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_a_session_is_told_to_the_others_as_it_opens_logs_in_and_closes() -> None:
    factory, shared = _factory()
    protocol, transport = _connect(factory)
    protocol.dataReceived(b"a LOGIN alice@example.test alice-secret\r\n")
    protocol.connectionLost(None)
    budgets = [(key, delta) for key, delta in shared if key.startswith("@")]
    assert budgets == [("@imap", 1), ("@imap/unauthenticated", 1), ("@imap/unauthenticated", -1), ("@imap", -1)]


def test_the_others_sessions_count_against_the_listeners_budgets_but_not_the_servers_total() -> None:
    factory, shared = _factory()
    factory.counts.learn("2", budget_key("imap", unauthenticated=True), 1)
    factory.counts.learn("2", budget_key("imap"), 1)
    assert factory.counts.total == 0
    waiting, transport = _connect(factory)
    assert transport.value().startswith(b"* OK")
    refused, transport = _connect(factory)
    assert b"Too many connections waiting to log in; try again later" in transport.value()
    waiting.dataReceived(b"a LOGIN alice@example.test alice-secret\r\n")
    factory.counts.learn("3", budget_key("imap"), 1)
    full, transport = _connect(factory)
    assert b"Too many connections; try again later" in transport.value()
    # The other worker died with its session: one fits again.
    factory.counts.forget("3")
    again, transport = _connect(factory)
    assert transport.value().startswith(b"* OK")
    for protocol in (waiting, refused, full, again):
        protocol.connectionLost(None)


def test_a_budget_key_is_left_out_of_the_servers_total_and_forgotten_with_its_process() -> None:
    counts = ConnectionCounts()
    counts.learn("2", budget_key("imap"), 1)
    counts.learn("2", "198.51.100.7", 1)
    assert (counts.total, counts.elsewhere_of(budget_key("imap"))) == (1, 1)
    counts.forget("2")
    assert (counts.total, counts.elsewhere_of(budget_key("imap"))) == (0, 0)


def _counts_with(elsewhere: int, serving: int) -> ConnectionCounts:
    counts = ConnectionCounts()
    counts.serving = serving
    for _ in range(elsewhere):
        counts.learn("2", budget_key("imap"), 1)
    return counts


def test_far_from_its_limit_a_worker_may_hold_more_than_its_share() -> None:
    assert not _counts_with(0, 2).overBudget(200, budget_key("imap"), 250)


def test_near_its_limit_a_worker_keeps_to_its_fair_share() -> None:
    counts = _counts_with(100, 2)
    assert not counts.overBudget(125, budget_key("imap"), 250)
    assert counts.overBudget(126, budget_key("imap"), 250), "a share of 250 over two workers is 125, and one more"
    assert _counts_with(124, 2).overBudget(125, budget_key("imap"), 250) is False
    assert _counts_with(126, 2).overBudget(124, budget_key("imap"), 250), "the total decides first"


def test_one_process_admits_up_to_the_limit() -> None:
    assert not _counts_with(0, 1).overBudget(249, budget_key("imap"), 250)
    assert _counts_with(0, 1).overBudget(250, budget_key("imap"), 250)


def test_workers_admitting_at_once_on_stale_counts_never_pass_the_limit_together() -> None:
    """
    Two workers, each seeing the other's count as it was ten admissions
    ago (the channel's lag in a burst), admit in turn until both refuse: at
    most one place past the limit per worker. Without the fair share near
    the limit the lag decides: 260 of 250 here, 270 with a lag of twenty
    (the trickling MX test with two workers once let 260-270 in).
    """
    limit, lag = 250, 10
    held = [0, 0]
    history: list[list[int]] = [[0], [0]]
    refused = [False, False]
    while not all(refused):
        for me in (0, 1):
            other = 1 - me
            seen = history[other][max(0, len(history[other]) - 1 - lag)]
            counts = _counts_with(seen, 2)
            if counts.overBudget(held[me], budget_key("imap"), limit):
                refused[me] = True
            else:
                held[me] += 1
                history[me].append(held[me])
    assert limit - 2 <= sum(held) <= limit + 2, held
