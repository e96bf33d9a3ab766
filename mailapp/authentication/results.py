"""
The ``Authentication-Results:`` header field (RFC 8601) the MX prepends to
every message it checks, and the removal of any such field from outside
that claims to be ours.

Each result clause is formatted by authres (the reference implementation of
the field's grammar: quoting, properties, the ``none`` form), the field's
folding and order are ours: SPF (HELO, then MAIL FROM), each DKIM
signature, ARC, DMARC. The ARC verifier (another module) hands in its
clause as a L{Clause}; L{authentication_results} puts it in its place.

A value taken from the message (a signature's ``d=``, a From domain) is
reduced to the characters a domain or address has, so that a hostile
signature cannot end a clause early or add a line to the header.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from authres.core import AuthenticationResult, AuthenticationResultProperty

from mailapp.authentication.dkim import DKIMResult
from mailapp.authentication.dmarc import DMARCResult

__all__ = [
    "Clause",
    "arc_clause",
    "authentication_results",
    "authserv_id",
    "dkim_clause",
    "dmarc_clause",
    "remove_ours",
    "spf_clause",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=/-]")


def _safe(value: str) -> str:
    return _UNSAFE.sub("?", value)[:255]


@dataclass(frozen=True)
class Clause:
    """
    One ``method=result`` clause: C{properties} as (``ptype.property``,
    value) pairs (``("smtp.mailfrom", "example.com")``), C{reason} a free
    text. What an ARC verifier returns is turned into one of these
    (``Clause("arc", "pass", (("header.oldest-pass", "0"),))``).
    """

    method: str
    result: str
    properties: tuple[tuple[str, str], ...] = ()
    reason: str = ""

    def __str__(self) -> str:
        properties = []
        for name, value in self.properties:
            ptype, _, pname = name.partition(".")
            properties.append(AuthenticationResultProperty(ptype, pname, _safe(value)))
        clause = AuthenticationResult(self.method, result=self.result, reason=self.reason[:200] or None, properties=properties)
        return str(clause)


def spf_clause(result: str, identity: str, domain: str) -> Clause:
    """``spf=pass smtp.mailfrom=example.com`` (or ``smtp.helo=``: RFC 8601 2.7.2)."""
    return Clause("spf", result, ((f"smtp.{identity}", domain),))


def dkim_clause(result: DKIMResult) -> Clause:
    """``dkim=pass header.d=... header.s=... header.a=... header.b=...`` (RFC 8601 2.7.1, RFC 6008)."""
    properties = [("header.d", result.domain)] if result.domain else []
    properties += [(name, value) for name, value in (("header.s", result.selector), ("header.a", result.algorithm), ("header.b", result.signature)) if value]
    return Clause("dkim", result.result, tuple(properties), result.reason if result.result != "pass" else "")


def arc_clause(result: Any) -> Clause:
    """
    ``arc=pass header.oldest-pass=0`` (RFC 8617 10.1) from an ARC
    verifier's result: anything with C{result} (``none``, ``pass``,
    ``fail``) and C{oldest_pass}, as the ARC module's C{ARCResult} has.
    The service wires that verifier in with
    C{InboundChecks(arc=lambda m: verifier.verify(m).addCallback(arc_clause))}.
    """
    if result.result == "pass":
        return Clause("arc", "pass", (("header.oldest-pass", str(result.oldest_pass)),))
    return Clause("arc", str(result.result))


def dmarc_clause(result: DMARCResult) -> Clause:
    """``dmarc=fail header.from=example.com policy.dmarc=reject`` (RFC 7489 11.2)."""
    properties = [("header.from", result.from_domain)] if result.from_domain else []
    if result.result in ("pass", "fail"):
        properties.append(("policy.dmarc", result.disposition if result.result == "fail" else result.policy))
    return Clause("dmarc", result.result, tuple(properties), result.reason)


def authentication_results(authserv: str, clauses: Sequence[Clause]) -> bytes:
    """The whole field, folded one clause a line, CRLF-terminated; ``none`` when nothing was checked."""
    body = ";\r\n\t".join(str(clause) for clause in clauses) if clauses else "none"
    return f"Authentication-Results: {authserv};\r\n\t{body}\r\n".encode("ascii", "replace")


_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")
_FIELD = re.compile(rb"^authentication-results[ \t]*:", re.I)


def authserv_id(value: str) -> str:
    """The authserv-id a field's value starts with (comments and white space skipped), lower case."""
    text = value
    for _ in range(5):  # nested comments, from the inside out
        text = _COMMENT.sub(" ", text)
    match = re.match(r"\s*([^\s;()]+)", text)
    return match.group(1).lower().rstrip(".") if match else ""


def remove_ours(message: bytes, authserv: str) -> tuple[bytes, int]:
    """
    C{message} (wire form) without the Authentication-Results fields of its
    header whose authserv-id is C{authserv} (RFC 8601 5: a receiver must
    remove those before delivery), and how many there were. Everything else
    is kept byte for byte.
    """
    end = message.find(b"\r\n\r\n")
    head, rest = (message, b"") if end < 0 else (message[: end + 2], message[end + 2 :])
    if b"uthentication-" not in head and b"UTHENTICATION-" not in head:
        return message, 0
    ours = authserv.lower().rstrip(".")
    kept: list[bytes] = []
    removed = 0
    field: list[bytes] = []

    def close() -> None:
        nonlocal removed
        if not field:
            return
        raw = b"".join(field)
        if _FIELD.match(raw) and authserv_id(raw.split(b":", 1)[1].decode("utf-8", "replace")) == ours:
            removed += 1
        else:
            kept.append(raw)
        field.clear()

    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and field:
            field.append(line)
            continue
        close()
        field.append(line)
    close()
    return b"".join(kept) + rest, removed
