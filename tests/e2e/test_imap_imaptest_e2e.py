"""
Dovecot imaptest's expectations (issue 19) against the real service, with
imaplib and raw sockets: sections inside message/rfc822, ENVELOPE groups,
address searches, ID before login, LSUB, and a FETCH of what another client
expunged. The protocol tests (tests/protocol/test_imap_conformance.py) cover
each in detail over the fakes; these prove the real store and wire agree.
"""

from __future__ import annotations

import imaplib
from collections.abc import Iterator

import pytest

from tests.imap_helpers import PASSWORD, Raw, Users, deliver, login, start_server
from tests.service_runner import ServiceProcess

NESTED_RFC822 = (
    b"From: user@domain.org\r\nDate: Sat, 24 Mar 2007 23:00:00 +0200\r\nMime-Version: 1.0\r\n"
    b"Content-Type: message/rfc822\r\n\r\n"
    b"From: sub@domain.org\r\nDate: Sun, 12 Aug 2012 12:34:56 +0300\r\nSubject: submsg\r\n\r\n"
    b"Hello world\r\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = start_server(tmp_path_factory.mktemp("imap-imaptest"))
    yield running
    running.terminate()


_users = Users()


@pytest.fixture
def user(server: ServiceProcess) -> str:
    return _users.take()


def fetched(client: imaplib.IMAP4, item: str) -> bytes:
    typ, data = client.fetch("1", f"({item})")
    assert typ == "OK", data
    first = data[0]
    assert isinstance(first, tuple), data
    return first[1]


def test_body_sections_of_a_message_rfc822_message_number_the_embedded_message_as_part_1(server, user):
    deliver(server, user, NESTED_RFC822)
    client = login(server, user)
    client.select("INBOX")
    whole = fetched(client, "BODY.PEEK[]")
    # Delivery adds trace fields on top: the embedded message is the body of what was stored.
    body = whole.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b"From: sub@domain.org")
    assert fetched(client, "BODY.PEEK[1]") == body
    assert fetched(client, "BODY.PEEK[1.HEADER]") == body.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    assert fetched(client, "BODY.PEEK[1.1]") == fetched(client, "BODY.PEEK[1.TEXT]") == b"Hello world\r\n"
    client.logout()


def test_envelope_groups_and_address_searches_on_the_real_store(server, user):
    deliver(
        server,
        user,
        b"From: RealFrom <user-from@domain.org>\r\nTo: groupname: groupuser1@domain.org, groupuser2@domain.org;\r\n"
        b"Cc: <user-cc (comment)@ (comment) domain.org>\r\nSubject: groups\r\n\r\nbody\r\n",
    )
    client = login(server, user)
    client.select("INBOX")
    typ, data = client.fetch("1", "(ENVELOPE)")
    envelope = data[0]
    assert isinstance(envelope, bytes)
    assert b'((NIL NIL "groupname" NIL) (NIL NIL "groupuser1" "domain.org") (NIL NIL "groupuser2" "domain.org") (NIL NIL NIL NIL))' in envelope
    for criteria, found in [
        ("FROM realfrom", [b"1"]),
        ("CC user-cc@domain.org", [b"1"]),
        ("TO groupname", [b"1"]),
        ("TO groupuser3", [b""]),
        ("CC comment", [b""]),
    ]:
        assert client.search(None, criteria) == ("OK", found), criteria
    client.logout()


def test_id_with_thirty_long_pairs_before_login_is_answered_and_the_session_goes_on(server, user):
    raw = Raw(server.port("imap"))
    pairs = b" ".join(b'"%s" "%s"' % ((b"%02d" % n) * 15, b"x" * 1024) for n in range(30))
    lines = raw.command(b"a", b"ID (" + pairs + b")")
    assert lines[0].startswith(b'* ID ("name" "mailapp"') and lines[-1] == b"a OK ID completed"
    assert raw.command(b"b", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())[-1].startswith(b"b OK")
    raw.close()


def test_create_does_not_subscribe_and_lsub_shows_an_unsubscribed_parent_as_noselect(server, user):
    client = login(server, user)
    assert client.create("box/parent/child")[0] == "OK"
    assert client.lsub('""', "box/*") == ("OK", [None])
    assert client.subscribe("box/parent/child")[0] == "OK"
    assert client.lsub('""', "box/%") == ("OK", [b'(\\Noselect) "/" "box/parent"'])
    client.logout()


def test_fetch_of_a_message_another_client_expunged_answers_its_body_and_ok(server, user):
    deliver(server, user, b"Subject: going\r\n\r\nstill here\r\n")
    reader, expunger = login(server, user), login(server, user)
    reader.select("INBOX")
    expunger.select("INBOX")
    expunger.store("1", "+FLAGS.SILENT", "(\\Deleted)")
    assert expunger.expunge()[0] == "OK"
    typ, data = reader.fetch("1", "(BODY.PEEK[TEXT])")
    assert typ == "OK" and isinstance(data[0], tuple) and data[0][1] == b"still here\r\n", data
    reader.noop()
    assert reader.response("EXPUNGE") == ("EXPUNGE", [b"1"])
    assert reader.select("INBOX") == ("OK", [b"0"])
    reader.logout(), expunger.logout()
