"""
Maildir file names: what the store writes into them and reads back out.

A name carries everything a rebuild of the index needs (L{mailapp.store.rebuild}):
the message's UID (``,U=<uid>``), both its sizes as Dovecot writes them
(``,S=<file size>,W=<wire size>``: files are stored with LF, the protocols
see CRLF; L{mailapp.store.messagefile}), and its flags in the ``:2,`` info,
the system flags as capital letters and keywords as lower-case ones, each
folder's ``dovecot-keywords`` file saying which keyword each letter stands
for (L{mailapp.store.keywords}). A name without ``W=`` is from state format 1
(CRLF files, so both sizes are S=) or from another tool.

Pure functions: no I/O.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

#: The letters that stand for keywords in a name's ``:2,`` info, in the
#: order a folder gives them out (L{mailapp.store.keywords}).
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"

# Maildir info flags (https://cr.yp.to/proto/maildir.html) for the IMAP system flags.
#: The flag that marks a message for expunging (L{IFolder.expungeDeleted}), and the one of read messages.
DELETED_FLAG = "\\Deleted"
SEEN_FLAG = "\\Seen"
_FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
_LETTER_FLAGS = {letter: flag for flag, letter in _FLAG_LETTERS.items()}
_NAME = re.compile(r"^(?P<base>[^:,]+)(?P<fields>(?:,[A-Za-z]=[^,:]*)*)(?::2,(?P<info>[A-Za-z]*))?$")


@dataclass
class ParsedName:
    """What a Maildir file name says about its message."""

    base: str
    #: ``S=``: the file's size.
    size: int | None
    uid: int | None
    flags: frozenset[str]
    #: ``W=``: the size with CRLF line ends (None: the name has none).
    wire_size: int | None = None
    #: The lower-case letters of the ``:2,`` info: keywords, by the folder's ``dovecot-keywords``.
    keyword_letters: str = ""

    def index_size(self, stat: os.stat_result) -> int:
        """
        The size the index keeps (the wire size) for a file the store named:
        ``W=``, else ``S=`` (state format 1 stored CRLF), else the file's.
        """
        if self.wire_size is not None:
            return self.wire_size
        return self.size if self.size is not None else stat.st_size


def parse_filename(name: str) -> ParsedName | None:
    """Read base, ``S=`` and ``W=`` sizes, ``U=`` UID and info flags out of a Maildir file name."""
    match = _NAME.match(name)
    if not match:
        return None
    size = uid = wire_size = None
    for field in match.group("fields").split(",")[1:]:
        key, _, value = field.partition("=")
        if key == "S" and value.isdigit():
            size = int(value)
        elif key == "W" and value.isdigit():
            wire_size = int(value)
        elif key == "U" and value.isdigit() and int(value) > 0:
            uid = int(value)
    info = match.group("info") or ""
    flags = frozenset(_LETTER_FLAGS[c] for c in info if c in _LETTER_FLAGS)
    keyword_letters = "".join(sorted({c for c in info if c in KEYWORD_LETTERS}))
    return ParsedName(match.group("base"), size, uid, flags, wire_size, keyword_letters)


def format_filename(
    base: str,
    size: int,
    uid: int,
    flags: frozenset[str] | set[str] | tuple[str, ...],
    cur: bool = False,
    wire_size: int | None = None,
    keyword_letters: str = "",
) -> str:
    """
    The file name for a message, relative to its folder: ``new/`` names
    carry no info part; once a message has flags (or was in ``cur/``) it
    lives in ``cur/`` with ``:2,<letters>`` and never goes back. C{size} is
    the file's (``S=``), C{wire_size} the message's as sent (``W=``; None
    only to keep the name of a state format 1 file as it was).
    C{keyword_letters} follow the system flags' (L{mailapp.store.keywords.message_filename} finds them).
    """
    sizes = f"S={size}" if wire_size is None else f"S={size},W={wire_size}"
    name = f"{base},{sizes},U={uid}"
    letters = "".join(sorted(_FLAG_LETTERS[f] for f in flags if f in _FLAG_LETTERS)) + "".join(sorted(keyword_letters))
    if flags or cur:
        return f"cur/{name}:2,{letters}"
    return f"new/{name}"



def encode_flags(flags: frozenset[str] | set[str] | tuple[str, ...]) -> str:
    return " ".join(sorted(set(flags)))


def decode_flags(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


def has_flag_sql(column: str) -> str:
    """
    SQL that is 1 when the flags C{column} (as L{encode_flags} writes them)
    hold the flag given as its one parameter, L{flag_parameter}(flag), else 0:
    the whole name, never a keyword that merely contains it.
    """
    return f"(instr(' ' || {column} || ' ', ?) > 0)"


def flag_parameter(flag: str) -> str:
    """The parameter of L{has_flag_sql} for C{flag}."""
    return f" {flag} "



def is_keyword(flag: str) -> bool:
    """Whether C{flag} is a keyword (C{$Forwarded}, C{Work}) rather than a system flag (C{\\Seen})."""
    return not flag.startswith("\\")
