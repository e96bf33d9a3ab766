"""
RFC 5322 address lists as IMAP sees them: ENVELOPE's address structures
(RFC 3501 7.4.2) and the text the FROM/TO/CC/BCC search keys match.

The stdlib's C{email.utils.getaddresses} drops group names and source
routes, and takes a bare ``user`` for a display name, so this is our own
small parser, after Dovecot's (``lib-mail/message-address.c``), because
imaptest and the clients tested against Dovecot expect its forms:

- a group ``name: a@b, c@d;`` is its start ``(NIL NIL "name" NIL)``, its
  members, and its end ``(NIL NIL NIL NIL)``; an empty group is the start
  and the end;
- a source route ``<@r1,@r2:user@host>`` is the adl ``"@r1,@r2"``;
- ``user@host (Real Name)``: the comment is the display name when there is
  no phrase;
- an address without a domain gets host ``"MISSING_DOMAIN"`` (a NIL host
  would read as a group's start), one without a mailbox ``"MISSING_MAILBOX"``.

It never raises: what does not parse is skipped to the next comma. It is
linear in the header's length (which the MIME scanner caps).
"""

from __future__ import annotations

import email.header
from dataclasses import dataclass

__all__ = ["Address", "parse_addresses", "search_text"]

MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"

_SPECIALS = set('()<>[]:;@\\,."')


@dataclass(frozen=True)
class Address:
    """
    One ENVELOPE address: C{domain} None with a C{mailbox} is a group's
    start (the mailbox is the group's name), all None its end.
    """

    name: str | None
    route: str | None
    mailbox: str | None
    domain: str | None

    def envelope(self) -> list[bytes | None]:
        return [_encoded(self.name), _encoded(self.route), _encoded(self.mailbox), _encoded(self.domain)]


