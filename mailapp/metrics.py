"""
The ``metrics`` listener: Prometheus text exposition at ``/metrics``.

The numbers come from the log: :class:`Metrics` is a log observer that maps
stable event names (:mod:`mailapp.logevents`) to counters and histograms, so
no protocol imports this module or knows metrics exist. Per-command latency
comes the same way from the in-process telemetry publisher (one event per
command is too many for the log). What is a state rather than an event
(queue size and age, certificate expiry) is read when Prometheus scrapes.

Keep the listener on loopback (or a private network): it needs no login.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.logger import ILogObserver, LogEvent, LogPublisher, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from mailapp import logevents

if TYPE_CHECKING:
    from mailapp.config import ListenerConfig
    from mailapp.context import ServiceContext

__all__ = ["SPAM_DECISIONS", "Metrics", "MetricsSite", "OutboundTLSMetrics", "buildFactory"]

#: The log events of spam decisions, each with the fields ``action`` (what
#: was done: reject, tempfail, junk, ...) and ``reason`` (which check:
#: dnsbl, early_talker, unauth_pipelining, ...), counted by those two labels in
#: ``mailapp_spam_decisions_total``. A new check adds its event here.
SPAM_DECISIONS: tuple[str, ...] = (
    logevents.POSTSCREEN_DNSBL_REFUSED,
    logevents.POSTSCREEN_DNSBL_URL_REFUSED,
    logevents.POSTSCREEN_GREYLISTED,
    logevents.POSTSCREEN_EARLY_TALKER,
    logevents.POSTSCREEN_UNAUTH_PIPELINING,
    logevents.SMTP_SENDER_BLOCKED,
    logevents.SMTP_SENDER_ALLOWED,
    logevents.SPAM_SCANNED,
)

#: Command latency buckets, seconds: a reply from memory is well under a
#: millisecond, one after a disk sync or a password hash some tens of them.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_SESSION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400)


@implementer(ILogObserver)
class Metrics:
    """
    The server's metrics in one registry of their own (not the process-wide
    default registry, so that two servers in one test process never share a
    counter). Call it with log events; read it with :meth:`exposition`.

    @param queue: the relay manager (its ``entries``, each with
        ``envelope.created``), or ``None`` without a relay.
    @param tls: the :class:`mailapp.tls.ServerTLS`, or ``None``.
    """

    def __init__(self, queue: Any = None, tls: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        #: The relay's outbound TLS: sessions by policy and result, MTA-STS fetches, DANE outcomes.
        self.outbound_tls = OutboundTLSMetrics(registry)
        self.connections = Counter(
            "mailapp_connections", "Sessions accepted", ["protocol", "listener"], registry=registry
        )
        self.refused = Counter(
            "mailapp_connections_refused", "Connections refused by the connection limits", ["protocol", "listener"],
            registry=registry,
        )
        self.open = Gauge("mailapp_sessions_open", "Sessions open now", ["protocol", "listener"], registry=registry)
        self.session_seconds = Histogram(
            "mailapp_session_duration_seconds", "How long sessions last", ["protocol"], buckets=_SESSION_BUCKETS,
            registry=registry,
        )
        self.accepted = Counter(
            "mailapp_messages_accepted", "Messages accepted (the 250 after DATA, LMTP with at least one 250, or sent from webmail)", ["protocol"],
            registry=registry,
        )
        self.accepted_bytes = Histogram(
            "mailapp_message_size_bytes", "Size of accepted messages", buckets=_SIZE_BUCKETS, registry=registry
        )
        self.rejected = Counter(
            "mailapp_messages_rejected", "Recipients refused, by SMTP reply code", ["code"], registry=registry
        )
        self.delivered = Counter(
            "mailapp_messages_delivered", "Recipients delivered: locally stored, or relayed to a remote server",
            ["kind"], registry=registry,
        )
        self.deferred = Counter("mailapp_relay_deferred", "Relay attempts deferred for a retry", registry=registry)
        self.bounced = Counter("mailapp_messages_bounced", "Recipients given up on (DSN sent)", registry=registry)
        self.auth_failures = Counter(
            "mailapp_auth_failures", "Failed logins", ["protocol"], registry=registry
        )
        self.logins = Counter("mailapp_logins", "Successful logins", ["protocol"], registry=registry)
        self.command_seconds = Histogram(
            "mailapp_command_duration_seconds", "Time from a command to its reply", ["protocol", "command"],
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.reloads = Counter("mailapp_config_reloads", "Config reloads", ["result"], registry=registry)
        self.authentication = Counter(
            "mailapp_authentication_results",
            "Sender authentication results on the MX: per mechanism (spf, spf_helo, dkim per signature, dmarc) and the action taken",
            ["mechanism", "result"], registry=registry,
        )
        # prometheus_client adds the counter's _total: mailapp_spam_decisions_total{action,reason}.
        self.spam_decisions = Counter(
            "mailapp_spam_decisions",
            "Spam decisions: what was done (action) for which check (reason)",
            ["action", "reason"], registry=registry,
        )
        registry.register(_StateCollector(queue, tls, clock))
        self._handlers: Mapping[str, Callable[[LogEvent], None]] = {
            logevents.SESSION_STARTED: self._session_started,
            logevents.SESSION_ENDED: self._session_ended,
            logevents.SESSION_REFUSED: lambda event: self.refused.labels(*_where(event)).inc(),
            logevents.SESSION_COMMAND: self._command,
            logevents.SMTP_ACCEPTED: self._accepted,
            logevents.WEBMAIL_SENT: self._accepted,
            logevents.LMTP_DELIVERED: self._accepted,
            logevents.SMTP_RCPT_REJECTED: lambda event: self.rejected.labels(str(event.get("code", ""))).inc(),
            logevents.DELIVERY_STORED: lambda event: self.delivered.labels("local").inc(_number(event, "local")),
            logevents.RELAY_DELIVERED: lambda event: self.delivered.labels("remote").inc(),
            logevents.RELAY_DEFERRED: lambda event: self.deferred.inc(),
            logevents.RELAY_BOUNCED: lambda event: self.bounced.inc(),
            logevents.RELAY_EXPIRED: lambda event: self.bounced.inc(),
            logevents.AUTH_FAILED: lambda event: self.auth_failures.labels(event.get("protocol", "unknown")).inc(),
            logevents.SMTP_AUTH_OK: lambda event: self.logins.labels("submission").inc(),
            logevents.POP3_LOGIN: lambda event: self.logins.labels("pop3").inc(),
            logevents.IMAP_LOGIN: lambda event: self.logins.labels("imap").inc(),
            logevents.WEBMAIL_LOGIN: lambda event: self.logins.labels("webmail").inc(),
            logevents.RELOADED: lambda event: self.reloads.labels("ok").inc(),
            logevents.RELOAD_FAILED: lambda event: self.reloads.labels("refused").inc(),
            logevents.AUTHENTICATION_CHECKED: self._authenticated,
            **{event: self._spam_decision for event in SPAM_DECISIONS},
        }

    def __call__(self, event: LogEvent) -> None:
        name = event.get("log_event")
        handler = self._handlers.get(name) or self.outbound_tls.handlers.get(name)  # type: ignore[arg-type]
        if handler is not None:
            handler(event)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric, now."""
        return generate_latest(self.registry)

    def _session_started(self, event: LogEvent) -> None:
        where = _where(event)
        self.connections.labels(*where).inc()
        self.open.labels(*where).inc()

    def _session_ended(self, event: LogEvent) -> None:
        where = _where(event)
        self.open.labels(*where).dec()
        self.session_seconds.labels(where[0]).observe(float(event.get("seconds", 0.0)))

    def _command(self, event: LogEvent) -> None:
        self.command_seconds.labels(event.get("protocol", "unknown"), str(event.get("command", "?"))[:16]).observe(
            float(event.get("seconds", 0.0))
        )

    def _accepted(self, event: LogEvent) -> None:
        kind = event.get("log_event")
        if kind == logevents.LMTP_DELIVERED and not event.get("delivered"):
            return  # every recipient refused: nothing was accepted
        self.accepted.labels({logevents.WEBMAIL_SENT: "webmail", logevents.LMTP_DELIVERED: "lmtp"}.get(str(kind), "smtp")).inc()
        self.accepted_bytes.observe(_number(event, "size"))


    def _spam_decision(self, event: LogEvent) -> None:
        self.spam_decisions.labels(str(event.get("action", "unknown"))[:16], str(event.get("reason", "unknown"))[:32]).inc()

    def _authenticated(self, event: LogEvent) -> None:
        for mechanism in ("spf", "spf_helo", "dmarc", "action"):
            self.authentication.labels(mechanism, str(event.get(mechanism, "none"))[:16]).inc()
        for result in str(event.get("dkim", "none")).split(",")[:10]:
            self.authentication.labels("dkim", result[:16]).inc()


