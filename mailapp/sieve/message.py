"""
The message as a script sees it: headers decoded once, the body read on
demand, shared by every recipient's script (blocking: built on a worker thread).
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses
from functools import cached_property

__all__ = ["Envelope", "MessageView"]

#: The most of a body the body test reads (RFC 5173 leaves the bound to us).
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Envelope:
    """SMTP's envelope for one recipient: RFC 5228's "from" and "to" (RFC 5231's "auth" too)."""

    sender: str
    recipient: str
    auth: str | None = None


def _decode(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


@dataclass
class MessageView:
    """One received message: its wire bytes (CRLF), headers in order (name lower-cased, value unfolded and decoded)."""

    raw: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    body_offset: int = 0
    _addresses: dict[str, list[list[str]]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "MessageView":
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            end = raw.find(b"\n\n")
            head, offset = (raw, len(raw)) if end < 0 else (raw[:end], end + 2)
        else:
            head, offset = raw[:end], end + 4
        headers: list[tuple[str, str]] = []
        for line in head.replace(b"\r\n", b"\n").split(b"\n"):
            if not line:
                continue
            if line[:1] in (b" ", b"\t") and headers:
                name, value = headers[-1]
                headers[-1] = (
                    name,
                    value + " " + line.decode("utf-8", "replace").strip(),
                )
                continue
            name_bytes, colon, value_bytes = line.partition(b":")
            if not colon:
                continue
            headers.append(
                (
                    name_bytes.decode("ascii", "replace").strip().lower(),
                    value_bytes.decode("utf-8", "replace").strip(),
                )
            )
        return cls(raw, [(name, _decode(value)) for name, value in headers], offset)

    @property
    def size(self) -> int:
        return len(self.raw)

    def header(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    def addresses(self, name: str) -> list[list[str]]:
        """The addresses of each C{name} field, in order, parsed once (every rule of a script asks again)."""
        name = name.lower()
        found = self._addresses.get(name)
        if found is None:
            found = self._addresses[name] = [[address for _, address in getaddresses([value])] for value in self.header(name)]
        return found

    def first(self, name: str) -> str | None:
        values = self.header(name)
        return values[0] if values else None

    @property
    def raw_body(self) -> bytes:
        return self.raw[self.body_offset : self.body_offset + MAX_BODY_BYTES]

    @cached_property
    def parsed(self) -> Message:
        return email.message_from_bytes(
            self.raw[: self.body_offset + MAX_BODY_BYTES], policy=email.policy.compat32
        )

    def parts(self, types: tuple[str, ...]) -> list[str]:
        """The decoded text of the leaf parts whose type is in C{types} ("text" for text/*, "" for every one)."""
        texts = []
        for part in self.parsed.walk():
            if part.is_multipart():
                continue
            content_type = part.get_content_type().lower()
            main = content_type.split("/")[0]
            if not any(
                wanted == "" or wanted == content_type or wanted == main
                for wanted in types
            ):
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            charset = part.get_content_charset() or "us-ascii"
            try:
                texts.append(payload.decode(charset, "replace"))
            except LookupError:
                texts.append(payload.decode("utf-8", "replace"))
        return texts
