"""
FakeResolver: a twisted.names L{IResolver} answering from a dict, with
NXDOMAIN, SERVFAIL, timeouts and unanswered queries on demand, for the
relay's MX lookups and the SPF checks; and DNSSEC-validated answers (the
AD bit) for the names under C{secure}, for DANE.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import dns
from twisted.names.common import ResolverBase
from twisted.names.error import DNSNameError, DNSQueryTimeoutError, DNSServerError

__all__ = ["FakeResolver", "Records"]

#: Per name, per record type (``"MX"``, ``"A"``, ``"AAAA"``, ``"TXT"``, ``"SPF"``,
#: ``"CNAME"``, ``"PTR"``), its values: MX as ``(preference, host)``, TXT and
#: SPF as a string or a tuple of strings, TLSA as ``(usage, selector,
#: matching, data bytes)``, the others as strings.
Records: TypeAlias = Mapping[str, Mapping[str, Iterable[Any]]]

#: A DNS answer as twisted.names gives it: (answers, authority, additional).
_Answer: TypeAlias = tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]

_TYPES: Mapping[str, int] = {
    "A": dns.A,
    "AAAA": dns.AAAA,
    "MX": dns.MX,
    "TXT": dns.TXT,
    "SPF": dns.SPF,
    "CNAME": dns.CNAME,
    "PTR": dns.PTR,
    "TLSA": 52,
}
_NAMES: Mapping[int, str] = {code: name for name, code in _TYPES.items()}


def _strings(value: Any) -> list[bytes]:
    """A TXT or SPF value (one string, or several) as the record's byte strings."""
    strings = (value,) if isinstance(value, (str, bytes)) else tuple(value)
    return [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in strings]


#: How each record type's value (see L{Records}) becomes its payload.
_PAYLOADS: Mapping[str, Callable[[Any], Any]] = {
    "A": lambda address: dns.Record_A(address),
    "AAAA": lambda address: dns.Record_AAAA(address),
    "MX": lambda pair: dns.Record_MX(pair[0], pair[1].encode("ascii")),
    "CNAME": lambda target: dns.Record_CNAME(target.encode("ascii")),
    "PTR": lambda target: dns.Record_PTR(target.encode("ascii")),
    "TXT": lambda value: dns.Record_TXT(*_strings(value)),
    "SPF": lambda value: dns.Record_SPF(*_strings(value)),
    "TLSA": lambda value: dns.UnknownRecord(bytes(value[:3]) + bytes(value[3])),
}


def _under(name: str, names: Iterable[str]) -> bool:
    return any(name == other or name.endswith("." + other) for other in names)


class FakeResolver(ResolverBase):
    """
    Answers from C{records}; a name not there is NXDOMAIN. A name in (or
    below a name in) C{servfail} fails with L{DNSServerError}, in
    C{timeout} with L{DNSQueryTimeoutError} (what twisted.names' client
    gives after its own timeout), in C{unanswered} with a Deferred that only
    the test fires (C{held}), for code that bounds the wait on its clock.
    A name with a CNAME and none of the asked type is answered with the CNAME
    and the target's records, as a recursive resolver does.

        resolver = FakeResolver({
            "b.test": {"MX": [(10, "mx.b.test")], "TXT": ["v=spf1 -all"]},
            "mx.b.test": {"A": ["192.0.2.2"], "AAAA": ["2001:db8::2"]},
        }, servfail=["broken.test"])

    The sets are attributes, so a test can change its mind half-way:
    C{resolver.servfail.add("b.test")}.
    """

    def __init__(
        self,
        records: Records | None = None,
        *,
        servfail: Iterable[str] = (),
        timeout: Iterable[str] = (),
        unanswered: Iterable[str] = (),
        secure: Iterable[str] = (),
    ) -> None:
        ResolverBase.__init__(self)
        self.records: dict[str, dict[str, list[Any]]] = {}
        for name, kinds in (records or {}).items():
            for kind, values in kinds.items():
                self.add(name, kind, *([values] if kind == "CNAME" and isinstance(values, str) else values))
        self.servfail = {name.lower().rstrip(".") for name in servfail}
        self.timeout = {name.lower().rstrip(".") for name in timeout}
        self.unanswered = {name.lower().rstrip(".") for name in unanswered}
        #: Names whose answers carry a trusted DNSSEC AD bit (L{lookupAuthenticated}).
        self.secure = {name.lower().rstrip(".") for name in secure}
        #: Every query asked, as C{(name, type)}: C{("b.test", "MX")}.
        self.queries: list[tuple[str, str]] = []
        #: The Deferreds of queries for C{unanswered} names, in order, for the test to fire.
        self.held: list[Deferred[_Answer]] = []

    def add(self, name: str, kind: str, *values: Any) -> None:
        """Serve C{values} as C{name}'s records of type C{kind} (after those it has)."""
        if kind not in _TYPES:
            raise ValueError(f"FakeResolver serves {', '.join(_TYPES)}, not {kind!r}")
        self.records.setdefault(name.lower().rstrip("."), {}).setdefault(kind, []).extend(values)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[_Answer]:
        text = name.decode("ascii", "replace").lower().rstrip(".")
        self.queries.append((text, _NAMES.get(type, str(type))))
        if _under(text, self.servfail):
            return fail(DNSServerError(text))
        if _under(text, self.timeout):
            return fail(DNSQueryTimeoutError(text))
        if _under(text, self.unanswered):
            held: Deferred[_Answer] = Deferred()
            self.held.append(held)
            return held
        if text not in self.records:
            return fail(DNSNameError(text))
        return succeed((self._answers(text, type), [], []))

    def lookupAuthenticated(self, name: str, type: int, timeout: Any = None) -> Deferred[tuple[list[dns.RRHeader], bool]]:
        """
        What L{mailapp.relay.dane.AuthenticatedResolver} offers: the answers,
        and whether they carry a trusted AD bit (C{name} under C{secure}).
        """
        text = name.lower().rstrip(".")
        return self._lookup(name.encode("ascii"), dns.IN, type, timeout).addCallback(
            lambda answer: (answer[0], _under(text, self.secure))
        )

    def _answers(self, name: str, type: int, depth: int = 0) -> list[dns.RRHeader]:
        kinds = self.records.get(name, {})
        wanted = list(_TYPES) if type == dns.ALL_RECORDS else [_NAMES.get(type, "")]
        answers = [
            dns.RRHeader(name.encode("ascii"), _TYPES[kind], dns.IN, 60, _PAYLOADS[kind](value))
            for kind in wanted
            for value in kinds.get(kind, ())
        ]
        if not answers and type != dns.CNAME and depth < 8:
            for target in kinds.get("CNAME", ()):
                answers.append(dns.RRHeader(name.encode("ascii"), dns.CNAME, dns.IN, 60, _PAYLOADS["CNAME"](target)))
                answers.extend(self._answers(target.lower().rstrip("."), type, depth + 1))
        return answers