class OutboundTLSMetrics:
    """
    The relay's outbound TLS, from its log events: every checked session by
    the policy that applied and its result (``relay.tls_session``), MTA-STS
    policy fetches by outcome (``relay.mta_sts``), and the sessions DANE
    judged (a TLSA-pinned hop: ``verified``, an RFC 8460 failure type, or
    ``unusable-tlsa``: records none of which could be used, so TLS unchecked).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Counter(
            "mailapp_relay_tls_sessions",
            "Outbound sessions after their TLS check, by the policy that applied and the result "
            "(verified, unverified, plaintext, or an RFC 8460 result type)",
            ["policy", "result"], registry=registry,
        )
        self.mta_sts = Counter(
            "mailapp_relay_mta_sts_fetches",
            "MTA-STS policy fetches: the mode fetched (enforce, testing, none) or failed",
            ["result"], registry=registry,
        )
        self.dane = Counter(
            "mailapp_relay_dane_sessions",
            "Outbound sessions to a hop with DNSSEC-validated TLSA records, by outcome",
            ["result"], registry=registry,
        )
        self.handlers: Mapping[str, Callable[[LogEvent], None]] = {
            logevents.RELAY_TLS_SESSION: self._session,
            logevents.RELAY_MTA_STS: self._mta_sts,
        }

    def _session(self, event: LogEvent) -> None:
        policy, result = str(event.get("policy", "unknown"))[:16], str(event.get("result", "unknown"))[:32]
        self.sessions.labels(policy, result).inc()
        if event.get("policy_type") == "tlsa":
            self.dane.labels(result if policy == "dane" else "unusable-tlsa").inc()

    def _mta_sts(self, event: LogEvent) -> None:
        self.mta_sts.labels(str(event.get("mode"))[:16] if event.get("mode") is not None else "failed").inc()


def _where(event: LogEvent) -> tuple[str, str]:
    return str(event.get("protocol", "unknown")), str(event.get("listener", "unknown"))


def _number(event: LogEvent, name: str) -> float:
    value = event.get(name, 0)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class _StateCollector:
    """Gauges computed at scrape time from live objects: the relay queue and the certificates."""

    def __init__(self, queue: Any, tls: Any, clock: Callable[[], float]) -> None:
        self._queue = queue
        self._tls = tls
        self._clock = clock

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self._queue is not None:
            entries = list(getattr(self._queue, "entries", {}).values())
            yield GaugeMetricFamily("mailapp_queue_messages", "Messages in the relay queue", value=len(entries))
            created = [entry.envelope.created for entry in entries]
            age = self._clock() - min(created) if created else 0.0
            yield GaugeMetricFamily(
                "mailapp_queue_oldest_age_seconds", "Age of the oldest message in the relay queue", value=max(age, 0.0)
            )
        if self._tls is not None:
            expiry = GaugeMetricFamily(
                "mailapp_tls_certificate_expiry_timestamp_seconds",
                "When each served certificate expires (Unix time)",
                labels=["name"],
            )
            for name, certificate in self._tls.certificates().items():
                expiry.add_metric([name or "default"], certificate.not_valid_after_utc.timestamp())
            yield expiry


class _MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web is untyped
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"mailapp: metrics are at /metrics\n"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self._metrics.exposition()


class MetricsSite(Site):
    """
    The HTTP factory of a metrics listener. While it listens, its
    :class:`Metrics` observes the global log and the telemetry publisher.
    """

    def __init__(self, metrics: Metrics, telemetry: LogPublisher | None = None) -> None:
        super().__init__(_MetricsResource(metrics))  # type: ignore[no-untyped-call]
        self.metrics = metrics
        self._telemetry = telemetry
        # A scrape every few seconds in the access log helps nobody.
        self.log = lambda request: None  # type: ignore[method-assign]

    def startFactory(self) -> None:
        super().startFactory()
        globalLogPublisher.addObserver(self.metrics)
        if self._telemetry is not None:
            self._telemetry.addObserver(self.metrics)

    def stopFactory(self) -> None:
        globalLogPublisher.removeObserver(self.metrics)
        if self._telemetry is not None:
            self._telemetry.removeObserver(self.metrics)
        super().stopFactory()


def buildFactory(context: ServiceContext, listener: ListenerConfig) -> MetricsSite:
    """The builder the service registers for the ``metrics`` protocol."""
    # The relay manager holds the queue's entries (None: a server without a relay).
    metrics = Metrics(queue=context.relay, tls=context.tls)
    return MetricsSite(metrics, context.telemetry)
