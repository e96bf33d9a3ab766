"""The states of an IMAP session (RFC 3501 3), which the command table says each command is valid in."""

from __future__ import annotations

import enum

__all__ = ["State"]


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    #: Authenticated, with a folder selected: every authenticated command is valid here too.
    SELECTED = "selected"
    #: After LOGOUT: nothing more is read.
    LOGOUT = "logout"
