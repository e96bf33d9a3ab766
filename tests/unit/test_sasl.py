"""
The one SASL decoder (L{mailapp.sasl}) and the rules SMTP (RFC 4954), POP3
(RFC 5034) and IMAP (RFC 3501, RFC 4959) share: ``=`` is an empty response,
``*`` cancels, anything else is strict base64.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from twisted.internet.testing import StringTransport

from mailapp import sasl


def plain(authzid: bytes, authcid: bytes, password: bytes) -> bytes:
    return base64.b64encode(authzid + b"\0" + authcid + b"\0" + password)


def test_a_plain_response_gives_its_three_parts() -> None:
    assert sasl.decode_plain(plain(b"", b"alice@example.test", b"pw with spaces")) == sasl.PlainCredentials(
        b"", b"alice@example.test", b"pw with spaces"
    )


def test_white_space_around_a_response_is_ignored() -> None:
    assert sasl.decode_response(b"  " + base64.b64encode(b"alice") + b" \t") == b"alice"


def test_an_equals_sign_is_an_empty_response() -> None:
    assert sasl.decode_response(b"=") == b""


def test_an_empty_line_is_an_empty_response() -> None:
    assert sasl.decode_response(b"") == b""


def test_a_star_cancels() -> None:
    with pytest.raises(sasl.Cancelled):
        sasl.decode_response(b" * ")
    with pytest.raises(sasl.Cancelled):
        sasl.decode_plain(b"*")


@pytest.mark.parametrize("line", [b"not base64!", b"YWxp Y2U=", b"YWxpY2U", b"=="])
def test_anything_but_strict_base64_is_bad(line: bytes) -> None:
    with pytest.raises(sasl.BadBase64):
        sasl.decode_response(line)


@pytest.mark.parametrize("message", [b"", b"alice", b"a\0b", b"a\0b\0c\0d"])
def test_a_plain_message_without_exactly_three_parts_is_malformed(message: bytes) -> None:
    line = base64.b64encode(message) if message else b"="
    with pytest.raises(sasl.MalformedPlain):
        sasl.decode_plain(line)


def test_an_authorization_identity_other_than_the_login_acts_for_another() -> None:
    assert not sasl.PlainCredentials(b"", b"alice", b"pw").actsForAnother
    assert not sasl.PlainCredentials(b"alice", b"alice", b"pw").actsForAnother
    assert sasl.PlainCredentials(b"bob", b"alice", b"pw").actsForAnother


def test_the_login_mechanisms_challenges() -> None:
    assert base64.b64decode(sasl.LOGIN_USERNAME) == b"Username:"
    assert base64.b64decode(sasl.LOGIN_PASSWORD) == b"Password:"


def test_every_failure_is_a_sasl_error() -> None:
    for error in (sasl.Cancelled, sasl.BadBase64, sasl.MalformedPlain):
        assert issubclass(error, sasl.SASLError)


# -- the same rules in each protocol's words ----------------------------------------


def _connect(factory: object) -> tuple[object, StringTransport]:
    from twisted.internet.address import IPv4Address

    protocol = factory.buildProtocol(None)  # type: ignore[attr-defined]
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    transport.clear()
    return protocol, transport


def _smtp(tmp_path: Path) -> tuple[object, StringTransport]:
    from twisted.internet.task import Clock

    from tests.smtp_helpers import make_factory

    protocol, transport = _connect(make_factory(tmp_path, submission=True, allow_plaintext_auth=True, clock=Clock()))
    protocol.dataReceived(b"EHLO client.test\r\n")  # type: ignore[attr-defined]
    transport.clear()
    return protocol, transport


def _pop3() -> tuple[object, StringTransport]:
    from twisted.internet.task import Clock

    from mailapp.pop3 import POP3Factory, POP3Policy

    return _connect(POP3Factory(None, POP3Policy(hostname="mail.example.test", allow_plaintext_auth=True), Clock()))


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"AUTH PLAIN =\r\n", b"501 5.5.2 Malformed PLAIN response\r\n"),
        (b"AUTH PLAIN *\r\n", b"501 5.7.0 Authentication cancelled\r\n"),
        (b"AUTH PLAIN %%%\r\n", b"501 5.5.2 Cannot decode response\r\n"),
        (b"AUTH PLAIN\r\n*\r\n", b"334 \r\n501 5.7.0 Authentication cancelled\r\n"),
        (b"AUTH LOGIN\r\n*\r\n", b"334 VXNlcm5hbWU6\r\n501 5.7.0 Authentication cancelled\r\n"),
        (b"AUTH LOGIN =\r\n*\r\n", b"334 UGFzc3dvcmQ6\r\n501 5.7.0 Authentication cancelled\r\n"),
    ],
)
def test_smtp_answers_each_sasl_failure_with_501(tmp_path: Path, line: bytes, reply: bytes) -> None:
    protocol, transport = _smtp(tmp_path)
    protocol.dataReceived(line)  # type: ignore[attr-defined]
    assert transport.value() == reply
    protocol.connectionLost(None)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"AUTH PLAIN =\r\n", b"-ERR Malformed PLAIN response\r\n"),
        (b"AUTH PLAIN *\r\n", b"-ERR Authentication cancelled\r\n"),
        (b"AUTH PLAIN %%%\r\n", b"-ERR Malformed base64 in AUTH response\r\n"),
        (b"AUTH PLAIN\r\n=\r\n", b"+ \r\n-ERR Malformed PLAIN response\r\n"),
    ],
)
def test_pop3_answers_each_sasl_failure_with_err(line: bytes, reply: bytes) -> None:
    protocol, transport = _pop3()
    protocol.dataReceived(line)  # type: ignore[attr-defined]
    assert transport.value() == reply
    protocol.connectionLost(None)  # type: ignore[attr-defined]
