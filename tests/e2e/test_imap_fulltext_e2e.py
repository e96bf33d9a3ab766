"""
Full-text search end to end: messages sent over SMTP, searched with
imaplib's UID SEARCH BODY/TEXT against the real service, the same answer
before and after the background indexer caught up, after a SIGKILL with
the full-text file damaged, and after an expunge.
"""

from __future__ import annotations

import base64
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailapp.store.fulltext import FULLTEXT_NAME
from tests.imap_helpers import deliver, login, start_server
from tests.service_runner import TIMEOUT, ServiceProcess

USER = "user1@example.test"

MESSAGES = [
    b"From: a@remote.test\r\nTo: user1@example.test\r\nSubject: first\r\n\r\nPlease pay the invoice.\r\n",
    b"From: a@remote.test\r\nTo: user1@example.test\r\nSubject: html\r\nContent-Type: text/html\r\n\r\n<p>Your <b>INVOICE</b> &amp; receipt</p>\r\n",
    b"From: a@remote.test\r\nTo: user1@example.test\r\nSubject: b64\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes("Grüße, invoice attached".encode()).replace(b"\n", b"\r\n"),
    b"From: a@remote.test\r\nTo: user1@example.test\r\nSubject: nothing\r\n\r\nNo money talk here.\r\n",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = start_server(tmp_path_factory.mktemp("fulltext-e2e"))
    yield running
    running.terminate()


def _search(server: ServiceProcess, *criteria: str) -> list[int]:
    client = login(server, USER)
    try:
        client.select("INBOX")
        typ, data = client.uid("SEARCH", *criteria)
        assert typ == "OK", data
        return [int(n) for n in data[0].split()]
    finally:
        client.logout()


def _wait_indexed(mailbox_dir: Path, last_uid: int) -> None:
    """Until the full-text file covers INBOX up to C{last_uid} (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            conn = sqlite3.connect(mailbox_dir / FULLTEXT_NAME, timeout=1)
            try:
                row = conn.execute("SELECT indexed_through FROM folders WHERE name = 'INBOX'").fetchone()
            finally:
                conn.close()
            if row is not None and row[0] >= last_uid:
                return
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    raise AssertionError("the full-text index did not catch up")


def test_search_body_is_the_same_before_and_after_indexing_a_crash_and_an_expunge(server: ServiceProcess) -> None:
    for raw in MESSAGES:
        deliver(server, USER, raw)
    # At once: whatever the indexer has done by now, nothing just delivered is missing.
    assert _search(server, "BODY", "invoice") == [1, 2, 3]
    _wait_indexed(server.maildir(USER), 4)
    assert _search(server, "BODY", "invoice") == [1, 2, 3]
    assert _search(server, "TEXT", '"subject: html"') == [2]
    assert _search(server, "NOT", "BODY", "invoice") == [4]
    assert _search(server, "BODY", '"<b>invoice"') == [2]  # the HTML as sent, as RFC 3501 says

    server.kill()
    path = server.maildir(USER) / FULLTEXT_NAME
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    path.write_bytes(b"\x00garbage" * 4096)
    server.start()
    assert _search(server, "BODY", "invoice") == [1, 2, 3]  # a damaged file is never an error to the client
    _wait_indexed(server.maildir(USER), 4)
    assert _search(server, "BODY", "invoice") == [1, 2, 3]

    client = login(server, USER)
    try:
        client.select("INBOX")
        client.uid("STORE", "1", "+FLAGS", r"(\Deleted)")
        client.expunge()
        typ, data = client.uid("SEARCH", "BODY", "invoice")
        assert (typ, data) == ("OK", [b"2 3"])
    finally:
        client.logout()
