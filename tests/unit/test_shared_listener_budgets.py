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
