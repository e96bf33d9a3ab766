"""
SORT, THREAD, ESEARCH, SEARCHRES, ESORT and live searches (RFC 5256, 5957,
4731, 5182, 5267) against the real service, with :mod:`imaplib`: the
messages are APPENDed over IMAP, so they are real Maildir files read on the
store's worker pool.
"""

from __future__ import annotations

import imaplib
from collections.abc import Iterator

import pytest

from tests.imap_helpers import Users, login, start_server
from tests.service_runner import ServiceProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = start_server(tmp_path_factory.mktemp("imap-sort-e2e"))
    yield running
    running.terminate()


_users = Users()

MESSAGES = [
    ("Re: beta", "Carol <carol@x.test>", "Tue, 3 Jan 2023 10:00:00 +0000", "<b2@x>", "<b1@x>"),
    ("alpha", "alice@x.test", "Sun, 1 Jan 2023 10:00:00 +0000", "<a1@x>", ""),
    ("beta", "Bob <bob@x.test>", "Mon, 2 Jan 2023 10:00:00 +0000", "<b1@x>", ""),
    ("[list] Fwd: alpha", "dave@x.test", "Wed, 4 Jan 2023 10:00:00 +0000", "<a2@x>", "<a1@x>"),
]


@pytest.fixture
def imap(server: ServiceProcess) -> Iterator[imaplib.IMAP4]:
    """A logged-in client with MESSAGES in its INBOX, selected."""
    client = login(server, _users.take())
    for n, (subject, sender, date, message_id, references) in enumerate(MESSAGES):
        refs = f"References: {references}\r\n" if references else ""
        text = f"From: {sender}\r\nTo: r@example.test\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: {message_id}\r\n{refs}\r\nbody {n}\r\n"
        typ, _ = client.append("INBOX", None, imaplib.Time2Internaldate(1_700_000_000 + n), text.encode())
        assert typ == "OK"
    client.select("INBOX")
    yield client
    client.logout()


def _esearch(client: imaplib.IMAP4, *arguments: str, command: str = "SEARCH") -> bytes:
    typ, data = client._simple_command(command, *arguments)  # type: ignore[attr-defined]
    assert typ == "OK", data
    _, untagged = client._untagged_response(typ, data, "ESEARCH")  # type: ignore[attr-defined]
    assert untagged and untagged[-1] is not None
    return bytes(untagged[-1])


def test_capability_announces_sort_thread_and_the_search_extensions(imap: imaplib.IMAP4) -> None:
    for capability in ("SORT", "SORT=DISPLAY", "THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT", "ESEARCH", "SEARCHRES", "ESORT", "CONTEXT=SEARCH"):
        assert capability in imap.capabilities


def test_sort_by_date_and_by_base_subject(imap: imaplib.IMAP4) -> None:
    assert imap.sort("(DATE)", "UTF-8", "ALL") == ("OK", [b"2 3 1 4"])
    assert imap.sort("(SUBJECT REVERSE DATE)", "UTF-8", "ALL") == ("OK", [b"4 2 1 3"])
    assert imap.sort("(DISPLAYFROM)", "UTF-8", "ALL") == ("OK", [b"2 3 1 4"])


def test_uid_sort_answers_uids(imap: imaplib.IMAP4) -> None:
    _, data = imap.uid("SEARCH", "ALL")
    uids = data[0].split()
    _, data = imap.uid("SORT", "(REVERSE DATE)", "UTF-8", "ALL")
    assert data[0].split() == [uids[3], uids[0], uids[2], uids[1]]


def test_thread_references_and_orderedsubject(imap: imaplib.IMAP4) -> None:
    assert imap.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"(2 4)(3 1)"])
    assert imap.thread("ORDEREDSUBJECT", "UTF-8", "ALL") == ("OK", [b"(2 4)(3 1)"])


def test_search_return_answers_esearch(imap: imaplib.IMAP4) -> None:
    tagged = _esearch(imap, "RETURN", "(MIN MAX COUNT ALL)", "SUBJECT", "beta")
    assert tagged.endswith(b" MIN 1 MAX 3 ALL 1,3 COUNT 2")
    assert _esearch(imap, "RETURN", "(PARTIAL 2:3)", "ALL").endswith(b" PARTIAL (2:3 2:3)")
    assert _esearch(imap, "RETURN", "(ALL)", "(DATE)", "UTF-8", "ALL", command="SORT").endswith(b" ALL 2:3,1,4")


def test_a_saved_result_is_fetched_and_copied_with_dollar(imap: imaplib.IMAP4) -> None:
    typ, _ = imap._simple_command("SEARCH", "RETURN", "(SAVE)", "SUBJECT", "alpha")  # type: ignore[attr-defined]
    assert typ == "OK"
    typ, data = imap.fetch("$", "(FLAGS)")
    assert typ == "OK" and sorted(bytes(line).split()[0] for line in data if line) == [b"2", b"4"]
    imap.create("Saved")
    assert imap.copy("$", "Saved")[0] == "OK"
    assert imap.select("Saved")[1] == [b"2"]


def test_a_live_search_reports_a_flag_change_as_addto(imap: imaplib.IMAP4) -> None:
    assert _esearch(imap, "RETURN", "(UPDATE)", "FLAGGED").endswith(b")")
    typ, _ = imap.store("2", "+FLAGS.SILENT", "(\\Flagged)")
    assert typ == "OK"
    _, untagged = imap._untagged_response("OK", [None], "ESEARCH")  # type: ignore[attr-defined]
    assert any(b"ADDTO (1 2)" in bytes(line) for line in untagged if line), untagged
