"""
OBJECTID (RFC 8474), SAVEDATE (RFC 8514) and PREVIEW (RFC 8970) end to
end: the real service in a subprocess, driven by imaplib. A copied or
moved message keeps its EMAILID; a renamed folder keeps its MAILBOXID, a
folder deleted and made again gets a new one; both hold across a restart
whose index was lost (the rebuild), which forgets only the save dates.
"""

from __future__ import annotations

import imaplib
import re
import time
from collections.abc import Iterator

import pytest

from tests.imap_helpers import EXTRA, LISTENERS, PASSWORD, USERS, Users, deliver, login, message
from tests.service_runner import ServiceProcess

_users = Users()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = ServiceProcess(tmp_path_factory.mktemp("imap-objectid"), LISTENERS, EXTRA)
    running.add_users({user: PASSWORD for user in USERS})
    running.start()
    yield running
    running.terminate()


@pytest.fixture
def user(server: ServiceProcess) -> str:
    return _users.take()


def fetched(client: imaplib.IMAP4, uids: str, item: str) -> dict[int, bytes]:
    """UID -> the raw FETCH response of C{item} for C{uids} (a literal's text joined in)."""
    typ, data = client.uid("FETCH", uids, f"({item})")
    assert typ == "OK", data
    found: dict[int, bytes] = {}
    for entry in data:
        line = b"".join(entry) if isinstance(entry, tuple) else entry
        if not line or line == b")":
            continue
        uid = re.search(rb"UID (\d+)", line)
        assert uid is not None, line
        found[int(uid.group(1))] = line
    return found


def object_id(line: bytes, name: bytes) -> bytes:
    found = re.search(name + rb" \(([A-Za-z0-9_-]+)\)", line)
    assert found is not None, line
    return found.group(1)


def mailbox_id_of_select(client: imaplib.IMAP4, name: str) -> bytes:
    typ, _ = client.select(name)
    assert typ == "OK"
    code, values = client.response("MAILBOXID")
    assert values and values[-1], code
    return bytes(values[-1]).strip(b"()")


def mailbox_id_of_status(client: imaplib.IMAP4, name: str) -> bytes:
    typ, data = client.status(name, "(MAILBOXID MESSAGES)")
    assert typ == "OK", data
    return object_id(data[0], b"MAILBOXID")


def test_capability_announces_objectid_savedate_and_preview(server, user):
    client = login(server, user)
    try:
        for capability in ("OBJECTID", "SAVEDATE", "PREVIEW"):
            assert capability in client.capabilities
    finally:
        client.logout()


def test_a_copied_and_a_moved_message_keep_their_emailid_and_other_messages_differ(server, user):
    deliver(server, user, message("first"))
    deliver(server, user, message("second"))
    client = login(server, user)
    try:
        client.create("Kept")
        client.create("Moved")
        client.select("INBOX")
        ids = {uid: object_id(line, b"EMAILID") for uid, line in fetched(client, "1:*", "EMAILID").items()}
        assert len(set(ids.values())) == 2
        typ, _ = client.uid("COPY", "1", "Kept")
        assert typ == "OK"
        typ, _ = client.uid("MOVE", "2", "Moved")
        assert typ == "OK"
        client.select("Kept")
        assert [object_id(line, b"EMAILID") for line in fetched(client, "1:*", "EMAILID").values()] == [ids[1]]
        client.select("Moved")
        assert [object_id(line, b"EMAILID") for line in fetched(client, "1:*", "EMAILID").values()] == [ids[2]]
        typ, data = client.uid("SEARCH", "EMAILID", ids[2].decode())
        assert typ == "OK" and data == [b"1"]
        typ, data = client.uid("SEARCH", "EMAILID", ids[1].decode())
        assert typ == "OK" and data == [b""]
    finally:
        client.logout()


def test_rename_keeps_the_mailboxid_and_a_folder_made_again_gets_a_new_one(server, user):
    client = login(server, user)
    try:
        typ, data = client.create("Projects")
        assert typ == "OK"
        created = re.search(rb"\[MAILBOXID \(([A-Za-z0-9_-]+)\)\]", data[0])
        assert created is not None, data
        assert mailbox_id_of_status(client, "Projects") == created.group(1)
        assert client.rename("Projects", "Archive/Projects")[0] == "OK"
        assert mailbox_id_of_select(client, "Archive/Projects") == created.group(1)
        assert mailbox_id_of_status(client, "Archive/Projects") == created.group(1)
        client.close()
        assert client.delete("Archive/Projects")[0] == "OK"
        assert client.create("Archive/Projects")[0] == "OK"
        again = mailbox_id_of_status(client, "Archive/Projects")
        assert again != created.group(1)
        assert len({again, mailbox_id_of_status(client, "INBOX"), mailbox_id_of_status(client, "Sent")}) == 3
    finally:
        client.logout()


