"""
Message flags as IMAP names them: the system flags, and keywords as a
client may set them (RFC 3501 2.3.2), bounded in length and number.
"""

from __future__ import annotations

import re

from mailapp.errors import MAX_KEYWORDS_PER_MESSAGE, KeywordLimit
from mailapp.imap.wire import Atom, BadCommand, Token

__all__ = ["DELETED", "RECENT", "SEEN", "SYSTEM_FLAGS", "parse_flag_list"]

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
SEEN = "\\Seen"
DELETED = "\\Deleted"
#: Not stored: a session's own (L{mailapp.imap.selected}).
RECENT = "\\Recent"
#: The longest keyword accepted (Dovecot's mail_max_keyword_length is 50).
MAX_KEYWORD_LENGTH = 64
_KEYWORD = re.compile(r"^[^\x00-\x20\x7f-\uffff(){%*\"\\\]]+$")


def parse_flag_list(tokens: list[Token]) -> list[str]:
    """
    A flag list from the wire: system flags in their canonical case,
    keywords checked; L{BadCommand} for a bad one, L{KeywordLimit} for too
    many keywords on one message.
    """
    flags = []
    for token in tokens:
        if not isinstance(token, Atom):
            raise BadCommand("Flags are atoms")
        flag = token.decode("utf-8", "replace")
        if flag.startswith("\\"):
            canonical = next((f for f in SYSTEM_FLAGS + (RECENT,) if f.lower() == flag.lower()), None)
            if canonical is None:
                raise BadCommand("Unknown system flag")
            flag = canonical
        elif not _KEYWORD.match(flag) or len(flag) > MAX_KEYWORD_LENGTH:
            raise BadCommand("Bad keyword")
        flags.append(flag)
    if len({flag for flag in flags if not flag.startswith("\\")}) > MAX_KEYWORDS_PER_MESSAGE:
        raise KeywordLimit(f"a message may carry at most {MAX_KEYWORDS_PER_MESSAGE} keywords")
    return flags
