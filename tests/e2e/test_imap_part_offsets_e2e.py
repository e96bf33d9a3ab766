"""
End to end, with imaplib against the real service: an APPEND computes the
message's structure with its part offsets and the store keeps it in the
index right after, so the section FETCHes that follow are cut from the
file by them (and give the exact bytes); a message delivered by SMTP gets
its structure at its first FETCH, not at delivery (issue 21 wants
delivery lean).
"""

from __future__ import annotations

import imaplib
import re
import sqlite3
import time
from collections.abc import Iterator

import pytest

from mailapp.imap import structurecache
from tests.imap_helpers import deliver, login, start_server
from tests.service_runner import TIMEOUT, ServiceProcess
from tests.unit.test_imap_part_offsets import NESTED


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = start_server(tmp_path_factory.mktemp("imap-part-offsets"))
    yield running
    running.terminate()


def kept_structure(server: ServiceProcess, user: str, uid: int) -> structurecache.CachedStructure | None:
    """The structure the index keeps for INBOX's C{uid}, of this version, decoded; None when there is none."""
    path = server.maildir(user) / "mailapp-index.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
        row = conn.execute("SELECT version, data FROM structures WHERE folder = 'INBOX' AND uid = ?", (uid,)).fetchone()
    if row is None or row[0] != structurecache.STRUCTURE_VERSION:
        return None
    return structurecache.decode(bytes(row[1]))


def saved_structure(server: ServiceProcess, user: str, uid: int) -> structurecache.CachedStructure | None:
    """L{kept_structure} once the store's writer has saved it (not waited for by the command): bounded."""
    deadline = time.monotonic() + TIMEOUT
    while (kept := kept_structure(server, user, uid)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return kept


def literals(data: list) -> dict[bytes, bytes]:
    """Each literal of imaplib's FETCH answer by the item it belongs to."""
    found = {}
    for entry in data:
        if isinstance(entry, tuple):
            match = re.search(rb"((?:BODY|BINARY)\[[^\]]*\](?:<\d+>)?) \{\d+\}$", entry[0])
            assert match, entry[0]
            found[match.group(1)] = entry[1]
    return found


SECTIONS = (
    b"(BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[TEXT] BODY.PEEK[HEADER.FIELDS (FROM)] BODY.PEEK[2.HEADER.FIELDS (SUBJECT)]"
    b" BODY.PEEK[2.1.1] BODY.PEEK[2.1.2.MIME] BINARY.PEEK[2.1.2] BINARY.PEEK[1])"
)
EXPECTED = {
    b"BODY[1]": b"caf=C3=A9 =\r\nsoft",
    b"BODY[1.MIME]": b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
    b"BODY[TEXT]": NESTED[NESTED.index(b"\r\n\r\n") + 4 :],
    b"BODY[HEADER.FIELDS (FROM)]": b"From: outer@remote.test\r\n\r\n",
    b"BODY[2.HEADER.FIELDS (SUBJECT)]": b"Subject: middle\r\n\r\n",
    b"BODY[2.1.1]": b"inner text",
    b"BODY[2.1.2.MIME]": b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    b"BINARY[2.1.2]": b"hello world",
    b"BINARY[1]": "café soft".encode(),
}


def test_an_appended_messages_structure_is_kept_with_its_part_offsets_and_its_sections_come_exact(server):
    user = "user1@example.test"
    client = login(server, user)
    try:
        typ, answer = client.append("INBOX", None, None, NESTED)
        assert typ == "OK", answer
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", answer[0]).group(1))  # type: ignore[union-attr]
        kept = saved_structure(server, user, uid)
        assert kept is not None and structurecache.parts(kept) is not None
        client.select("INBOX")
        for _ in range(2):
            typ, data = client.uid("FETCH", str(uid), SECTIONS)
            assert typ == "OK", data
            assert literals(data) == EXPECTED
    finally:
        client.logout()


def test_a_delivered_message_gets_its_structure_at_its_first_fetch_not_at_delivery(server):
    user = "user2@example.test"
    deliver(server, user, NESTED)
    client: imaplib.IMAP4 = login(server, user)
    try:
        client.select("INBOX")
        assert kept_structure(server, user, 1) is None
        typ, data = client.uid("FETCH", "1", SECTIONS)
        assert typ == "OK", data
        # Delivery put its own fields on top of the header; every part is where it was.
        assert literals(data) == EXPECTED
        kept = saved_structure(server, user, 1)
        assert kept is not None and structurecache.parts(kept) is not None
    finally:
        client.logout()
