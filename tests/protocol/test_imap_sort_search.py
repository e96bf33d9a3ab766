"""
SORT and THREAD (RFC 5256, 5957), ESEARCH (RFC 4731), SEARCHRES (RFC 5182)
and ESORT/PARTIAL (RFC 5267) over L{StringTransport} with the fakes.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from mailapp.testing import FakeStore, HeldThreadPool, build_factory, service_context
from tests.protocol.accounts import make_accounts
from tests.protocol.test_imap_conformance import PASSWORD, USER, Client


def _message(subject: str, sender: str, date: str, extra: str = "", body: str = "body\r\n") -> bytes:
    return f"From: {sender}\r\nTo: rcpt@example.test\r\nSubject: {subject}\r\nDate: {date}\r\n{extra}\r\n{body}".encode()


#: Five messages: arrival order 1..5 (internal dates), sent dates and sizes in other orders.
MESSAGES = [
    _message("Re: beta", "Carol <carol@x.test>", "Tue, 3 Jan 2023 10:00:00 +0000", "Message-ID: <b2@x>\r\nReferences: <b1@x>\r\n"),
    _message("alpha", "alice@x.test", "Sun, 1 Jan 2023 10:00:00 +0000", "Message-ID: <a1@x>\r\n", body="a much longer body\r\n" * 5),
    _message("beta", "Bob <bob@x.test>", "Mon, 2 Jan 2023 10:00:00 +0000", "Message-ID: <b1@x>\r\n"),
    _message("[list] Fwd: alpha", "dave@x.test", "Wed, 4 Jan 2023 10:00:00 +0000", "Message-ID: <a2@x>\r\nIn-Reply-To: <a1@x>\r\n"),
    _message("gamma", "Eve <eve@x.test>", "Thu, 5 Jan 2023 10:00:00 +0000", "Message-ID: <g1@x>\r\n"),
]


class SortSearchTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        self.inbox = self.successResultOf(self.store.mailbox(USER.decode()).folder("INBOX"))
        self.uids = [self.successResultOf(self.inbox.append(m, internaldate=1_700_000_000.0 + n)) for n, m in enumerate(MESSAGES)]

    def client(self) -> Client:
        client = Client(self, self.factory)
        client.ok(b"LOGIN " + USER + b" " + PASSWORD)
        client.ok(b"SELECT INBOX")
        return client

    def untagged(self, reply: bytes, word: bytes) -> bytes:
        lines = [line for line in reply.split(b"\r\n") if line.upper().startswith(b"* " + word)]
        assert len(lines) == 1, reply
        return lines[0]

    # -- capabilities ---------------------------------------------------------------------------

    def test_capability_lists_sort_thread_and_the_search_extensions(self) -> None:
        reply = self.client().ok(b"CAPABILITY")
        for capability in (b"SORT", b"SORT=DISPLAY", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES", b"ESEARCH", b"SEARCHRES", b"ESORT", b"CONTEXT=SEARCH", b"CONTEXT=SORT"):
            self.assertIn(b" " + capability + b" ", reply + b" ")

    # -- SORT -----------------------------------------------------------------------------------

    def test_sort_by_date_uses_the_sent_date(self) -> None:
        self.assertEqual(self.untagged(self.client().ok(b"SORT (DATE) UTF-8 ALL"), b"SORT"), b"* SORT 2 3 1 4 5")

    def test_sort_by_subject_compares_base_subjects_then_sequence(self) -> None:
        self.assertEqual(self.untagged(self.client().ok(b"SORT (SUBJECT) US-ASCII ALL"), b"SORT"), b"* SORT 2 4 1 3 5")

    def test_sort_reverse_applies_to_its_own_key_only(self) -> None:
        self.assertEqual(self.untagged(self.client().ok(b"SORT (SUBJECT REVERSE ARRIVAL) UTF-8 ALL"), b"SORT"), b"* SORT 4 2 3 1 5")

    def test_sort_by_size_and_from_and_displayfrom(self) -> None:
        client = self.client()
        self.assertTrue(self.untagged(client.ok(b"SORT (REVERSE SIZE) UTF-8 ALL"), b"SORT").startswith(b"* SORT 2 "))
        self.assertEqual(self.untagged(client.ok(b"SORT (FROM) UTF-8 ALL"), b"SORT"), b"* SORT 2 3 1 4 5")
        self.assertEqual(self.untagged(client.ok(b"SORT (DISPLAYFROM) UTF-8 ALL"), b"SORT"), b"* SORT 2 3 1 4 5")

    def test_sort_applies_the_search_keys_first(self) -> None:
        self.assertEqual(self.untagged(self.client().ok(b"SORT (DATE) UTF-8 SUBJECT beta"), b"SORT"), b"* SORT 3 1")

    def test_uid_sort_answers_uids(self) -> None:
        reply = self.client().ok(b"UID SORT (DATE) UTF-8 ALL")
        expected = [self.uids[i] for i in (1, 2, 0, 3, 4)]
        self.assertEqual(self.untagged(reply, b"SORT"), b"* SORT " + b" ".join(b"%d" % u for u in expected))

    def count_reads(self) -> list[int]:
        """From now on, the UID of each message file read, one by one or a batch at a time (IFolder.readMessages)."""
        read: list[int] = []
        folder_class = type(self.inbox)
        original_open, original_read = folder_class.openMessage, folder_class.readMessages

        def opening(folder, uid: int):  # type: ignore[no-untyped-def]
            read.append(uid)
            return original_open(folder, uid)

        def reading(folder, uids, limit):  # type: ignore[no-untyped-def]
            return original_read(folder, uids, limit).addCallback(lambda found: read.extend(found) or found)

        self.patch(folder_class, "openMessage", opening)
        self.patch(folder_class, "readMessages", reading)
        return read

    def test_sort_with_an_unknown_charset_is_no_badcharset(self) -> None:
        reply = self.client().command(b"SORT (DATE) KOI8-R ALL")
        self.assertIn(b"t3 NO [BADCHARSET (UTF-8 US-ASCII)]", reply)

    def test_sort_with_a_bad_criterion_is_bad(self) -> None:
        self.assertIn(b"t3 BAD", self.client().command(b"SORT (NAME) UTF-8 ALL"))
        self.assertIn(b"t3 BAD", self.client().command(b"SORT DATE UTF-8 ALL"))

    def test_sort_reads_each_message_file_once_even_when_the_search_reads_headers(self) -> None:
        type(self.inbox)
        client = self.client()
        opened = self.count_reads()
        client.ok(b"SORT (SUBJECT) UTF-8 HEADER Message-ID x")
        self.assertEqual(sorted(opened), sorted(self.uids))

    def test_a_second_sort_takes_its_keys_from_the_cached_envelopes_and_opens_no_file(self) -> None:
        client = self.client()
        first = client.ok(b"SORT (REVERSE DATE FROM) UTF-8 ALL")
        type(self.inbox)
        opened = self.count_reads()
        second = client.ok(b"SORT (REVERSE DATE FROM) UTF-8 ALL")
        self.assertEqual(self.untagged(second, b"SORT"), self.untagged(first, b"SORT"))
        self.assertEqual(self.untagged(second, b"SORT"), b"* SORT 5 4 1 3 2")
        self.assertEqual(opened, [])
        self.assertEqual(self.untagged(client.ok(b"THREAD ORDEREDSUBJECT UTF-8 ALL"), b"THREAD"), b"* THREAD (2 4)(3 1)(5)")
        self.assertEqual(opened, [])

    def test_sort_after_a_cached_header_search_uses_the_envelopes_that_search_loaded(self) -> None:
        from twisted.internet.defer import succeed

        folder_class = type(self.inbox)
        opened = self.count_reads()
        # The cache fills as the search reads, but its save has not landed when SORT asks.
        self.patch(folder_class, "saveStructures", lambda folder, blobs, version: succeed(0))
        reply = self.client().ok(b"SORT (FROM) UTF-8 SUBJECT beta")
        self.assertEqual(self.untagged(reply, b"SORT"), b"* SORT 3 1")
        self.assertEqual(sorted(opened), sorted(self.uids))

    def test_thread_references_with_a_header_search_reads_each_file_once_on_a_cold_cache(self) -> None:
        type(self.inbox)
        opened = self.count_reads()
        reply = self.client().ok(b"THREAD REFERENCES UTF-8 SUBJECT beta")
        self.assertEqual(self.untagged(reply, b"THREAD"), b"* THREAD (3 1)")
        self.assertEqual(sorted(opened), sorted(self.uids))

    def test_sort_reads_and_parses_headers_on_the_store_pool_not_the_reactor(self) -> None:
        pool = HeldThreadPool()
        self.context.pools.store = pool
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        client = self.client()
        pool.held = True
        reply = client.command(b"SORT (SUBJECT) UTF-8 ALL")
        self.assertTrue(pool.jobs)
        self.assertNotIn(b"* SORT", reply)
        pool.run()
        self.assertIn(b"* SORT 2 4 1 3 5\r\nt3 OK SORT completed\r\n", client.transport.value())

    # -- THREAD ---------------------------------------------------------------------------------

    def test_thread_references_links_replies_and_gathers_by_subject(self) -> None:
        reply = self.client().ok(b"THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(self.untagged(reply, b"THREAD"), b"* THREAD (2 4)(3 1)(5)")

    def test_thread_orderedsubject_groups_by_base_subject(self) -> None:
        reply = self.client().ok(b"THREAD ORDEREDSUBJECT UTF-8 ALL")
        self.assertEqual(self.untagged(reply, b"THREAD"), b"* THREAD (2 4)(3 1)(5)")

    def test_uid_thread_answers_uids_and_an_empty_result_is_a_bare_thread(self) -> None:
        client = self.client()
        reply = client.ok(b"UID THREAD REFERENCES UTF-8 SUBJECT gamma")
        self.assertEqual(self.untagged(reply, b"THREAD"), b"* THREAD (%d)" % self.uids[4])
        self.assertEqual(self.untagged(client.ok(b"THREAD REFERENCES UTF-8 SUBJECT nothing"), b"THREAD"), b"* THREAD")

    def test_thread_with_an_unknown_algorithm_is_bad(self) -> None:
        self.assertIn(b"t3 BAD", self.client().command(b"THREAD BYDATE UTF-8 ALL"))

    # -- ESEARCH --------------------------------------------------------------------------------

    def test_search_return_min_max_count_answers_one_esearch(self) -> None:
        reply = self.client().ok(b"SEARCH RETURN (MIN MAX COUNT) SUBJECT beta")
        self.assertEqual(self.untagged(reply, b"ESEARCH"), b'* ESEARCH (TAG "t3") MIN 1 MAX 3 COUNT 2')

    def test_search_return_empty_list_means_all_compressed(self) -> None:
        reply = self.client().ok(b"UID SEARCH RETURN () 1:2,4:5")
        uids = self.uids
        expected = b"%d:%d,%d:%d" % (uids[0], uids[1], uids[3], uids[4])
        self.assertEqual(self.untagged(reply, b"ESEARCH"), b'* ESEARCH (TAG "t3") UID ALL ' + expected)

    def test_search_return_with_no_match_sends_only_the_count(self) -> None:
        reply = self.client().ok(b"SEARCH RETURN (MIN ALL COUNT) SUBJECT nothing")
        self.assertEqual(self.untagged(reply, b"ESEARCH"), b'* ESEARCH (TAG "t3") COUNT 0')
        self.assertNotIn(b"* SEARCH", reply)

    def test_search_return_with_an_unknown_option_is_bad(self) -> None:
        self.assertIn(b"t3 BAD", self.client().command(b"SEARCH RETURN (FROB) ALL"))

    # -- PARTIAL and ESORT ----------------------------------------------------------------------

    def test_search_return_partial_pages_the_result_and_reorders_a_reversed_range(self) -> None:
        client = self.client()
        self.assertEqual(self.untagged(client.ok(b"SEARCH RETURN (PARTIAL 4:2) ALL"), b"ESEARCH"), b'* ESEARCH (TAG "t3") PARTIAL (2:4 2:4)')
        self.assertEqual(self.untagged(client.ok(b"SEARCH RETURN (PARTIAL 6:9) ALL"), b"ESEARCH"), b'* ESEARCH (TAG "t4") PARTIAL (6:9 NIL)')
        self.assertIn(b"t5 BAD", client.command(b"SEARCH RETURN (PARTIAL 1:*) ALL"))

    def test_sort_return_answers_esearch_in_sort_order(self) -> None:
        client = self.client()
        reply = client.ok(b"SORT RETURN (MIN MAX ALL COUNT) (DATE) UTF-8 ALL")
        self.assertEqual(self.untagged(reply, b"ESEARCH"), b'* ESEARCH (TAG "t3") MIN 2 MAX 5 ALL 2:3,1,4:5 COUNT 5')
        reply = client.ok(b"SORT RETURN (PARTIAL 1:2) (REVERSE DATE) UTF-8 ALL")
        self.assertEqual(self.untagged(reply, b"ESEARCH"), b'* ESEARCH (TAG "t4") PARTIAL (1:2 5,4)')

    # -- SEARCHRES ------------------------------------------------------------------------------

    def test_a_saved_result_is_used_by_fetch_store_and_search_as_dollar(self) -> None:
        client = self.client()
        reply = client.ok(b"SEARCH RETURN (SAVE) SUBJECT beta")
        self.assertNotIn(b"ESEARCH", reply)
        self.assertNotIn(b"* SEARCH", reply)
        reply = client.ok(b"FETCH $ (FLAGS)")
        self.assertEqual(sorted(line.split(b" ")[1] for line in reply.split(b"\r\n") if line.startswith(b"* ") and b" FETCH " in line), [b"1", b"3"])
        client.ok(b"STORE $ +FLAGS.SILENT (\\Flagged)")
        self.assertEqual(self.untagged(client.ok(b"SEARCH FLAGGED"), b"SEARCH"), b"* SEARCH 1 3")
        self.assertEqual(self.untagged(client.ok(b"SEARCH $ SUBJECT Re:"), b"SEARCH"), b"* SEARCH 1")
        self.assertEqual(self.untagged(client.ok(b"UID SEARCH UID $"), b"SEARCH"), b"* SEARCH %d %d" % (self.uids[0], self.uids[2]))

    def test_dollar_as_a_search_string_is_text_not_the_saved_result(self) -> None:
        client = self.client()
        client.ok(b"SEARCH RETURN (SAVE) ALL")
        self.assertEqual(self.untagged(client.ok(b"SEARCH SUBJECT $"), b"SEARCH"), b"* SEARCH")
        self.assertEqual(self.untagged(client.ok(b"SEARCH NOT $"), b"SEARCH"), b"* SEARCH")
        self.assertEqual(self.untagged(client.ok(b"SORT (DATE) UTF-8 $"), b"SORT"), b"* SORT 2 3 1 4 5")

    def test_save_with_min_saves_only_the_minimum(self) -> None:
        client = self.client()
        reply = client.ok(b"SEARCH RETURN (SAVE MIN) SUBJECT beta")
        self.assertEqual(self.untagged(reply, b"ESEARCH"), b'* ESEARCH (TAG "t3") MIN 1')
        self.assertEqual(self.untagged(client.ok(b"SEARCH $"), b"SEARCH"), b"* SEARCH 1")

    def test_the_saved_result_follows_expunges_and_is_empty_after_a_new_select(self) -> None:
        client = self.client()
        client.ok(b"SEARCH RETURN (SAVE) 2:3")
        client.ok(b"STORE 2 +FLAGS.SILENT (\\Deleted)")
        client.ok(b"EXPUNGE")
        self.assertEqual(self.untagged(client.ok(b"SEARCH $"), b"SEARCH"), b"* SEARCH 2")
        client.ok(b"SELECT INBOX")
        self.assertEqual(self.untagged(client.ok(b"SEARCH $"), b"SEARCH"), b"* SEARCH")
        self.assertNotIn(b"* ", client.ok(b"FETCH $ (FLAGS)"))

    def test_a_failed_search_with_save_empties_the_saved_result(self) -> None:
        client = self.client()
        client.ok(b"SEARCH RETURN (SAVE) ALL")
        self.assertIn(b"BAD", client.command(b"SEARCH RETURN (SAVE) FROB"))
        self.assertEqual(self.untagged(client.ok(b"SEARCH $"), b"SEARCH"), b"* SEARCH")

    def test_copy_of_the_saved_result_copies_those_messages(self) -> None:
        client = self.client()
        client.ok(b"CREATE Saved")
        client.ok(b"UID SEARCH RETURN (SAVE) SUBJECT gamma")
        client.ok(b"COPY $ Saved")
        saved = self.successResultOf(self.store.mailbox(USER.decode()).folder("Saved"))
        self.assertEqual(len(self.successResultOf(saved.messages())), 1)

    # -- CONTEXT=SEARCH, CONTEXT=SORT: live results -----------------------------------------------

    def test_a_live_search_reports_messages_entering_and_leaving_its_result(self) -> None:
        client = self.client()
        reply = client.ok(b"SEARCH RETURN (UPDATE) SEEN")
        self.assertEqual(self.untagged(reply, b"ESEARCH"), b'* ESEARCH (TAG "t3")')
        reply = client.ok(b"STORE 1,2,4 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(self.untagged(reply, b"ESEARCH"), b'* ESEARCH (TAG "t3") ADDTO (1 1:2,4)')
        reply = client.ok(b"STORE 2 -FLAGS.SILENT (\\Seen)")
        self.assertEqual(self.untagged(reply, b"ESEARCH"), b'* ESEARCH (TAG "t3") REMOVEFROM (2 2)')

    def test_a_live_search_sends_removefrom_before_the_expunge_it_is_about(self) -> None:
        client = self.client()
        client.ok(b"SEARCH RETURN (UPDATE ALL) SUBJECT beta")
        client.ok(b"STORE 3 +FLAGS.SILENT (\\Deleted)")
        reply = client.ok(b"EXPUNGE")
        self.assertIn(b'* ESEARCH (TAG "t3") REMOVEFROM (2 3)\r\n* 3 EXPUNGE\r\n', reply)

    def test_a_live_uid_search_reports_mail_another_session_delivers(self) -> None:
        client = self.client()
        client.ok(b"UID SEARCH RETURN (UPDATE) SUBJECT delta")
        uid = self.successResultOf(self.inbox.append(_message("delta", "x@y", "Fri, 6 Jan 2023 10:00:00 +0000")))
        reply = client.ok(b"NOOP")
        self.assertIn(b"* 6 EXISTS\r\n", reply)
        self.assertEqual(self.untagged(reply, b"ESEARCH"), b'* ESEARCH (TAG "t3") UID ADDTO (1 %d)' % uid)

    def test_cancelupdate_ends_a_live_search_and_an_unknown_tag_is_bad(self) -> None:
        client = self.client()
        client.ok(b"SEARCH RETURN (UPDATE) SEEN")
        client.ok(b'CANCELUPDATE "t3"')
        self.assertNotIn(b"ESEARCH", client.ok(b"STORE 1 +FLAGS.SILENT (\\Seen)"))
        self.assertIn(b"t6 BAD", client.command(b'CANCELUPDATE "t3"'))

    def test_a_live_sort_reports_positions_in_its_sort_order(self) -> None:
        client = self.client()
        reply = client.ok(b"SORT RETURN (UPDATE ALL) (DATE) UTF-8 UNSEEN")
        self.assertEqual(self.untagged(reply, b"ESEARCH"), b'* ESEARCH (TAG "t3") ALL 2:3,1,4:5')
        reply = client.ok(b"STORE 3 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(self.untagged(reply, b"ESEARCH"), b'* ESEARCH (TAG "t3") REMOVEFROM (2 3)')
        reply = client.ok(b"STORE 3 -FLAGS.SILENT (\\Seen)")
        self.assertEqual(self.untagged(reply, b"ESEARCH"), b'* ESEARCH (TAG "t3") ADDTO (2 3)')

    def test_a_new_select_ends_every_live_search(self) -> None:
        client = self.client()
        client.ok(b"SEARCH RETURN (UPDATE) SEEN")
        client.ok(b"SELECT INBOX")
        self.assertNotIn(b"ESEARCH", client.ok(b"STORE 1 +FLAGS.SILENT (\\Seen)"))

    def test_a_live_search_pushes_another_sessions_change_during_idle(self) -> None:
        watcher, other = self.client(), self.client()
        watcher.ok(b"SEARCH RETURN (UPDATE) FLAGGED")
        self.assertIn(b"+ ", watcher.command(b"IDLE"))
        watcher.transport.clear()
        other.ok(b"STORE 4 +FLAGS.SILENT (\\Flagged)")
        self.assertIn(b'* ESEARCH (TAG "t3") ADDTO (1 4)\r\n', watcher.transport.value())

    def test_a_live_sort_gives_each_removal_its_position_after_the_ones_before(self) -> None:
        client = self.client()
        client.ok(b"SORT RETURN (UPDATE) (DATE) UTF-8 UNSEEN")
        reply = client.ok(b"STORE 1,3 +FLAGS.SILENT (\\Seen)")
        self.assertIn(b'* ESEARCH (TAG "t3") REMOVEFROM (2 3)\r\n* ESEARCH (TAG "t3") REMOVEFROM (2 1)\r\n', reply)
