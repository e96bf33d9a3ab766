"""
Approximate word matching for SEARCH FUZZY (RFC 6203), protocol-neutral:
the same rule decides a message whether the full-text index answers
(L{mailapp.store.fulltext}) or the message is read (L{mailapp.imap.search}).

The rule. A fuzzy string is split into its words (runs of letters and
digits, case-folded); words shorter than L{MIN_WORD} are dropped (they are
noise to a fuzzy search and the trigram index cannot look them up), unless
that leaves none, in which case the string is matched exactly, as without
FUZZY. A text matches when it contains every word, in any order and
anywhere (as a substring, as IMAP's SEARCH does), where a word of
L{APPROXIMATE_LENGTH} characters or more may also be found with one edit:
one letter substituted, missing or extra, or two adjacent letters swapped
(the restricted Damerau-Levenshtein distance 1, which covers most typing
errors, "invioce" for "invoice" among them). Shorter words must occur as
they are: one edit in four letters is another word more often than a typo.
An exact match of the whole string therefore always matches: each of its
words occurs in it.

Why it is cheap. Split a word of length n into a head C{w[:a]} and a tail
C{w[a+1:]}, skipping the letter between (L{pieces}). One edit at letters
i and i+1 (i+1 only for a swap) leaves the head intact when i >= a, and
the tail when i + 1 < a + 1, so every string within one edit of the word
contains the head or the tail exactly: the candidates are the places where
one of them occurs (C{str.find}, in C), and each is checked by comparing
three slices (L{within_one_edit}). The full-text index narrows the
messages first by the trigrams of the word's one-edit variants
(L{mailapp.store.fulltext}), and a header search by the head and tail
(L{pieces}) in the cached fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "APPROXIMATE_LENGTH",
    "MIN_WORD",
    "Approximate",
    "find",
    "needles",
    "pieces",
    "within_one_edit",
    "words",
]

#: Words shorter than this are left out of a fuzzy string.
MIN_WORD = 3
#: Words this long or longer match with one edit; shorter ones exactly.
APPROXIMATE_LENGTH = 5

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Approximate:
    """A case-folded word to be found with at most one edit (a needle, beside the exact strings)."""

    word: str

    def __len__(self) -> int:
        return len(self.word)


def words(text: str) -> tuple[str, ...]:
    """The case-folded words of C{text} a fuzzy search looks for, in order, each once; () for "match exactly"."""
    found = [w for w in _WORD.findall(text.casefold()) if len(w) >= MIN_WORD]
    return tuple(dict.fromkeys(found))


def needles(text: str) -> tuple[str | Approximate, ...]:
    """What a text must contain for C{text} to match fuzzily: each word, exact or L{Approximate}; () as for L{words}."""
    return tuple(Approximate(w) if len(w) >= APPROXIMATE_LENGTH else w for w in words(text))


def pieces(word: str) -> tuple[str, str]:
    """The head and tail of C{word}, one of which any string within one edit of it contains (see the module docstring)."""
    a = (len(word) - 1) // 2
    return word[:a], word[a + 1 :]


def within_one_edit(candidate: str, word: str) -> bool:
    """Whether C{candidate} is C{word} or one substitution, insertion, deletion or adjacent swap away from it."""
    if candidate == word:
        return True
    lc, lw = len(candidate), len(word)
    if abs(lc - lw) > 1:
        return False
    i = 0
    shortest = min(lc, lw)
    while i < shortest and candidate[i] == word[i]:
        i += 1
    if lc == lw:
        if candidate[i + 1 :] == word[i + 1 :]:
            return True  # substituted
        return i + 1 < lc and candidate[i] == word[i + 1] and candidate[i + 1] == word[i] and candidate[i + 2 :] == word[i + 2 :]
    if lc > lw:
        return candidate[i + 1 :] == word[i:]  # an extra letter
    return candidate[i:] == word[i + 1 :]  # a missing one


def find(needle: str | Approximate, text: str) -> str | None:
    """
    The string of C{text} (case-folded already) that C{needle} matches,
    the exact word when it occurs, else the first within one edit; None
    when there is none.
    """
    if isinstance(needle, str):
        return needle if needle in text else None
    word = needle.word
    if word in text:
        return word
    n = len(word)
    head, tail = pieces(word)
    start = text.find(head)
    while start >= 0:
        for length in (n - 1, n, n + 1):
            candidate = text[start : start + length]
            if len(candidate) == length and within_one_edit(candidate, word):
                return candidate
        start = text.find(head, start + 1)
    start = text.find(tail)
    while start >= 0:
        end = start + len(tail)
        for length in (n - 1, n, n + 1):
            if end - length >= 0 and within_one_edit(text[end - length : end], word):
                return text[end - length : end]
        start = text.find(tail, start + 1)
    return None
