"""
SASL responses as SMTP (RFC 4954), POP3 (RFC 5034) and IMAP (RFC 3501,
RFC 4959) carry them, and the two mechanisms mailapp offers: PLAIN (RFC
4616) everywhere and LOGIN (draft-murchison-sasl-login) on SMTP submission,
where Outlook and older clients still use it.

The three protocols once had a decoder each, and they disagreed: POP3 and
IMAP took ``=`` as an empty response, SMTP refused it as bad base64. The
three RFCs agree on the rules, so there is one decoder:

  - ``=`` is a response of zero length (RFC 4954 4, RFC 5034 4, RFC 4959 3
    for an initial response; a continuation line ``=`` is read the same way,
    as POP3 and IMAP always have: no valid base64 means anything else);
  - ``*`` cancels the exchange (RFC 4954 4, RFC 5034 4, RFC 3501 6.2.2);
  - anything else must be strict base64 (no stray characters), surrounding
    white space ignored.

What a protocol answers to each failure stays its own (its reply codes and
words); this module only says which failure it was.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

__all__ = [
    "LOGIN_PASSWORD",
    "LOGIN_USERNAME",
    "BadBase64",
    "Cancelled",
    "MalformedPlain",
    "PlainCredentials",
    "SASLError",
    "decode_plain",
    "decode_response",
]

#: The LOGIN mechanism's two challenges, as they go on the wire (base64).
LOGIN_USERNAME = base64.b64encode(b"Username:")
LOGIN_PASSWORD = base64.b64encode(b"Password:")


class SASLError(Exception):
    """A client's SASL response that ends the exchange; the subclass says why."""


class Cancelled(SASLError):
    """The client sent ``*``."""


class BadBase64(SASLError):
    """The response is not base64."""


class MalformedPlain(SASLError):
    """A PLAIN message that is not C{authzid NUL authcid NUL password}."""


@dataclass(frozen=True)
class PlainCredentials:
    """A decoded PLAIN message (RFC 4616 2), every part as the client sent it."""

    authzid: bytes
    authcid: bytes
    password: bytes

    @property
    def actsForAnother(self) -> bool:
        """
        Whether the client asks to act as someone other than whom it logs in
        as. mailapp has no proxy authorisation, so such a login fails like a
        wrong password, without a password check.
        """
        return bool(self.authzid) and self.authzid != self.authcid


def decode_response(line: bytes) -> bytes:
    """
    The bytes one SASL response line (initial or continuation) carries.
    Raises L{Cancelled} for ``*`` and L{BadBase64} for anything that is not
    base64 (or ``=``).
    """
    response = line.strip()
    if response == b"*":
        raise Cancelled()
    if response == b"=":
        return b""
    try:
        return base64.b64decode(response, validate=True)
    except (binascii.Error, ValueError):
        raise BadBase64()


def decode_plain(line: bytes) -> PlainCredentials:
    """
    One PLAIN response line, decoded. Raises L{Cancelled}, L{BadBase64} or
    L{MalformedPlain}.
    """
    parts = decode_response(line).split(b"\x00")
    if len(parts) != 3:
        raise MalformedPlain()
    authzid, authcid, password = parts
    return PlainCredentials(authzid, authcid, password)
