"""
The POP3 server (RFC 1939, with RFC 2449 CAPA, RFC 2595 STLS and RFC 5034
AUTH PLAIN) over the store's INBOX, on the 110 (STLS) and 995 (implicit TLS)
listeners.

  - L{mailapp.pop3.policy}: what a listener allows (L{POP3Policy}), the
    states and the command table, the limits;
  - L{mailapp.pop3.session}: the session on the shared line session;
  - L{mailapp.pop3.maildrop}: the INBOX snapshot, the maildrop lock, RETR and TOP's streaming;
  - L{mailapp.pop3.readahead}: small messages read in batches ahead of their RETRs;
  - L{mailapp.pop3.factory}: the listener's factory and the builder the service registers.

The names other modules and the tests use are re-exported here.
"""

from mailapp.dotstuffing import DotStuffer as _DotStuffer
from mailapp.pop3.factory import POP3Factory, buildFactory
from mailapp.pop3.maildrop import MaildropLocks, _MessageSender, _TopFilter
from mailapp.pop3.policy import (
    AUTH_FAILURE_DELAY,
    CHUNK_SIZE,
    IDLE_TIMEOUT,
    MAX_AUTH_FAILURES,
    MAX_LINE,
    READ_AHEAD,
    READ_AHEAD_BYTES,
    POP3Policy,
    SessionState,
)
from mailapp.pop3.session import POP3Server

__all__ = [
    "AUTH_FAILURE_DELAY",
    "CHUNK_SIZE",
    "IDLE_TIMEOUT",
    "MAX_AUTH_FAILURES",
    "MAX_LINE",
    "READ_AHEAD",
    "READ_AHEAD_BYTES",
    "MaildropLocks",
    "POP3Factory",
    "POP3Policy",
    "POP3Server",
    "SessionState",
    "_DotStuffer",
    "_MessageSender",
    "_TopFilter",
    "buildFactory",
]
