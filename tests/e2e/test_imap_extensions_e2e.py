"""
The IMAP extensions end to end, against the real service in a subprocess:
BINARY, MULTIAPPEND, CATENATE, LIST-EXTENDED/LIST-STATUS/STATUS=SIZE and
UTF8=ACCEPT. imaplib where it can say the command; a raw socket for what it
cannot (literal8, several messages in one APPEND, CATENATE, a UTF-8 LOGIN).
A UTF-8 user (``jörg@bücher.example``, added with the ``mailapp`` command)
gets a message by SMTP with SMTPUTF8 and reads it over IMAP.
"""

from __future__ import annotations

import base64
import re
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.imap_helpers import EXTRA, LISTENERS, PASSWORD, USERS, Raw, Users, deliver, login, message
from tests.service_runner import TIMEOUT, ServiceProcess

UTF8_USER = "jörg@bücher.example"
UTF8_PASSWORD = "jörg-password-1"
CONTENT = bytes(range(256)) + b"\r\nend"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = ServiceProcess(tmp_path_factory.mktemp("imap-extensions"), LISTENERS, EXTRA)
    running.add_users({user: PASSWORD for user in USERS})
    mailapp = Path(sys.executable).parent / "mailapp"
    for arguments in (["domain", "add", "bücher.example"], ["user", "add", UTF8_USER, "--password", UTF8_PASSWORD]):
        done = subprocess.run(
            [str(mailapp), "--config", str(running.config_path), *arguments], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    running.start()
    yield running
    running.terminate()


_users = Users()


@pytest.fixture
def user(server: ServiceProcess) -> str:
    return _users.take()


def raw_login(server: ServiceProcess, user: str, password: str = PASSWORD) -> Raw:
    raw = Raw(server.port("imap"))
    [ok] = raw.command(b"l", b'LOGIN "' + user.encode() + b'" "' + password.encode() + b'"')
    assert ok.startswith(b"l OK"), ok
    return raw


def with_attachment() -> bytes:
    return (
        b"From: a@remote.test\r\nSubject: attachment\r\nMime-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n'
        b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(CONTENT).replace(b"\n", b"\r\n")
        + b"--b--\r\n"
    )


def test_capability_after_login_announces_the_extensions(server, user):
    client = login(server, user)
    try:
        for capability in ("BINARY", "MULTIAPPEND", "CATENATE", "LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE", "UTF8=ACCEPT"):
            assert capability in client.capabilities
    finally:
        client.logout()


def test_binary_fetch_gives_a_base64_attachment_decoded_with_imaplib(server, user):
    deliver(server, user, with_attachment())
    client = login(server, user)
    try:
        client.select("INBOX")
        typ, data = client.fetch("1", "(BINARY.SIZE[2] BINARY.PEEK[2])")
        assert typ == "OK"
        assert b"BINARY.SIZE[2] %d" % len(CONTENT) in data[0][0]
        assert data[0][1] == CONTENT
    finally:
        client.logout()


def test_append_of_a_literal8_message_is_given_back_by_binary_and_never_as_nuls_by_body(server, user):
    raw = raw_login(server, user)
    body = b"From: a@remote.test\r\nContent-Transfer-Encoding: binary\r\n\r\n" + CONTENT
    lines = raw.command(b"a", b"APPEND INBOX ~{%d+}\r\n" % len(body) + body)
    assert lines[-1].startswith(b"a OK [APPENDUID "), lines
    raw.command(b"s", b"SELECT INBOX")
    raw.send(b"f FETCH 1 (BINARY.PEEK[1])\r\n")
    header = raw.line()
    assert header.endswith(b"BINARY[1] ~{%d}" % len(CONTENT)), header
    assert raw.read(len(CONTENT)) == CONTENT
    raw.until(b"f")
    [fetched, ok] = raw.command(b"g", b"FETCH 1 (BODY.PEEK[1])")
    assert ok.startswith(b"g OK") and b"\x00" not in fetched
    raw.close()


def test_multiappend_adds_both_messages_in_one_command_with_their_uids(server, user):
    raw = raw_login(server, user)
    first, second = message("first"), message("second")
    [ok] = raw.command(b"a", b"APPEND INBOX {%d+}\r\n%s (\\Seen) {%d+}\r\n%s" % (len(first), first, len(second), second))
    assert re.match(rb"a OK \[APPENDUID \d+ 1:2\] ", ok), ok
    raw.close()
    client = login(server, user)
    try:
        client.select("INBOX", readonly=True)
        typ, data = client.fetch("1:2", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert [d[1] for d in data if isinstance(d, tuple)] == [b"Subject: first\r\n\r\n", b"Subject: second\r\n\r\n"]
        assert b"\\Seen" not in data[0][0] and b"\\Seen" in data[2][0]
    finally:
        client.logout()


def test_catenate_builds_a_message_from_text_and_a_part_of_the_users_own_message(server, user):
    deliver(server, user, message("source", body="the body\r\n"))
    raw = raw_login(server, user)
    [status, _] = raw.command(b"s", b"STATUS INBOX (UIDVALIDITY)")
    validity = int(re.search(rb"UIDVALIDITY (\d+)", status).group(1))
    header = b"From: me@example.test\r\nSubject: forwarded\r\n\r\n"
    [ok] = raw.command(
        b"a",
        b'APPEND Drafts CATENATE (TEXT {%d+}\r\n%s URL "/INBOX;UIDVALIDITY=%d/;UID=1/;SECTION=TEXT")' % (len(header), header, validity),
    )
    assert ok.startswith(b"a OK [APPENDUID "), ok
    raw.command(b"e", b"EXAMINE Drafts")
    [fetched, _] = raw.command(b"f", b"FETCH 1 (BODY.PEEK[])")
    assert fetched.endswith(header + b"the body\r\n)")
    raw.close()


def test_catenate_url_of_another_users_message_is_badurl(server, user):
    other = _users.take()
    deliver(server, other, message("private"))
    raw = raw_login(server, user)
    for url in (b"/INBOX/;UID=1", b"imap://" + other.encode() + b"@127.0.0.1/INBOX/;UID=1"):
        [no] = raw.command(b"a", b'APPEND INBOX CATENATE (URL "' + url + b'")')
        assert no.startswith(b"a NO [BADURL "), no
    [status, _] = raw.command(b"s", b"STATUS INBOX (MESSAGES)")
    assert b"MESSAGES 0" in status
    raw.close()


def test_list_extended_with_return_status_and_size(server, user):
    deliver(server, user, message("sized"))
    raw = raw_login(server, user)
    raw.command(b"c", b"CREATE Projects/Alpha")
    raw.command(b"u", b"SUBSCRIBE Projects/Alpha")
    lines = raw.command(b"l", b'LIST (SUBSCRIBED RECURSIVEMATCH) "" (INBOX Projects) RETURN (CHILDREN STATUS (MESSAGES SIZE))')
    assert b'* LIST (\\HasChildren) "/" "Projects" (CHILDINFO ("SUBSCRIBED"))' in lines
    assert any(line.startswith(b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"') for line in lines), lines
    assert any(re.match(rb'\* STATUS "INBOX" \(MESSAGES 1 SIZE [1-9]\d*\)$', line) for line in lines), lines
    assert lines[-1].startswith(b"l OK")
    raw.close()


def test_status_size_with_imaplib(server, user):
    body = message("counted")
    deliver(server, user, body)
    client = login(server, user)
    try:
        typ, data = client.status("INBOX", "(MESSAGES SIZE)")
        assert typ == "OK"
        size = int(re.search(rb"SIZE (\d+)", data[0]).group(1))
        assert size > len(body)  # with the Received: trace field the server adds
    finally:
        client.logout()


def test_a_smtputf8_message_to_a_utf8_user_is_read_over_imap_after_utf8_login_and_enable(server):
    subject = "Grüße aus Köln"
    mail = f"From: Zoë <zoe@remote.test>\r\nTo: {UTF8_USER}\r\nSubject: {subject}\r\n\r\nHallo Jörg.\r\n".encode()
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as smtp:
        assert smtp.sendmail("zoë@remote.test", [UTF8_USER], mail, mail_options=["SMTPUTF8"]) == {}
    raw = raw_login(server, UTF8_USER, UTF8_PASSWORD)
    assert raw.command(b"e", b"ENABLE UTF8=ACCEPT")[0] == b"* ENABLED UTF8=ACCEPT"
    raw.command(b"c", "CREATE \"Entwürfe\"".encode())
    lines = raw.command(b"l", b'LIST "" "Entw*"')
    assert lines[0] == '* LIST (\\HasNoChildren) "/" "Entwürfe"'.encode()
    raw.command(b"s", b"SELECT INBOX")
    fetched = fetch_all(raw, b"f", b"FETCH 1 (ENVELOPE BODY.PEEK[HEADER])")
    assert fetched.count(f"Subject: {subject}".encode()) == 1  # in BODY[HEADER]
    assert fetched.count(subject.encode()) == 2  # and in ENVELOPE
    assert raw.command(b"q", 'SEARCH SUBJECT "köln"'.encode())[0] == b"* SEARCH 1"
    raw.close()


def test_without_utf8_accept_mailbox_names_stay_modified_utf7(server, user):
    client = login(server, user)
    try:
        client.create("Entw&APw-rfe")
        typ, data = client.list('""', "Entw*")
        assert data == [b'(\\HasNoChildren) "/" "Entw&APw-rfe"']
    finally:
        client.logout()


def test_utf8_append_after_enable_over_a_raw_socket(server, user):
    # imaplib wraps the message in "UTF8 (...)" inside an ordinary literal, not
    # RFC 6855's UTF8 (~{n}), so a raw socket says it.
    raw = raw_login(server, user)
    raw.command(b"e", b"ENABLE UTF8=ACCEPT")
    mail = "Subject: für dich\r\n\r\nInhalt\r\n".encode()
    [ok] = raw.command(b"a", b"APPEND INBOX UTF8 (~{%d+}\r\n%s)" % (len(mail), mail))
    assert ok.startswith(b"a OK [APPENDUID "), ok
    raw.command(b"s", b"EXAMINE INBOX")
    assert fetch_all(raw, b"f", b"FETCH 1 (BODY.PEEK[])").endswith(b"BODY[] {%d}\r\n%s)\r\n" % (len(mail), mail))
    raw.close()


def fetch_all(raw: Raw, tag: bytes, command: bytes) -> bytes:
    """What came before the tagged OK, however many literals its lines hold."""
    raw.send(tag + b" " + command + b"\r\n")
    out = b""
    while True:
        line = raw.line()
        if line.startswith(tag + b" "):
            assert line.startswith(tag + b" OK"), line
            return out
        out += line + b"\r\n"
        match = re.search(rb"\{(\d+)\}$", line)
        if match:
            out += raw.read(int(match.group(1)))
