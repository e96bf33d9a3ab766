"""
The 8BITMIME downgrade (RFC 6152 3, L{mailapp.relay.downgrade}): an 8-bit
message to a next hop without 8BITMIME arrives quoted-printable and reads
the same; a 7-bit one, or any to a peer with 8BITMIME, goes as it is; a
DKIM-signed one, or one with 8-bit header fields, bounces with 5.6.3.
"""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer

from mailapp.relay.downgrade import CannotDowngrade, downgrade
from tests.relay_helpers import B_HOP, OK, FakeClient, FakeNetwork, Harness, raise_if_failed

TEXT = "Grüße aus Köln: a line long enough that quoted-printable must break it with a soft line break somewhere."
PLAIN = f"From: a@a.test\r\nTo: bob@b.test\r\nSubject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{TEXT}\r\n".encode()
MIXED = (
    'From: a@a.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="BB"\r\n\r\n--BB\r\n'
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    f"{TEXT}\r\n--BB\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    f"Subject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nInnen: {TEXT}\r\n"
    "--BB\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--BB--\r\n"
).encode()


def _texts(data: bytes) -> list[str]:
    message = email.message_from_bytes(data, policy=email.policy.default)
    return [part.get_content() for part in message.walk() if part.get_content_type() == "text/plain"]


def test_an_8bit_text_arrives_quoted_printable_and_reads_the_same() -> None:
    converted = downgrade(PLAIN)
    assert converted.isascii() and b"Content-Transfer-Encoding: quoted-printable\r\n" in converted
    assert _texts(converted) == _texts(PLAIN) == [TEXT + "\r\n"]
    assert all(len(line) <= 76 for line in converted.split(b"\r\n"))


def test_every_8bit_part_is_converted_inside_multiparts_and_embedded_messages() -> None:
    converted = downgrade(MIXED)
    assert converted.isascii()
    assert _texts(converted) == _texts(MIXED)
    assert b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit" in converted
    assert b"AAEC" in converted


def test_a_7bit_message_is_left_as_it_is() -> None:
    message = b"From: a@a.test\r\n\r\nplain ASCII\r\n"
    assert downgrade(message) is message


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test; b=x\r\n" + PLAIN, "DKIM-signed"),
        ("Subject: Grüße\r\n\r\nhi\r\n".encode(), "header fields are 8-bit"),
    ],
)
def test_a_signed_message_or_8bit_header_fields_cannot_be_converted(message: bytes, why: str) -> None:
    with pytest.raises(CannotDowngrade, match=why):
        downgrade(message)


class SevenBitClient(FakeClient):
    def greet(self, hostname: str, tls: Any = None, require_tls: bool = False, auth: Any = None, verify: Any = None) -> defer.Deferred[None]:
        self.extensions = {"8BITMIME": ""} if self.network.eight_bit else {}  # type: ignore[attr-defined]
        return defer.succeed(None)


class SevenBitNetwork(FakeNetwork):
    def __init__(self, clock: Any, eight_bit: bool) -> None:
        super().__init__(clock)
        self.eight_bit = eight_bit

    def connect(self, hop: Any) -> defer.Deferred[FakeClient]:
        def chosen(client: FakeClient) -> FakeClient:
            client.__class__ = SevenBitClient
            return client

        return super().connect(hop).addCallback(chosen)


def _relay(tmp_path: Path, body: bytes, eight_bit: bool) -> Harness:
    h = Harness(tmp_path, network=SevenBitNetwork(None, eight_bit))
    h.network.servers[B_HOP] = lambda r: OK
    h.start()
    transaction = h.router.start("alice@a.test", relay_allowed=True)
    raise_if_failed(transaction.addRecipient("bob@b.test"), "addRecipient")
    transaction.open().write(body)
    raise_if_failed(transaction.commit(), "commit")
    return h


def test_the_relay_converts_for_a_peer_without_8bitmime_and_not_for_one_with_it(tmp_path: Path) -> None:
    [seven] = _relay(tmp_path / "a", PLAIN, eight_bit=False).network.delivered_to("bob@b.test")
    assert seven.isascii() and _texts(seven) == [TEXT + "\r\n"]
    [eight] = _relay(tmp_path / "b", PLAIN, eight_bit=True).network.delivered_to("bob@b.test")
    assert eight.endswith(PLAIN)


def test_the_relay_bounces_what_it_cannot_convert_with_5_6_3(tmp_path: Path) -> None:
    h = _relay(tmp_path, b"DKIM-Signature: v=1; d=a.test; b=x\r\n" + PLAIN, eight_bit=False)
    assert h.network.sent == []
    [report] = h.store.inbox("alice@a.test")
    assert b"Status: 5.6.3" in report and b"8BITMIME" in report
