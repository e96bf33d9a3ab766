"""
The ESMTP server, in its roles: the inbound MX (port 25), authenticated
submission (587 with STARTTLS, 465 with implicit TLS), and LMTP (RFC 2033),
the last hop from an MTA in front into the mailboxes.

  - L{mailapp.smtp.policy}: what a listener allows (L{SMTPPolicy}), the limits;
  - L{mailapp.smtp.session}: the conversation on the shared line session
    (greeting, EHLO, STARTTLS, AUTH);
  - L{mailapp.smtp.transaction}: MAIL, RCPT, DATA, and the hand-over to the Router;
  - L{mailapp.smtp.data}: the DATA byte stream (no smuggling), BDAT's chunks,
    and the header fields the server adds;
  - L{mailapp.smtp.chunking}: BDAT (RFC 3030 CHUNKING and BINARYMIME);
  - L{mailapp.smtp.lmtp}: LMTP (RFC 2033), the SMTP session as the last hop into the mailboxes;
  - L{mailapp.smtp.factory}: the listener's factory and the builder the service registers.

The names other modules and the tests use are re-exported here.
"""

from mailapp.smtp.chunking import ChunkingServer
from mailapp.smtp.data import _ChunkReceiver, _DataReceiver, address_literal
from mailapp.smtp.factory import SMTPFactory, buildFactory
from mailapp.smtp.lmtp import LMTPFactory, LMTPServer, buildLMTPFactory
from mailapp.smtp.policy import (
    DATA_FLUSH,
    GREETING_TIMEOUT,
    MAX_AUTH_FAILURES,
    MAX_COMMAND_LINE,
    MAX_ERRORS,
    MAX_HEADER_BLOCK,
    MAX_UNTERMINATED,
    SMTPPolicy,
)
from mailapp.smtp.session import SMTPSession
from mailapp.smtp.transaction import ESMTPServer
from mailapp.linesession import SHUTDOWN_GRACE

__all__ = [
    "DATA_FLUSH",
    "GREETING_TIMEOUT",
    "MAX_AUTH_FAILURES",
    "MAX_COMMAND_LINE",
    "MAX_ERRORS",
    "MAX_HEADER_BLOCK",
    "MAX_UNTERMINATED",
    "SHUTDOWN_GRACE",
    "ChunkingServer",
    "ESMTPServer",
    "LMTPFactory",
    "LMTPServer",
    "SMTPFactory",
    "SMTPPolicy",
    "SMTPSession",
    "_ChunkReceiver",
    "_DataReceiver",
    "address_literal",
    "buildFactory",
    "buildLMTPFactory",
]
