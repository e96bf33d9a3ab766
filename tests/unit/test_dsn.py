"""
Delivery status notifications as the client asks for them (RFC 3461, 3464):
the parameters parsed and kept in the queue; failure and delay DSNs only
where NOTIFY asks; RET=FULL returns the message; ENVID and ORCPT in the
report; the parameters passed on to a peer that offers DSN, a "relayed" DSN
for one that does not; a "delivered" DSN for local delivery, and never for
mail the MX takes from anyone. Under a fake clock and network
(L{tests.relay_helpers}).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer

from mailapp import dsn
from mailapp.relay.client import Reply
from mailapp.relay.queue import Envelope, Recipient, read_envelope
from tests.relay_helpers import B_HOP, OK, FakeClient, FakeNetwork, Harness, raise_if_failed

BODY = b"Subject: the report\r\nMessage-ID: <r.1@a.test>\r\n\r\nThe body itself.\r\n"
REFUSED = Reply(550, ("5.1.1 no such user",))


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("NEVER", ("NEVER",)),
        ("success,delay", ("SUCCESS", "DELAY")),
        ("FAILURE", ("FAILURE",)),
        ("NEVER,SUCCESS", None),
        ("SUCCESS,SUCCESS", None),
        ("SOMETIMES", None),
        ("", None),
    ],
)
def test_notify_is_never_alone_or_a_list_of_success_failure_and_delay(value: str, parsed: tuple[str, ...] | None) -> None:
    assert dsn.parse_notify(value) == parsed


def test_orcpt_is_an_address_type_and_xtext() -> None:
    assert dsn.parse_orcpt("rfc822;bob+2Bx@b.test") == "rfc822;bob+2Bx@b.test"
    assert dsn.parse_orcpt("rfc822") is None
    assert dsn.parse_orcpt("rfc822;a=b") is None  # "=" must be encoded
    assert dsn.parse_orcpt(";bob@b.test") is None


def test_xtext_round_trips_and_envid_is_bounded() -> None:
    text = "id+with=odd chars"
    encoded = dsn.encode_xtext(text)
    assert encoded == "id+2Bwith+3Dodd+20chars" and dsn.valid_xtext(encoded)
    assert dsn.decode_xtext(encoded) == text
    assert dsn.parse_envid("x" * 100) and dsn.parse_envid("x" * 101) is None
    assert dsn.parse_ret("hdrs") == "HDRS" and dsn.parse_ret("BODY") is None


def test_without_notify_failures_and_delays_are_reported_and_successes_not() -> None:
    default = dsn.RecipientRequest()
    assert default.wants(dsn.FAILED) and default.wants(dsn.DELAYED)
    assert not default.wants(dsn.DELIVERED) and not default.wants(dsn.RELAYED)
    assert not dsn.RecipientRequest(("NEVER",)).wants(dsn.FAILED)


class DSNClient(FakeClient):
    """A fake peer that offers DSN (or not) and records the parameters it was sent."""

    def greet(self, hostname: str, tls: Any = None, require_tls: bool = False, auth: Any = None, verify: Any = None) -> defer.Deferred[None]:
        self.extensions = {"DSN": ""} if self.network.offers_dsn else {}  # type: ignore[attr-defined]
        return defer.succeed(None)

    def send(self, sender: str, recipients: list[str], source: Any, size: int, requiretls: bool = False, **parameters: Any) -> Any:
        self.network.parameters.append(parameters)  # type: ignore[attr-defined]
        return super().send(sender, recipients, source, size)


class DSNNetwork(FakeNetwork):
    def __init__(self, clock: Any, offers_dsn: bool) -> None:
        super().__init__(clock)
        self.offers_dsn = offers_dsn
        self.parameters: list[dict[str, Any]] = []

    def connect(self, hop: Any) -> defer.Deferred[FakeClient]:
        def offered(client: FakeClient) -> FakeClient:
            client.__class__ = DSNClient
            return client

        return super().connect(hop).addCallback(offered)


def _harness(tmp_path: Path, reply: Reply = OK, offers_dsn: bool = False, **policy: Any) -> Harness:
    h = Harness(tmp_path, network=DSNNetwork(None, offers_dsn), **policy)
    h.network.servers[B_HOP] = lambda r: reply
    h.accounts.add_user("bob@a.test", "secret")
    h.start()
    return h


def _send(
    h: Harness,
    recipients: dict[str, dsn.RecipientRequest],
    ret: str = "",
    envid: str = "",
    sender: str = "alice@a.test",
    relay_allowed: bool = True,
) -> str:
    transaction = h.router.start(sender, relay_allowed=relay_allowed)
    transaction.dsn.ret, transaction.dsn.envid = ret, envid
    for address, request in recipients.items():
        transaction.dsn.add(address, request)
        raise_if_failed(transaction.addRecipient(address), "addRecipient")
    transaction.open().write(BODY)
    return str(raise_if_failed(transaction.commit(), "commit"))


def test_a_failure_dsn_names_the_envelope_id_and_the_original_recipient(tmp_path: Path) -> None:
    h = _harness(tmp_path, reply=REFUSED)
    _send(h, {"bob@b.test": dsn.RecipientRequest(("FAILURE",), "rfc822;Bob+40b.test")}, ret="HDRS", envid="env+2B1")
    [report] = h.store.inbox("alice@a.test")
    assert b"Action: failed" in report
    assert b"Original-Envelope-Id: env+1" in report
    assert b"Original-Recipient: rfc822; Bob@b.test" in report
    assert b"Content-Type: text/rfc822-headers" in report and b"The body itself." not in report


def test_ret_full_returns_the_whole_message_in_a_failure_dsn(tmp_path: Path) -> None:
    h = _harness(tmp_path, reply=REFUSED)
    _send(h, {"bob@b.test": dsn.RecipientRequest()}, ret="FULL")
    [report] = h.store.inbox("alice@a.test")
    assert b"Content-Type: message/rfc822" in report and b"The body itself." in report


@pytest.mark.parametrize("notify", [("NEVER",), ("SUCCESS", "DELAY")])
def test_a_failure_is_not_reported_when_notify_leaves_failures_out(tmp_path: Path, notify: tuple[str, ...]) -> None:
    h = _harness(tmp_path, reply=REFUSED)
    _send(h, {"bob@b.test": dsn.RecipientRequest(notify)})
    assert h.store.inbox("alice@a.test") == []
    assert h.envelopes() == []  # the entry is done with, not kept waiting for a DSN


def test_a_delay_warning_goes_only_to_recipients_whose_notify_includes_delay(tmp_path: Path) -> None:
    h = _harness(tmp_path, reply=Reply(451, ("4.2.0 try later",)), delay_warning=100)
    _send(h, {"bob@b.test": dsn.RecipientRequest(("FAILURE",)), "carol@b.test": dsn.RecipientRequest(("DELAY",))})
    for _ in range(40):
        h.clock.advance(60)
    [warning] = h.store.inbox("alice@a.test")
    assert b"Action: delayed" in warning
    assert b"Final-Recipient: rfc822; carol@b.test" in warning and b"rfc822; bob@b.test" not in warning


def test_the_parameters_go_on_to_a_peer_that_offers_dsn_which_then_answers_for_them(tmp_path: Path) -> None:
    h = _harness(tmp_path, offers_dsn=True)
    _send(h, {"bob@b.test": dsn.RecipientRequest(("SUCCESS", "FAILURE"), "rfc822;bob@b.test")}, ret="HDRS", envid="E1")
    [parameters] = h.network.parameters
    assert parameters["mail_parameters"] == b" RET=HDRS ENVID=E1"
    assert parameters["rcpt_parameters"] == {"bob@b.test": b" NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@b.test"}
    assert h.store.inbox("alice@a.test") == []


def test_success_handed_to_a_peer_without_dsn_gets_a_relayed_dsn(tmp_path: Path) -> None:
    h = _harness(tmp_path, offers_dsn=False)
    _send(h, {"bob@b.test": dsn.RecipientRequest(("SUCCESS",)), "carol@b.test": dsn.RecipientRequest()}, envid="E2")
    assert h.network.delivered_to("bob@b.test") and h.network.parameters == [{}]
    [report] = h.store.inbox("alice@a.test")
    assert b"Action: relayed" in report and b"Original-Envelope-Id: E2" in report
    assert b"Final-Recipient: rfc822; bob@b.test" in report and b"carol@b.test" not in report
    assert h.envelopes() == []


def test_local_delivery_with_notify_success_gets_a_delivered_dsn(tmp_path: Path) -> None:
    h = _harness(tmp_path)
    _send(h, {"bob@a.test": dsn.RecipientRequest(("SUCCESS",), "rfc822;bob@a.test")}, envid="E3")
    [copy] = h.store.inbox("bob@a.test")
    assert b"The body itself." in copy
    [report] = h.store.inbox("alice@a.test")
    assert b"Action: delivered" in report and b"Status: 2.0.0" in report
    assert b"Original-Envelope-Id: E3" in report and b"Subject: the report" in report
    assert b"The body itself." not in report


def test_mail_the_mx_takes_from_anyone_gets_no_delivered_dsn_which_would_be_backscatter(tmp_path: Path) -> None:
    h = _harness(tmp_path)
    _send(h, {"bob@a.test": dsn.RecipientRequest(("SUCCESS",))}, sender="alice@a.test", relay_allowed=False)
    assert h.store.inbox("bob@a.test") and h.store.inbox("alice@a.test") == []


def test_the_parameters_are_kept_in_the_envelope_and_old_envelopes_read_without_them(tmp_path: Path) -> None:
    recipient = Recipient("bob@b.test", notify=["SUCCESS"], orcpt="rfc822;bob@b.test", relayed_owed=True)
    envelope = Envelope("ABCD1234", "alice@a.test", 1.0, 10, [recipient], ret="FULL", envid="E4")
    path = tmp_path / "ABCD1234.json"
    path.write_bytes(envelope.to_bytes())
    read = read_envelope(path)
    assert (read.ret, read.envid) == ("FULL", "E4")
    assert read.recipients[0].request == dsn.RecipientRequest(("SUCCESS",), "rfc822;bob@b.test")
    assert read.recipients[0].relayed_owed
    old = Envelope("ABCD1234", "alice@a.test", 1.0, 10, [Recipient("bob@b.test")]).to_bytes()
    for name in (b"notify", b"orcpt", b"relayed_owed", b"ret", b"envid"):
        old = b"\n".join(line for line in old.split(b"\n") if b'"' + name + b'"' not in line)
    path.write_bytes(old)
    assert read_envelope(path).recipients[0].request == dsn.RecipientRequest()
