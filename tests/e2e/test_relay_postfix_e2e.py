"""
The relay against a real peer that offers neither 8BITMIME nor SMTPUTF8: a
private Postfix (L{tests.postfix_runner}) with ``smtputf8_enable = no`` and
8BITMIME discarded from its EHLO, which rewrites ``@p.test`` to
``@example.test`` and hands the mail back to mailapp over LMTP. So what
mailapp's relay sent Postfix is read back in bob's Maildir:

- an 8-bit message arrives quoted-printable, and reads the same (RFC 6152 3);
- a UTF-8 address is bounced to its sender with 5.6.7, and UTF-8 header
  fields with 5.6.9 (RFC 6531 3.7.5), never sent mangled.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_lmtp_e2e import lmtp_listener, wait_until
from tests.postfix_runner import PostfixProcess
from tests.service_runner import TIMEOUT, ServiceProcess, listener

ALICE, BOB = "alice@example.test", "bob@example.test"
TEXT = "Grüße aus Köln, über einen Postfix ohne 8BITMIME."


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, PostfixProcess]]:
    postfix = PostfixProcess()
    socket_path = postfix.directory / "lmtp.sock"
    mailapp = ServiceProcess(
        tmp_path_factory.mktemp("relay-postfix"),
        listener("submission", "submission", allow_plaintext_auth=True) + lmtp_listener("lmtp", f"unix:{socket_path}"),
        f'[relay]\ntransports = {{ "p.test" = "127.0.0.1:{postfix.smtp_port}" }}\n',
    )
    mailapp.add_users({ALICE: "alice-secret", BOB: "bob-secret"})
    mailapp.start()
    try:
        postfix.start(
            f"lmtp:unix:{socket_path}",
            {
                "virtual_mailbox_domains": "example.test",
                "relay_domains": "p.test",
                "virtual_alias_maps": "inline:{ @p.test=@example.test }",
                "smtpd_discard_ehlo_keywords": "8bitmime, silent-discard",
            },
        )
        yield mailapp, postfix
    finally:
        postfix.stop()
        mailapp.terminate()


def _new(server: ServiceProcess, account: str) -> set[Path]:
    directory = server.maildir(account) / "new"
    return set(directory.iterdir()) if directory.is_dir() else set()


def _submit(server: ServiceProcess, recipient: str, message: bytes, utf8: bool = False) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=TIMEOUT) as client:
        client.login(ALICE, "alice-secret")
        assert client.sendmail(ALICE, [recipient], message, mail_options=["SMTPUTF8"] if utf8 else []) == {}


def _arrival(server: ServiceProcess, account: str, before: set[Path], postfix: PostfixProcess) -> bytes:
    wait_until(
        lambda: _new(server, account) - before, TIMEOUT,
        lambda: f"nothing arrived for {account}\n{postfix.log()}\n{server.log()[-3000:]}",
    )
    [path] = _new(server, account) - before
    return path.read_bytes()


def test_an_8bit_message_through_a_peer_without_8bitmime_arrives_quoted_printable_and_readable(servers) -> None:
    mailapp, postfix = servers
    before = _new(mailapp, BOB)
    message = f"From: {ALICE}\r\nTo: bob@p.test\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{TEXT}\r\n"
    _submit(mailapp, "bob@p.test", message.encode())
    copy = _arrival(mailapp, BOB, before, postfix)
    assert copy.isascii() and b"Content-Transfer-Encoding: quoted-printable" in copy
    parsed = email.message_from_bytes(copy, policy=email.policy.default)
    assert parsed.get_content().strip() == TEXT
    # Postfix logs the LMTP delivery (through postlogd) after mailapp's 250, which made the file.
    wait_until(lambda: "status=sent" in postfix.log(), TIMEOUT, postfix.log)


@pytest.mark.parametrize(
    ("recipient", "subject", "status"),
    [("jörg@p.test", "ascii", b"5.6.7"), ("bob@p.test", "Grüße", b"5.6.9")],
)
def test_smtputf8_mail_to_a_peer_without_it_bounces_with_the_right_code(servers, recipient: str, subject: str, status: bytes) -> None:
    mailapp, postfix = servers
    before, bob_before = _new(mailapp, ALICE), _new(mailapp, BOB)
    message = f"From: {ALICE}\r\nTo: {recipient}\r\nSubject: {subject}\r\n\r\nhi\r\n".encode()
    _submit(mailapp, recipient, message, utf8=True)
    report = _arrival(mailapp, ALICE, before, postfix)
    assert b"Status: " + status in report and b"does not offer SMTPUTF8" in report
    time.sleep(0.5)
    assert _new(mailapp, BOB) == bob_before  # nothing went through Postfix


def test_messages_a_moment_apart_share_one_connection_to_the_peer(servers) -> None:
    """The relay's connection cache ([relay] connection_cache_time, 2 s): Postfix's smtpd sees one connection."""
    mailapp, postfix = servers
    time.sleep(2.5)  # the earlier tests' connections have said QUIT
    log_before = len(postfix.log())
    before = _new(mailapp, BOB)
    for number in range(3):
        _submit(mailapp, "bob@p.test", f"From: {ALICE}\r\nTo: bob@p.test\r\nSubject: cached {number}\r\n\r\nhi\r\n".encode())
        wait_until(
            lambda: len(_new(mailapp, BOB) - before) > number, TIMEOUT,
            lambda: f"message {number} did not arrive\n{postfix.log()}\n{mailapp.log()[-3000:]}",
        )
        time.sleep(0.3)
    since = postfix.log()[log_before:]
    connects = [line for line in since.splitlines() if "postfix/smtpd" in line and ": connect from " in line]
    assert len(connects) == 1, since
