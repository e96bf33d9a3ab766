"""
REQUIRETLS (RFC 8689) in the relay: carried in the queue entry, sent with
MAIL FROM's REQUIRETLS only to a next hop whose TLS was verified and which
offers REQUIRETLS, and bounced with 5.7.10 otherwise. Under a fake clock
and network (L{tests.relay_helpers}).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer

from mailapp.relay.queue import FAILED, Envelope, Recipient, read_envelope
from tests.relay_helpers import raise_if_failed, B_HOP, OK, FakeClient, FakeNetwork, Harness


class TLSClient(FakeClient):
    """A fake peer whose TLS verified (or not) and which offers REQUIRETLS (or not)."""

    verified = True
    offers = True

    def greet(self, hostname: str, tls: Any = None, require_tls: bool = False, auth: Any = None, verify: Any = None) -> defer.Deferred[None]:
        self.extensions = {"REQUIRETLS": ""} if self.offers else {}
        self.tls_check.verified = self.verified  # type: ignore[attr-defined]  # set by the relay before greet
        return defer.succeed(None)

    def send(self, sender: str, recipients: list[str], source: Any, size: int, requiretls: bool = False) -> Any:
        self.network.requiretls.append(requiretls)  # type: ignore[attr-defined]
        return super().send(sender, recipients, source, size)


class TLSNetwork(FakeNetwork):
    def __init__(self, clock: Any, verified: bool = True, offers: bool = True) -> None:
        super().__init__(clock)
        self.requiretls: list[bool] = []
        self.verified, self.offers = verified, offers

    def connect(self, hop: Any) -> defer.Deferred[FakeClient]:
        d = super().connect(hop)

        def tls(client: FakeClient) -> FakeClient:
            client.__class__ = TLSClient
            client.verified, client.offers = self.verified, self.offers  # type: ignore[attr-defined]
            return client

        return d.addCallback(tls)


def _submit(h: Harness, requiretls: bool) -> str:
    transaction = h.router.start("alice@a.test", relay_allowed=True)
    transaction.requiretls = requiretls
    assert transaction.addRecipient("bob@b.test").called
    message = transaction.open()
    message.write(b"Subject: secret\r\n\r\nHi.\r\n")
    return str(raise_if_failed(transaction.commit(), "commit"))


def _harness(tmp_path: Path, **network: bool) -> Harness:
    h = Harness(tmp_path, network=TLSNetwork(None, **network))
    h.network.servers[B_HOP] = lambda r: OK
    return h


def test_a_requiretls_message_goes_with_requiretls_to_a_verified_peer_that_offers_it(tmp_path: Path) -> None:
    h = _harness(tmp_path)
    h.start()
    _submit(h, requiretls=True)
    assert h.network.requiretls == [True]
    assert h.network.delivered_to("bob@b.test")
    assert h.store.inbox("alice@a.test") == []


def test_a_requiretls_message_to_an_unverified_peer_bounces_with_5_7_10_and_is_not_sent(tmp_path: Path) -> None:
    h = _harness(tmp_path, verified=False)
    h.start()
    _submit(h, requiretls=True)
    assert h.network.sent == []
    [dsn] = h.store.inbox("alice@a.test")
    assert b"5.7.10" in dsn


def test_the_bounce_of_a_requiretls_message_to_a_remote_sender_requires_tls_too(tmp_path: Path) -> None:
    h = _harness(tmp_path, verified=False)
    h.start()
    transaction = h.router.start("carol@c.test", relay_allowed=True)
    transaction.requiretls = True
    assert transaction.addRecipient("bob@b.test").called
    transaction.open().write(b"Subject: secret\r\n\r\nHi.\r\n")
    transaction.commit()
    dsns = [e.envelope for e in h.manager.entries.values() if e.envelope.sender == ""]
    assert [d.requiretls for d in dsns] == [True]


def test_a_requiretls_message_to_a_peer_without_requiretls_bounces(tmp_path: Path) -> None:
    h = _harness(tmp_path, offers=False)
    h.start()
    _submit(h, requiretls=True)
    assert h.network.sent == []
    [dsn] = h.store.inbox("alice@a.test")
    assert b"does not offer REQUIRETLS" in dsn


def test_other_mail_goes_to_an_unverified_peer_without_requiretls(tmp_path: Path) -> None:
    h = _harness(tmp_path, verified=False, offers=False)
    h.start()
    _submit(h, requiretls=False)
    assert h.network.requiretls == [False] and h.network.delivered_to("bob@b.test")


def test_requiretls_is_kept_in_the_envelope_and_old_envelopes_read_without_it(tmp_path: Path) -> None:
    envelope = Envelope("ABCD1234", "alice@a.test", 1.0, 10, [Recipient("bob@b.test", state=FAILED)], requiretls=True)
    path = tmp_path / "ABCD1234.json"
    path.write_bytes(envelope.to_bytes())
    assert read_envelope(path).requiretls
    old = envelope.to_bytes().replace(b'"requiretls": true,', b"")
    assert b"requiretls" not in old
    path.write_bytes(old)
    assert not read_envelope(path).requiretls
