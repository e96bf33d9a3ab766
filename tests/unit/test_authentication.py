"""
Sender authentication on the MX, unit by unit, on fakes: the DNS function
(L{mailapp.dnsthread}), DKIM verification (the RFC 8463 example signatures,
whose message is RFC 6376's), DMARC evaluation, the Authentication-Results
field (with the removal of a forged one), and one message's checks end to
end (L{mailapp.authentication.checks}), all over L{FakeResolver} on a
L{Clock}, where "worker thread" work runs inline.
"""

from __future__ import annotations

from typing import Any

import dkim
import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mailapp.authentication.checks import DMARCRejected, DMARCUndecided, InboundChecks
from mailapp.authentication.dkim import DKIMResult, verify_signatures
from mailapp.authentication.dmarc import evaluate, from_domains, organizational_domain
from mailapp.authentication.results import Clause, authentication_results, authserv_id, dkim_clause, remove_ours
from mailapp.config import DEFAULT_AUTHENTICATION
from mailapp.dnsthread import DNSTemporaryFailure, LookupBudget, ServiceDNS
from mailapp.testing import FakeResolver
from mailapp.testing.threads import SynchronousThreadPool
from tests.dkim_examples import KEYS, MESSAGE, RFC6376_KEY, RFC6376_MESSAGE, SENDER_ZONE, signed


def lookup(records: dict[str, Any] | None = None, **faults: Any) -> Any:
    return ServiceDNS(Clock(), FakeResolver(records or {}, **faults)).lookup()