def test_preview_of_an_html_only_message_is_its_text_with_white_space_collapsed(server, user):
    html = (
        b"From: a@remote.test\r\nSubject: html\r\nMime-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><title>ignored</title><style>p {color: red}</style></head>\r\n"
        b"<body><p>Hello   <b>there</b>,</p>\r\n\r\n<p>caf\xc3\xa9 &amp; more</p></body></html>\r\n"
    )
    deliver(server, user, html)
    client = login(server, user)
    try:
        client.select("INBOX", readonly=True)
        [line] = fetched(client, "1", "PREVIEW").values()
        assert b"Hello there, caf\xc3\xa9 & more" in line
        assert b"<" not in line.split(b"PREVIEW", 1)[1] and b"ignored" not in line
        [lazy] = fetched(client, "1", "PREVIEW (LAZY)").values()
        assert lazy == line
    finally:
        client.logout()


def test_savedate_is_when_the_message_was_saved_here_and_the_saved_keys_search_it(server, user):
    before = time.time()
    deliver(server, user, message("dated"))
    client = login(server, user)
    try:
        client.select("INBOX")
        [line] = fetched(client, "1", "SAVEDATE INTERNALDATE").values()
        found = re.search(rb'SAVEDATE "([^"]+)"', line)
        assert found is not None, line
        saved = imaplib.Internaldate2tuple(b'INTERNALDATE "' + found.group(1) + b'"')
        assert saved is not None and before - 2 <= time.mktime(saved) <= time.time() + 2
        today = time.strftime("%d-%b-%Y", time.gmtime())
        assert client.uid("SEARCH", "SAVEDON", today) == ("OK", [b"1"])
        assert client.uid("SEARCH", "SAVEDSINCE", today) == ("OK", [b"1"])
        assert client.uid("SEARCH", "SAVEDBEFORE", today) == ("OK", [b""])
        assert client.uid("SEARCH", "SAVEDATESUPPORTED") == ("OK", [b"1"])
    finally:
        client.logout()


def test_a_reply_shares_its_threads_threadid_and_search_threadid_finds_both(server, user):
    deliver(server, user, message("topic"))
    reply = message("re topic").replace(b"\r\n\r\n", b"\r\nIn-Reply-To: <topic@remote.test>\r\nReferences: <topic@remote.test>\r\n\r\n", 1)
    deliver(server, user, reply)
    deliver(server, user, message("unrelated"))
    client = login(server, user)
    try:
        client.select("INBOX")
        threads = {uid: object_id(line, b"THREADID") for uid, line in fetched(client, "1:*", "THREADID").items()}
        assert threads[1] == threads[2] != threads[3]
        assert client.uid("SEARCH", "THREADID", threads[1].decode()) == ("OK", [b"1 2"])
    finally:
        client.logout()


def test_emailid_and_mailboxid_survive_a_restart_that_lost_the_index_and_the_save_date_is_then_unknown(tmp_path):
    server = ServiceProcess(tmp_path, LISTENERS, EXTRA)
    account = USERS[0]
    server.add_users({account: PASSWORD})
    server.start()
    try:
        deliver(server, account, message("kept"))
        client = login(server, account)
        client.create("Work")
        client.select("INBOX")
        client.uid("COPY", "1", "Work")
        [before] = fetched(client, "1", "EMAILID SAVEDATE").values()
        work = mailbox_id_of_status(client, "Work")
        client.logout()
        server.kill()
        for suffix in ("", "-wal", "-shm"):
            (server.maildir(account) / f"mailapp-index.sqlite3{suffix}").unlink(missing_ok=True)
        server.start()
        client = login(server, account)
        client.select("Work")
        [after] = fetched(client, "1", "EMAILID SAVEDATE").values()
        assert object_id(after, b"EMAILID") == object_id(before, b"EMAILID")
        assert b"SAVEDATE NIL" in after and b"SAVEDATE NIL" not in before
        assert mailbox_id_of_status(client, "Work") == work
        client.logout()
    finally:
        server.terminate()
