"""
SEARCH FUZZY end to end (RFC 6203): messages sent with smtplib, searched
with imaplib against the real service, before the background indexer has
caught up (read and checked) and after (answered by the index), with the
same answer; RELEVANCY's scores from the index; RELEVANCY without FUZZY
refused.
"""

from __future__ import annotations

import re
import pytest

from tests.e2e.test_imap_fulltext_e2e import _wait_indexed
from tests.imap_helpers import deliver, login, module_server
from tests.service_runner import ServiceProcess

USER = "user1@example.test"

MESSAGES = [
    b"From: a@remote.test\r\nTo: user1@example.test\r\nSubject: bill\r\n\r\nPlease pay the attached invoice.\r\n",
    b"From: a@remote.test\r\nTo: user1@example.test\r\nSubject: travel\r\n\r\nThe train leaves at nine.\r\n",
    b"From: a@remote.test\r\nTo: user1@example.test\r\nSubject: reminder\r\n\r\nInvoice 42: this invoice is overdue, invoice!\r\n",
]


server = module_server("fuzzy-e2e")


def _uid_search(server: ServiceProcess, *criteria: str) -> tuple[str, list[bytes]]:
    """UID SEARCH's status and its SEARCH response, or its ESEARCH response when there is one (imaplib keeps it aside)."""
    client = login(server, USER)
    try:
        client.select("INBOX")
        typ, data = client.uid("SEARCH", *criteria)
        _, esearch = client.response("ESEARCH")
        return (typ, esearch) if esearch != [None] else (typ, data)
    finally:
        client.logout()


def test_fuzzy_body_finds_the_misspelt_word_before_and_after_indexing(server: ServiceProcess) -> None:
    client = login(server, USER)
    try:
        typ, data = client.capability()
        assert "SEARCH=FUZZY" in data[0].decode().split()
    finally:
        client.logout()
    for raw in MESSAGES:
        deliver(server, USER, raw)
    assert _uid_search(server, "FUZZY", "BODY", '"invioce"') == ("OK", [b"1 3"])
    assert _uid_search(server, "BODY", '"invioce"') == ("OK", [b""])
    _wait_indexed(server.maildir(USER), 3)
    assert _uid_search(server, "FUZZY", "BODY", '"invioce"') == ("OK", [b"1 3"])
    assert _uid_search(server, "NOT", "FUZZY", "BODY", '"invioce"') == ("OK", [b"2"])
    assert _uid_search(server, "OR", "FUZZY", "SUBJECT", "travle", "FUZZY", "BODY", "overdeu") == ("OK", [b"2 3"])

    typ, data = _uid_search(server, "RETURN", "(RELEVANCY ALL)", "FUZZY", "BODY", '"invioce"')
    assert typ == "OK", data
    match = re.fullmatch(rb'\(TAG "\w+"\) UID ALL 1,3 RELEVANCY \((\d+) (\d+)\)', data[0])
    assert match is not None, data
    first, third = (int(score) for score in match.groups())
    assert third == 100 and 1 <= first < 100  # "invoice" three times in a short text ranks first


def test_relevancy_without_fuzzy_is_bad(server: ServiceProcess) -> None:
    client = login(server, USER)
    try:
        client.select("INBOX")
        with pytest.raises(client.error, match="FUZZY"):
            client.uid("SEARCH", "RETURN", "(RELEVANCY ALL)", "BODY", "invoice")
    finally:
        client.logout()