def keys(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {name: {"TXT": [value]} for name, value in KEYS.items()} | (extra or {})


# -- the DNS function ---------------------------------------------------------------


def test_dnsfunc_answers_a_txt_record_with_its_strings_joined() -> None:
    dnsfunc = ServiceDNS(Clock(), FakeResolver(keys())).dnsfunc()
    assert dnsfunc(b"test._domainkey.football.example.com.", timeout=5).startswith(b"v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEB")


def test_dnsfunc_answers_none_for_nxdomain() -> None:
    assert ServiceDNS(Clock(), FakeResolver({})).dnsfunc()("nothing.test") is None


def test_dnsfunc_raises_dkimpys_timeout_for_a_timeout_and_notes_it() -> None:
    found = lookup(timeout=["slow.test"])
    with pytest.raises(dkim.DnsTimeoutError):
        found.txt("k._domainkey.slow.test")
    assert "k._domainkey.slow.test" in found.failures


def test_a_spent_budget_is_a_temporary_failure_without_a_query() -> None:
    resolver = FakeResolver({"a.test": {"TXT": ["x"]}})
    budget = LookupBudget(seconds=20, max_queries=2)
    found = ServiceDNS(Clock(), resolver).lookup(budget)
    found.txt_records("a.test")
    found.txt_records("b.test")
    found.txt_records("a.test")  # from the cache: no query, nothing spent
    with pytest.raises(DNSTemporaryFailure):
        found.txt_records("c.test")
    assert len(resolver.queries) == 2


def test_an_unanswered_query_on_a_reactor_without_threads_is_a_temporary_failure() -> None:
    with pytest.raises(DNSTemporaryFailure):
        lookup(unanswered=["held.test"]).records("held.test", "TXT")


class ThreadedDNSFunctionTests(TestCase):
    def test_dnsfunc_from_a_worker_thread_asks_the_resolver_on_the_reactor(self) -> Any:
        resolver = FakeResolver(keys())
        dnsfunc = ServiceDNS(global_reactor, resolver).dnsfunc(LookupBudget())
        d = deferToThread(dnsfunc, "brisbane._domainkey.football.example.com", timeout=5)
        d.addCallback(self.assertEqual, KEYS["brisbane._domainkey.football.example.com"].encode())
        return d.addCallback(lambda _: self.assertEqual(resolver.queries, [("brisbane._domainkey.football.example.com", "TXT")]))


# -- DKIM -----------------------------------------------------------------------------


def test_the_rfc_8463_example_signatures_ed25519_and_rsa_verify() -> None:
    results = verify_signatures(MESSAGE, lookup(keys()))
    assert [(r.result, r.algorithm, r.selector, r.domain) for r in results] == [
        ("pass", "ed25519-sha256", "brisbane", "football.example.com"),
        ("pass", "rsa-sha256", "test", "football.example.com"),
    ]


def test_the_rfc_6376_example_signature_simple_simple_verifies() -> None:
    records = {"brisbane._domainkey.example.com": {"TXT": [RFC6376_KEY]}}
    [result] = verify_signatures(RFC6376_MESSAGE, lookup(records))
    assert (result.result, result.domain, result.selector) == ("pass", "example.com", "brisbane")
    [changed] = verify_signatures(RFC6376_MESSAGE.replace(b"game. Are", b"game.  Are"), lookup(records))
    assert changed.result == "fail"  # simple body canonicalisation: one more space breaks it


def test_a_changed_body_fails_both_signatures() -> None:
    results = verify_signatures(MESSAGE.replace(b"hungry", b"angry"), lookup(keys()))
    assert [r.result for r in results] == ["fail", "fail"]


def test_a_changed_signed_header_fails() -> None:
    results = verify_signatures(MESSAGE.replace(b"Is dinner ready?", b"Is lunch ready?"), lookup(keys()))
    assert [r.result for r in results] == ["fail", "fail"]


def test_a_key_lookup_timeout_is_a_temperror_and_a_missing_key_a_permerror() -> None:
    records = {"test._domainkey.football.example.com": {"TXT": [KEYS["test._domainkey.football.example.com"]]}}
    results = verify_signatures(MESSAGE, lookup(records, timeout=["brisbane._domainkey.football.example.com"]))
    assert [r.result for r in results] == ["temperror", "pass"]
    results = verify_signatures(MESSAGE, lookup({}))
    assert [(r.result, r.reason) for r in results] == [("permerror", "no key"), ("permerror", "no key")]


def test_an_unsigned_message_has_no_dkim_results() -> None:
    assert verify_signatures(b"From: a@b.test\r\n\r\nhi\r\n", lookup({})) == []


def test_signatures_past_the_limit_are_not_verified() -> None:
    assert len(verify_signatures(MESSAGE, lookup(keys()), max_signatures=1)) == 1


# -- DMARC ----------------------------------------------------------------------------


def dmarc_lookup(record: str, domain: str = "a.test", **faults: Any) -> Any:
    return lookup({f"_dmarc.{domain}": {"TXT": [record]}}, **faults)


PASS_A = [DKIMResult("pass", "a.test")]


def test_organizational_domains_come_from_the_public_suffix_list() -> None:
    assert organizational_domain("mail.Example.CO.UK") == "example.co.uk"
    assert organizational_domain("x.y.a.test") == "a.test"


def test_from_domains_reads_every_address_of_the_from_fields() -> None:
    message = b"Subject: x\r\nFrom: \"A, B\" <a@One.test>,\r\n c@two.test\r\nTo: d@three.test\r\n\r\nFrom: e@body.test\r\n"
    assert from_domains(message) == ["one.test", "two.test"]


def test_an_aligned_dkim_pass_passes_in_relaxed_mode_from_a_subdomain_signer() -> None:
    outcome = evaluate("a.test", "fail", "x.test", [DKIMResult("pass", "mail.a.test")], dmarc_lookup("v=DMARC1; p=reject"))
    assert (outcome.result, outcome.policy) == ("pass", "reject")


def test_strict_dkim_alignment_needs_the_same_name() -> None:
    outcome = evaluate("a.test", "none", "", [DKIMResult("pass", "mail.a.test")], dmarc_lookup("v=DMARC1; p=reject; adkim=s"), lambda: 0.0)
    assert (outcome.result, outcome.disposition) == ("fail", "reject")


def test_an_aligned_spf_pass_passes_and_strict_spf_needs_the_same_name() -> None:
    assert evaluate("a.test", "pass", "bounces.a.test", [], dmarc_lookup("v=DMARC1; p=reject")).result == "pass"
    assert evaluate("a.test", "pass", "bounces.a.test", [], dmarc_lookup("v=DMARC1; p=reject; aspf=s")).result == "fail"


def test_an_unaligned_pass_fails() -> None:
    outcome = evaluate("a.test", "pass", "other.test", [DKIMResult("pass", "other.test")], dmarc_lookup("v=DMARC1; p=quarantine"))
    assert (outcome.result, outcome.disposition) == ("fail", "quarantine")


def test_pct_samples_the_policy_and_the_rest_get_the_next_one_down() -> None:
    record = "v=DMARC1; p=reject; pct=10"
    assert evaluate("a.test", "fail", "a.test", [], dmarc_lookup(record), lambda: 0.05).disposition == "reject"
    assert evaluate("a.test", "fail", "a.test", [], dmarc_lookup(record), lambda: 0.5).disposition == "quarantine"


def test_a_subdomain_without_a_record_gets_the_organizational_domains_sp() -> None:
    outcome = evaluate("news.a.test", "none", "", [], dmarc_lookup("v=DMARC1; p=reject; sp=quarantine"))
    assert (outcome.result, outcome.policy, outcome.disposition) == ("fail", "quarantine", "quarantine")


def test_no_record_is_none_and_two_records_are_none() -> None:
    assert evaluate("a.test", "fail", "", [], lookup({})).result == "none"
    two = lookup({"_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]}})
    assert evaluate("a.test", "fail", "", [], two).result == "none"


def test_a_dns_failure_is_a_temperror_and_so_is_an_aligned_dkim_temperror() -> None:
    assert evaluate("a.test", "pass", "a.test", [], lookup({}, servfail=["_dmarc.a.test"])).result == "temperror"
    outcome = evaluate("a.test", "fail", "a.test", [DKIMResult("temperror", "a.test")], dmarc_lookup("v=DMARC1; p=reject"))
    assert outcome.result == "temperror"


# -- the Authentication-Results field ------------------------------------------------


def test_the_field_names_our_authserv_id_and_one_clause_a_line() -> None:
    field = authentication_results(
        "mx.b.test",
        [Clause("spf", "pass", (("smtp.mailfrom", "a.test"),)), dkim_clause(DKIMResult("pass", "a.test", "s1", "rsa-sha256", "abcdefgh"))],
    )
    assert field == (
        b"Authentication-Results: mx.b.test;\r\n"
        b"\tspf=pass smtp.mailfrom=a.test;\r\n"
        b"\tdkim=pass header.d=a.test header.s=s1 header.a=rsa-sha256 header.b=abcdefgh\r\n"
    )
    assert authentication_results("mx.b.test", []) == b"Authentication-Results: mx.b.test;\r\n\tnone\r\n"


def test_a_hostile_value_cannot_end_a_clause_or_add_a_line() -> None:
    field = authentication_results("mx.b.test", [dkim_clause(DKIMResult("pass", "a.test; dmarc=pass\r\nX-Evil: 1"))])
    assert field.count(b"\r\n") == 2 and b";" not in field.split(b"\r\n")[1] and b"X-Evil:" not in field


def test_an_arc_result_becomes_its_clause_between_dkim_and_dmarc() -> None:
    from types import SimpleNamespace

    from mailapp.authentication.results import arc_clause

    assert str(arc_clause(SimpleNamespace(result="pass", oldest_pass=0))) == "arc=pass header.oldest-pass=0"
    assert str(arc_clause(SimpleNamespace(result="fail", oldest_pass=0))) == "arc=fail"


def test_an_authserv_id_is_read_past_comments() -> None:
    assert authserv_id(" (forged (nested)) MX.B.test; spf=pass") == "mx.b.test"


def test_a_forged_field_with_our_authserv_id_is_removed_and_others_kept() -> None:
    message = (
        b"Authentication-Results: (hi) MX.b.test;\r\n\tdkim=pass header.d=bank.test\r\n"
        b"Authentication-Results: mx.other.test; spf=pass\r\n"
        b"Subject: x\r\n\r\nAuthentication-Results: mx.b.test; body stays\r\n"
    )
    cleaned, removed = remove_ours(message, "mx.b.test")
    assert removed == 1
    assert cleaned == (
        b"Authentication-Results: mx.other.test; spf=pass\r\nSubject: x\r\n\r\nAuthentication-Results: mx.b.test; body stays\r\n"
    )


# -- one message's checks -----------------------------------------------------------------


def check(message: bytes, ip: str = "192.0.2.10", sender: str = "bob@a.test", settings: Any = DEFAULT_AUTHENTICATION, **faults: Any) -> Any:
    clock = Clock()
    checks = InboundChecks(clock, ServiceDNS(clock, FakeResolver(SENDER_ZONE, **faults)), SynchronousThreadPool(), "mx.b.test")
    return checks.start(settings, ip, "mail.a.test", sender).finish(message, "Q1")


class MessageCheckTests(TestCase):
    def test_a_signed_message_from_its_domains_server_passes_everything(self) -> None:
        verdict = self.successResultOf(check(signed(b"From: bob@a.test\r\nSubject: hi\r\n\r\nhello\r\n")))
        assert verdict.refusal is None and verdict.folder == "INBOX"
        text = verdict.header.decode()
        assert text.startswith("Authentication-Results: mx.b.test;\r\n\tspf=pass smtp.helo=mail.a.test;\r\n\tspf=pass smtp.mailfrom=a.test;")
        assert "dkim=pass header.d=a.test header.s=sel header.a=rsa-sha256" in text
        assert "dmarc=pass header.from=a.test policy.dmarc=reject" in text

    def test_a_forged_from_under_p_reject_is_refused_with_550(self) -> None:
        verdict = self.successResultOf(check(b"From: boss@a.test\r\n\r\nsend money\r\n", ip="203.0.113.5", sender="x@evil.test"))
        assert isinstance(verdict.refusal, DMARCRejected) and verdict.refusal.reply().startswith(b"550 5.7.1")

    def test_a_failure_under_p_quarantine_goes_to_junk(self) -> None:
        verdict = self.successResultOf(check(b"From: a@q.test\r\n\r\nhi\r\n", ip="203.0.113.5", sender="x@evil.test"))
        assert (verdict.refusal, verdict.folder, verdict.action) == (None, "Junk", "junk")

    def test_of_several_from_domains_the_strictest_outcome_stands(self) -> None:
        verdict = self.successResultOf(check(b"From: a@q.test, b@a.test\r\n\r\nhi\r\n", ip="203.0.113.5", sender="x@evil.test"))
        assert isinstance(verdict.refusal, DMARCRejected)
        assert b"dmarc=fail header.from=a.test policy.dmarc=reject" in verdict.header

    def test_a_dns_failure_of_the_policy_is_a_451(self) -> None:
        verdict = self.successResultOf(check(b"From: boss@a.test\r\n\r\nhi\r\n", servfail=["_dmarc.a.test"]))
        assert isinstance(verdict.refusal, DMARCUndecided) and verdict.refusal.code == 451

    def test_the_config_can_turn_a_reject_into_junk(self) -> None:
        import dataclasses

        settings = dataclasses.replace(DEFAULT_AUTHENTICATION, dmarc_reject="junk")
        verdict = self.successResultOf(check(b"From: boss@a.test\r\n\r\nhi\r\n", ip="203.0.113.5", settings=settings))
        assert (verdict.refusal, verdict.folder) == (None, "Junk")

    def test_an_arc_verifier_handed_in_puts_its_clause_before_dmarc(self) -> None:
        from twisted.internet.defer import succeed

        from mailapp.authentication.results import Clause

        clock = Clock()
        checks = InboundChecks(
            clock, ServiceDNS(clock, FakeResolver(SENDER_ZONE)), SynchronousThreadPool(), "mx.b.test",
            arc=lambda message: succeed(Clause("arc", "pass", (("header.oldest-pass", "0"),))),
        )
        message = signed(b"From: bob@a.test\r\nSubject: hi\r\n\r\nhello\r\n")
        verdict = self.successResultOf(checks.start(DEFAULT_AUTHENTICATION, "192.0.2.10", "mail.a.test", "bob@a.test").finish(message))
        header = verdict.header.decode()
        assert header.index("dkim=pass") < header.index("arc=pass header.oldest-pass=0") < header.index("dmarc=pass")

    def test_a_forged_field_of_ours_is_gone_from_the_message(self) -> None:
        message = signed(b"From: bob@a.test\r\nSubject: hi\r\n\r\nhello\r\n")
        forged = b"Authentication-Results: mx.b.test; dkim=pass header.d=bank.test\r\n" + message
        verdict = self.successResultOf(check(forged))
        assert verdict.message == message and b"dkim=pass header.d=a.test" in verdict.header


# -- the log event and the metrics ------------------------------------------------------


class ResultsAreLoggedAndCountedTests(TestCase):
    def test_one_event_per_message_and_the_metrics_count_it_per_mechanism(self) -> None:
        from twisted.logger import globalLogPublisher

        from mailapp import logevents
        from mailapp.metrics import Metrics

        events: list[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.successResultOf(check(b"From: boss@a.test\r\n\r\nhi\r\n", ip="203.0.113.5", sender="x@evil.test"))
        [event] = [e for e in events if e.get("log_event") == logevents.AUTHENTICATION_CHECKED]
        assert (event["spf"], event["dkim"], event["dmarc"], event["action"], event["queue_id"]) == ("none", "none", "fail", "reject", "Q1")
        metrics = Metrics()
        metrics(event)
        text = metrics.exposition().decode()
        assert 'mailapp_authentication_results_total{mechanism="dmarc",result="fail"} 1.0' in text
        assert 'mailapp_authentication_results_total{mechanism="action",result="reject"} 1.0' in text


# -- the answer cache -------------------------------------------------------------------


def test_answers_are_cached_for_their_ttl_and_nxdomain_for_a_short_while() -> None:
    from mailapp.dnscache import AnswerCache

    now = [0.0]
    resolver = FakeResolver({"a.test": {"TXT": ["v=spf1 -all"]}})
    dns = ServiceDNS(Clock(), resolver, cache=AnswerCache(clock=lambda: now[0]))
    assert dns.lookup().txt_records("a.test") == [b"v=spf1 -all"]
    assert dns.lookup().txt_records("A.test.") == [b"v=spf1 -all"]
    assert dns.lookup().txt_records("missing.test") == []
    assert dns.lookup().txt_records("missing.test") == []
    assert resolver.queries == [("a.test", "TXT"), ("missing.test", "TXT")]
    now[0] = 59.0  # FakeResolver's TTL is 60 s, a negative answer's 30 s
    dns.lookup().txt_records("a.test")
    dns.lookup().txt_records("missing.test")
    assert resolver.queries[2:] == [("missing.test", "TXT")]
    now[0] = 61.0
    dns.lookup().txt_records("a.test")
    assert resolver.queries[3:] == [("a.test", "TXT")]


def test_a_failure_is_never_cached() -> None:
    resolver = FakeResolver({}, servfail=["broken.test"])
    dns = ServiceDNS(Clock(), resolver)
    for _ in range(2):
        with pytest.raises(DNSTemporaryFailure):
            dns.lookup().txt_records("broken.test")
    assert len(resolver.queries) == 2


def test_the_cache_keeps_at_most_its_size_dropping_the_oldest() -> None:
    from mailapp.dnscache import AnswerCache

    resolver = FakeResolver({f"n{i}.test": {"TXT": ["x"]} for i in range(3)})
    dns = ServiceDNS(Clock(), resolver, cache=AnswerCache(max_entries=2))
    for name in ("n0.test", "n1.test", "n2.test", "n0.test"):
        dns.lookup().txt_records(name)
    assert [name for name, _ in resolver.queries] == ["n0.test", "n1.test", "n2.test", "n0.test"]
