"""
The hosts that the links in a message's body name, for the domain lists
(SURBL/DBL style: the registrable domain of each URL's host under the
zone) and, for a URL whose host is an address, the IP lists.

What is read: the ``text/plain`` and ``text/html`` parts, decoded
(quoted-printable, base64, their charset); in them ``http://`` and
``https://`` URLs, bare ``www.`` hosts, and in HTML the ``href`` and
``src`` attributes (protocol-relative ``//host`` included), after the
HTML's character references are resolved. Obfuscated links (hosts split by
markup, hex-encoded hosts, redirectors) are not unpicked: the content
scanner is the place for that.

A sender controls what this costs, so the work is bounded
(L{UrlBounds}: at most so many parts, so many KiB of decoded text, so many
distinct hosts) and runs on the filtering pool, never on the reactor
(L{mailapp.postscreen.screen.SessionScreen.urls}). This module is pure:
bytes in, hosts out.
"""

from __future__ import annotations

import email.parser
import email.policy
import html
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message

from mailapp.authentication.dmarc import organizational_domain

__all__ = ["UrlBounds", "UrlHosts", "url_hosts"]

#: A URL's authority (userinfo, host, port), after its scheme.
_SCHEME = re.compile(r"\bhttps?://([^\s/?#<>\"'\\]+)", re.IGNORECASE)
#: A bare ``www.`` host, not inside a longer name, address or path.
_WWW = re.compile(r"(?<![\w.@/-])(www\.[a-z0-9-]+(?:\.[a-z0-9-]+)+)", re.IGNORECASE)
#: An HTML link attribute: ``href="http://host/..."``, ``src='//host/...'``.
_ATTRIBUTE = re.compile(r"\b(?:href|src)\s*=\s*[\"']?\s*(?:https?:)?//([^\s/?#<>\"'\\]+)", re.IGNORECASE)
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
#: What a sentence may put after a URL that is not part of its host.
_TRAILING = ".,;:!?)]}>'\""


@dataclass(frozen=True)
class UrlBounds:
    """How much of a message is read: MIME parts, decoded text, distinct hosts returned."""

    max_parts: int = 20
    max_text_bytes: int = 512 * 1024
    max_hosts: int = 20


@dataclass(frozen=True)
class UrlHosts:
    """The distinct hosts of a message's links, in the order they first appear."""

    #: Registrable domains (``example.co.uk`` for ``http://www.a.example.co.uk/x``).
    domains: tuple[str, ...] = ()
    #: Addresses of IP-literal URLs (``http://192.0.2.7/``, ``http://[2001:db8::1]/``).
    addresses: tuple[str, ...] = ()


def url_hosts(message: bytes, bounds: UrlBounds = UrlBounds()) -> UrlHosts:
    """The link hosts of C{message} (a whole RFC 5322 message), within C{bounds}."""
    domains: dict[str, None] = {}
    addresses: dict[str, None] = {}
    for text, is_html in _texts(message, bounds):
        for host in _hosts(text, is_html):
            if len(domains) + len(addresses) >= bounds.max_hosts:
                return UrlHosts(tuple(domains), tuple(addresses))
            kind, value = host
            (addresses if kind == "address" else domains).setdefault(value, None)
    return UrlHosts(tuple(domains), tuple(addresses))


def _texts(message: bytes, bounds: UrlBounds) -> Iterator[tuple[str, bool]]:
    """The decoded text parts, each as (text, is HTML), within the part and byte bounds."""
    parsed = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(message)
    budget = bounds.max_text_bytes
    parts = 0
    for part in parsed.walk():
        if part.is_multipart():
            continue
        parts += 1
        if parts > bounds.max_parts or budget <= 0:
            return
        kind = part.get_content_type()
        if kind not in ("text/plain", "text/html"):
            continue
        payload = _payload(part, budget)[:budget]
        budget -= len(payload)
        yield _decode(payload, part.get_content_charset() or "us-ascii"), kind == "text/html"


def _payload(part: Message, budget: int) -> bytes:
    """
    The part's body with its transfer encoding undone (a bad encoding gives
    what could be decoded), at least its first C{budget} bytes: a longer
    encoded body is cut first (at a line end, which keeps base64 whole)
    to what can decode to C{budget}, so that decoding costs the bound, not
    the part (quoted-printable takes at most 3 bytes a byte, base64 4 for 3).
    """
    raw = part.get_payload()
    limit = 3 * budget + 1024
    if isinstance(raw, str) and len(raw) > limit:
        cut = raw.rfind("\n", 0, limit)
        part.set_payload(raw[: cut + 1 if cut > 0 else limit])
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _decode(payload: bytes, charset: str) -> str:
    try:
        return payload.decode(charset, "replace")
    except LookupError:  # an unknown charset: its ASCII, where hosts are, reads the same
        return payload.decode("utf-8", "replace")


def _hosts(text: str, is_html: bool) -> Iterator[tuple[str, str]]:
    """(``"domain"``, registrable domain) or (``"address"``, address) for each link in C{text}."""
    if is_html:
        text = html.unescape(text)
        authorities = [m.group(1) for m in _ATTRIBUTE.finditer(text)]
    else:
        authorities = []
    authorities += [m.group(1) for m in _SCHEME.finditer(text)]
    authorities += [m.group(1) for m in _WWW.finditer(text)]
    for authority in authorities:
        host = _host(authority)
        if host is not None:
            yield host


def _host(authority: str) -> tuple[str, str] | None:
    """An authority (``user@host:port``) as a domain or an address; None for what is neither."""
    authority = authority.rpartition("@")[2].rstrip(_TRAILING)
    if authority.startswith("["):
        literal = authority[1:].partition("]")[0]
        return _address(literal)
    host = authority.partition(":")[0].rstrip(".").lower()
    address = _address(host)
    if address is not None:
        return address
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = host.split(".")
    if len(labels) < 2 or len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        return None
    return "domain", organizational_domain(host)


def _address(text: str) -> tuple[str, str] | None:
    try:
        return "address", str(ipaddress.ip_address(text))
    except ValueError:
        return None
