"""
Deleting a user while the server runs, end to end: the real ``mailapp``
command against a running server, real SMTP, IMAP and POP3 clients. A user
added again at a deleted address must start with nothing of the old one's.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service_runner import TIMEOUT, ServiceProcess, listener
from tests.paths import REPOSITORY

ALICE = "alice@example.test"
OLD_PASSWORD = "old-alice-secret"
NEW_PASSWORD = "new-alice-secret"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServiceProcess]:
    running = ServiceProcess(
        tmp_path,
        listener("smtp", "smtp")
        + listener("pop3", "pop3", allow_plaintext_auth=True)
        + listener("imap", "imap", allow_plaintext_auth=True),
    )
    running.add_users({ALICE: OLD_PASSWORD}, aliases={"team@example.test": [ALICE]})
    running.start()
    yield running
    running.terminate()


def admin(server: ServiceProcess, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The admin command as an operator runs it, in its own process, while the server runs."""
    script = Path(sys.executable).parent / "mailapp"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mailapp.cli"]
    done = subprocess.run(
        [*command, "--config", str(server.config_path), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


def send(server: ServiceProcess, recipient: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as client:
        client.sendmail("bob@elsewhere.test", [recipient], f"Subject: {subject}\r\n\r\n{subject} body\r\n".encode())


def imap_login(server: ServiceProcess, password: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=TIMEOUT)
    client.login(ALICE, password)
    return client


def test_a_user_added_again_after_del_sees_none_of_the_old_mail(server: ServiceProcess) -> None:
    send(server, ALICE, "old one")
    send(server, ALICE, "old two")
    reader = imap_login(server, OLD_PASSWORD)  # the server now holds the old index open
    reader.select("INBOX")
    assert reader.search(None, "ALL") == ("OK", [b"1 2"])
    reader.logout()

    admin(server, "user", "del", ALICE)
    admin(server, "user", "add", ALICE, stdin=NEW_PASSWORD + "\n")

    client = imap_login(server, NEW_PASSWORD)
    try:
        status, data = client.select("INBOX")
        assert (status, data) == ("OK", [b"0"])
        assert client.search(None, "ALL") == ("OK", [b""])
    finally:
        client.logout()
    pop = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=TIMEOUT)
    try:
        pop.user(ALICE)
        pop.pass_(NEW_PASSWORD)
        assert pop.stat() == (0, 0)
    finally:
        pop.quit()


def test_a_session_open_across_the_deletion_never_sees_the_new_users_mail(server: ServiceProcess) -> None:
    send(server, ALICE, "old")
    old_session = imap_login(server, OLD_PASSWORD)
    old_session.select("INBOX")

    admin(server, "user", "del", ALICE)
    admin(server, "user", "add", ALICE, stdin=NEW_PASSWORD + "\n")
    send(server, ALICE, "for the new alice")

    with pytest.raises(imaplib.IMAP4.abort, match="deleted"):
        old_session.noop()
    client = imap_login(server, NEW_PASSWORD)
    try:
        client.select("INBOX")
        _, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert [item[1].strip() for item in data if isinstance(item, tuple)] == [b"Subject: for the new alice"]
    finally:
        client.logout()


def test_mail_to_an_alias_of_a_deleted_user_is_refused_with_550(server: ServiceProcess) -> None:
    result = admin(server, "user", "del", ALICE)
    assert "alias team@example.test no longer points at alice@example.test" in result.stdout
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as client:
        client.ehlo()
        client.mail("bob@elsewhere.test")
        code, text = client.rcpt("team@example.test")
    assert (code, text) == (550, b"5.1.1 No such user here")
    assert "alias loop" not in server.log()
