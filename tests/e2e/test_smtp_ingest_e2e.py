"""
What one persistent SMTP connection remembers between its transactions, end
to end with smtplib against the real service: the answer for a sender
domain (a local sender is still refused at every MAIL), and nothing of a
mailbox's quota (the admin's change applies to the connection's next message).
"""

from __future__ import annotations

import json
import smtplib
from pathlib import Path
from typing import Iterator

import pytest

from mailapp import cli
from mailapp.testing import cheap_password_hasher
from tests.service_runner import ServiceProcess, listener

USER = "alice@example.test"
REFUSED = (553, b"5.7.1 Sender address in a local domain: log in on the submission port to send as it")


def message(size: int, subject: str) -> bytes:
    return b"Subject: " + subject.encode() + b"\r\n\r\n" + (b"x" * 70 + b"\r\n") * (size // 72)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServiceProcess]:
    running = ServiceProcess(tmp_path, listener("smtp", "smtp"), "\n[limits]\nmx_messages_per_minute = 0\n")
    running.add_users({USER: "alice-secret"})
    running.start()
    try:
        yield running
    finally:
        running.terminate()


def test_one_connection_refuses_a_local_sender_at_every_mail_and_takes_the_others_mail(server: ServiceProcess):
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as client:
        client.ehlo("client.test")
        for number in range(3):
            client.sendmail("someone@remote.test", [USER], message(300, f"remote {number}"))
            assert client.mail("bob@EXAMPLE.test") == REFUSED
            client.rset()
    assert len(list((server.maildir(USER) / "new").iterdir())) == 3


def test_a_quota_lowered_between_two_messages_of_one_connection_refuses_the_second(
    server: ServiceProcess, capsys: pytest.CaptureFixture[str]
):
    def set_quota(size: int) -> None:
        capsys.readouterr()
        status = cli.main(
            ["--config", str(server.config_path), "user", "quota", USER, "--bytes", str(size), "--json"],
            password_hasher=cheap_password_hasher(),
        )
        assert status == 0 and json.loads(capsys.readouterr().out)["quota_bytes"] == size

    set_quota(100_000)
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as client:
        client.ehlo("client.test")
        client.esmtp_features.pop("size", None)  # no SIZE=: the end of the data checks the size
        client.sendmail("someone@remote.test", [USER], message(4000, "fits"))
        set_quota(6000)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("someone@remote.test", [USER], message(4000, "no room"))
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            452, b"4.2.2 Mailbox full: not enough room for this message; try again later"
        )
    assert len(list((server.maildir(USER) / "new").iterdir())) == 1
