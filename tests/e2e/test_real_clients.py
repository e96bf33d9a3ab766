"""
Real clients nobody here wrote, against the real service over TLS: swaks
for the submission matrix, mbsync (isync) for a two-way IMAPS sync run
twice, fetchmail for POP3 over STLS and POP3S, keeping and deleting.

Each is a Debian package that ``make test`` installs (``test-packages``);
each run is bounded in time, so a server that never closes a connection
(as IMAPS once did after LOGOUT) fails a test instead of hanging the suite.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import os
import poplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.needs import command
from tests.service_runner import ServiceProcess, listener, unverified_tls

ALICE, BOB, CAROL, DAVE = (f"{name}@example.test" for name in ("alice", "bob", "carol", "dave"))
PASSWORDS = {ALICE: "alice-password-1", BOB: "bob-password-1", CAROL: "carol-password-1", DAVE: "dave-password-1"}
CLIENT_TIMEOUT = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    listeners = (
        listener("mx", "smtp")
        + listener("submission", "submission", tls="starttls")
        + listener("submissions", "submission", tls="implicit")
        + listener("imaps", "imap", tls="implicit")
        + listener("pop3", "pop3", tls="starttls")
        + listener("pop3s", "pop3", tls="implicit")
    )
    server = ServiceProcess(tmp_path_factory.mktemp("real-clients"), listeners)
    server.add_users(PASSWORDS)
    server.start()
    yield server
    server.terminate()


def run(arguments: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        arguments, cwd=cwd, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, stdin=subprocess.DEVNULL
    )


def deliver(server: ServiceProcess, recipient: str, subject: str) -> None:
    import smtplib

    with smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=10) as client:
        client.sendmail("sender@remote.test", [recipient], f"Subject: {subject}\r\nFrom: sender@remote.test\r\n\r\n{subject} body\r\n".encode())


def imap_subjects(server: ServiceProcess, account: str, folder: str = "INBOX") -> list[str]:
    client = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=unverified_tls(), timeout=10)
    try:
        client.login(account, PASSWORDS[account])
        client.select(f'"{folder}"')
        _, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        subjects = [
            part[1].decode().strip().removeprefix("Subject: ")
            for part in data
            if isinstance(part, tuple)
        ]
        return sorted(subjects)
    finally:
        client.logout()


def wait_for_subjects(server: ServiceProcess, account: str, count: int, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        subjects = imap_subjects(server, account)
        if len(subjects) >= count or time.monotonic() > deadline:
            return subjects
        time.sleep(0.2)


# -- swaks: the submission matrix --------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("listener_name", ["submission", "submissions"])
def test_swaks_submits_with_an_attachment_over_starttls_and_implicit_tls(
    server: ServiceProcess, tmp_path: Path, listener_name: str, mechanism: str
) -> None:
    attachment = tmp_path / "report.bin"
    payload = bytes(range(256)) * 64
    attachment.write_bytes(payload)
    subject = f"swaks {listener_name} {mechanism}"
    tls = ["--tls"] if listener_name == "submission" else ["--tls-on-connect"]
    result = run(
        [
            command("swaks"),
            "--server", f"127.0.0.1:{server.port(listener_name)}",
            *tls,
            "--auth", mechanism, "--auth-user", ALICE, "--auth-password", PASSWORDS[ALICE],
            "--from", ALICE, "--to", BOB,
            "--header", f"Subject: {subject}",
            "--attach", f"@{attachment}",
            "--timeout", "20",
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  250 2.0.0 Ok: queued as" in result.stdout or "250 2.0.0" in result.stdout, result.stdout
    deadline = time.monotonic() + 15
    while True:
        found = [
            path
            for path in server.maildir(BOB).glob("new/*")
            if f"Subject: {subject}".encode() in path.read_bytes()
        ]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    [stored] = found
    message = email.message_from_bytes(stored.read_bytes(), policy=email.policy.default)
    [part] = [part for part in message.iter_attachments()]
    assert part.get_filename() == "report.bin"
    assert part.get_content() == payload


def test_swaks_wrong_password_is_refused_as_an_auth_error(server: ServiceProcess) -> None:
    result = run(
        [
            command("swaks"),
            "--server", f"127.0.0.1:{server.port('submission')}",
            "--tls", "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", "not-the-password",
            "--from", ALICE, "--to", BOB, "--timeout", "20",
        ]
    )
    assert result.returncode == 28, result.stdout + result.stderr  # swaks: "error in AUTH transaction"
    assert "535 5.7.8" in result.stdout, result.stdout


def test_swaks_auth_before_starttls_is_not_offered(server: ServiceProcess) -> None:
    result = run(
        [
            command("swaks"),
            "--server", f"127.0.0.1:{server.port('submission')}",
            "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", PASSWORDS[ALICE],
            "--from", ALICE, "--to", BOB, "--timeout", "20",
        ]
    )
    assert result.returncode == 28, result.stdout + result.stderr
    assert "AUTH" not in "".join(line for line in result.stdout.splitlines() if line.startswith("<-  250"))


# -- mbsync: a two-way IMAPS sync, run twice ------------------------------------------------------


def _mbsync_config(server: ServiceProcess, local: Path) -> str:
    return f"""
