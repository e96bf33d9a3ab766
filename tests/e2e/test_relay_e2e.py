"""
End to end: two real mailapp processes on 127.0.0.1. A serves ``a.test``,
B serves ``b.test``, and A's ``[relay] transports`` sends ``b.test`` to B's
MX listener (STARTTLS, self-signed: A encrypts opportunistically). A user on
A submits; the message must land in B's Maildir, survive B being down, a
550 for one recipient, and A being killed with the message queued.

B listens on a port chosen before it starts (so that it comes back on the
same port after a stop). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailapp.store import open_message_file
from tests.service_runner import REPOSITORY, TIMEOUT, ServiceProcess

ALICE, ALICE_PASSWORD = "alice@a.test", "alice-secret"
BOB, CAROL = "bob@b.test", "carol@b.test"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config(state_dir: Path, hostname: str, domain: str, listeners: str, relay: str = "") -> str:
    quoted = lambda path: json.dumps(str(path))  # noqa: E731
    return f"""
[server]
hostname = "{hostname}"
state_dir = {quoted(state_dir)}

[domains]
local = ["{domain}"]

[tls]
cert = {quoted(state_dir / "tls" / "cert.pem")}
key = {quoted(state_dir / "tls" / "key.pem")}
generate_self_signed = true
{listeners}
[relay]
retry_schedule = [1]
{relay}
"""


def _configure(process: ServiceProcess, text: str) -> None:
    from mailapp.config import parse

    process.config_path.write_text(text, encoding="utf-8")
    process.config = parse(text, process.config_path)


class Pair:
    def __init__(self, root: Path) -> None:
        self.b_port = _free_port()
        self.b = ServiceProcess(root / "b", "")
        _configure(
            self.b,
            _config(
                self.b.state_dir,
                "mx.b.test",
                "b.test",
                f'[listeners.smtp]\nprotocol = "smtp"\nendpoint = "tcp:{self.b_port}:interface=127.0.0.1"\ntls = "starttls"\n',
            ),
        )
        self.b.add_users({BOB: "bob-secret", CAROL: "carol-secret"})
        self.a = ServiceProcess(root / "a", "")
        _configure(
            self.a,
            _config(
                self.a.state_dir,
                "mail.a.test",
                "a.test",
                '[listeners.submission]\nprotocol = "submission"\nendpoint = "tcp:0:interface=127.0.0.1"\n'
                'tls = "none"\nallow_plaintext_auth = true\n',
                f'transports = {{ "b.test" = "127.0.0.1:{self.b_port}" }}\n',
            ),
        )
        self.a.add_users({ALICE: ALICE_PASSWORD})

    def send(self, recipients: list[str], subject: str = "hello", body: str = "Hi Bob.\n") -> None:
        message = EmailMessage()
        message["From"] = ALICE
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message.set_content(body)
        with smtplib.SMTP("127.0.0.1", self.a.port("submission"), timeout=TIMEOUT) as client:
            client.login(ALICE, ALICE_PASSWORD)
            refused = client.send_message(message, from_addr=ALICE, to_addrs=recipients)
        assert refused == {}

    def stop(self) -> None:
        for process in (self.a, self.b):
            if process.process is not None and process.process.poll() is None:
                process.terminate()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    pair = Pair(tmp_path)
    try:
        yield pair
    finally:
        pair.stop()


def new_messages(process: ServiceProcess, account: str) -> list[bytes]:
    directory = process.maildir(account) / "new"
    if not directory.is_dir():
        return []
    messages = []
    for path in sorted(directory.iterdir()):
        with open_message_file(path) as handle:
            messages.append(handle.read())
    return messages


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0, logs: tuple[ServiceProcess, ...] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(p.log()[-4000:] for p in logs))


def queued(process: ServiceProcess) -> list[str]:
    directory = process.state_dir / "queue" / "envelopes"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def mailapp_command(process: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailapp.cli", "--config", str(process.config_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
        check=False,
    )


def test_a_submitted_message_to_a_user_on_b_arrives_in_bs_maildir(pair: Pair) -> None:
    pair.b.start()
    pair.a.start()
    pair.send([BOB], subject="across")
    wait_for(lambda: len(new_messages(pair.b, BOB)) == 1, "the message in B's Maildir", logs=(pair.a, pair.b))
    [message] = new_messages(pair.b, BOB)
    assert b"Subject: across" in message
    assert b"Hi Bob." in message
    assert b"by mx.b.test (mailapp) with ESMTPS" in message  # A used STARTTLS
    assert b"by mail.a.test (mailapp) with ESMTPA" in message
    # Only B, the final delivering server, adds a Return-Path (RFC 5321 4.4).
    assert message.count(b"Return-Path:") == 1 and message.startswith(b"Return-Path: <alice@a.test>\r\n")
    wait_for(lambda: queued(pair.a) == [], "A's queue to empty")


def test_with_b_stopped_the_message_waits_is_retried_and_arrives_when_b_starts(pair: Pair) -> None:
    pair.a.start()
    pair.send([BOB], subject="patience")
    wait_for(lambda: "relay.deferred" in pair.a.log() or "deferred" in pair.a.log(), "a deferral in A's log")
    [entry] = queued(pair.a)
    listing = mailapp_command(pair.a, "queue", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    [listed] = json.loads(listing.stdout)
    assert listed["id"] + ".json" == entry
    assert listed["recipients"][0]["state"] == "pending"
    assert listed["recipients"][0]["last_reply"].startswith("451 4.4.1")
    time.sleep(1.5)
    assert json.loads(mailapp_command(pair.a, "queue", "show", listed["id"], "--json").stdout)["attempts"] >= 2
    pair.b.start()
    wait_for(lambda: len(new_messages(pair.b, BOB)) == 1, "the message after B started", logs=(pair.a, pair.b))
    wait_for(lambda: queued(pair.a) == [], "A's queue to empty")
    assert b"Subject: patience" in new_messages(pair.b, BOB)[0]


def test_a_550_for_one_recipient_gives_the_sender_a_dsn_and_the_others_get_the_message(pair: Pair) -> None:
    pair.b.start()
    pair.a.start()
    pair.send([BOB, "nobody@b.test", CAROL], subject="three of us")
    wait_for(lambda: len(new_messages(pair.a, ALICE)) == 1, "the DSN in Alice's INBOX", logs=(pair.a, pair.b))
    assert len(new_messages(pair.b, BOB)) == 1 and len(new_messages(pair.b, CAROL)) == 1
    [dsn] = new_messages(pair.a, ALICE)
    assert b"Return-Path: <>" in dsn
    assert b"report-type=delivery-status" in dsn
    assert b"Final-Recipient: rfc822; nobody@b.test" in dsn
    assert b"Status: 5.1.1" in dsn
    assert b"Diagnostic-Code: smtp; 550 5.1.1" in dsn
    assert b"Subject: three of us" in dsn  # the original headers
    assert b"bob@b.test>: " not in dsn
    wait_for(lambda: queued(pair.a) == [], "A's queue to empty")


def test_a_restarted_with_a_message_queued_delivers_it_exactly_once(pair: Pair) -> None:
    pair.a.start()
    pair.send([BOB], subject="once")
    assert len(queued(pair.a)) == 1
    pair.a.kill()  # SIGKILL: no clean shutdown
    pair.b.start()
    pair.a.start()
    wait_for(lambda: len(new_messages(pair.b, BOB)) == 1, "the message after A restarted", logs=(pair.a, pair.b))
    wait_for(lambda: queued(pair.a) == [], "A's queue to empty")
    pair.a.terminate()
    pair.a.start()  # and once more: nothing is left to send again
    time.sleep(1.5)
    assert len(new_messages(pair.b, BOB)) == 1


def test_queue_commands_work_while_the_server_runs(pair: Pair) -> None:
    pair.a.start()
    pair.send([BOB], subject="admin")
    [entry] = queued(pair.a)
    queue_id = entry[: -len(".json")]
    retried = mailapp_command(pair.a, "queue", "retry", "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["server"] == "running"
    bounced = mailapp_command(pair.a, "queue", "bounce", queue_id)
    assert bounced.returncode == 0, bounced.stderr
    assert f"returned to sender: {queue_id}" in bounced.stdout
    wait_for(lambda: len(new_messages(pair.a, ALICE)) == 1, "the DSN after an admin bounce", logs=(pair.a,))
    # The DSN is committed before the entry is removed: wait for that too.
    wait_for(lambda: queued(pair.a) == [], "A's queue to empty after the bounce", logs=(pair.a,))
    missing = mailapp_command(pair.a, "queue", "delete", queue_id)
    assert missing.returncode == 1
    assert f"no queue entry {queue_id}" in missing.stderr


@pytest.mark.skipif(not os.environ.get("RELAY_BENCH"), reason="a measurement: RELAY_BENCH=1 to run it")
def test_relay_throughput_1000_messages_of_4k(pair: Pair) -> None:
    """Fill A's queue with A stopped, then time how fast A empties it into B."""
    count = int(os.environ.get("RELAY_BENCH_COUNT", "1000"))
    pair.a.start()  # creates the state directory and certificates
    pair.a.terminate()
    fill = f"""
import sys, time
from pathlib import Path
from mailapp.relay.queue import Envelope, Recipient, QueueLayout, write_envelope_sync
layout = QueueLayout(Path({str(pair.a.state_dir / "queue")!r}))
layout.create()
body = (b"From: alice@a.test\\r\\nTo: bob@b.test\\r\\nSubject: bench\\r\\n\\r\\n" + b"x" * 76 + b"\\r\\n") 
body = body + b"y" * 76 + b"\\r\\n"
while len(body) < 4096:
    body += b"z" * 76 + b"\\r\\n"
now = time.time()
for n in range({count}):
    entry_id = "BENCH%06d" % n
    layout.message(entry_id).write_bytes(body)
    envelope = Envelope(id=entry_id, sender="alice@a.test", created=now, size=len(body), recipients=[Recipient("bob@b.test")], next_attempt=now)
    (layout.envelopes / (entry_id + ".json")).write_bytes(envelope.to_bytes())
"""
    subprocess.run([sys.executable, "-c", fill], check=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPOSITORY)))
    assert len(queued(pair.a)) == count
    pair.b.start()
    started = time.monotonic()
    pair.a.start()
    wait_for(lambda: len(new_messages_names(pair.b, BOB)) >= count, f"{count} messages in B", timeout=600, logs=(pair.a,))
    elapsed = time.monotonic() - started
    wait_for(lambda: queued(pair.a) == [], "A's queue to empty", timeout=60)
    rate = count / elapsed
    directory = pair.b.maildir(BOB) / "new"
    times = sorted(entry.stat().st_mtime for entry in os.scandir(directory))
    steady = (len(times) - 1) / max(times[-1] - times[0], 1e-6)
    print(
        f"\nrelay throughput: {count} messages of 4 KiB in {elapsed:.2f} s from A's start = {rate:.0f} messages/s; "
        f"first to last arrival in B: {times[-1] - times[0]:.2f} s = {steady:.0f} messages/s"
    )


def new_messages_names(process: ServiceProcess, account: str) -> list[str]:
    directory = process.maildir(account) / "new"
    return os.listdir(directory) if directory.is_dir() else []
