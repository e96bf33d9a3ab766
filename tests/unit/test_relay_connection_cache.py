"""
The relay's connection cache (L{mailapp.relay.workers}): a connection with
nothing more to send waits C{connection_cache_time} for the next message to
its domain, gives its place up to whoever needs it, and carries no new
transaction once older than C{connection_reuse_time}. Under a fake clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet import defer

from mailapp.config import HostPort

from tests.relay_helpers import B_HOP, C_HOP, OK, Harness


_started: list[Harness] = []


@pytest.fixture(autouse=True)
def _stop_every_harness() -> Iterator[None]:
    """Stop each test's manager, so that no worker is left waiting on its idle connection."""
    yield
    while _started:
        h = _started.pop()
        if h.manager.running:
            h.stop()


def _harness(tmp_path: Path, **settings: object) -> Harness:
    settings.setdefault("connection_cache_time", 2)
    h = Harness(tmp_path, **settings)
    h.network.servers[B_HOP] = lambda r: OK
    h.network.servers[C_HOP] = lambda r: OK
    h.start()
    _started.append(h)
    return h


def test_a_message_soon_after_the_last_one_to_its_domain_goes_on_the_same_connection(tmp_path: Path) -> None:
    h = _harness(tmp_path)
    h.submit("alice@a.test", ["bob@b.test"])
    h.clock.advance(1.5)
    h.submit("alice@a.test", ["carol@b.test"])
    assert [rcpts for _, _, _, rcpts, _, _ in h.network.sent] == [["bob@b.test"], ["carol@b.test"]]
    assert [address for _, address in h.network.attempts] == [B_HOP]
    assert h.envelopes() == []


def test_an_idle_connection_says_quit_when_the_cache_time_is_over(tmp_path: Path) -> None:
    h = _harness(tmp_path)
    h.submit("alice@a.test", ["bob@b.test"])
    assert h.network.open_connections[B_HOP] == 1
    h.clock.advance(1.9)
    assert h.network.open_connections[B_HOP] == 1
    h.clock.advance(0.2)
    assert h.network.open_connections[B_HOP] == 0
    h.submit("alice@a.test", ["carol@b.test"])
    assert [address for _, address in h.network.attempts] == [B_HOP, B_HOP]


def test_no_cache_time_quits_at_once(tmp_path: Path) -> None:
    h = _harness(tmp_path, connection_cache_time=0)
    h.submit("alice@a.test", ["bob@b.test"])
    assert h.network.open_connections[B_HOP] == 0


def test_a_connection_past_its_reuse_time_takes_no_new_transaction(tmp_path: Path) -> None:
    h = _harness(tmp_path, connection_cache_time=5, connection_reuse_time=3)
    h.submit("alice@a.test", ["bob@b.test"])
    h.clock.advance(2)
    h.submit("alice@a.test", ["carol@b.test"])
    h.clock.advance(1.5)  # the connection is 3.5 s old: a new one carries the third message
    h.submit("alice@a.test", ["dave@b.test"])
    assert len(h.network.sent) == 3
    assert [address for _, address in h.network.attempts] == [B_HOP, B_HOP]
    assert h.network.peak_connections[B_HOP] == 1


def test_an_idle_connection_gives_its_place_to_another_domain_at_the_connection_limit(tmp_path: Path) -> None:
    h = _harness(tmp_path, max_connections=1, max_connections_per_domain=1)
    h.submit("alice@a.test", ["bob@b.test"])
    assert h.network.open_connections[B_HOP] == 1
    h.submit("alice@a.test", ["carol@c.test"])  # no clock advance: c.test does not wait for b.test's cache
    assert [rcpts for _, _, _, rcpts, _, _ in h.network.sent] == [["bob@b.test"], ["carol@c.test"]]
    assert h.network.open_connections[B_HOP] == 0
    assert h.envelopes() == []


def test_an_idle_connection_gives_its_address_to_a_domain_waiting_for_it(tmp_path: Path) -> None:
    shared = {"b.test": HostPort(B_HOP, 25), "d.test": HostPort(B_HOP, 25)}
    h = _harness(tmp_path, transports=shared, max_connections_per_address=1)
    h.submit("alice@a.test", ["bob@b.test"])
    h.submit("alice@a.test", ["dora@d.test"])
    assert [rcpts for _, _, _, rcpts, _, _ in h.network.sent] == [["bob@b.test"], ["dora@d.test"]]
    assert h.network.peak_connections[B_HOP] == 1
    assert h.envelopes() == []


def test_a_stop_ends_idle_connections_at_once(tmp_path: Path) -> None:
    h = _harness(tmp_path, connection_cache_time=60)
    h.submit("alice@a.test", ["bob@b.test"])
    d = h.manager.stopService()
    assert d.called
    assert h.network.open_connections[B_HOP] == 0


def test_a_connection_that_finishes_while_another_domain_waits_for_a_slot_says_quit(tmp_path: Path) -> None:
    h = _harness(tmp_path, max_connections=1, max_connections_per_domain=1)
    hold: defer.Deferred[None] = defer.Deferred()
    h.network.holds[B_HOP] = hold
    h.submit("alice@a.test", ["bob@b.test"])
    h.submit("alice@a.test", ["carol@c.test"])  # no slot: b.test's send holds the only one
    assert h.network.sent == []
    del h.network.holds[B_HOP]
    hold.callback(None)
    assert [rcpts for _, _, _, rcpts, _, _ in h.network.sent] == [["bob@b.test"], ["carol@c.test"]]
    assert h.network.open_connections[B_HOP] == 0


def test_a_connection_that_finishes_while_a_domain_is_parked_on_its_address_says_quit(tmp_path: Path) -> None:
    shared = {"b.test": HostPort(B_HOP, 25), "d.test": HostPort(B_HOP, 25)}
    h = _harness(tmp_path, transports=shared, max_connections_per_address=1)
    hold: defer.Deferred[None] = defer.Deferred()
    h.network.holds[B_HOP] = hold
    h.submit("alice@a.test", ["bob@b.test"])
    h.submit("alice@a.test", ["dora@d.test"])  # parked: the address has its one connection
    del h.network.holds[B_HOP]
    hold.callback(None)
    assert [rcpts for _, _, _, rcpts, _, _ in h.network.sent] == [["bob@b.test"], ["dora@d.test"]]
    assert h.network.peak_connections[B_HOP] == 1


def test_closing_idle_connections_makes_the_next_message_open_a_new_one(tmp_path: Path) -> None:
    h = _harness(tmp_path)
    h.submit("alice@a.test", ["bob@b.test"])
    h.manager.closeIdleConnections()  # what a reload does: new routes and TLS policies apply
    assert h.network.open_connections[B_HOP] == 0
    h.submit("alice@a.test", ["carol@b.test"])
    assert [address for _, address in h.network.attempts] == [B_HOP, B_HOP]