IMAPAccount mailapp
Host 127.0.0.1
Port {server.port("imaps")}
User {CAROL}
Pass {PASSWORDS[CAROL]}
SSLType IMAPS
SystemCertificates no
CertificateFile {server.state_dir / "tls" / "cert.pem"}

IMAPStore remote
Account mailapp

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
"""


def _local_message(folder: Path, name: str, subject: str) -> None:
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "new" / name).write_bytes(f"Subject: {subject}\nFrom: {CAROL}\n\n{subject} body\n".encode())


def test_mbsync_two_way_sync_over_imaps_then_a_second_run_changes_nothing(server: ServiceProcess, tmp_path: Path) -> None:
    for number in range(3):
        deliver(server, CAROL, f"server message {number}")
    assert len(wait_for_subjects(server, CAROL, 3)) == 3
    local = tmp_path / "mail"
    _local_message(local / "INBOX", "1700000000.1.local", "written offline")
    _local_message(local / "Projects", "1700000000.2.local", "a new local folder")
    config = tmp_path / "mbsyncrc"
    config.write_text(_mbsync_config(server, local))
    mbsync = [command("mbsync"), "-c", str(config), "-a"]

    first = run(mbsync, env=dict(os.environ, HOME=str(tmp_path)))
    assert first.returncode == 0, first.stdout + first.stderr
    assert imap_subjects(server, CAROL) == sorted(["server message 0", "server message 1", "server message 2", "written offline"])
    assert imap_subjects(server, CAROL, "Projects") == ["a new local folder"]
    local_files = sorted(path.relative_to(local) for path in local.rglob("*") if path.is_file() and path.parent.name in ("cur", "new"))
    assert len([path for path in local_files if path.parts[0] == "INBOX"]) == 4

    started = time.monotonic()
    second = run(mbsync, env=dict(os.environ, HOME=str(tmp_path)))
    elapsed = time.monotonic() - started
    assert second.returncode == 0, second.stdout + second.stderr
    assert elapsed < 10, f"the second sync took {elapsed:.1f} s"
    assert sorted(path.relative_to(local) for path in local.rglob("*") if path.is_file() and path.parent.name in ("cur", "new")) == local_files
    assert len(imap_subjects(server, CAROL)) == 4


# -- fetchmail: POP3 over STLS and POP3S, keeping and deleting ----------------------------------------


def _fetchmail(server: ServiceProcess, tmp_path: Path, listener_name: str, keep: bool) -> tuple[subprocess.CompletedProcess[str], list[bytes]]:
    received = tmp_path / "received"
    received.mkdir(exist_ok=True)
    tls = "ssl" if listener_name == "pop3s" else "sslproto 'tls1.2+'"  # the latter: STLS required
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"set no syslog\n"
        f'poll 127.0.0.1 service {server.port(listener_name)} protocol POP3 timeout 20\n'
        f'  user "{DAVE}" password "{PASSWORDS[DAVE]}" {tls} no sslcertck\n'
        f"  {'keep' if keep else 'nokeep'} fetchall\n"
        f'  mda "cat > $(mktemp {received}/msg.XXXXXX)"\n'
    )
    rc.chmod(0o600)
    result = run(
        [command("fetchmail"), "--nodetach", "-f", str(rc), "-i", str(tmp_path / "fetchids")],
        env=dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path)),
    )
    return result, sorted(path.read_bytes() for path in received.iterdir())


def _pop3_count(server: ServiceProcess) -> int:
    client = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=unverified_tls(), timeout=10)
    try:
        client.user(DAVE)
        client.pass_(PASSWORDS[DAVE])
        return client.stat()[0]
    finally:
        client.quit()


@pytest.mark.parametrize("listener_name", ["pop3s", "pop3"])
def test_fetchmail_downloads_over_tls_keeping_then_deleting(server: ServiceProcess, tmp_path: Path, listener_name: str) -> None:
    before = _pop3_count(server)
    for number in range(2):
        deliver(server, DAVE, f"fetch {listener_name} {number}")
    deadline = time.monotonic() + 15
    while _pop3_count(server) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.2)

    (tmp_path / "keep").mkdir()
    kept, messages = _fetchmail(server, tmp_path / "keep", listener_name, keep=True)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert len(messages) == before + 2
    assert any(f"Subject: fetch {listener_name} 1".encode() in message for message in messages)
    assert _pop3_count(server) == before + 2

    (tmp_path / "delete").mkdir()
    deleted, messages = _fetchmail(server, tmp_path / "delete", listener_name, keep=False)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert len(messages) == before + 2
    assert _pop3_count(server) == 0
