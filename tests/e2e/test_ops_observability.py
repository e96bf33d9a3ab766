"""
Logs and metrics of a real ``twist mailapp`` run: JSON log lines (chosen by
``[server] log_format = "json"``, with no twist option) that parse one by one
and carry stable event names, no password or message body anywhere in the
log, and a Prometheus endpoint on a loopback admin listener whose counters
follow the traffic. Loopback only, port 0, every wait bounded.
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import smtplib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops_runner import TIMEOUT, TwistServer
from tests.service_runner import add_users

pytestmark = pytest.mark.timeout(120)

PASSWORD = "correct-horse-battery-7f3a9c"
WRONG_PASSWORD = "wrong-staple-2b8e41"
BODY_MARKER = "the-secret-body-line-5d1e0b"


def _config(root: Path) -> str:
    return f"""
[server]
hostname = "mail.example.test"
state_dir = "{root / 'state'}"
log_format = "json"

[domains]
local = ["example.test"]

[listeners.smtp]
protocol = "smtp"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "none"

[listeners.submission]
protocol = "submission"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "none"
allow_plaintext_auth = true

[listeners.pop3]
protocol = "pop3"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "none"
allow_plaintext_auth = true

[listeners.imap]
protocol = "imap"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "none"
allow_plaintext_auth = true

[listeners.metrics]
protocol = "metrics"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "none"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwistServer]:
    root = tmp_path_factory.mktemp("ops-observability")
    add_users(root / "state", ["example.test"], {"alice@example.test": PASSWORD})
    running = TwistServer(root, _config(root), arguments=())
    running.start(listeners=5)
    message = f"Subject: hello\r\n\r\n{BODY_MARKER}\r\n"
    with smtplib.SMTP("127.0.0.1", running.ports["smtp"], timeout=TIMEOUT) as client:
        client.sendmail("someone@elsewhere.test", ["alice@example.test"], message)
    with (
        smtplib.SMTP("127.0.0.1", running.ports["submission"], timeout=TIMEOUT) as client,
        pytest.raises(smtplib.SMTPAuthenticationError),
    ):
        client.login("alice@example.test", WRONG_PASSWORD)
    with smtplib.SMTP("127.0.0.1", running.ports["submission"], timeout=TIMEOUT) as client:
        client.login("alice@example.test", PASSWORD)
        client.sendmail("alice@example.test", ["alice@example.test"], message)
    pop = poplib.POP3("127.0.0.1", running.ports["pop3"], timeout=TIMEOUT)
    pop.user("alice@example.test")
    pop.pass_(PASSWORD)
    pop.stat()
    pop.quit()
    imap = imaplib.IMAP4("127.0.0.1", running.ports["imap"], timeout=TIMEOUT)
    imap.login("alice@example.test", PASSWORD)
    imap.select("INBOX")
    imap.logout()
    running.wait_for(
        lambda events: sum(e.get("log_event") == "session.ended" for e in events) >= 5, "five sessions to end"
    )
    yield running
    running.stop()


def _scrape(server: TwistServer, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.ports['metrics']}{path}", timeout=TIMEOUT) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return response.read().decode("utf-8")


def _value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {sample} in:\n{text}")


def test_log_lines_are_json_objects_with_stable_event_names(server: TwistServer) -> None:
    lines = [line for line in server.log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    events = server.events()  # raises if any line is not JSON
    assert len(events) == len(lines)
    names = {event.get("log_event") for event in events}
    assert {"service.starting", "service.listening", "session.started", "session.ended", "smtp.accepted", "auth.failed"} <= names
    accepted = [e for e in events if e.get("log_event") == "smtp.accepted"]
    assert all(e["queue_id"] and e["size"] > 0 and e["count"] == 1 for e in accepted)
    started = [e for e in events if e.get("log_event") == "session.started"]
    assert {(e["protocol"], e["listener"]) for e in started} == {("smtp", "smtp"), ("submission", "submission"), ("pop3", "pop3"), ("imap", "imap")}
    assert all(e["client"] == "127.0.0.1" for e in started)


def test_the_log_holds_no_password_and_no_message_body(server: TwistServer) -> None:
    text = server.log_path.read_text(encoding="utf-8") + server.error_path.read_text(encoding="utf-8")
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret not in text
        plain = base64.b64encode(f"\0alice@example.test\0{secret}".encode()).decode()
        assert plain not in text
    assert BODY_MARKER not in text


def test_metrics_endpoint_counts_the_traffic(server: TwistServer) -> None:
    text = _scrape(server)
    assert _value(text, 'mailapp_messages_accepted_total{protocol="smtp"}') == 2
    assert _value(text, 'mailapp_connections_total{listener="smtp",protocol="smtp"}') == 1
    assert _value(text, 'mailapp_connections_total{listener="submission",protocol="submission"}') == 2
    assert _value(text, 'mailapp_sessions_open{listener="smtp",protocol="smtp"}') == 0
    # smtplib tries AUTH PLAIN, then AUTH LOGIN, with the wrong password.
    assert _value(text, 'mailapp_auth_failures_total{protocol="smtp"}') == 2
    assert _value(text, 'mailapp_messages_delivered_total{kind="local"}') == 2
    assert _value(text, 'mailapp_command_duration_seconds_count{command="EHLO",protocol="smtp"}') == 1
    assert _value(text, 'mailapp_command_duration_seconds_count{command="EOM",protocol="submission"}') == 1
    assert _value(text, 'mailapp_command_duration_seconds_count{command="STAT",protocol="pop3"}') == 1
    assert _value(text, 'mailapp_command_duration_seconds_count{command="SELECT",protocol="imap"}') == 1
    assert _value(text, "mailapp_message_size_bytes_count") == 2
    assert _value(text, "mailapp_queue_messages") == 0
    assert _value(text, "mailapp_queue_oldest_age_seconds") == 0


def test_metrics_listener_answers_404_elsewhere(server: TwistServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        _scrape(server, "/other")
    assert raised.value.code == 404
