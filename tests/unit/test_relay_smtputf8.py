"""
SMTPUTF8 (RFC 6531) in the relay: a message that needs it goes with MAIL
FROM's SMTPUTF8 to a next hop that offers it; to one that does not, it is
sent as it is when its addresses and header block turn out to be ASCII,
and otherwise bounced, never mangled: 5.6.7 for a non-ASCII address, 5.6.9
for UTF-8 header fields. An internationalised domain is looked up in DNS by
its A-labels, and sent with them (which needs no SMTPUTF8). Under a fake clock and network (L{tests.relay_helpers}).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer

from mailapp.relay.queue import Recipient
from tests.relay_helpers import B_HOP, OK, TRANSPORTS, FakeClient, FakeNetwork, Harness, raise_if_failed

UTF8_BODY = "Subject: Grüße\r\nFrom: Jörg <alice@a.test>\r\n\r\nHallo.\r\n".encode()
ASCII_BODY = b"Subject: hello\r\n\r\nHi.\r\n"


class UTF8Client(FakeClient):
    def greet(self, hostname: str, tls: Any = None, require_tls: bool = False, auth: Any = None, verify: Any = None) -> defer.Deferred[None]:
        self.extensions = {"SMTPUTF8": ""} if self.network.offers else {}  # type: ignore[attr-defined]
        return defer.succeed(None)

    def send(self, sender: str, recipients: list[str], source: Any, size: int, **options: Any) -> Any:
        self.network.options.append(options)  # type: ignore[attr-defined]
        return super().send(sender, recipients, source, size)


class UTF8Network(FakeNetwork):
    def __init__(self, clock: Any, offers: bool) -> None:
        super().__init__(clock)
        self.offers = offers
        self.options: list[dict[str, Any]] = []

    def connect(self, hop: Any) -> defer.Deferred[FakeClient]:
        def offered(client: FakeClient) -> FakeClient:
            client.__class__ = UTF8Client
            return client

        return super().connect(hop).addCallback(offered)


def _harness(tmp_path: Path, offers: bool) -> Harness:
    transports = {"b.test": TRANSPORTS["b.test"], "xn--bcher-kva.test": TRANSPORTS["b.test"]}
    h = Harness(tmp_path, network=UTF8Network(None, offers), transports=transports)
    h.network.servers[B_HOP] = lambda r: OK
    h.start()
    return h


def _send(h: Harness, recipient: str, body: bytes, smtputf8: bool = True) -> None:
    transaction = h.router.start("alice@a.test", relay_allowed=True)
    transaction.smtputf8 = smtputf8
    raise_if_failed(transaction.addRecipient(recipient), "addRecipient")
    transaction.open().write(body)
    raise_if_failed(transaction.commit(), "commit")


def test_a_utf8_message_goes_with_smtputf8_to_a_peer_that_offers_it(tmp_path: Path) -> None:
    h = _harness(tmp_path, offers=True)
    _send(h, "jörg@b.test", UTF8_BODY)
    assert h.network.delivered_to("jörg@b.test")
    assert h.network.options == [{"mail_parameters": b" SMTPUTF8"}]


def test_a_non_ascii_address_to_a_peer_without_smtputf8_bounces_with_5_6_7(tmp_path: Path) -> None:
    h = _harness(tmp_path, offers=False)
    _send(h, "jörg@b.test", ASCII_BODY)
    assert h.network.sent == []
    [report] = h.store.inbox("alice@a.test")
    assert b"Status: 5.6.7" in report and b"does not offer SMTPUTF8" in report


def test_utf8_header_fields_to_a_peer_without_smtputf8_bounce_with_5_6_9(tmp_path: Path) -> None:
    h = _harness(tmp_path, offers=False)
    _send(h, "bob@b.test", UTF8_BODY)
    assert h.network.sent == []
    [report] = h.store.inbox("alice@a.test")
    assert b"Status: 5.6.9" in report


def test_a_smtputf8_message_that_is_ascii_after_all_goes_as_it_is_to_a_peer_without_it(tmp_path: Path) -> None:
    h = _harness(tmp_path, offers=False)
    _send(h, "bob@b.test", ASCII_BODY)
    assert h.network.delivered_to("bob@b.test") and h.network.options == [{}]


def test_a_u_label_domain_is_sent_and_routed_in_its_a_labels_which_needs_no_smtputf8(tmp_path: Path) -> None:
    h = _harness(tmp_path, offers=False)
    _send(h, "max@bücher.test", ASCII_BODY, smtputf8=False)
    # The transport is keyed by the A-label domain: the route was found through it.
    assert h.network.delivered_to("max@xn--bcher-kva.test")
    assert h.network.options == [{}]
    assert Recipient("max@Bücher.test").domain == "xn--bcher-kva.test"
