"""
The IMAP server's public names, where the service and the tests import them
from: the session (L{mailapp.imap.session}), its policy and bounds
(L{mailapp.imap.policy}), the factory and the listener builder
(L{mailapp.imap.factory}). The commands are in L{mailapp.imap.commands}.
"""

from __future__ import annotations

from mailapp.imap.factory import IMAPFactory, buildFactory
from mailapp.imap.policy import (
    AUTOLOGOUT,
    CHUNK_SIZE,
    FETCH_BATCH,
    IDLE_POLL,
    MAX_COMMAND,
    MAX_ERRORS,
    MAX_LINE,
    MAX_LINE_PREAUTH,
    MAX_LITERAL,
    MAX_LITERAL_PREAUTH,
    PREAUTH_TIMEOUT,
    SHUTDOWN_GRACE,
    VERSION,
    IMAPPolicy,
)
from mailapp.imap.session import NO_DISK_SPACE, IMAPServer

__all__ = [
    "AUTOLOGOUT", "CHUNK_SIZE", "FETCH_BATCH", "IDLE_POLL", "IMAPFactory", "IMAPPolicy", "IMAPServer",
    "MAX_COMMAND", "MAX_ERRORS", "MAX_LINE", "MAX_LINE_PREAUTH", "MAX_LITERAL", "MAX_LITERAL_PREAUTH",
    "NO_DISK_SPACE", "PREAUTH_TIMEOUT", "SHUTDOWN_GRACE", "VERSION", "buildFactory",
]
