"""
What SMTP checks in a message's header block while the data streams by,
before anything is stored: the hop count and the size of each header field.

- **Hops.** RFC 5321 6.3: a message carrying many ``Received:`` fields is
  going round in a loop (two servers forwarding to each other); refused with
  ``554 5.4.6`` once it has L{MAX_HOPS}, Postfix's ``hopcount_limit``.
- **Field size.** One header field (with its continuation lines) longer than
  L{MAX_HEADER_FIELD} is refused with ``552 5.6.0`` (Postfix truncates at the
  same size, ``header_size_limit``): every reader of the message parses
  header fields whole, and a megabyte ``To:`` made the webmail's parser take
  minutes. Refusing keeps the stored message exactly as sent.

The checker sees the data as the SMTP receiver emits it (dot-unstuffed, line
ends normalised to CRLF, a CR never split from its LF), costs one C{find} per
line of the header block, keeps a few bytes of state, and stops looking at
the first empty line.
"""

from __future__ import annotations

import email.utils

from mailapp.errors import HeaderFieldTooLong, MailError, TooManyHops

__all__ = ["MAX_HEADER_FIELD", "MAX_HOPS", "HeaderCheck", "header_addresses"]

MAX_HOPS = 50
MAX_HEADER_FIELD = 100 * 1024

_RECEIVED = b"received:"


class HeaderCheck:
    """Fed the message from its first byte (L{feed}); L{verdict} once the data has ended."""

    def __init__(self, max_hops: int = MAX_HOPS, max_field: int = MAX_HEADER_FIELD) -> None:
        self.max_hops = max_hops
        self.max_field = max_field
        #: Received: fields seen, and the longest field in bytes (with its CRLFs).
        self.hops = 0
        self.longest = 0
        #: True from the empty line that ends the header block on.
        self.done = False
        self._atLineStart = True
        self._inFirstLine = False
        self._name = b""  # the first bytes of the current field, enough to know a Received:
        self._field = 0

    def feed(self, data: bytes) -> None:
        position = 0
        while not self.done and position < len(data):
            end = data.find(b"\r\n", position)
            stop = end if end >= 0 else len(data)
            if self._atLineStart:
                if stop == position and end >= 0:
                    self._endField()
                    self.done = True
                    return
                if data[position : position + 1] not in (b" ", b"\t"):
                    self._endField()
                    self._inFirstLine = True
            if self._inFirstLine and len(self._name) < len(_RECEIVED):
                self._name += data[position : min(stop, position + len(_RECEIVED) - len(self._name))]
            self._field += stop - position + (2 if end >= 0 else 0)
            self.longest = max(self.longest, self._field)
            self._atLineStart = end >= 0
            if end >= 0:
                self._inFirstLine = False
            position = stop + 2 if end >= 0 else stop

    def _endField(self) -> None:
        if self._name.lower() == _RECEIVED:
            self.hops += 1
        self._name = b""
        self._field = 0

    def verdict(self) -> MailError | None:
        """Why the message must be refused, or None. Call once the data has ended."""
        if not self.done:
            self._endField()
        if self.hops >= self.max_hops:
            return TooManyHops(f"Too many hops ({self.hops} Received: header fields): mail loop detected")
        if self.longest > self.max_field:
            return HeaderFieldTooLong(f"Message header field longer than {self.max_field // 1024} KiB")
        return None


def header_addresses(headers: bytes, name: bytes) -> list[str]:
    """
    The addresses (lower-cased) of every C{name} field (``b"from"``) of a
    header block, continuation lines unfolded. The block is bounded by the
    caller; a field that does not parse gives no address.
    """
    fields: list[bytes] = []
    current: bytearray | None = None
    for line in headers.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current += line
            continue
        current = None
        field, colon, value = line.partition(b":")
        if colon and field.strip().lower() == name:
            current = bytearray(value)
            fields.append(current)  # type: ignore[arg-type]
    found = []
    for value in fields:
        for _, address in email.utils.getaddresses([bytes(value).decode("utf-8", "replace")]):
            if address:
                found.append(address.lower())
    return found
