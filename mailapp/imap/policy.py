"""
What one IMAP listener allows (L{IMAPPolicy}), and the fixed bounds of a
session: line, literal and command sizes before and after login, timers.

Every module of the IMAP server reads its limits from here, so that a bound
is written once: the reader enforces the sizes, the session the timers.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailapp.config import DEFAULT_LIMITS
from mailapp.linesession import SHUTDOWN_GRACE
from mailapp.sessions import LOGIN_TIMEOUT, SessionLimits

__all__ = ["IMAPPolicy", "SHUTDOWN_GRACE"]

VERSION = b"0.1.0"
#: RFC 3501 5.4: the autologout timer is at least 30 minutes after login.
AUTOLOGOUT = 30 * 60.0
PREAUTH_TIMEOUT = LOGIN_TIMEOUT
#: Before login, lines and literals stay small: nobody unauthenticated can make us hold much.
#: A line may still hold the largest ID (RFC 2971 3.3: 30 field-value pairs, fields of
#: 30 octets and values of 1024, about 31.8 KiB quoted), which clients send before
#: login (imaptest's ``id``); 8 KiB closed their connection.
MAX_LINE_PREAUTH = 32 * 1024
MAX_LITERAL_PREAUTH = 4 * 1024
#: After login: long UID sets from clients that do not collapse ranges, search strings.
MAX_LINE = 512 * 1024
MAX_LITERAL = 256 * 1024
MAX_COMMAND = 2 * 1024 * 1024
#: BAD replies a session may earn before it is closed.
MAX_ERRORS = 20
#: Bytes of a message body read and written per step; also the input a busy session buffers before it stops reading.
CHUNK_SIZE = 64 * 1024
#: Index-only FETCH lines written per batch before checking back-pressure.
FETCH_BATCH = 256
IDLE_POLL = 30.0


@dataclass(frozen=True)
class IMAPPolicy(SessionLimits):
    """What one listener allows. Plaintext login before TLS only where the config allows it (loopback)."""

    hostname: str
    max_message_size: int = DEFAULT_LIMITS.max_message_size
    max_auth_failures: int = 3
    idle_poll: float = IDLE_POLL
    #: Idle seconds after login (before it, C{login_timeout}).
    timeout: float = float(DEFAULT_LIMITS.imap_timeout_seconds)
    #: After login: one literal (APPEND's message excepted) and one line, in bytes.
    max_literal: int = DEFAULT_LIMITS.imap_max_literal
    max_line: int = DEFAULT_LIMITS.imap_max_line

    @property
    def max_command(self) -> int:
        """After login: one whole command, its lines and literals together."""
        return max(MAX_COMMAND, self.max_line, 2 * self.max_literal)
