"""
End-to-end: a mailbox index damaged or rolled back on disk (server stopped)
costs nothing a client can see. A damaged page is found at the next start
and the index rebuilt from the Maildir, keeping UIDVALIDITY, UIDs, flags and
keywords; a lost WAL tail neither reuses a UID nor loses a folder.

The real service in a subprocess (:mod:`tests.service_runner`), driven with
smtplib and imaplib.
"""

from __future__ import annotations

import imaplib
import re
import smtplib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailapp.store.index import INDEX_NAME
from tests.index_faults import damage_messages_page, lose_wal
from tests.service_runner import TIMEOUT, ServiceProcess, listener

PASSWORD = "index-secret"
ALICE = "alice@example.test"
LISTENERS = listener("smtp", "smtp") + listener("imap", "imap", allow_plaintext_auth=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServiceProcess]:
    running = ServiceProcess(tmp_path, LISTENERS)
    running.add_users({ALICE: PASSWORD})
    running.start()
    yield running
    running.terminate()


def _deliver(server: ServiceProcess, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as client:
        for number in range(count):
            client.sendmail("sender@remote.test", [ALICE], f"Subject: note {number}\r\n\r\nbody {number}\r\n".encode())


def _login(server: ServiceProcess) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=TIMEOUT)
    client.login(ALICE, PASSWORD)
    return client


def _flags(client: imaplib.IMAP4) -> dict[int, set[str]]:
    typ, data = client.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK"
    found = {}
    for line in data:
        text = line.decode() if isinstance(line, bytes) else ""
        match = re.search(r"UID (\d+)", text)
        flags = re.search(r"FLAGS \(([^)]*)\)", text)
        if match and flags:
            found[int(match.group(1))] = set(flags.group(1).split()) - {"\\Recent"}
    return found


def _status(client: imaplib.IMAP4, folder: str) -> dict[str, int]:
    typ, data = client.status(folder, "(MESSAGES UIDNEXT UIDVALIDITY)")
    assert typ == "OK", data
    text = data[0].decode()
    return {key: int(value) for key, value in re.findall(r"(MESSAGES|UIDNEXT|UIDVALIDITY) (\d+)", text)}


def test_a_damaged_index_page_is_rebuilt_at_start_keeping_uidvalidity_uids_flags_and_keywords(server: ServiceProcess) -> None:
    _deliver(server, 100)
    client = _login(server)
    client.select("INBOX")
    client.uid("STORE", "1", "+FLAGS", r"(\Seen $Important)")
    client.uid("STORE", "2", "+FLAGS", r"(\Flagged Work)")
    before, flags = _status(client, "INBOX"), _flags(client)
    client.logout()
    server.terminate()
    index_path = server.maildir(ALICE) / INDEX_NAME
    damage_messages_page(index_path)

    server.start()
    _deliver(server, 1)  # no 451: the index was rebuilt before anyone used it
    client = _login(server)
    typ, data = client.select("INBOX")
    assert (typ, data) == ("OK", [b"101"])
    assert _status(client, "INBOX") == {"MESSAGES": 101, "UIDNEXT": 102, "UIDVALIDITY": before["UIDVALIDITY"]}
    after = _flags(client)
    assert {uid: after[uid] for uid in flags} == flags
    assert flags[1] == {"\\Seen", "$Important"} and flags[2] == {"\\Flagged", "Work"}
    assert after[101] == set()
    client.logout()
    aside = [p.name for p in index_path.parent.iterdir() if p.name.startswith(INDEX_NAME + ".damaged-")]
    assert aside, "the damaged index is kept beside the new one"
    assert "store.index_damaged" in server.log()


def test_a_lost_wal_neither_reuses_uids_nor_loses_a_folder_created_since_the_checkpoint(server: ServiceProcess) -> None:
    _deliver(server, 5)
    server.terminate()
    index_path = server.maildir(ALICE) / INDEX_NAME
    checkpoint = sqlite3.connect(index_path)
    checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpoint.close()

    server.start()
    _deliver(server, 3)
    client = _login(server)
    client.select("INBOX")
    client.uid("STORE", "6:8", "+FLAGS", r"(\Deleted)")
    client.expunge()
    assert client.create("Projects")[0] == "OK"
    for number in range(50):
        body = f"Subject: project {number}\r\n\r\nplan {number}\r\n".encode()
        assert client.append("Projects", r"(\Seen)", None, body)[0] == "OK"
    projects = _status(client, "Projects")
    assert _status(client, "INBOX")["UIDNEXT"] == 9
    client.logout()
    server.kill()
    assert lose_wal(index_path) > 0, "the changes since the checkpoint were in the WAL"

    server.start()
    client = _login(server)
    typ, listing = client.list()
    assert typ == "OK" and any(line.endswith(b' "Projects"') or line.endswith(b" Projects") for line in listing), listing
    assert _status(client, "Projects") == projects == {"MESSAGES": 50, "UIDNEXT": 51, "UIDVALIDITY": projects["UIDVALIDITY"]}
    assert _status(client, "INBOX")["UIDNEXT"] == 9
    client.logout()
    _deliver(server, 1)
    client = _login(server)
    client.select("INBOX")
    assert sorted(_flags(client)) == [1, 2, 3, 4, 5, 9]
    client.logout()
