"""
Quotas and the MX rate end to end, through the real service: a small quota
fills up, is refused at RCPT and after the data, refuses IMAP APPEND and
COPY, frees up with an expunge, and is counted right after a SIGKILL; an MX
client past its rate gets 451 while another address goes on.
"""

from __future__ import annotations

import imaplib
import json
import smtplib
import sys
from pathlib import Path
from typing import Iterator

import pytest

from mailapp import cli
from mailapp.testing import cheap_password_hasher
from tests.service_runner import ServiceProcess, listener

USER = "alice@example.test"
PASSWORD = "alice-secret"
LISTENERS = listener("smtp", "smtp") + listener("imap", "imap", allow_plaintext_auth=True)


def quota(server: ServiceProcess, *options: str, capsys: pytest.CaptureFixture[str]) -> dict:
    """Run ``mailapp user quota`` on the server's state, as an admin would while it runs."""
    capsys.readouterr()
    status = cli.main(
        ["--config", str(server.config_path), "user", "quota", USER, *options, "--json"], password_hasher=cheap_password_hasher()
    )
    out = capsys.readouterr().out
    assert status == 0, out
    return json.loads(out)


def message(size: int, subject: str = "q") -> bytes:
    return b"Subject: " + subject.encode() + b"\r\n\r\n" + (b"x" * 70 + b"\r\n") * (size // 72)


def send(server: ServiceProcess, data: bytes, source: str = "127.0.0.1", size: bool = True) -> None:
    """One message to alice through the MX; raises smtplib's errors on a refusal."""
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), source_address=(source, 0)) as client:
        client.ehlo("client.test")
        if not size:
            client.esmtp_features.pop("size", None)  # no SIZE=: the refusal must come after the data
        client.sendmail("sender@remote.test", [USER], data)


def imap(server: ServiceProcess) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.port("imap"))
    client.login(USER, PASSWORD)
    return client


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServiceProcess]:
    running = ServiceProcess(tmp_path, LISTENERS, "\n[limits]\nmx_messages_per_minute = 0\n")
    running.add_users({USER: PASSWORD})
    running.start()
    try:
        yield running
    finally:
        running.terminate()


def test_a_small_quota_fills_refuses_smtp_and_imap_frees_on_expunge_and_survives_sigkill(server, capsys):
    quota(server, "--bytes", "10000", capsys=capsys)
    send(server, message(4000, "one"))
    send(server, message(4000, "two"))
    # SIZE= declared: refused at RCPT, nothing sent.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(server, message(4000, "three"))
    assert refused.value.recipients[USER] == (452, b"4.2.2 Mailbox full: not enough room for this message; try again later")
    # No SIZE=: refused after the data, nothing stored.
    with pytest.raises(smtplib.SMTPDataError) as after_data:
        send(server, message(4000, "three"), size=False)
    assert (after_data.value.smtp_code, after_data.value.smtp_error) == (
        452, b"4.2.2 Mailbox full: not enough room for this message; try again later"
    )
    client = imap(server)
    try:
        status, reply = client.append("INBOX", None, None, message(4000, "appended"))
        assert (status, reply) == ("NO", [b"[OVERQUOTA] Mailbox full: not enough room for this message; try again later"])
        client.select("INBOX")
        status, reply = client.copy("1:2", "Archive")
        assert status == "NO" and reply[0].startswith(b"[OVERQUOTA]")
        status, sizes = client.fetch("1:*", "(RFC822.SIZE)")
        stored = sum(int(line.split(b"RFC822.SIZE ")[1].rstrip(b")")) for line in sizes)
    finally:
        client.logout()
    shown = quota(server, capsys=capsys)
    assert (shown["used_messages"], shown["used_bytes"]) == (2, stored)

    # The admin lowers the quota under the usage: the mailbox is full, permanently so.
    quota(server, "--bytes", "5000", capsys=capsys)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as full:
        send(server, message(100, "small"))
    assert full.value.recipients[USER] == (552, b"5.2.2 Mailbox full")

    # SIGKILL and restart: the usage is the index's, exactly what is stored.
    server.kill()
    server.start()
    shown = quota(server, capsys=capsys)
    assert (shown["used_messages"], shown["used_bytes"]) == (2, stored)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(server, message(100, "small"))

    # Expunging one message makes room: mail flows again.
    client = imap(server)
    try:
        client.select("INBOX")
        client.store("1", "+FLAGS", "(\\Deleted)")
        client.expunge()
    finally:
        client.logout()
    send(server, message(100, "after expunge"))
    assert quota(server, capsys=capsys)["used_messages"] == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="127.0.0.2 as a source address needs Linux's loopback /8")
def test_an_mx_client_over_the_message_rate_gets_451_and_another_address_is_not_affected(tmp_path):
    server = ServiceProcess(tmp_path, LISTENERS, "\n[limits]\nmx_messages_per_minute = 3\n")
    server.add_users({USER: PASSWORD})
    server.start()
    try:
        for number in range(3):
            send(server, message(200, f"m{number}"))
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            send(server, message(200, "too many"))
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            451, b"4.7.1 Too much mail from your address; try again later"
        )
        send(server, message(200, "from elsewhere"), source="127.0.0.2")
    finally:
        server.terminate()
