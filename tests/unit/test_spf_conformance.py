"""
The OpenSPF RFC 7208 test suite (``../shared/conformance/spf/``, written by
others), every case through mailapp's SPF path: pyspf's evaluation with its
DNS going through L{mailapp.spf.ThreadedLookup} to an asynchronous
twisted.names-style resolver on the reactor, from a worker thread, exactly
as at the MX. The resolver serves the suite's zone data.

As the suite's own driver does (pyspf's ``test/testspf.py``), an SPF-type
record is also served as TXT unless the name has TXT records of its own,
``TIMEOUT`` makes a name (or one type at a name) time out, a name under
``error.`` that is not in the zone times out, and a CNAME answer carries the
target's records. Where a case allows several results, any of them passes.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.names import dns, error as dns_error
from twisted.trial import unittest

from mailapp.spf import SPFChecker, SPFResult, ThreadedLookup, evaluate
from tests.needs import unavailable
from tests.paths import SHARED

SUITE = SHARED / "conformance" / "spf" / "rfc7208-tests.yml"


def _records(name: str, entries: list[Any]) -> list[tuple[str, Any]]:
    """(type, value) pairs of one name, SPF duplicated as TXT unless TXT is given (the driver's rule)."""
    out: list[tuple[str, Any]] = []
    generated: list[tuple[str, Any]] = []
    has_txt = any(isinstance(entry, dict) and "TXT" in entry for entry in entries)
    for entry in entries:
        if entry == "TIMEOUT":
            out.append(("TIMEOUT", None))
            continue
        for kind, value in entry.items():
            if kind in ("TXT", "SPF") and isinstance(value, str):
                value = [value]
            if value in (["NONE"], "NONE"):
                continue
            out.append((kind, value))
            if kind == "SPF" and not has_txt:
                generated.append(("TXT", value))
    return out + generated


def _record(kind: str, value: Any) -> Any:
    if kind == "A":
        return dns.Record_A(value)
    if kind == "AAAA":
        return dns.Record_AAAA(value)
    if kind == "MX":
        return dns.Record_MX(value[0], value[1].encode())
    if kind == "PTR":
        return dns.Record_PTR(value.encode())
    if kind == "CNAME":
        return dns.Record_CNAME(value.encode())
    if kind in ("TXT", "SPF"):
        strings = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in value]
        return (dns.Record_TXT if kind == "TXT" else dns.Record_SPF)(*strings)
    raise ValueError(kind)


class ZoneResolver:
    """A twisted.names-shaped resolver over the suite's zone data (all of it answers at once)."""

    _CODES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "PTR": dns.PTR, "TXT": dns.TXT, "SPF": dns.SPF, "CNAME": dns.CNAME}

    def __init__(self, zonedata: dict[str, list[Any]]) -> None:
        self.zone = {name.lower().rstrip("."): _records(name, entries) for name, entries in zonedata.items()}

    def _answer(self, name: str, kind: str, depth: int = 0) -> list[Any]:
        entries = self.zone.get(name.lower().rstrip("."))
        if entries is None:
            if name.lower().startswith("error."):
                raise dns_error.DNSQueryTimeoutError(name)
            raise dns_error.DNSNameError(name)
        answers = []
        for k, v in entries:
            # As the suite's driver reads it: a TIMEOUT times out the queries
            # for which no record came before it, and ends the others.
            if k == "TIMEOUT":
                if not answers:
                    raise dns_error.DNSQueryTimeoutError(name)
                break
            if k == kind and v == "TIMEOUT":
                raise dns_error.DNSQueryTimeoutError(name)
            if k == kind and k in self._CODES:
                answers.append(dns.RRHeader(name.encode(), self._CODES[k], dns.IN, 60, _record(k, v)))
        if not answers and kind != "CNAME" and depth < 1:
            for k, v in entries:
                if k == "CNAME":
                    answers.append(dns.RRHeader(name.encode(), dns.CNAME, dns.IN, 60, _record(k, v)))
                    try:
                        answers.extend(self._answer(v, kind, depth + 1))
                    except dns_error.DNSNameError:
                        pass
        return answers

    def _lookup(self, kind: str, name: str) -> defer.Deferred[Any]:
        try:
            return defer.succeed((self._answer(name, kind), [], []))
        except Exception as e:
            return defer.fail(e)

    def lookupAddress(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup("A", name)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup("AAAA", name)

    def lookupMailExchange(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup("MX", name)

    def lookupPointer(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup("PTR", name)

    def lookupText(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup("TXT", name)

    def lookupSenderPolicy(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup("SPF", name)

    def lookupCanonicalName(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup("CNAME", name)


def _cases() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    cases = []
    with open(SUITE, "rb") as f:
        for scenario in yaml.safe_load_all(f):
            for name, case in scenario["tests"].items():
                cases.append((f"{scenario['description']}: {name}", case, scenario["zonedata"]))
    return cases


class OpenSPFSuiteTests(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_every_case_of_the_openspf_rfc7208_suite(self) -> Any:
        if not SUITE.exists():
            unavailable(f"the OpenSPF suite is not at {SUITE} (shared/conformance beside the checkout)")
        failures = []
        cases = _cases()
        for title, case, zonedata in cases:
            lookup = ThreadedLookup(reactor, ZoneResolver(zonedata))
            outcome: SPFResult = yield deferToThread(
                evaluate, case["host"], case.get("mailfrom", ""), case.get("helo", ""), lookup, 20.0, "DEFAULT"
            )
            expected = case["result"] if isinstance(case["result"], list) else [case["result"]]
            explanation = case.get("explanation")
            if outcome.result not in expected:
                failures.append(f"{title}: {outcome.result} not in {expected} ({outcome.explanation})")
            elif explanation is not None and outcome.explanation != explanation:
                failures.append(f"{title}: explanation {outcome.explanation!r} != {explanation!r}")
        sys.stderr.write(f"\nOpenSPF RFC 7208 suite: {len(cases) - len(failures)} of {len(cases)} cases pass\n")
        self.assertEqual(failures, [], f"{len(failures)} of {len(cases)} cases fail")


class SilentResolver(ZoneResolver):
    """A resolver that never answers."""

    def __init__(self) -> None:
        super().__init__({})

    def _lookup(self, kind: str, name: str) -> defer.Deferred[Any]:
        return defer.Deferred()


class CheckerTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_check_runs_on_the_given_pool_with_dns_through_the_resolver(self) -> Any:
        zone = {"example.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}]}
        checker = SPFChecker(reactor, ZoneResolver(zone), reactor.getThreadPool())
        passed = yield checker.check("192.0.2.7", "alice@example.test", "mx.example.test")
        failed = yield checker.check("198.51.100.1", "alice@example.test", "mx.example.test")
        self.assertEqual((passed.result, passed.identity, passed.domain), ("pass", "mailfrom", "example.test"))
        self.assertEqual(failed.result, "fail")

    @defer.inlineCallbacks
    def test_a_name_server_that_never_answers_is_a_temperror_within_the_query_timeout(self) -> Any:
        import time

        lookup = ThreadedLookup(reactor, SilentResolver(), query_timeout=0.5)
        started = time.monotonic()
        outcome = yield deferToThread(evaluate, "192.0.2.7", "alice@example.test", "mx.example.test", lookup, 5.0)
        self.assertEqual(outcome.result, "temperror")
        self.assertLess(time.monotonic() - started, 3.0)
