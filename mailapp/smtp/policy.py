"""
What an SMTP listener allows (L{SMTPPolicy}), and the limits and syntax
rules every SMTP session applies, in one place so that the session, the
data receiver and the tests read the same numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mailapp.config import (
    DEFAULT_AUTHENTICATION,
    DEFAULT_DNSBL,
    DEFAULT_GREYLISTING,
    DEFAULT_LIMITS,
    DEFAULT_POSTSCREEN,
    DEFAULT_SECURITY,
    DEFAULT_SPAM,
    AuthenticationConfig,
    DNSBLConfig,
    GreylistingConfig,
    PostscreenConfig,
    SpamConfig,
)
from mailapp.sessions import SessionLimits

MAX_COMMAND_LINE = 2048  # RFC 5321 4.5.3.1.4 asks for 512; extensions need more
MAX_UNTERMINATED = 16 * 1024  # no CRLF after this many bytes: not SMTP, hang up
MAX_HEADER_BLOCK = 64 * 1024  # header bytes kept to check Message-ID/Date on submission
MAX_ERRORS = 10
MAX_AUTH_FAILURES = 3
GREETING_TIMEOUT = 60
DATA_FLUSH = 64 * 1024

ADDRESS = re.compile(r"^[^\s@<>()\[\]\\,;:\"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?$")
PATH = re.compile(rb"^(FROM|TO):\s*<([^<>]*)>(?:\s+(.*))?$", re.I)
#: What HELO/EHLO may name (RFC 5321 4.1.1.1: a domain or an address literal),
#: with the underscore many hosts' names have.
HELO_NAME = re.compile(rb"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?|\[(?:IPv6:)?[0-9A-Fa-f:.]+\])$")

_CONTROLS = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f-\xff]")


def has_controls(data: bytes) -> bool:
    """NUL, CR, LF, other controls or 8-bit bytes (tab is allowed)."""
    return _CONTROLS.search(data) is not None


def has_controls_or_bad_utf8(data: bytes) -> bool:
    """
    Like L{has_controls}, but 8-bit bytes are allowed as UTF-8 (RFC 6531's
    addresses on MAIL and RCPT): controls, and bytes that are not UTF-8, are not.
    """
    if data.isascii():
        return has_controls(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return any(ord(c) < 0x20 and c != "\t" or 0x7F <= ord(c) < 0xA0 for c in text)


@dataclass(frozen=True)
class SMTPPolicy(SessionLimits):
    """
    What one listener allows. C{submission} listeners require AUTH before
    MAIL and let the authenticated user relay; the MX listener never offers
    AUTH. Plaintext AUTH only where the config allows it (loopback).
    """

    hostname: str
    submission: bool
    max_message_size: int
    timeout: float
    trusted_networks: tuple[Any, ...] = ()
    #: What RCPT TO:<postmaster> (no domain) means: postmaster at the first local domain.
    postmaster: str = ""
    #: On the MX, refuse a sender in a local domain from outside the trusted networks.
    refuse_local_senders: bool = DEFAULT_SECURITY.mx_refuse_local_senders
    #: MAIL FROM gets 452 4.3.1 while the store's disk has fewer free bytes than this plus SIZE=.
    min_free_disk: int = DEFAULT_LIMITS.min_free_disk
    #: On the MX: the sender authentication checks (``[authentication]``), live on SIGHUP with the rest of the policy.
    authentication: AuthenticationConfig = DEFAULT_AUTHENTICATION
    #: On the MX: the DNS blocklists (``[dnsbl]``) and the early-talker checks (``[postscreen]``), live on SIGHUP.
    dnsbl: DNSBLConfig = DEFAULT_DNSBL
    postscreen: PostscreenConfig = DEFAULT_POSTSCREEN
    #: On the MX: greylisting at RCPT (``[greylisting]``), live on SIGHUP.
    greylisting: GreylistingConfig = DEFAULT_GREYLISTING
    #: The content scanner (``[spam]``), live on SIGHUP with the rest of the policy.
    spam: SpamConfig = DEFAULT_SPAM
    #: On an LMTP listener: the networks whose clients may use it besides loopback and a unix socket.
    allowed_clients: tuple[Any, ...] = ()
