"""
The outbound TLS metrics (mailapp.metrics.OutboundTLSMetrics), fed by the
log events the relay writes: a checked session's ``relay.tls_session``
(from L{TLSPolicies.log_session}, on a L{HopCheck} as the relay makes one),
and MTA-STS's ``relay.mta_sts``.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import LogEvent, globalLogPublisher

from mailapp import logevents
from mailapp.metrics import Metrics
from mailapp.relay.routing import Hop
from mailapp.relay.tlspolicy import HopCheck, TLSPolicies
from mailapp.relay.tlsverify import TLSFailure

HOP = Hop("mx.b.test", "192.0.2.5", 25)


class _Client:
    def __init__(self, secure: bool) -> None:
        self.secure = secure


def _session_event(check: HopCheck, secure: bool, refused: bool = False) -> LogEvent:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        TLSPolicies.log_session(check, _Client(secure), object() if refused else None)  # type: ignore[arg-type]
    finally:
        globalLogPublisher.removeObserver(seen.append)
    [event] = [e for e in seen if e.get("log_event") == logevents.RELAY_TLS_SESSION]
    return event


def _text(*events: LogEvent) -> str:
    metrics = Metrics()
    for event in events:
        metrics(event)
    return metrics.exposition().decode()


def test_a_session_event_names_the_policy_and_result() -> None:
    verified = HopCheck("b.test", HOP, "verify", verified=True)
    assert (_session_event(verified, True)["policy"], _session_event(verified, True)["result"]) == ("verify", "verified")
    opportunistic = HopCheck("b.test", HOP, "opportunistic")
    assert _session_event(opportunistic, True)["result"] == "unverified"
    assert _session_event(opportunistic, False)["result"] == "plaintext"
    testing = HopCheck("b.test", HOP, "sts", enforce=False, policy_type="sts")
    testing.failure = TLSFailure("certificate-not-trusted", "self-signed")
    event = _session_event(testing, True)
    assert (event["policy"], event["result"], event["refused"]) == ("sts-testing", "certificate-not-trusted", False)


def test_sessions_are_counted_by_policy_and_result() -> None:
    refused = HopCheck("b.test", HOP, "verify")
    refused.failure = TLSFailure("certificate-host-mismatch", "names mx.c.test")
    text = _text(
        _session_event(HopCheck("b.test", HOP, "verify", verified=True), True),
        _session_event(HopCheck("b.test", HOP, "verify", verified=True), True),
        _session_event(refused, True, refused=True),
        _session_event(HopCheck("b.test", HOP, "none"), False),
    )
    assert 'mailapp_relay_tls_sessions_total{policy="verify",result="verified"} 2.0' in text
    assert 'mailapp_relay_tls_sessions_total{policy="verify",result="certificate-host-mismatch"} 1.0' in text
    assert 'mailapp_relay_tls_sessions_total{policy="none",result="plaintext"} 1.0' in text


def test_dane_outcomes_are_counted() -> None:
    pinned = HopCheck("e.test", HOP, "dane", policy_type="tlsa", verified=True)
    wrong = HopCheck("f.test", HOP, "dane", policy_type="tlsa")
    wrong.failure = TLSFailure("validation-failure", "no TLSA record matches")
    unusable = HopCheck("g.test", HOP, "encrypt", policy_type="tlsa")
    text = _text(_session_event(pinned, True), _session_event(wrong, True, refused=True), _session_event(unusable, True))
    assert 'mailapp_relay_dane_sessions_total{result="verified"} 1.0' in text
    assert 'mailapp_relay_dane_sessions_total{result="validation-failure"} 1.0' in text
    assert 'mailapp_relay_dane_sessions_total{result="unusable-tlsa"} 1.0' in text


def test_mta_sts_fetches_are_counted_by_mode_or_failure() -> None:
    fetched: dict[str, Any] = {"log_event": logevents.RELAY_MTA_STS, "domain": "s.test", "mode": "enforce", "policy_id": "1"}
    failed: dict[str, Any] = {"log_event": logevents.RELAY_MTA_STS, "domain": "s.test", "reason": "HTTP 404"}
    text = _text(fetched, failed, failed)
    assert 'mailapp_relay_mta_sts_fetches_total{result="enforce"} 1.0' in text
    assert 'mailapp_relay_mta_sts_fetches_total{result="failed"} 2.0' in text
