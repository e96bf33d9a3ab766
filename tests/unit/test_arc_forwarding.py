"""
ARC sealing on the forwarding path: a copy that an alias of ours forwards
to another domain leaves with an ARC set of the alias's domain (when it
has a key), mail the client addressed to a remote domain itself is never
sealed, and no failure of sealing costs a message. The relay runs on the
fake clock and network of L{tests.relay_helpers}; "threads" run at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dkim
from twisted.logger import globalLogPublisher

from mailapp import logevents
from mailapp.authentication.arcseal import ARCSealer, KeyDirectory, SigningKey
from mailapp.authentication.sealing import ForwardSealer
from mailapp.forwarding import Forwarding, ForwardingRate
from mailapp.relay.client import strip_return_path
from mailapp.srs import SRS
from tests.relay_helpers import B_HOP, C_HOP, OK, Harness
from tests.unit.test_arc import Zone, _key

BODY = b"From: Carol <carol@c.test>\r\nTo: fwd@a.test\r\nSubject: hello\r\nMessage-ID: <1@c.test>\r\n\r\nHi.\r\n"


def harness(tmp_path: Path, keys: Any = None, domains: tuple[str, ...] = ("a.test",)) -> tuple[Harness, Zone]:
    h = Harness(tmp_path / "relay")
    zone = Zone({f"arc._domainkey.{domain}": _key()[1] for domain in domains})
    if keys is None:
        keys = KeyDirectory(tmp_path / "keys")
        for domain in domains:
            (tmp_path / "keys" / domain).mkdir(parents=True)
            (tmp_path / "keys" / domain / "arc.pem").write_bytes(_key()[0])
            os.chmod(tmp_path / "keys" / domain / "arc.pem", 0o600)
    sealer = ForwardSealer(ARCSealer(h.reactor, h.reactor.getThreadPool(), keys, "mail.a.test", zone))
    h.router.forwarding = Forwarding(SRS(b"secret"), h.clock, ForwardingRate(h.clock), sealer=sealer)
    h.accounts.add_alias("fwd@a.test", ["bob@b.test"])
    h.network.servers[B_HOP] = lambda r: OK
    h.network.servers[C_HOP] = lambda r: OK
    h.start()
    return h, zone


@contextmanager
def arc_events() -> Iterator[list[dict[str, Any]]]:
    """The ``arc.*`` log events published inside the block."""
    seen: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if str(event.get("log_event", "")).startswith("arc."):
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observer)


def test_a_forwarded_copy_leaves_sealed_by_the_alias_domain_and_verifies(tmp_path: Path) -> None:
    h, zone = harness(tmp_path)
    h.submit("carol@c.test", ["fwd@a.test"], BODY)
    [(_, address, sender, recipients, data, _)] = h.network.sent
    assert (address, recipients) == (B_HOP, ["bob@b.test"]) and sender.startswith("SRS0=")
    sent = strip_return_path(data)  # what the relay client sends
    assert sent.startswith(b"ARC-Seal: ") and b"Return-Path" not in sent
    assert sent.endswith(BODY)
    cv, sets, reason = dkim.arc_verify(sent, dnsfunc=zone)
    assert cv == dkim.CV_Pass, reason
    assert [(s["instance"], s["as-domain"]) for s in sets] == [(1, b"a.test")]


def test_mail_the_client_sent_to_a_remote_domain_itself_is_not_sealed(tmp_path: Path) -> None:
    h, _ = harness(tmp_path)
    h.submit("alice@a.test", ["carol@c.test"], BODY)
    [(_, address, _, _, data, _)] = h.network.sent
    assert address == C_HOP
    assert b"ARC-" not in data


def test_with_no_key_for_the_domain_the_copy_leaves_unsealed_and_it_is_logged(tmp_path: Path) -> None:
    h, _ = harness(tmp_path, domains=())
    with arc_events() as seen:
        h.submit("carol@c.test", ["fwd@a.test"], BODY)
    [(_, _, _, _, data, _)] = h.network.sent
    assert b"ARC-" not in data and data.endswith(BODY)
    assert [(e["log_event"], e["domain"]) for e in seen] == [(logevents.ARC_UNSEALED, "a.test")]


class BrokenKeys:
    def key_for(self, domain: str) -> SigningKey | None:
        raise OSError("the key store is unreadable")


def test_a_sealing_error_forwards_the_message_unsealed_never_loses_it(tmp_path: Path) -> None:
    h, _ = harness(tmp_path, keys=BrokenKeys())
    with arc_events() as seen:
        h.submit("carol@c.test", ["fwd@a.test"], BODY)
    [delivered] = h.network.delivered_to("bob@b.test")
    assert delivered.endswith(BODY) and b"ARC-" not in delivered
    assert [e["log_event"] for e in seen] == [logevents.ARC_UNSEALED]
    assert h.envelopes() == []


def test_aliases_of_two_domains_each_seal_their_own_copy(tmp_path: Path) -> None:
    h, zone = harness(tmp_path, domains=("a.test", "a2.test"))
    h.accounts.add_domain("a2.test")
    h.accounts.add_alias("fwd@a2.test", ["dan@b.test"])
    h.submit("", ["fwd@a.test", "fwd@a2.test"], BODY)  # the null sender: one SRS sender for both
    sealers = {}
    for _, _, _, recipients, data, _ in h.network.sent:
        cv, sets, reason = dkim.arc_verify(strip_return_path(data), dnsfunc=zone)
        assert cv == dkim.CV_Pass, reason
        sealers[tuple(recipients)] = sets[0]["as-domain"]
    assert sealers == {("bob@b.test",): b"a.test", ("dan@b.test",): b"a2.test"}


def test_a_copy_larger_than_the_sealing_limit_leaves_unsealed(tmp_path: Path) -> None:
    h, _ = harness(tmp_path)
    sealer = h.router.forwarding.sealer
    assert sealer is not None
    sealer.max_size = len(BODY) // 2
    with arc_events() as seen:
        h.submit("carol@c.test", ["fwd@a.test"], BODY)
    [delivered] = h.network.delivered_to("bob@b.test")
    assert b"ARC-" not in delivered and delivered.endswith(BODY)
    assert [(e["log_event"], "larger" in e["reason"]) for e in seen] == [(logevents.ARC_UNSEALED, True)]
