"""
What a POP3 listener allows (L{POP3Policy}), the RFC 1939 states and the
commands valid in each, and the limits every POP3 session applies.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mailapp.config import DEFAULT_LIMITS
from mailapp.sessions import SessionLimits

#: RFC 1939 3: the autologout timer must be at least 10 minutes.
IDLE_TIMEOUT = 600.0
#: RFC 2449 4 allows 255 octets per command line; a SASL initial response
#: with a long name and password needs more. A longer line closes the session.
MAX_LINE = 1024
#: Bytes read from a message file per worker-thread call.
CHUNK_SIZE = 64 * 1024
#: Small messages (at most L{CHUNK_SIZE}) read before their RETR, at most, in
#: one worker-thread trip; and the bytes those may hold (L{mailapp.pop3.readahead}).
READ_AHEAD = 32
READ_AHEAD_BYTES = 256 * 1024
MAX_AUTH_FAILURES = 3
AUTH_FAILURE_DELAY = 1.0


class SessionState(enum.Enum):
    """RFC 1939 states; a command is only looked up in its state's table."""

    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"


#: The command table: the commands valid in each state.
COMMANDS: dict[SessionState, frozenset[str]] = {
    SessionState.AUTHORIZATION: frozenset({"CAPA", "USER", "PASS", "AUTH", "STLS", "UTF8", "QUIT"}),
    SessionState.TRANSACTION: frozenset({"CAPA", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP", "QUIT"}),
    SessionState.UPDATE: frozenset(),
}
KNOWN: frozenset[str] = frozenset().union(*COMMANDS.values())


@dataclass(frozen=True)
class POP3Policy(SessionLimits):
    """
    What one listener allows. Plaintext login only where the config allows
    it (loopback). C{timeout} is the idle timeout after login; before it,
    C{login_timeout}.
    """

    hostname: str
    timeout: float = float(DEFAULT_LIMITS.pop3_timeout_seconds)
    max_auth_failures: int = MAX_AUTH_FAILURES
