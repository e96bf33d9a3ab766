"""
International addresses end to end (RFC 6531): the admin command takes a
domain in U-labels and a UTF-8 user in it; the real service offers
SMTPUTF8, takes ``jörg@bücher.example`` (U-labels or A-labels alike) from
smtplib only in a SMTPUTF8 transaction, stores the message with its UTF-8
header fields as received and its Received: field saying UTF8SMTP; and
refuses a UTF-8 address without SMTPUTF8 with 553 5.6.7.
"""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service_runner import ServiceProcess, listener

USER = "jörg@bücher.example"
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = ServiceProcess(tmp_path_factory.mktemp("smtputf8"), listener("mx", "smtp"))
    mailapp = Path(sys.executable).parent / "mailapp"
    for arguments in (["domain", "add", "Bücher.example"], ["user", "add", USER, "--password", "jörg-password-1"]):
        done = subprocess.run(
            [str(mailapp), "--config", str(running.config_path), *arguments], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    running.start()
    yield running
    running.terminate()


def _stored(server: ServiceProcess) -> set[Path]:
    new = server.maildir("jörg@xn--bcher-kva.example") / "new"
    return set(new.iterdir()) if new.is_dir() else set()


@pytest.mark.parametrize("recipient", [USER, "Jörg@xn--bcher-kva.example"])
def test_a_utf8_address_is_delivered_with_its_utf8_header_fields_as_received(server: ServiceProcess, recipient: str) -> None:
    before = _stored(server)
    message = f"From: Zoë <zoe@remote.test>\r\nTo: {USER}\r\nSubject: Grüße, {recipient}\r\n\r\nHallo Jörg.\r\n".encode()
    with smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert client.has_extn("smtputf8")
        assert client.sendmail("zoë@remote.test", [recipient], message, mail_options=["SMTPUTF8"]) == {}
    [arrived] = _stored(server) - before
    copy = arrived.read_bytes()
    assert f"Subject: Grüße, {recipient}".encode() in copy and "Hallo Jörg.".encode() in copy
    assert "Return-Path: <zoë@remote.test>".encode() in copy
    assert b"with UTF8SMTP" in copy


def test_a_utf8_address_without_smtputf8_is_refused_with_553_5_6_7(server: ServiceProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port("mx")), timeout=TIMEOUT) as connection:
        stream = connection.makefile("rwb")
        stream.readline()
        stream.write(b"EHLO client.test\r\n")
        stream.flush()
        while not stream.readline().startswith(b"250 "):
            pass
        stream.write(b"MAIL FROM:<zoe@remote.test>\r\nRCPT TO:<" + USER.encode() + b">\r\nQUIT\r\n")
        stream.flush()
        assert stream.readline().startswith(b"250")
        assert stream.readline().startswith(b"553 5.6.7")
