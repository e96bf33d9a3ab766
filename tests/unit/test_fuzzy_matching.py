"""
The approximate word rule of SEARCH FUZZY (L{mailapp.store.fuzzy}): one
letter substituted, missing or extra, or two swapped, in words of five
letters or more; exact words otherwise; case and non-ASCII letters; exact
matches always match.
"""

from __future__ import annotations

import sqlite3

from twisted.trial.unittest import TestCase

from mailapp.store import fulltext, fuzzy
from mailapp.store.fuzzy import Approximate


def _matches(query: str, text: str) -> bool:
    """Whether C{text} matches the fuzzy string C{query} (every word found), as a search decides it."""
    return all(fuzzy.find(needle, text.casefold()) is not None for needle in fuzzy.needles(query))


class WithinOneEditTests(TestCase):
    def test_one_edit_of_each_kind_is_within(self) -> None:
        for candidate in ("invoice", "invoize", "invoce", "invoicce", "invioce", "nvoice", "invoic", "xinvoice"[:8]):
            self.assertTrue(fuzzy.within_one_edit(candidate, "invoice"), candidate)

    def test_two_edits_are_not(self) -> None:
        for candidate in ("invoizz", "inovce", "invo", "invoicexx", "nivoiec"):
            self.assertFalse(fuzzy.within_one_edit(candidate, "invoice"), candidate)


class FuzzyMatchTests(TestCase):
    def test_a_substituted_letter_matches(self) -> None:
        self.assertTrue(_matches("invoise", "Please pay the invoice today."))

    def test_a_missing_letter_matches(self) -> None:
        self.assertTrue(_matches("invoce", "Please pay the invoice today."))

    def test_an_extra_letter_matches(self) -> None:
        self.assertTrue(_matches("invoicce", "Please pay the invoice today."))

    def test_two_swapped_letters_match(self) -> None:
        self.assertTrue(_matches("invioce", "Please pay the invoice today."))

    def test_a_typo_at_either_end_matches(self) -> None:
        self.assertTrue(_matches("xnvoice", "the invoice"))
        self.assertTrue(_matches("invoicx", "the invoice"))

    def test_two_typos_do_not_match(self) -> None:
        self.assertFalse(_matches("inviose", "Please pay the invoice today."))

    def test_short_words_must_be_exact(self) -> None:
        self.assertTrue(_matches("pay", "Please pay"))
        self.assertFalse(_matches("pey", "Please pay"))
        self.assertFalse(_matches("tody", "Please pay today"))

    def test_five_letter_words_take_one_edit(self) -> None:
        self.assertTrue(_matches("tpday", "pay today"))
        self.assertTrue(_matches("hallo", "Hello world"))

    def test_case_is_ignored(self) -> None:
        self.assertTrue(_matches("INVIOCE", "Invoice"))

    def test_non_ascii_letters_are_letters(self) -> None:
        self.assertTrue(_matches("zürih", "Grüße aus Zürich"))
        self.assertTrue(_matches("zurich", "Grüße aus Zürich"))
        self.assertTrue(_matches("grüsse", "Grüße aus Zürich"))  # ß folds to ss
        self.assertTrue(_matches("grüse", "Grüße aus Zürich"))

    def test_every_word_must_match_in_any_order(self) -> None:
        self.assertTrue(_matches("todya invioce", "Please pay the invoice today."))
        self.assertFalse(_matches("invoice yesterday", "Please pay the invoice today."))

    def test_an_exact_match_always_matches(self) -> None:
        text = "Re: [list] a-b c.d invoice#42, naïve café; x"
        for start in range(len(text)):
            for end in range(start + 1, len(text) + 1):
                query = text[start:end]
                if fuzzy.needles(query):
                    self.assertTrue(_matches(query, text), query)

    def test_a_string_without_words_is_matched_exactly(self) -> None:
        self.assertEqual(fuzzy.needles("a-b"), ())
        self.assertEqual(fuzzy.needles("--"), ())

    def test_words_are_found_and_short_ones_dropped(self) -> None:
        self.assertEqual(fuzzy.needles("an Invoice for pay"), (Approximate("invoice"), "for", "pay"))

    def test_the_found_string_is_what_occurs(self) -> None:
        self.assertEqual(fuzzy.find(Approximate("invioce"), "the invoice today"), "invoice")
        self.assertEqual(fuzzy.find(Approximate("invoice"), "the invoice today"), "invoice")
        self.assertIsNone(fuzzy.find(Approximate("invoice"), "nothing here"))

    def test_head_or_tail_survives_every_single_edit(self) -> None:
        word = "abcdefgh"
        head, tail = fuzzy.pieces(word)
        letters = "xy"
        variants = set()
        for i in range(len(word) + 1):
            for c in letters:
                variants.add(word[:i] + c + word[i:])
                variants.add(word[:i] + c + word[i + 1 :])
            variants.add(word[:i] + word[i + 1 :])
            if i + 1 < len(word):
                variants.add(word[:i] + word[i + 1] + word[i] + word[i + 2 :])
        for variant in variants:
            self.assertTrue(head in variant or tail in variant, variant)
            self.assertEqual(fuzzy.find(Approximate(word), variant) is not None, True, variant)


def _one_edit_variants(word: str, letters: str = "xé") -> set[str]:
    variants = set()
    for i in range(len(word) + 1):
        for c in letters:
            variants.add(word[:i] + c + word[i:])
            if i < len(word):
                variants.add(word[:i] + c + word[i + 1 :])
        if i < len(word):
            variants.add(word[:i] + word[i + 1 :])
        if i + 1 < len(word):
            variants.add(word[:i] + word[i + 1] + word[i] + word[i + 2 :])
    return variants


class CandidateQueryTests(TestCase):
    """The full-text index's candidates for an approximate word (L{fulltext._candidates_query}) miss no one-edit variant."""

    def test_every_one_edit_variant_is_a_candidate(self) -> None:
        for word in ("invoice", "budget", "zürich", "quarterly", "zebra", "tacos"):
            query, patterns = fulltext._candidates_query(word)
            conn = sqlite3.connect(":memory:")
            conn.execute("CREATE VIRTUAL TABLE t USING fts5(body, tokenize = 'trigram case_sensitive 1')")
            variants = sorted(_one_edit_variants(word))
            conn.executemany("INSERT INTO t (rowid, body) VALUES (?, ?)", [(n + 1, f"see the {v} here") for n, v in enumerate(variants)])
            conn.execute("INSERT INTO t (rowid, body) VALUES (1000, 'nothing like it at all')")
            found = {row[0] for row in conn.execute("SELECT rowid FROM t WHERE t MATCH ?", ("{body} : (" + query + ")",))}
            for pattern in patterns:
                found |= {row[0] for row in conn.execute("SELECT rowid FROM t WHERE body GLOB ?", (pattern,))}
            self.assertEqual(found, set(range(1, len(variants) + 1)), word)

    def test_only_a_five_letter_word_needs_a_pattern(self) -> None:
        self.assertEqual(fulltext._candidates_query("zebra")[1], ["*ze?ra*"])
        self.assertEqual(fulltext._candidates_query("zebras")[1], [])
