"""
ARC verification and sealing (mailapp.authentication.arc, .arcseal): the
behaviour around dkimpy that the conformance suite does not show, with a
2048-bit key of our own and a DNS function serving its record.
"""

from __future__ import annotations

import base64
import functools
import os
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailapp.authentication.arc import ARCVerifier, evaluate
from mailapp.authentication.arcseal import ARCSealer, KeyDirectory, SigningKey, arc_set

MESSAGE = (
    b"From: Alice <alice@a.test>\r\n"
    b"To: x@b.test\r\n"
    b"Subject: forwarded\r\n"
    b"Date: Tue, 01 Dec 2026 12:00:00 +0000\r\n"
    b"Message-ID: <1@a.test>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)


@functools.cache
def _key() -> tuple[bytes, bytes]:
    """(PKCS#1 PEM private key, its DKIM TXT record), made once for the module."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


class Zone:
    """dkimpy's DNS function over {name: TXT}, counting its queries."""

    def __init__(self, records: dict[str, bytes]) -> None:
        self.records = records
        self.queries = 0

    def __call__(self, name: bytes, timeout: int = 5) -> bytes | None:
        self.queries += 1
        return self.records.get(name.decode().rstrip("."))


def _zone(*domains: str) -> Zone:
    return Zone({f"arc._domainkey.{domain}": _key()[1] for domain in domains})


def _seal(message: bytes, domain: str, zone: Zone, authserv_id: str = "mx.b.test") -> bytes:
    outcome = arc_set(message, domain, SigningKey("arc", _key()[0]), authserv_id, zone, timestamp=1_700_000_000)
    assert outcome.sealed, outcome.reason
    return b"".join(outcome.headers) + message


def test_a_message_without_arc_headers_is_none_with_no_lookup() -> None:
    zone = _zone()
    outcome = evaluate(MESSAGE, zone)
    assert (outcome.result, outcome.chain, outcome.fragment(), zone.queries) == ("none", (), "arc=none", 0)


def test_a_sealed_message_verifies_as_pass_with_what_the_seal_says() -> None:
    zone = _zone("b.test")
    outcome = evaluate(_seal(MESSAGE, "b.test", zone), zone)
    assert outcome.result == "pass", outcome.reason
    [arc_set_one] = outcome.chain
    assert (arc_set_one.instance, arc_set_one.cv, arc_set_one.seal_domain, arc_set_one.signature_valid) == (1, "none", "b.test", True)
    assert arc_set_one.authentication_results == "mx.b.test; arc=none"
    assert outcome.fragment() == "arc=pass (i=1) header.oldest-pass=0"


def test_a_second_forwarder_extends_the_chain_with_cv_pass() -> None:
    zone = _zone("b.test", "c.test")
    twice = _seal(_seal(MESSAGE, "b.test", zone), "c.test", zone, authserv_id="mx.c.test")
    outcome = evaluate(twice, zone)
    assert outcome.result == "pass", outcome.reason
    assert [(s.instance, s.cv, s.seal_domain) for s in outcome.chain] == [(2, "pass", "c.test"), (1, "none", "b.test")]


def test_a_body_changed_after_sealing_fails() -> None:
    zone = _zone("b.test")
    changed = _seal(MESSAGE, "b.test", zone).replace(b"Hello.", b"Hello!")
    outcome = evaluate(changed, zone)
    assert outcome.result == "fail"
    assert outcome.fragment() == "arc=fail (i=1)"


def test_a_missing_key_record_fails() -> None:
    sealed = _seal(MESSAGE, "b.test", _zone("b.test"))
    assert evaluate(sealed, Zone({})).result == "fail"


def test_more_than_fifty_sets_fail_before_any_lookup() -> None:
    zone = _zone("b.test")
    fake_sets = b"".join(
        b"ARC-Seal: i=%d; a=rsa-sha256; cv=pass; d=b.test; s=arc; b=AAAA\r\n"
        b"ARC-Message-Signature: i=%d; a=rsa-sha256; d=b.test; s=arc; h=from; bh=AAAA; b=AAAA\r\n"
        b"ARC-Authentication-Results: i=%d; mx.b.test; arc=pass\r\n" % (i, i, i)
        for i in range(51, 0, -1)
    )
    outcome = evaluate(fake_sets + MESSAGE, zone)
    assert (outcome.result, zone.queries) == ("fail", 0)


def test_garbage_in_arc_headers_is_a_fail_not_an_exception() -> None:
    outcome = evaluate(b"ARC-Seal: i=1; ;;;===\r\nARC-Message-Signature: i=1\r\n" + MESSAGE, _zone())
    assert outcome.result == "fail"


def test_a_forged_arc_pass_of_ours_does_not_make_a_broken_chain_pass() -> None:
    """Our seal's cv= is our own verification's, whatever an Authentication-Results header of ours says."""
    zone = _zone("a.test", "b.test")
    broken = _seal(MESSAGE, "a.test", zone, authserv_id="mx.a.test").replace(b"Hello.", b"Tampered.")
    forged = b"Authentication-Results: mx.b.test; arc=pass; spf=pass smtp.mailfrom=a.test\r\n" + broken
    outcome = arc_set(forged, "b.test", SigningKey("arc", _key()[0]), "mx.b.test", zone, timestamp=1_700_000_000)
    assert (outcome.sealed, outcome.cv) == (True, "fail")
    aar = [line for line in outcome.headers if line.startswith(b"ARC-Authentication-Results")][0]
    assert b"arc=fail" in aar and b"arc=pass" not in aar and b"spf=pass" in aar
    assert evaluate(b"".join(outcome.headers) + broken, zone).result == "fail"


def test_the_aar_keeps_the_comments_of_our_results() -> None:
    zone = _zone("b.test")
    stamped = b"Authentication-Results: mx.b.test; arc=none;\r\n  dkim=pass (2048-bit key) header.d=a.test\r\n" + MESSAGE
    outcome = arc_set(stamped, "b.test", SigningKey("arc", _key()[0]), "mx.b.test", zone)
    aar = [line for line in outcome.headers if line.startswith(b"ARC-Authentication-Results")][0]
    assert b"dkim=pass (2048-bit key) header.d=a.test" in b" ".join(aar.split())


def test_a_chain_whose_newest_seal_says_fail_gets_no_seal_of_ours() -> None:
    zone = _zone("a.test", "b.test")
    broken = _seal(MESSAGE, "a.test", zone, authserv_id="mx.a.test").replace(b"Hello.", b"Tampered.")
    failed = _seal(broken, "b.test", zone)  # sealed with cv=fail
    outcome = arc_set(failed, "b.test", SigningKey("arc", _key()[0]), "mx.b.test", zone)
    assert not outcome.sealed
    assert "cv=fail" in outcome.reason


def test_a_pkcs8_key_is_accepted() -> None:
    loaded = serialization.load_pem_private_key(_key()[0], password=None)
    pkcs8 = loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    zone = _zone("b.test")
    outcome = arc_set(MESSAGE, "b.test", SigningKey("arc", pkcs8), "mx.b.test", zone)
    assert outcome.sealed, outcome.reason
    assert evaluate(b"".join(outcome.headers) + MESSAGE, zone).result == "pass"


def test_a_bad_key_leaves_the_message_unsealed_with_the_reason() -> None:
    outcome = arc_set(MESSAGE, "b.test", SigningKey("arc", b"not a key"), "mx.b.test", _zone())
    assert not outcome.sealed and outcome.reason


def test_the_key_directory_takes_the_newest_selector_readable_by_its_owner_only(tmp_path: Path) -> None:
    folder = tmp_path / "b.test"
    folder.mkdir()
    for selector, mode in (("2026-01", 0o600), ("2026-06", 0o600), ("2026-12", 0o644)):
        (folder / f"{selector}.pem").write_bytes(_key()[0])
        os.chmod(folder / f"{selector}.pem", mode)
    keys = KeyDirectory(tmp_path)
    found = keys.key_for("B.test")
    assert found is not None and (found.selector, found.algorithm) == ("2026-06", "rsa-sha256")
    assert keys.key_for("c.test") is None
    assert keys.key_for("../b.test") is None


class FixedKeys:
    def __init__(self, key: SigningKey | None) -> None:
        self.key = key

    def key_for(self, domain: str) -> SigningKey | None:
        return self.key


class ThreadedTests(unittest.TestCase):
    """The Deferred APIs, on the reactor's thread pool."""

    @defer.inlineCallbacks
    def test_the_verifier_answers_from_a_worker_thread(self) -> Any:
        zone = _zone("b.test")
        verifier = ARCVerifier(reactor, reactor.getThreadPool(), zone)
        outcome = yield verifier.verify(_seal(MESSAGE, "b.test", zone))
        self.assertEqual(outcome.result, "pass")

    @defer.inlineCallbacks
    def test_the_sealer_seals_with_the_domains_key(self) -> Any:
        zone = _zone("b.test")
        sealer = ARCSealer(reactor, reactor.getThreadPool(), FixedKeys(SigningKey("arc", _key()[0])), "mx.b.test", zone)
        outcome = yield sealer.seal(MESSAGE, "b.test")
        self.assertTrue(outcome.sealed, outcome.reason)
        self.assertEqual(dkim.arc_verify(b"".join(outcome.headers) + MESSAGE, dnsfunc=zone)[0], dkim.CV_Pass)

    @defer.inlineCallbacks
    def test_no_key_or_an_ed25519_key_leaves_the_message_unsealed(self) -> Any:
        for keys in (FixedKeys(None), FixedKeys(SigningKey("ed", b"...", "ed25519-sha256"))):
            sealer = ARCSealer(reactor, reactor.getThreadPool(), keys, "mx.b.test", _zone())
            outcome = yield sealer.seal(MESSAGE, "b.test")
            self.assertFalse(outcome.sealed)
            self.assertTrue(outcome.reason)


def test_lookups_stop_at_the_budget_and_the_chain_fails() -> None:
    import time

    zone = _zone("b.test")
    sealed = _seal(_seal(MESSAGE, "b.test", zone), "b.test", zone)

    def slow(name: bytes, timeout: int = 5) -> bytes | None:
        time.sleep(0.2)
        return zone(name)

    started = time.monotonic()
    outcome = evaluate(sealed, slow, budget=0.3)
    assert outcome.result == "fail"
    assert time.monotonic() - started < 0.65  # four lookups without the budget: 0.8 s


class ServerDNSFunctionTests(unittest.TestCase):
    """The dkimpy DNS function ARC is given (L{ServiceDNS.txt}): the server's resolver, called from a worker thread."""

    @defer.inlineCallbacks
    def test_txt_found_missing_and_timing_out(self) -> Any:
        from twisted.internet.threads import deferToThread

        from mailapp.dnsthread import ServiceDNS
        from tests.unit.test_spf_conformance import SilentResolver, ZoneResolver

        lookup = ServiceDNS(reactor, ZoneResolver({"arc._domainkey.b.test": [{"TXT": ["v=DKIM1; ", "p=AB"]}]})).txt
        found = yield deferToThread(lookup, b"arc._domainkey.b.test.")
        missing = yield deferToThread(lookup, b"other._domainkey.b.test.")
        self.assertEqual((found, missing), (b"v=DKIM1; p=AB", None))
        silent = ServiceDNS(reactor, SilentResolver(), query_timeout=0.5).txt
        with self.assertRaises(dkim.DnsTimeoutError):
            yield deferToThread(silent, b"arc._domainkey.b.test.")

    @defer.inlineCallbacks
    def test_each_query_is_a_lookup_of_its_own(self) -> Any:
        """Kept for the server's life, it must not keep what each query noted (a failure, a count)."""
        from twisted.internet.threads import deferToThread

        from mailapp.dnsthread import ServiceDNS
        from tests.unit.test_spf_conformance import SilentResolver

        dns_ = ServiceDNS(reactor, SilentResolver(), query_timeout=0.5)
        made: list[Any] = []
        real = dns_.lookup

        def lookup(budget: Any = None) -> Any:
            made.append(real(budget))
            return made[-1]

        dns_.lookup = lookup  # type: ignore[method-assign]
        for _ in range(2):
            with self.assertRaises(dkim.DnsTimeoutError):
                yield deferToThread(dns_.txt, b"arc._domainkey.b.test.")
        self.assertEqual(len(made), 2)
        self.assertEqual([len(m.failures) for m in made], [1, 1])


def test_results_of_ours_below_a_received_field_came_from_outside_and_are_not_sealed() -> None:
    zone = _zone("b.test")
    ours = b"Authentication-Results: mx.b.test; spf=pass smtp.mailfrom=a.test\r\n"
    received = b"Received: from a (a [192.0.2.1]) by mx.b.test; Tue, 1 Dec 2026 12:00:00 +0000\r\n"
    forged = b"Authentication-Results: MX.b.test; dkim=pass header.d=bank.test; dmarc=pass\r\n"
    outcome = arc_set(ours + received + forged + MESSAGE, "b.test", SigningKey("arc", _key()[0]), "MX.B.test", zone)
    aar = b" ".join([line for line in outcome.headers if line.startswith(b"ARC-Authentication-Results")][0].split())
    assert b"spf=pass smtp.mailfrom=a.test" in aar
    assert b"bank.test" not in aar and b"dmarc" not in aar
    assert evaluate(b"".join(outcome.headers) + ours + received + forged + MESSAGE, zone).result == "pass"


def test_a_large_message_without_a_chain_is_none_without_dkimpy_reading_it() -> None:
    import time

    big = MESSAGE + (b"x" * 76 + b"\r\n") * 200_000  # 15 MiB
    started = time.monotonic()
    assert evaluate(big, _zone()).result == "none"
    assert time.monotonic() - started < 0.2  # dkimpy: about a second
