"""
The source notes, end to end: mail sent by SMTP to a local user is downloaded
over POP3 and optionally deleted on the server, and IMAP (any client, any
time) sees exactly what POP3 left: the deleted message gone, the retrieved
one \\Seen, the untouched one as it was.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service_runner import TIMEOUT, ServiceProcess, listener

ALICE = "alice@example.test"
PASSWORD = "alice-secret"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServiceProcess]:
    running = ServiceProcess(
        tmp_path,
        listener("smtp", "smtp")
        + listener("pop3", "pop3", allow_plaintext_auth=True)
        + listener("imap", "imap", allow_plaintext_auth=True),
    )
    running.add_users({ALICE: PASSWORD})
    running.start()
    yield running
    running.terminate()


def send(server: ServiceProcess, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as client:
        client.sendmail("bob@elsewhere.test", [ALICE], f"Subject: {subject}\r\n\r\n{subject} body\r\n".encode())


def imap_view(server: ServiceProcess) -> dict[str, set[str]]:
    """Subject -> flags of every message in INBOX, as an IMAP client sees it."""
    client = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=TIMEOUT)
    try:
        client.login(ALICE, PASSWORD)
        client.select("INBOX", readonly=True)
        _, data = client.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        view = {}
        for item in data:
            if isinstance(item, tuple):
                flags = imaplib.ParseFlags(item[0])
                subject = item[1].decode().split(":", 1)[1].strip()
                # \Recent is per IMAP session, not something POP3 changes.
                view[subject] = {flag.decode() for flag in flags} - {"\\Recent"}
        return view
    finally:
        client.logout()


def test_pop3_download_and_delete_is_what_imap_sees_afterwards(server: ServiceProcess) -> None:
    for subject in ("keep", "read", "delete"):
        send(server, subject)
    assert imap_view(server) == {"keep": set(), "read": set(), "delete": set()}

    pop = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=TIMEOUT)
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == 3
    subjects = {}
    for number in (1, 2, 3):
        top = pop.top(number, 0)[1]
        subjects[[line for line in top if line.startswith(b"Subject:")][0].split(b": ")[1].decode()] = number
    assert pop.retr(subjects["read"])[1][-1] == b"read body"
    pop.dele(subjects["delete"])
    # Until QUIT nothing changes on the server.
    assert set(imap_view(server)) == {"keep", "read", "delete"}
    assert pop.quit().startswith(b"+OK")

    assert imap_view(server) == {"keep": set(), "read": {"\\Seen"}}


def test_a_pop3_session_that_drops_changes_nothing_imap_can_see(server: ServiceProcess) -> None:
    send(server, "only")
    pop = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=TIMEOUT)
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    pop.retr(1)
    pop.dele(1)
    pop.sock.close()  # no QUIT: the connection just goes away
    pop.file.close()
    assert imap_view(server) == {"only": set()}
