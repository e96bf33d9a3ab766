"""
OBJECTID (RFC 8474), SAVEDATE (RFC 8514) and PREVIEW (RFC 8970) over
L{StringTransport} with the fakes: the exact responses, the cache that
keeps a PREVIEW from re-reading a file, and how they meet CONDSTORE and a
message another session expunged.
"""

from __future__ import annotations

import calendar
import re

from twisted.internet.defer import fail
from twisted.trial.unittest import TestCase

from mailapp.errors import NoSuchFolder

from mailapp.testing import FakeStore, build_factory, service_context
from mailapp.testing.store import FakeFolder
from tests.protocol.accounts import make_accounts
from tests.protocol.test_imap_conformance import PASSWORD, USER, Client, literal

#: 2020-03-04 05:06:07 UTC, the fake store's clock for save dates.
SAVED = calendar.timegm((2020, 3, 4, 5, 6, 7))
#: 2019-01-01 UTC, every message's internal date.
RECEIVED = calendar.timegm((2019, 1, 1, 0, 0, 0))
PLAIN = b"From: a@example.test\r\nSubject: one\r\nMessage-ID: <one@example.test>\r\n\r\nfirst   body\r\nline two\r\n"
HTML = b"From: a@example.test\r\nSubject: two\r\nContent-Type: text/html\r\n\r\n<p>Hello <b>there</b></p>\r\n"
REPLY = b"From: b@example.test\r\nSubject: re\r\nIn-Reply-To: <one@example.test>\r\n\r\nreply\r\n"


class ObjectIdTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.store.clock = lambda: SAVED
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        self.mailbox = self.store.mailbox(USER.decode())
        self.inbox = self.successResultOf(self.mailbox.folder("INBOX"))

    def append(self, *messages: bytes) -> None:
        for data in messages:
            self.successResultOf(self.inbox.append(data, internaldate=RECEIVED))

    def client(self, select: bytes | None = b"INBOX") -> Client:
        client = Client(self, self.factory)
        client.ok(b"LOGIN " + USER + b" " + PASSWORD)
        if select is not None:
            client.ok(b"SELECT " + select)
        return client

    def emailids(self, client: Client) -> list[bytes]:
        return re.findall(rb"EMAILID \(([A-Za-z0-9_-]+)\)", client.ok(b"FETCH 1:* (EMAILID)"))

    # -- MAILBOXID ---------------------------------------------------------------------------

    def test_select_and_examine_send_the_mailboxid_code(self) -> None:
        box_id = self.successResultOf(self.inbox.mailboxId()).encode()
        client = self.client(select=None)
        self.assertIn(b"* OK [MAILBOXID (" + box_id + b")] ", client.ok(b"SELECT INBOX"))
        self.assertIn(b"* OK [MAILBOXID (" + box_id + b")] ", client.ok(b"EXAMINE INBOX"))

    def test_a_folder_deleted_while_select_reads_its_mailboxid_is_no_nonexistent(self) -> None:
        self.patch(FakeFolder, "mailboxId", lambda folder: fail(NoSuchFolder("gone")))
        client = self.client(select=None)
        self.assertIn(b"t2 NO [NONEXISTENT] No such mailbox\r\n", client.command(b"SELECT INBOX"))
        self.assertIn(b"t3 BAD", client.command(b"FETCH 1 (FLAGS)"))  # nothing selected

    def test_create_answers_the_new_mailboxid_and_status_reports_it_after_a_rename(self) -> None:
        client = self.client(select=None)
        created = client.ok(b"CREATE Projects")
        found = re.search(rb"t2 OK \[MAILBOXID \(([A-Za-z0-9_-]+)\)\] CREATE completed", created)
        assert found is not None, created
        client.ok(b"RENAME Projects Done")
        self.assertIn(b'* STATUS "Done" (MAILBOXID (' + found.group(1) + b") MESSAGES 0)", client.ok(b"STATUS Done (MAILBOXID MESSAGES)"))
        client.ok(b"DELETE Done")
        client.ok(b"CREATE Done")
        self.assertNotIn(found.group(1), client.ok(b"STATUS Done (MAILBOXID)"))

    # -- EMAILID, THREADID -------------------------------------------------------------------------

    def test_a_copy_and_a_move_answer_the_same_emailid_as_the_original(self) -> None:
        self.append(PLAIN, HTML)
        self.successResultOf(self.mailbox.createFolder("Copies"))
        self.successResultOf(self.mailbox.createFolder("Moved"))
        client = self.client()
        original = self.emailids(client)
        self.assertEqual(len(set(original)), 2)
        client.ok(b"COPY 1 Copies")
        client.ok(b"MOVE 2 Moved")
        client.ok(b"SELECT Copies")
        self.assertEqual(self.emailids(client), original[:1])
        client.ok(b"SELECT Moved")
        self.assertEqual(self.emailids(client), original[1:])
        self.assertIn(b"* SEARCH 1\r\n", client.ok(b"SEARCH EMAILID " + original[1]))
        self.assertIn(b"* SEARCH\r\n", client.ok(b"SEARCH EMAILID " + original[0]))

    def test_a_reply_shares_the_threadid_of_its_original_and_a_message_without_identifiers_has_nil(self) -> None:
        self.append(PLAIN, HTML, REPLY)
        reply = self.client().ok(b"FETCH 1:* (THREADID)")
        threads = re.findall(rb"\* (\d) FETCH \(THREADID (\([A-Za-z0-9_-]+\)|NIL)\)", reply)
        self.assertEqual([t[0] for t in threads], [b"1", b"2", b"3"])
        self.assertEqual(threads[1][1], b"NIL")
        self.assertEqual(threads[0][1], threads[2][1])
        self.assertIn(b"* SEARCH 1 3\r\n", self.client().ok(b"SEARCH THREADID " + threads[0][1].strip(b"()")))

    def test_emailid_of_a_message_another_session_expunged_is_answered_while_it_is_held_then_expungeissued(self) -> None:
        self.append(PLAIN, HTML)
        first = self.emailids(self.client())[0]
        client = self.client()  # its view has never asked for an EMAILID
        self.successResultOf(self.inbox.expunge([1]))
        reply = client.ok(b"FETCH 1 (EMAILID SAVEDATE)")
        self.assertIn(b"* 1 FETCH (EMAILID (" + first + b") SAVEDATE NIL)\r\n", reply)
        other = self.client()
        self.successResultOf(self.inbox.expunge([2]))
        self.inbox._state.expunged.clear()  # held past the store's while
        reply = other.command(b"FETCH 1 (EMAILID)")
        self.assertNotIn(b"* 1 FETCH", reply)
        self.assertIn(b"OK [EXPUNGEISSUED]", reply)

    # -- SAVEDATE ---------------------------------------------------------------------------------

    def test_savedate_is_when_it_was_saved_and_nil_when_the_store_does_not_know(self) -> None:
        self.append(PLAIN, HTML)
        self.inbox._state.messages[2][5] = None
        reply = self.client().ok(b"FETCH 1:2 (SAVEDATE)")
        self.assertIn(b'* 1 FETCH (SAVEDATE " 4-Mar-2020 05:06:07 +0000")\r\n', reply)
        self.assertIn(b"* 2 FETCH (SAVEDATE NIL)\r\n", reply)

    def test_the_saved_keys_compare_the_save_date_and_an_unknown_one_falls_back_to_the_internal_date(self) -> None:
        self.append(PLAIN, HTML)
        self.inbox._state.messages[2][5] = None
        client = self.client()
        self.assertIn(b"* SEARCH 1\r\n", client.ok(b"SEARCH SAVEDON 4-Mar-2020"))
        self.assertIn(b"* SEARCH 1\r\n", client.ok(b"SEARCH SAVEDSINCE 4-Mar-2020"))
        self.assertIn(b"* SEARCH 2\r\n", client.ok(b"SEARCH SAVEDBEFORE 4-Mar-2020"))
        self.assertIn(b"* SEARCH 2\r\n", client.ok(b"SEARCH SAVEDON 1-Jan-2019"))
        self.assertIn(b"* SEARCH 1 2\r\n", client.ok(b"SEARCH SAVEDATESUPPORTED"))
        self.assertIn(b"BAD", client.command(b"SEARCH SAVEDON yesterday"))

    # -- PREVIEW ----------------------------------------------------------------------------------

    def test_preview_is_the_text_collapsed_and_lazy_answers_the_same(self) -> None:
        self.append(PLAIN, HTML)
        client = self.client()
        reply = client.ok(b"FETCH 1:2 (PREVIEW)")
        self.assertIn(b'* 1 FETCH (PREVIEW "first body line two")\r\n', reply)
        self.assertIn(b'* 2 FETCH (PREVIEW "Hello there")\r\n', reply)
        self.assertEqual(client.ok(b"FETCH 1:2 (PREVIEW (LAZY))").replace(b"t4 OK", b"t3 OK"), reply)
        self.assertIn(b"t5 BAD", client.command(b"FETCH 1 (PREVIEW (FAST))"))

    def test_a_preview_is_computed_once_and_then_read_from_the_cache(self) -> None:
        self.append(PLAIN)
        client = self.client()
        client.ok(b"FETCH 1 (PREVIEW)")
        opened = list(self.inbox._state.opened)
        self.assertEqual(opened, [1])
        for _ in range(3):
            self.assertIn(b'PREVIEW "first body line two"', client.ok(b"FETCH 1 (PREVIEW THREADID ENVELOPE)"))
        self.assertEqual(self.inbox._state.opened, opened)

    def test_preview_beside_a_body_section_is_the_cached_one(self) -> None:
        self.append(HTML)
        client = self.client()
        reply = client.ok(b"FETCH 1 (PREVIEW BODY.PEEK[TEXT] EMAILID)")
        self.assertIn(b'PREVIEW "Hello there"', reply)
        self.assertEqual(literal(reply, b"BODY[TEXT]"), b"<p>Hello <b>there</b></p>\r\n")
        self.assertRegex(reply, rb"EMAILID \(M\d+\)\)\r\n")

    def test_a_non_ascii_preview_is_a_literal_of_its_utf_8(self) -> None:
        self.append("Content-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n".encode())
        self.assertEqual(literal(self.client().ok(b"FETCH 1 (PREVIEW)"), b"PREVIEW"), "Grüße".encode())

    # -- with CONDSTORE ---------------------------------------------------------------------------

    def test_changedsince_selects_the_messages_and_the_object_items_come_with_modseq(self) -> None:
        self.append(PLAIN, HTML)
        client = self.client()
        reply = client.ok(b"FETCH 1:2 (FLAGS)")
        client.ok(b"STORE 2 +FLAGS (\\Seen)")
        modseq = int(re.findall(rb"MODSEQ \((\d+)\)", client.ok(b"FETCH 1 (MODSEQ)"))[0])
        reply = client.ok(b"FETCH 1:2 (EMAILID SAVEDATE) (CHANGEDSINCE %d)" % modseq)
        self.assertNotIn(b"* 1 FETCH", reply)
        self.assertRegex(reply, rb'\* 2 FETCH \(EMAILID \(M\d+\) SAVEDATE " 4-Mar-2020 05:06:07 \+0000" MODSEQ \(\d+\)\)')

    # -- with NOTIFY ------------------------------------------------------------------------------

    def test_notify_messagenew_fetch_atts_may_name_the_object_items(self) -> None:
        client = self.client()
        client.ok(b"NOTIFY SET (SELECTED (MessageNew (UID EMAILID SAVEDATE PREVIEW) MessageExpunge))")
        client.transport.clear()
        self.append(PLAIN)
        emailid = self.successResultOf(self.inbox.origins([1]))[1].emailid.encode()
        self.assertIn(
            b'* 1 FETCH (UID 1 EMAILID (' + emailid + b') SAVEDATE " 4-Mar-2020 05:06:07 +0000" PREVIEW "first body line two")\r\n',
            client.transport.value(),
        )