def _encoded(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8", "surrogateescape")


class _Syntax(Exception):
    pass


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0
        self.comment = ""

    # -- lexical -------------------------------------------------------------------------

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def skip_cfws(self) -> None:
        """Skip white space and comments, keeping the last comment's text (RFC 5322 3.2.2)."""
        text = self.text
        while self.at < len(text):
            char = text[self.at]
            if char in " \t\r\n":
                self.at += 1
            elif char == "(":
                self.comment = self._comment()
            else:
                return

    def _comment(self) -> str:
        depth = 0
        out: list[str] = []
        text = self.text
        while self.at < len(text):
            char = text[self.at]
            self.at += 1
            if char == "\\" and self.at < len(text):
                out.append(text[self.at])
                self.at += 1
            elif char == "(":
                depth += 1
                if depth > 1:
                    out.append(char)
            elif char == ")":
                depth -= 1
                if depth == 0:
                    return " ".join("".join(out).split())
                out.append(char)
            else:
                out.append(char)
        return " ".join("".join(out).split())

    def atom(self) -> str:
        start = self.at
        text = self.text
        while self.at < len(text) and text[self.at] not in _SPECIALS and text[self.at] not in " \t\r\n" and ord(text[self.at]) >= 32:
            self.at += 1
        return text[start : self.at]

    def quoted(self) -> str:
        assert self.peek() == '"'
        self.at += 1
        out: list[str] = []
        text = self.text
        while self.at < len(text):
            char = text[self.at]
            self.at += 1
            if char == "\\" and self.at < len(text):
                out.append(text[self.at])
                self.at += 1
            elif char == '"':
                return "".join(out)
            elif char not in "\r\n":
                out.append(char)
        return "".join(out)

    def phrase(self) -> str:
        """Words (atoms, quoted strings, and obs-phrase's dots) joined by single spaces."""
        words: list[str] = []
        while True:
            self.skip_cfws()
            char = self.peek()
            if char == '"':
                words.append(self.quoted())
            elif char == "." and words:
                self.at += 1
                words[-1] += "."
            else:
                word = self.atom()
                if not word:
                    return " ".join(words)
                words.append(word)

    def dot_atom(self) -> str:
        """A local part or domain: words joined by dots, CFWS around them dropped."""
        out: list[str] = []
        while True:
            self.skip_cfws()
            char = self.peek()
            if char == '"':
                out.append(self.quoted())
            else:
                word = self.atom()
                if not word:
                    break
                out.append(word)
            self.skip_cfws()
            if self.peek() != ".":
                break
            self.at += 1
            out.append(".")
        return "".join(out)

    def domain(self) -> str:
        self.skip_cfws()
        if self.peek() == "[":
            end = self.text.find("]", self.at)
            end = len(self.text) - 1 if end < 0 else end
            literal = "".join(self.text[self.at : end + 1].split())
            self.at = end + 1
            self.skip_cfws()
            return literal
        return self.dot_atom()

    # -- grammar -------------------------------------------------------------------------

    def address_list(self) -> list[Address]:
        result: list[Address] = []
        while True:
            self.skip_cfws()
            if self.at >= len(self.text):
                return result
            if self.peek() == ",":
                self.at += 1
                continue
            start = self.at
            try:
                result.extend(self.address())
            except _Syntax:
                self._skip_to_comma(start)
                continue
            self.skip_cfws()
            if self.peek() not in (",", ""):
                self._skip_to_comma(self.at)

    def _skip_to_comma(self, start: int) -> None:
        """After a syntax error: on past the next comma outside quotes, comments and brackets."""
        self.at = max(start, self.at)
        text = self.text
        if self.at == start:
            self.at += 1
        while self.at < len(text) and text[self.at] != ",":
            if text[self.at] == '"':
                self.quoted()
            elif text[self.at] == "(":
                self._comment()
            else:
                self.at += 1

    def address(self) -> list[Address]:
        start = self.at
        name = self.phrase()
        self.skip_cfws()
        if name and self.peek() == ":":
            self.at += 1
            return self.group(name)
        self.at = start
        return [self.mailbox()]

    def group(self, name: str) -> list[Address]:
        members = [Address(None, None, name, None)]
        while True:
            self.skip_cfws()
            char = self.peek()
            if char == ";":
                self.at += 1
                break
            if char == "":
                break
            if char == ",":
                self.at += 1
                continue
            members.append(self.mailbox())
        members.append(Address(None, None, None, None))
        return members

    def mailbox(self) -> Address:
        start = self.at
        name = self.phrase()
        self.skip_cfws()
        if self.peek() == "<":
            self.at += 1
            return self.angle_address(name or None)
        # An addr-spec: a comment (the last one) is its display name.
        self.at = start
        self.comment = ""
        local = self.dot_atom()
        domain = None
        self.skip_cfws()
        if self.peek() == "@":
            self.at += 1
            domain = self.domain()
        if not local and domain is None:
            raise _Syntax()
        self.skip_cfws()
        return _fixed(self.comment or None, None, local, domain)

    def angle_address(self, name: str | None) -> Address:
        self.skip_cfws()
        route = None
        if self.peek() == "@":
            hops: list[str] = []
            while self.peek() == "@":
                self.at += 1
                hops.append("@" + self.domain())
                self.skip_cfws()
                while self.peek() == ",":
                    self.at += 1
                    self.skip_cfws()
            if self.peek() == ":":
                self.at += 1
            route = ",".join(hops)
        local = self.dot_atom()
        domain = None
        self.skip_cfws()
        if self.peek() == "@":
            self.at += 1
            domain = self.domain()
        self.skip_cfws()
        if self.peek() == ">":
            self.at += 1
        else:
            end = self.text.find(">", self.at)
            self.at = len(self.text) if end < 0 else end + 1
        return _fixed(name, route, local, domain)


def _fixed(name: str | None, route: str | None, local: str | None, domain: str | None) -> Address:
    return Address(name or None, route or None, local or MISSING_MAILBOX, domain or MISSING_DOMAIN)


def parse_addresses(value: bytes | None) -> list[Address]:
    """The addresses of a header's (unfolded) value, groups marked as in ENVELOPE."""
    if not value:
        return []
    return _Parser(value.decode("utf-8", "surrogateescape")).address_list()


def _decoded(text: str) -> str:
    """RFC 2047 encoded words decoded (what a user searches for is the name as shown)."""
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:
        return text


def search_text(value: bytes | None) -> str:
    """
    What FROM/TO/CC/BCC match a header against (RFC 3501 6.4.4, as Dovecot
    does it): its addresses written out normalized, ``Name <mailbox@domain>``
    with the name decoded, groups as ``name: ...;``, so a search matches
    display names, comments that stand for names, and the address itself,
    but never the raw header's quoting, comments inside an address or
    encoded words.
    """
    out: list[str] = []
    for address in parse_addresses(value):
        if address.domain is None:
            out.append(f"{address.mailbox}:" if address.mailbox is not None else ";")
            continue
        spec = f"{address.mailbox}@{address.domain}"
        if address.route:
            spec = f"{address.route}:{spec}"
        out.append(f"{_decoded(address.name)} <{spec}>" if address.name else spec)
    return " ".join(out)
