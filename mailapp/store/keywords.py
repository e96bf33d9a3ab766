"""
A folder's keywords file: which keyword each lower-case letter in its
messages' names stands for.

Dovecot's format and name (``dovecot-keywords``, lines ``<n> <keyword>``,
n = 0 for ``a``), so that a Maildir moved between Dovecot and mailapp keeps
its keywords, and a rebuild of the index loses none. 26 per folder; a
folder's 27th keyword is kept in the index only, as Dovecot keeps it in its
own index only.

Synchronous; runs on a worker thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from mailapp.store import durable
from mailapp.store.filenames import KEYWORD_LETTERS, format_filename, is_keyword

#: Dovecot's name for the file that maps keyword letters to keywords.
KEYWORDS_NAME = "dovecot-keywords"


def message_filename(
    directory: Path,
    base: str,
    size: int,
    uid: int,
    flags: frozenset[str] | set[str] | tuple[str, ...],
    cur: bool = False,
    wire_size: int | None = None,
) -> str:
    """
    L{format_filename} for a message in the folder at C{directory}, with
    its keywords as letters, so that a rebuild of the index finds them.
    Call it inside the index's write transaction: a keyword new to the
    folder is given a letter in its L{KEYWORDS_NAME} file, durably, before
    any file is named with it.
    """
    return format_filename(base, size, uid, flags, cur, wire_size, keyword_letters(directory, flags))


def read_keywords(directory: Path) -> dict[str, str]:
    """
    The folder's keyword letters, ``{letter: keyword}``, from Dovecot's
    ``dovecot-keywords`` (lines ``<n> <keyword>``, n = 0 for ``a``).
    Lines it cannot read are skipped: at worst a keyword is lost, never
    given to another letter's messages.
    """
    try:
        text = (directory / KEYWORDS_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    mapping: dict[str, str] = {}
    for line in text.splitlines():
        number, _, keyword = line.partition(" ")
        if number.isdigit() and int(number) < len(KEYWORD_LETTERS) and keyword and " " not in keyword:
            mapping[KEYWORD_LETTERS[int(number)]] = keyword
    return mapping


def write_keywords(directory: Path, mapping: dict[str, str]) -> None:
    """Replace the folder's keywords file atomically and durably."""
    lines = "".join(f"{KEYWORD_LETTERS.index(letter)} {keyword}\n" for letter, keyword in sorted(mapping.items()))
    durable.replace_file(directory / KEYWORDS_NAME, lines.encode("utf-8"), directory / "tmp")


def keyword_letters(directory: Path, flags: Iterable[str]) -> str:
    """
    The letters that stand for C{flags}' keywords in the folder at
    C{directory}, giving each new keyword the first free letter. A keyword
    past the 26th of a folder has none: the index alone keeps it.
    """
    keywords = sorted({flag for flag in flags if is_keyword(flag)})
    if not keywords:
        return ""
    mapping = read_keywords(directory)
    letters = {keyword: letter for letter, keyword in mapping.items()}
    missing = [keyword for keyword in keywords if keyword not in letters]
    if missing:
        free = [letter for letter in KEYWORD_LETTERS if letter not in mapping]
        for keyword, letter in zip(missing, free):
            mapping[letter] = keyword
            letters[keyword] = letter
        if free:
            write_keywords(directory, mapping)
    return "".join(sorted(letters[keyword] for keyword in keywords if keyword in letters))

