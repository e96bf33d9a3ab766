"""
A user's display name and signature (L{Profile}): what may be set, for the
database, the server's accounts and the fake alike.

The display name goes into the From header of what the webmail sends, so it
is one line without control characters; the signature is plain text of a
few lines.
"""

from __future__ import annotations

from mailapp.accounts.records import Profile
from mailapp.errors import AccountError

__all__ = ["MAX_DISPLAY_NAME", "MAX_SIGNATURE", "check_profile"]

MAX_DISPLAY_NAME = 100
MAX_SIGNATURE = 2000


def check_profile(display_name: str, signature: str) -> Profile:
    """The profile to store (surrounding blanks dropped, line ends LF), or L{AccountError} saying what is wrong."""
    name = display_name.strip()
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise AccountError("the display name must be one line, without control characters; nothing was changed")
    if len(name) > MAX_DISPLAY_NAME:
        raise AccountError(f"the display name is longer than {MAX_DISPLAY_NAME} characters; nothing was changed")
    text = signature.replace("\r\n", "\n").replace("\r", "\n").strip("\n").rstrip()
    if any((ord(ch) < 0x20 and ch not in "\n\t") or ord(ch) == 0x7F for ch in text):
        raise AccountError("the signature contains control characters; nothing was changed")
    if len(text) > MAX_SIGNATURE:
        raise AccountError(f"the signature is longer than {MAX_SIGNATURE} characters; nothing was changed")
    return Profile(name, text)
