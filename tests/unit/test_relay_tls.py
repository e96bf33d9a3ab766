"""
Outbound TLS on fakes: the config keys, WebPKI and DANE checks of a chain,
TLSA lookups and the AD bit (FakeResolver), MTA-STS parsing, fetching and
caching (a fake HTTP agent on a Clock), the per-hop policy decisions, and
the TLS-RPT report.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.web.client import ResponseDone
from twisted.python.failure import Failure

from mailapp.config import DEFAULT_RELAY, ConfigError, parse
from mailapp.config.relay import AD_TRUST, TLS_LEVELS
from mailapp.relay import dane, tlspolicy
from mailapp.relay.client import Reply
from mailapp.relay.dane import TLSA, AuthenticatedResolver, check_dane, lookup_tlsa
from mailapp.relay.mtasts import MTASTS, PolicyError, mx_matches, parse_policy, parse_txt
from mailapp.relay.routing import Hop
from mailapp.relay.tlspolicy import DomainPolicy, HopCheck, TLSPolicies
from mailapp.relay.tlsrpt import build_report
from mailapp.relay.tlsverify import check_webpki
from mailapp.testing import FakeResolver

MINIMAL = '[server]\nhostname = "mail.example.test"\n'
PATH = Path("/srv/mailapp/mailapp.toml")


# -- config ------------------------------------------------------------------------------


def test_tls_config_defaults_are_opportunistic_loopback_trust_and_the_system_store() -> None:
    relay = parse(MINIMAL, PATH).relay
    assert relay.tls_policy == "opportunistic" == DEFAULT_RELAY.tls_policy
    assert dict(relay.tls_policies) == {}
    assert relay.tls_ca_file is None
    assert relay.dnssec_ad_trust == "loopback"


def test_tls_config_per_domain_policies_and_ca_file_are_read() -> None:
    relay = parse(
        MINIMAL + '[relay]\ntls_ca_file = "ca.pem"\ndnssec_ad_trust = "any"\n[relay.tls_policies]\n"B.test" = "verify"\n',
        PATH,
    ).relay
    assert dict(relay.tls_policies) == {"b.test": "verify"}
    assert relay.tls_ca_file is not None and relay.tls_ca_file.is_absolute() and relay.tls_ca_file.name == "ca.pem"
    assert relay.dnssec_ad_trust == "any"


@pytest.mark.parametrize(
    "text, expected",
    [
        ('tls_policy = "secure"', "must be one of none, opportunistic, verify, dane, mta-sts, not 'secure'"),
        ('dnssec_ad_trust = "always"', "must be one of loopback, any, never, not 'always'"),
        ('tls_policies = { "b.test" = "strict" }', "must be one of"),
        ("tls_ca_file = 3", "must be a string"),
    ],
)
def test_bad_tls_config_values_are_problems(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(MINIMAL + "[relay]\n" + text + "\n", PATH)
    assert any(expected in problem for problem in raised.value.problems), raised.value.problems


def test_the_config_levels_are_the_relays() -> None:
    assert TLS_LEVELS == tlspolicy.LEVELS
    assert AD_TRUST == dane.AD_TRUST


# -- certificates --------------------------------------------------------------------------


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _certificate(
    subject: str, key: Any, issuer_key: Any = None, issuer: str | None = None, ca: bool = False, days: int = 1
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer or subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    signer = issuer_key or key
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test CA", ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("mx.b.test", leaf_key, ca_key, "test CA")
    expired = _certificate("mx.b.test", leaf_key, ca_key, "test CA", days=-1)
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _certificate("mx.b.test", stranger_key)
    from cryptography.x509.verification import Store

    return {"ca": ca, "leaf": leaf, "leaf_key": leaf_key, "expired": expired, "stranger": stranger, "store": Store([ca])}


def test_a_chain_to_the_store_naming_the_mx_verifies(pki: dict[str, Any]) -> None:
    assert check_webpki([pki["leaf"]], "mx.b.test", pki["store"]) is None


def test_a_certificate_for_another_name_is_a_host_mismatch(pki: dict[str, Any]) -> None:
    failure = check_webpki([pki["leaf"]], "mx.c.test", pki["store"])
    assert failure is not None and failure.result_type == "certificate-host-mismatch"


def test_a_self_signed_certificate_is_not_trusted(pki: dict[str, Any]) -> None:
    failure = check_webpki([pki["stranger"]], "mx.b.test", pki["store"])
    assert failure is not None and failure.result_type == "certificate-not-trusted"


def test_an_expired_certificate_is_reported_as_expired(pki: dict[str, Any]) -> None:
    failure = check_webpki([pki["expired"]], "mx.b.test", pki["store"])
    assert failure is not None and failure.result_type == "certificate-expired"


def _spki(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_dane_ee_spki_sha256_and_full_certificate_sha512_match_the_leaf_whatever_its_issuer(pki: dict[str, Any]) -> None:
    stranger = pki["stranger"]
    by_key = TLSA(3, 1, 1, hashlib.sha256(_spki(stranger)).digest())
    by_cert = TLSA(3, 0, 2, hashlib.sha512(stranger.public_bytes(serialization.Encoding.DER)).digest())
    assert check_dane([by_key], [stranger], "mx.b.test") is None
    assert check_dane([by_cert], [stranger], "mx.b.test") is None


def test_dane_ee_with_another_key_refuses_the_peer(pki: dict[str, Any]) -> None:
    record = TLSA(3, 1, 1, hashlib.sha256(_spki(pki["leaf"])).digest())
    failure = check_dane([record], [pki["stranger"]], "mx.b.test")
    assert failure is not None and failure.result_type == "validation-failure"


def test_dane_ta_matches_a_sent_issuer_and_checks_the_name(pki: dict[str, Any]) -> None:
    record = TLSA(2, 1, 1, hashlib.sha256(_spki(pki["ca"])).digest())
    chain = [pki["leaf"], pki["ca"]]
    assert check_dane([record], chain, "mx.b.test") is None
    assert check_dane([record], chain, "mx.c.test") is not None
    assert check_dane([record], [pki["leaf"]], "mx.b.test") is not None  # the anchor must be sent


def test_pkix_usages_are_unusable_for_smtp() -> None:
    assert not TLSA(0, 0, 1, b"x").usable and not TLSA(1, 1, 1, b"x").usable
    assert TLSA(3, 1, 1, b"x").usable and not TLSA(3, 2, 1, b"x").usable


# -- TLSA lookups and the AD bit -----------------------------------------------------------


def _fired(d: defer.Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred did not fire"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def test_tlsa_records_count_only_with_the_ad_bit() -> None:
    record = (3, 1, 1, b"\x01" * 32)
    records = {"_25._tcp.mx.b.test": {"TLSA": [record]}, "_25._tcp.mx.c.test": {"TLSA": [record]}}
    resolver = FakeResolver(records, secure=["b.test"])
    found = _fired(lookup_tlsa(resolver, "mx.b.test"))
    assert found.secure and found.records == (TLSA(3, 1, 1, b"\x01" * 32),)
    unsigned = _fired(lookup_tlsa(resolver, "mx.c.test"))
    assert not unsigned.secure and unsigned.records == ()


def test_a_failed_tlsa_lookup_takes_the_hop_out() -> None:
    resolver = FakeResolver({}, servfail=["mx.b.test"])
    with pytest.raises(dane.TLSALookupFailed):
        _fired(lookup_tlsa(resolver, "mx.b.test"))


def test_the_ad_bit_is_believed_only_from_loopback_by_default() -> None:
    clock = task.Clock()
    assert AuthenticatedResolver(clock, [], "loopback").trusted([("127.0.0.1", 53), ("::1", 53)])
    assert not AuthenticatedResolver(clock, [], "loopback").trusted([("127.0.0.1", 53), ("192.0.2.2", 53)])
    assert AuthenticatedResolver(clock, [], "any").trusted([("192.0.2.2", 53)])
    assert not AuthenticatedResolver(clock, [], "never").trusted([("127.0.0.1", 53)])


HOP = Hop("mx.b.test", "192.0.2.5", 25)


def test_secure_tlsa_makes_the_default_policy_dane_and_insecure_leaves_it_opportunistic() -> None:
    records = {"_25._tcp.mx.b.test": {"TLSA": [(3, 1, 1, b"\x01" * 32)]}}
    policies = TLSPolicies(dane_resolver=FakeResolver(records, secure=["b.test"]))
    check = _fired(policies.for_hop(DomainPolicy("b.test", "opportunistic", True), HOP, False))
    assert isinstance(check, HopCheck) and check.mode == "dane" and check.requires_tls
    plain = TLSPolicies(dane_resolver=FakeResolver(records))
    check = _fired(plain.for_hop(DomainPolicy("b.test", "opportunistic", True), HOP, False))
    assert check.mode == "opportunistic" and not check.requires_tls


def test_the_dane_policy_without_validated_tlsa_waits() -> None:
    policies = TLSPolicies(dane_resolver=FakeResolver({}))
    reply = _fired(policies.for_hop(DomainPolicy("b.test", "dane", True), HOP, False))
    assert isinstance(reply, Reply) and reply.code == 451 and reply.enhanced == "4.7.5"


class _Session:
    def __init__(self, secure: bool) -> None:
        self.secure = secure


def test_verify_refuses_a_session_without_starttls_with_a_temporary_failure() -> None:
    check = HopCheck("b.test", HOP, "verify")
    reply = check.check(_Session(False), None)
    assert reply is not None and reply.code == 451 and "4.7.5" in str(reply)
    assert check.failure is not None and check.failure.result_type == "starttls-not-supported"


def test_opportunistic_goes_on_without_starttls() -> None:
    check = HopCheck("b.test", HOP, "opportunistic")
    assert check.check(_Session(False), None) is None and check.failure is None and not check.verified


# -- MTA-STS ---------------------------------------------------------------------------------

POLICY = "version: STSv1\nmode: enforce\nmx: mx.b.test\nmx: *.backup.b.test\nmax_age: 600\n"


def test_sts_txt_and_policy_are_parsed() -> None:
    assert parse_txt([b"v=STSv1; id=20261201T1;"]) == "20261201T1"
    assert parse_txt([b"v=STSv2; id=1"]) is None
    policy = parse_policy("b.test", "1", POLICY, 100.0)
    assert (policy.mode, policy.mx, policy.max_age) == ("enforce", ("mx.b.test", "*.backup.b.test"), 600)
    assert policy.allows("MX.b.test.") and policy.allows("one.backup.b.test")
    assert not policy.allows("two.one.backup.b.test") and not policy.allows("mx.c.test")
    with pytest.raises(PolicyError):
        parse_policy("b.test", "1", "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n", 0.0)


def test_a_wildcard_matches_exactly_one_label() -> None:
    assert mx_matches("*.b.test", "mx.b.test") and not mx_matches("*.b.test", "b.test")


class _Response:
    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self._body = body

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))


class _Agent:
    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.answer: Any = _Response(200, POLICY.encode())

    def request(self, method: bytes, url: bytes) -> defer.Deferred[Any]:
        self.requests.append(url)
        if isinstance(self.answer, Exception):
            return defer.fail(self.answer)
        return defer.succeed(self.answer)


def _sts(tmp_path: Path, txt: str = "v=STSv1; id=1") -> tuple[MTASTS, _Agent, FakeResolver, task.Clock]:
    clock = task.Clock()
    clock.advance(1000)
    resolver = FakeResolver({"_mta-sts.b.test": {"TXT": [txt]}})
    agent = _Agent()
    sts = MTASTS(clock, resolver, lambda host: defer.succeed([]), None, tmp_path / "mta-sts", lambda f, *a: defer.maybeDeferred(f, *a), agent)
    return sts, agent, resolver, clock


def test_a_policy_is_fetched_once_cached_on_disk_and_fetched_again_when_the_id_changes(tmp_path: Path) -> None:
    sts, agent, resolver, clock = _sts(tmp_path)
    policy, failure = _fired(sts.policy("b.test"))
    assert policy.mode == "enforce" and failure is None
    assert agent.requests == [b"https://mta-sts.b.test/.well-known/mta-sts.txt"]
    _fired(sts.policy("b.test"))
    assert len(agent.requests) == 1
    assert json.loads((tmp_path / "mta-sts" / "b.test.json").read_text())["id"] == "1"
    resolver.records["_mta-sts.b.test"]["TXT"] = ["v=STSv1; id=2"]
    policy, _ = _fired(sts.policy("b.test"))
    assert len(agent.requests) == 2 and policy.id == "2"


def test_a_failed_fetch_keeps_the_unexpired_cached_policy(tmp_path: Path) -> None:
    sts, agent, resolver, clock = _sts(tmp_path)
    _fired(sts.policy("b.test"))
    resolver.records["_mta-sts.b.test"]["TXT"] = ["v=STSv1; id=2"]
    agent.answer = _Response(404, b"")
    policy, failure = _fired(sts.policy("b.test"))
    assert policy is not None and policy.id == "1"
    assert failure.result_type == "sts-policy-fetch-error"
    clock.advance(601)
    policy, failure = _fired(sts.policy("b.test"))
    assert policy is None and failure is not None


def test_a_removed_txt_record_does_not_end_an_unexpired_policy(tmp_path: Path) -> None:
    sts, agent, resolver, clock = _sts(tmp_path)
    _fired(sts.policy("b.test"))
    del resolver.records["_mta-sts.b.test"]
    policy, _ = _fired(sts.policy("b.test"))
    assert policy is not None


def test_an_oversized_policy_is_invalid(tmp_path: Path) -> None:
    sts, agent, _, _ = _sts(tmp_path)
    agent.answer = _Response(200, b"x" * (70 * 1024))
    policy, failure = _fired(sts.policy("b.test"))
    assert policy is None and failure.result_type == "sts-policy-invalid"


def test_an_enforced_policy_refuses_an_mx_it_does_not_list(tmp_path: Path) -> None:
    policy = parse_policy("b.test", "1", POLICY, 0.0)
    policies = TLSPolicies()
    refused = _fired(policies.for_hop(DomainPolicy("b.test", "opportunistic", True, sts=policy), Hop("evil.test", "192.0.2.9", 25), False))
    assert isinstance(refused, HopCheck) and refused.refusal is not None and "4.7.5" in str(refused.refusal)
    assert refused.failure is not None and refused.failure.result_type == "validation-failure"
    testing = parse_policy("b.test", "1", POLICY.replace("enforce", "testing"), 0.0)
    check = _fired(policies.for_hop(DomainPolicy("b.test", "opportunistic", True, sts=testing), Hop("evil.test", "192.0.2.9", 25), False))
    assert isinstance(check, HopCheck) and not check.requires_tls and check.failure is not None and check.refusal is None


# -- TLS-RPT ---------------------------------------------------------------------------------


def test_the_daily_report_counts_sessions_per_policy_and_groups_failures() -> None:
    base = {"policy_domain": "b.test", "policy_type": "sts", "policy_strings": ["version: STSv1"], "mx_patterns": ["mx.b.test"]}
    lines = [
        {**base, "result_type": None, "mx_host": "mx.b.test", "address": "192.0.2.5"},
        {**base, "result_type": "certificate-expired", "mx_host": "mx.b.test", "address": "192.0.2.5", "reason": "expired"},
        {**base, "result_type": "certificate-expired", "mx_host": "mx.b.test", "address": "192.0.2.5", "reason": "expired"},
    ]
    [report] = build_report(lines, "2026-12-01", "mail.a.test", "postmaster@mail.a.test")
    assert report["date-range"] == {"start-datetime": "2026-12-01T00:00:00Z", "end-datetime": "2026-12-02T00:00:00Z"}
    [policy] = report["policies"]
    assert policy["policy"] == {"policy-type": "sts", "policy-domain": "b.test", "policy-string": ["version: STSv1"], "mx-host": ["mx.b.test"]}
    assert policy["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 2}
    [detail] = policy["failure-details"]
    assert detail["result-type"] == "certificate-expired" and detail["failed-session-count"] == 2


def test_a_reload_applies_the_tls_levels_and_asks_a_restart_for_the_ca_file(tmp_path: Path) -> None:
    from mailapp import reload
    from tests.relay_helpers import Harness

    old = parse(MINIMAL, PATH)
    new = parse(MINIMAL + '[relay]\ntls_policy = "verify"\ntls_ca_file = "ca.pem"\n[relay.tls_policies]\n"b.test" = "none"\n', PATH)
    manager = Harness(tmp_path).manager
    applied: list[str] = []
    reload._apply_relay(manager, old, new, applied, [])
    assert (manager.tls_policies.level("c.test"), manager.tls_policies.level("B.test")) == ("verify", "none")
    assert "relay.tls_ca_file" in reload._needs_restart(old, new)


def test_no_tlsa_query_is_sent_where_the_ad_bit_would_not_be_believed() -> None:
    resolver = AuthenticatedResolver(task.Clock(), [("192.0.2.2", 53)], "loopback")
    made = resolver._get()
    made.queryUDP = lambda *args, **kwargs: pytest.fail("a TLSA query was sent")
    assert _fired(resolver.lookupAuthenticated("_25._tcp.mx.b.test", dane.TLSA_TYPE)) == ([], False)


def test_the_relay_writes_yesterdays_reports_once(tmp_path: Path) -> None:
    from mailapp.relay.tlsrpt import TLSReports

    clock = task.Clock()
    clock.advance(1_796_083_200 + 3600)  # 2026-12-01 01:00 UTC
    reports = TLSReports(tmp_path / "tls-rpt", clock, lambda f, *a: defer.maybeDeferred(f, *a))
    (tmp_path / "tls-rpt").mkdir()
    line = {"policy_domain": "b.test", "policy_type": "sts", "result_type": None, "mx_host": "mx.b.test", "address": "192.0.2.5"}
    (tmp_path / "tls-rpt" / "2026-11-30.jsonl").write_text(json.dumps(line) + "\n")
    reports.start("mail.a.test")
    [written] = list((tmp_path / "tls-rpt" / "reports").glob("*.json"))
    assert written.name == "mail.a.test!b.test!1795996800!1796083200.json"
    written.unlink()
    clock.advance(3600)
    assert list((tmp_path / "tls-rpt" / "reports").glob("*.json")) == []  # done once: the marker
    reports.stop()


class _Connection:
    def __init__(self, chain: list[x509.Certificate]) -> None:
        self.chain = chain

    def get_peer_cert_chain(self, as_cryptography: bool = False) -> list[x509.Certificate]:
        return self.chain


class _TLS:
    def __init__(self, chain: list[x509.Certificate]) -> None:
        self.connection = _Connection(chain)


def test_sts_testing_delivers_to_an_unverified_peer_and_records_why(pki: dict[str, Any]) -> None:
    check = HopCheck("b.test", HOP, "sts", enforce=False, policy_type="sts", tls=_TLS([pki["stranger"]]))  # type: ignore[arg-type]
    assert check.check(_Session(True), pki["store"]) is None
    assert check.failure is not None and check.failure.result_type == "certificate-not-trusted" and not check.verified


def test_sts_enforce_refuses_the_same_peer_and_accepts_a_verified_one(pki: dict[str, Any]) -> None:
    check = HopCheck("b.test", HOP, "sts", enforce=True, tls=_TLS([pki["stranger"]]))  # type: ignore[arg-type]
    reply = check.check(_Session(True), pki["store"])
    assert reply is not None and "4.7.5" in str(reply) and "not verify" in str(reply)
    good = HopCheck("b.test", HOP, "sts", enforce=True, tls=_TLS([pki["leaf"]]))  # type: ignore[arg-type]
    assert good.check(_Session(True), pki["store"]) is None and good.verified


def test_a_peer_refused_by_verify_is_deferred_with_4_7_5_and_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.logger import globalLogPublisher

    from mailapp import logevents
    from mailapp.relay.client import SessionError
    from mailapp.relay.queue import PENDING
    from tests.relay_helpers import B_HOP, OK, FakeClient, Harness

    def greet(self: FakeClient, hostname: str, tls: Any = None, require_tls: bool = False, auth: Any = None, verify: Any = None) -> Any:
        self.secure = False  # type: ignore[attr-defined]  # a peer that does not offer STARTTLS
        refused = verify(self)
        return defer.fail(SessionError(refused)) if refused is not None else defer.succeed(None)

    monkeypatch.setattr(FakeClient, "greet", greet)
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        h = Harness(tmp_path)
        h.network.servers[B_HOP] = lambda r: OK
        h.manager.tls_policies = TLSPolicies("opportunistic", {"b.test": "verify"})
        h.start()
        queue_id = h.submit("alice@a.test", ["bob@b.test"])
        assert h.network.sent == []
        [recipient] = h.manager.entries[queue_id].envelope.recipients
        assert recipient.state == PENDING and recipient.last_reply.startswith("451 4.7.5")
        [failed] = [e for e in seen if e.get("log_event") == logevents.RELAY_TLS_FAILED]
        assert failed["result_type"] == "starttls-not-supported" and failed["outcome"] == "refused"
        h.stop()
    finally:
        globalLogPublisher.removeObserver(seen.append)


# -- the client side of STARTTLS, and the opportunistic fallback ----------------------------------


def test_a_session_lost_in_its_tls_upgrade_is_marked_tls_failed() -> None:
    from twisted.internet.error import ConnectionLost

    from mailapp.relay.client import SessionError, SMTPClient

    client = SMTPClient(task.Clock(), command_timeout=60, session_timeout=600)
    transport = StringTransport()
    transport.startTLS = lambda context: None  # type: ignore[attr-defined]
    client.makeConnection(transport)
    d = client.greet("mail.a.test", tls=object())
    client.dataReceived(b"220 b.test ESMTP\r\n250-b.test\r\n250 STARTTLS\r\n220 go ahead\r\n")
    client.connectionLost(Failure(ConnectionLost("handshake failed")))
    failure = _failed(d)
    assert failure.check(SessionError) and client.tls_failed


def test_a_session_that_fails_before_starttls_is_not_marked() -> None:
    from mailapp.relay.client import SMTPClient

    client = SMTPClient(task.Clock(), command_timeout=60, session_timeout=600)
    client.makeConnection(StringTransport())
    d = client.greet("mail.a.test", tls=object())
    client.dataReceived(b"554 go away\r\n")
    _failed(d)
    assert not client.tls_failed


def _failed(d: defer.Deferred[Any]) -> Failure:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and isinstance(results[0], Failure), results
    return results[0]


def _handshake_fails(self: Any, hostname: str, tls: Any = None, require_tls: bool = False, auth: Any = None, verify: Any = None) -> Any:
    """A FakeClient greet whose peer breaks every TLS handshake."""
    from mailapp.relay.client import SessionError, local_reply

    self.network.greetings.append(tls is not None)
    if tls is not None:
        self.tls_failed = True
        return defer.fail(SessionError(local_reply(451, "4.4.2 connection lost")))
    return defer.succeed(None)


def test_opportunistic_tls_that_fails_is_tried_again_in_plain_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.relay_helpers import B_HOP, OK, FakeClient, Harness

    monkeypatch.setattr(FakeClient, "greet", _handshake_fails)
    h = Harness(tmp_path)
    h.network.greetings = []  # type: ignore[attr-defined]
    h.network.servers[B_HOP] = lambda r: OK
    h.start()
    h.submit("alice@a.test", ["bob@b.test"])
    assert h.network.greetings == [True, False]  # type: ignore[attr-defined]
    assert h.network.delivered_to("bob@b.test")


@pytest.mark.parametrize("level", ["verify", "dane", "mta-sts"])
def test_a_policy_that_needs_tls_never_falls_back_to_plain_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    from tests.relay_helpers import B_HOP, OK, FakeClient, Harness

    monkeypatch.setattr(FakeClient, "greet", _handshake_fails)
    h = Harness(tmp_path)
    h.network.greetings = []  # type: ignore[attr-defined]
    h.network.servers[B_HOP] = lambda r: OK
    h.manager.tls_policies = TLSPolicies("opportunistic", {"b.test": level})
    h.start()
    h.submit("alice@a.test", ["bob@b.test"])
    assert False not in h.network.greetings  # type: ignore[attr-defined]
    assert h.network.sent == []


def test_the_trust_store_skips_a_certificate_it_cannot_read_and_a_missing_ca_file_is_a_clear_error(tmp_path: Path, pki: dict[str, Any]) -> None:
    from mailapp.relay.tlsverify import TrustStore
    from mailapp.tls import CertificateError

    bundle = tmp_path / "bundle.pem"
    good = pki["ca"].public_bytes(serialization.Encoding.PEM)
    bundle.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n" + good)
    assert TrustStore(bundle).certificates == (pki["ca"],)
    with pytest.raises(CertificateError, match="cannot read relay.tls_ca_file"):
        TrustStore(tmp_path / "missing.pem")
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(CertificateError, match="holds no PEM certificate"):
        TrustStore(tmp_path / "empty.pem")


def test_an_error_deciding_the_policy_defers_the_mail_instead_of_stranding_it(tmp_path: Path) -> None:
    from mailapp.relay.queue import PENDING
    from tests.relay_helpers import B_HOP, OK, Harness

    class Broken(TLSPolicies):
        def for_domain(self, domain: str, by_mx: bool) -> Any:
            return defer.fail(RuntimeError("a bug"))

    h = Harness(tmp_path)
    h.network.servers[B_HOP] = lambda r: OK
    h.manager.tls_policies = Broken()
    h.start()
    queue_id = h.submit("alice@a.test", ["bob@b.test"])
    entry = h.manager.entries[queue_id]
    [recipient] = entry.envelope.recipients
    assert recipient.state == PENDING and recipient.last_reply.startswith("451 4.3.0") and entry.inflight == 0
    h.stop()
