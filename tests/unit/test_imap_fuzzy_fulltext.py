"""
SEARCH FUZZY answered from the full-text index (L{mailapp.store.fulltext})
over StringTransport on the real Maildir store: every answer is the one
reading the files gives (the index checks the same rule), messages not
indexed yet are read and found alike, a search the index decides opens no
file it covers, and RELEVANCY ranks the message that says it most.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import inlineCallbacks, succeed

from mailapp.store import fulltext
from mailapp.store.folder import MaildirFolder
from mailapp.store.names import mailbox_directory
from tests.store_sessions import ALICE, StoreSessionCase
from tests.unit.test_imap_fulltext_search import VARIED

MORE = [
    b"Subject: reminder\r\n\r\nInvoice, invoice, invoice: the invoice is overdue.\r\n",
    b"Subject: ticket\r\n\r\nYour train to Zurich leaves at nine.\r\n",
    b"Subject: short\r\n\r\nfish tacos and a fishy story\r\n",
]

QUERIES = [
    b'FUZZY BODY "invioce"',
    b'FUZZY BODY "invoice"',
    b'FUZZY TEXT "invioce"',
    b'FUZZY BODY "ledgre"',
    b'FUZZY BODY "chisp fihs"',
    b"CHARSET UTF-8 FUZZY BODY z\xc3\xbcrich",
    b"CHARSET UTF-8 FUZZY BODY gr\xc3\xbcsse",
    b'FUZZY BODY "forwarded wrods"',
    b'FUZZY BODY "tacos"',
    b'FUZZY BODY "tacso"',
    b'NOT FUZZY BODY "invioce"',
    b'OR FUZZY BODY "ledgre" FUZZY TEXT "subjetc: fwd"',
    b'FUZZY BODY "invioce" BODY "pay"',
    b'FUZZY BODY "invioce" FUZZY SUBJECT "remindr"',
    b'FUZZY BODY "no such wordz"',
]


class FuzzyFullTextTests(StoreSessionCase):
    @inlineCallbacks
    def delivered(self) -> Any:
        for raw in VARIED + MORE:
            yield self.deliver(raw)
        yield self.store.fulltext.caughtUp()

    @inlineCallbacks
    def test_answers_equal_the_scan_of_the_files(self) -> None:
        yield self.delivered()
        # One more the indexer is not told of: it must be found by reading it.
        self.patch(self.store.fulltext, "changed", lambda mailbox_dir: None)
        late = yield self.deliver(MORE[0])
        protocol, transport = yield self.session()
        indexed = yield self.answers(protocol, transport, QUERIES)
        self.patch(MaildirFolder, "searchText", lambda folder, terms, approximate=(): succeed(None))
        scanned = yield self.answers(protocol, transport, QUERIES)
        self.assertEqual(indexed, scanned)
        self.assertEqual(scanned[b'FUZZY BODY "invioce"'], [b"* SEARCH 1 2 3 4 5 8 11 %d" % late])
        self.assertEqual(scanned[b'FUZZY BODY "tacso"'], [b"* SEARCH 13"])
        self.assertEqual(scanned[b"CHARSET UTF-8 FUZZY BODY z\xc3\xbcrich"], [b"* SEARCH 12"])

    @inlineCallbacks
    def test_a_fuzzy_search_the_index_decides_reads_only_what_it_does_not_cover(self) -> None:
        yield self.delivered()
        self.patch(self.store.fulltext, "changed", lambda mailbox_dir: None)
        late = yield self.deliver(MORE[0])
        protocol, transport = yield self.session()
        self.opened.clear()
        reply = yield self.command(protocol, transport, b'UID SEARCH FUZZY BODY "invioce"')
        self.assertIn(b"* SEARCH 1 2 3 4 5 8 11 %d\r\n" % late, reply)
        # The message delivered since, and the delivery report the index cannot read exactly.
        self.assertEqual(sorted(self.opened), [8, late])

    @inlineCallbacks
    def test_relevancy_gives_the_best_match_100_and_an_unindexed_one_50_and_sort_ranks_by_it(self) -> None:
        yield self.delivered()
        self.patch(self.store.fulltext, "changed", lambda mailbox_dir: None)
        late = yield self.deliver(MORE[2])
        protocol, transport = yield self.session()
        reply = yield self.command(protocol, transport, b'UID SEARCH RETURN (RELEVANCY ALL) FUZZY BODY "invioce"')
        match = re.search(rb"\* ESEARCH \(TAG \"t\"\) UID ALL (\S+) RELEVANCY \(([\d ]+)\)\r\n", reply)
        assert match is not None, reply
        self.assertEqual(match.group(1), b"1:5,8,11")
        scores = dict(zip([1, 2, 3, 4, 5, 8, 11], [int(s) for s in match.group(2).split()]))
        self.assertEqual(scores[11], 100)  # "invoice" four times in a short text
        self.assertTrue(all(1 <= score < 100 for uid, score in scores.items() if uid not in (8, 11)), scores)
        self.assertEqual(scores[8], 50)  # the delivery report: read, not ranked
        reply = yield self.command(protocol, transport, b'UID SORT (RELEVANCY) UTF-8 FUZZY BODY "invioce"')
        ranked = sorted(scores, key=lambda uid: (-scores[uid], uid))
        self.assertIn(b"* SORT " + b" ".join(b"%d" % uid for uid in ranked) + b"\r\n", reply)
        self.assertTrue(reply.startswith(b"* SORT 11 "), reply)
        reply = yield self.command(protocol, transport, b'UID SEARCH RETURN (RELEVANCY) FUZZY BODY "tacso"')
        self.assertIn(b'* ESEARCH (TAG "t") UID ALL 13:%d RELEVANCY (100 50)\r\n' % late, reply)

    def test_the_index_alone_checks_approximate_words_exactly(self) -> None:
        """The store's answer itself: the candidates by head or tail, and by every text for a short word."""
        return self._store_answer()

    @inlineCallbacks
    def _store_answer(self) -> Any:
        yield self.delivered()
        folder = yield self.store.mailbox(ALICE).folder("INBOX")
        uidvalidity = (yield folder.status()).uidvalidity
        directory = mailbox_directory(self.root, ALICE)
        answer = fulltext.search(directory, "INBOX", uidvalidity, [], [("body", "invioce"), ("body", "tacso"), ("subject", "remindr")])
        assert answer is not None
        self.assertEqual(answer.approximate[("body", "invioce")], frozenset({1, 2, 3, 4, 5, 11}))
        self.assertEqual(answer.approximate[("body", "tacso")], frozenset({13}))
        self.assertEqual(answer.approximate[("subject", "remindr")], frozenset({11}))
        self.assertEqual(set(answer.relevance), {1, 2, 3, 4, 5, 11, 13})
        alone = fulltext.search(directory, "INBOX", uidvalidity, [], [("body", "invioce")])
        assert alone is not None
        self.assertEqual(max(alone.relevance, key=alone.relevance.__getitem__), 11)
