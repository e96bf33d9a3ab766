"""
SEARCH FUZZY and the RELEVANCY return option (RFC 6203) over
L{StringTransport} with the fakes (no full-text index: every message is
read and checked with the approximate rule): the capability, FUZZY before
text keys, nested in OR and NOT and before non-text keys, RELEVANCY's
answer, and the BAD cases.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import TestCase

from mailapp.testing import FakeStore, build_factory, service_context
from tests.protocol.accounts import make_accounts
from tests.protocol.test_imap_conformance import PASSWORD, USER, Client


def _message(subject: str, sender: str, body: str) -> bytes:
    return f"From: {sender}\r\nTo: rcpt@example.test\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode()


MESSAGES = [
    _message("Your invoice", "Billing <billing@shop.test>", "Please pay the invoice by Friday."),
    _message("Meeting notes", "Carol <carol@x.test>", "Notes from the meeting in Zürich."),
    _message("Holiday", "Bob <bob@x.test>", "Photos of the beach, no invoices here."),
    _message("Lunch", "Dave <dave@x.test>", "Pizza at noon?"),
]


class FuzzySearchTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        self.inbox = self.successResultOf(self.store.mailbox(USER.decode()).folder("INBOX"))
        for n, raw in enumerate(MESSAGES):
            self.successResultOf(self.inbox.append(raw, internaldate=1_700_000_000.0 + n))
        self.session = Client(self, self.factory)
        self.session.ok(b"LOGIN " + USER + b" " + PASSWORD)
        self.session.ok(b"SELECT INBOX")

    def search(self, arguments: bytes) -> bytes:
        reply = self.session.ok(b"SEARCH " + arguments)
        lines = [line for line in reply.split(b"\r\n") if line.startswith((b"* SEARCH", b"* ESEARCH"))]
        assert len(lines) == 1, reply
        return lines[0]

    def test_capability_announces_search_fuzzy(self) -> None:
        self.assertIn(b" SEARCH=FUZZY ", self.session.ok(b"CAPABILITY"))

    def test_fuzzy_body_finds_a_typo(self) -> None:
        self.assertEqual(self.search(b'FUZZY BODY "invioce"'), b"* SEARCH 1 3")

    def test_body_without_fuzzy_stays_exact(self) -> None:
        self.assertEqual(self.search(b'BODY "invioce"'), b"* SEARCH")

    def test_fuzzy_still_finds_the_exact_string(self) -> None:
        self.assertEqual(self.search(b'FUZZY BODY "invoice"'), self.search(b'BODY "invoice"'))

    def test_fuzzy_words_match_in_any_order(self) -> None:
        self.assertEqual(self.search(b'FUZZY BODY "frday invoice"'), b"* SEARCH 1")

    def test_fuzzy_subject_from_and_header(self) -> None:
        self.assertEqual(self.search(b"FUZZY SUBJECT metting"), b"* SEARCH 2")
        self.assertEqual(self.search(b"FUZZY FROM billign"), b"* SEARCH 1")
        self.assertEqual(self.search(b'FUZZY HEADER To "rcpt@exmaple.test"'), b"* SEARCH 1 2 3 4")
        self.assertEqual(self.search(b"FUZZY TEXT zurich"), b"* SEARCH 2")

    def test_fuzzy_applies_only_to_the_key_it_precedes(self) -> None:
        self.assertEqual(self.search(b"FUZZY SUBJECT metting BODY notez"), b"* SEARCH")
        self.assertEqual(self.search(b"SUBJECT metting FUZZY BODY notez"), b"* SEARCH")
        self.assertEqual(self.search(b"FUZZY SUBJECT metting FUZZY BODY notez"), b"* SEARCH 2")

    def test_fuzzy_nested_in_or_and_not(self) -> None:
        self.assertEqual(self.search(b"OR FUZZY BODY invioce FUZZY SUBJECT lunnch"), b"* SEARCH 1 3 4")
        self.assertEqual(self.search(b"FUZZY OR BODY invioce SUBJECT lunnch"), b"* SEARCH 1 3 4")
        self.assertEqual(self.search(b"NOT FUZZY BODY invioce"), b"* SEARCH 2 4")
        self.assertEqual(self.search(b"FUZZY (NOT BODY invioce SUBJECT holidya)"), b"* SEARCH")
        self.assertEqual(self.search(b"FUZZY (BODY invioce SUBJECT holidya)"), b"* SEARCH 3")

    def test_fuzzy_before_a_non_text_key_changes_nothing(self) -> None:
        self.assertEqual(self.search(b"FUZZY ALL"), b"* SEARCH 1 2 3 4")
        self.assertEqual(self.search(b"FUZZY 2:3"), b"* SEARCH 2 3")
        self.assertEqual(self.search(b"FUZZY UNSEEN FUZZY BODY pizza"), b"* SEARCH 4")

    def test_relevancy_scores_follow_the_result_order(self) -> None:
        line = self.search(b'RETURN (RELEVANCY ALL) FUZZY BODY "invioce"')
        match = re.fullmatch(rb'\* ESEARCH \(TAG "t\d+"\) ALL 1,3 RELEVANCY \((\d+) (\d+)\)', line)
        assert match is not None, line
        for score in match.groups():
            self.assertTrue(1 <= int(score) <= 100)

    def test_relevancy_alone_answers_all_with_it(self) -> None:
        self.assertRegex(self.search(b"RETURN (RELEVANCY) FUZZY SUBJECT lunnch").decode(), r'^\* ESEARCH \(TAG "t\d+"\) ALL 4 RELEVANCY \(\d+\)$')

    def test_relevancy_with_uid_search_and_count(self) -> None:
        reply = self.session.ok(b"UID SEARCH RETURN (COUNT RELEVANCY) FUZZY BODY nothere")
        self.assertRegex(reply.decode(), r'\* ESEARCH \(TAG "t\d+"\) UID COUNT 0 RELEVANCY \(\)\r\n')

    def test_fuzzy_with_an_empty_return_list_is_esearch_all(self) -> None:
        self.assertRegex(self.search(b"RETURN () FUZZY BODY invioce").decode(), r'^\* ESEARCH \(TAG "t\d+"\) ALL 1,3$')

    def test_relevancy_without_a_fuzzy_key_is_bad(self) -> None:
        self.assertIn(b" BAD ", self.session.command(b'SEARCH RETURN (RELEVANCY ALL) BODY "invoice"'))
        self.assertIn(b" BAD ", self.session.command(b"SEARCH RETURN (RELEVANCY) ALL"))

    def test_fuzzy_without_a_key_is_bad(self) -> None:
        self.assertIn(b" BAD ", self.session.command(b"SEARCH FUZZY"))
        self.assertIn(b" BAD ", self.session.command(b"SEARCH NOT FUZZY"))

    def test_fuzzy_of_an_unknown_key_is_bad(self) -> None:
        self.assertIn(b" BAD ", self.session.command(b"SEARCH FUZZY FROBNICATE x"))

    def test_relevancy_as_a_search_key_is_bad(self) -> None:
        self.assertIn(b" BAD ", self.session.command(b"SEARCH RELEVANCY FUZZY BODY invoice"))

    def test_relevancy_with_save_alone_still_answers_the_scores(self) -> None:
        self.assertRegex(self.search(b"RETURN (SAVE RELEVANCY) FUZZY BODY invioce").decode(), r'^\* ESEARCH \(TAG "t\d+"\) RELEVANCY \(50 50\)$')
        self.assertEqual(self.search(b"$"), b"* SEARCH 1 3")

    def test_a_live_fuzzy_search_reports_a_new_message_with_the_typo_matching(self) -> None:
        self.session.ok(b"UID SEARCH RETURN (UPDATE) FUZZY BODY invioce")
        uid = self.successResultOf(self.inbox.append(_message("again", "x@y.test", "A second INVOICE reminder.")))
        reply = self.session.ok(b"NOOP")
        self.assertRegex(reply.decode(), r'\* ESEARCH \(TAG "t\d+"\) UID ADDTO \(3 %d\)\r\n' % uid)

    def test_relevancy_with_update_is_bad(self) -> None:
        self.assertIn(b" BAD ", self.session.command(b"SEARCH RETURN (UPDATE RELEVANCY) FUZZY BODY invoice"))

    # -- SORT (RELEVANCY), RFC 6203 section 4 ----------------------------------------------------

    def test_sort_by_relevancy_keeps_sequence_order_among_equal_scores(self) -> None:
        # Nothing here is indexed: every match is read, and scores the same.
        reply = self.session.ok(b"SORT (RELEVANCY) UTF-8 FUZZY OR BODY invioce SUBJECT lunnch")
        self.assertIn(b"* SORT 1 3 4\r\n", reply)

    def test_sort_return_relevancy_answers_the_scores_in_sort_order(self) -> None:
        reply = self.session.ok(b"SORT RETURN (ALL RELEVANCY) (REVERSE ARRIVAL) UTF-8 FUZZY BODY invioce")
        self.assertRegex(reply.decode(), r'\* ESEARCH \(TAG "t\d+"\) ALL 3,1 RELEVANCY \(50 50\)\r\n')

    def test_sort_by_relevancy_without_a_fuzzy_key_is_bad(self) -> None:
        self.assertIn(b" BAD ", self.session.command(b"SORT (RELEVANCY) UTF-8 BODY invoice"))
        self.assertIn(b" BAD ", self.session.command(b"SORT RETURN (RELEVANCY) (ARRIVAL) UTF-8 ALL"))
