"""
What one persistent SMTP connection remembers between its transactions, end
to end with smtplib against the real service: the answer for a sender
domain (a local sender is still refused at every MAIL), and nothing of a
mailbox's quota (the admin's change applies to the connection's next message).
And twistd's log file: one line per accepted message, no debug line.
"""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from mailapp import cli
from mailapp.testing import cheap_password_hasher
from tests.e2e.test_service import TWISTD, subprocess_env
from tests.service_runner import ServiceProcess, add_users, listener

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


TWISTD_CONFIG = """
[server]
hostname = "mail.example.test"
state_dir = "state"
[domains]
local = ["example.test"]
[tls]
cert = "state/tls/cert.pem"
key = "state/tls/key.pem"
generate_self_signed = true
[limits]
mx_messages_per_minute = 0
[listeners.smtp]
protocol = "smtp"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "none"
"""


def test_twistds_log_file_has_the_accepted_line_of_a_message_and_not_its_debug_delivery_line(tmp_path: Path):
    (tmp_path / "mailapp.toml").write_text(TWISTD_CONFIG)
    add_users(tmp_path / "state", ["example.test"], {USER: "alice-secret"})
    log_file = tmp_path / "mailapp.log"
    process = subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile=", f"--logfile={log_file}", "mailapp", "--config", "mailapp.toml"],
        cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None and time.monotonic() < deadline and process.poll() is None:
            text = log_file.read_text(errors="replace") if log_file.exists() else ""
            found = [line.rsplit("127.0.0.1:", 1)[1].split()[0] for line in text.splitlines() if "listening on 127.0.0.1:" in line]
            port = int(found[0].rstrip(".,)")) if found else None
            time.sleep(0.1)
        assert port is not None, log_file.read_text(errors="replace") if log_file.exists() else "no log"
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("someone@remote.test", [USER], message(300, "logged"))
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log_file.read_text()
    [accepted] = [line for line in text.splitlines() if "] accepted " in line]
    queue_id = accepted.split("] accepted ", 1)[1].split()[0]
    assert "from=<someone@remote.test> rcpts=1" in accepted
    assert queue_id not in text.replace(accepted, "")  # delivery.stored (debug) named it too
    assert "mailapp stopped" in text
