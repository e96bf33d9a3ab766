"""
Sending the TLS-RPT reports (mailapp.relay.tlsrptsend) on fakes: the
``_smtp._tls`` record (FakeResolver), the RFC 8460 5.3 message handed to the
real Router over a RecordingStore, the https POST to a fake agent, the
record that keeps a report from being sent twice (across a restart too),
the one retry the next day, and the config keys.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.logger import LogEvent, globalLogPublisher

from mailapp import logevents
from mailapp.config import DEFAULT_RELAY, ConfigError, parse
from mailapp.errors import StorageFull
from mailapp.relay.tlsrpt import TLSReports
from mailapp.relay.tlsrptsend import ReportSender, parse_rua, report_message, sender_settings
from mailapp.testing import FakeResolver, RecordingStore, service_context

MINIMAL = '[server]\nhostname = "mail.example.test"\n[domains]\nlocal = ["example.test", "other.test"]\n'
PATH = Path("/srv/mailapp/mailapp.toml")
#: 2026-12-01 01:00 UTC: the reports of 2026-11-30 are due.
NOW = 1_796_083_200 + 3600
REPORT_NAME = "mail.example.test!b.test!1795996800!1796083200.json"
REPORT = {"organization-name": "mail.example.test", "report-id": "2026-11-30_b.test@mail.example.test", "policies": []}


# -- the record and the message --------------------------------------------------------------


def test_the_rua_of_a_tlsrpt_record_is_read() -> None:
    assert parse_rua([b"v=TLSRPTv1; rua=mailto:tlsrpt@b.test,https://r.b.test/tlsrpt"]) == (
        "mailto:tlsrpt@b.test",
        "https://r.b.test/tlsrpt",
    )
    assert parse_rua([b"v=TLSRPTv1;rua=mailto:a", b"@b.test"]) == ("mailto:a@b.test",)


@pytest.mark.parametrize(
    "record",
    [b"v=TLSRPTv2; rua=mailto:a@b.test", b"v=spf1 -all", b"v=TLSRPTv1;", b"v=TLSRPTv1; rua=ftp://b.test/", b"\xff"],
)
def test_a_record_that_is_not_tlsrpt_or_names_no_usable_uri_gives_nothing(record: bytes) -> None:
    assert parse_rua([record]) is None


def test_the_report_message_is_rfc_8460_multipart_report_with_the_gzipped_json() -> None:
    data = json.dumps(REPORT).encode()
    raw = report_message(
        data,
        filename=REPORT_NAME,
        domain="b.test",
        submitter="mail.example.test",
        sender="postmaster@example.test",
        recipients=["tlsrpt@b.test"],
        report_id="2026-11-30_b.test@mail.example.test",
        now=NOW,
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["TLS-Report-Domain"] == "b.test"
    assert message["TLS-Report-Submitter"] == "mail.example.test"
    assert (message["From"], message["To"]) == ("postmaster@example.test", "tlsrpt@b.test")
    assert str(message["Subject"]) == (
        "Report Domain: b.test Submitter: mail.example.test Report-ID: <2026-11-30_b.test@mail.example.test>"
    )
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    text, attachment = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    assert attachment.get_filename() == REPORT_NAME + ".gz"
    assert gzip.decompress(attachment.get_payload(decode=True)) == data


# -- sending -------------------------------------------------------------------------------------


class _Response:
    def __init__(self, code: int) -> None:
        self.code = code

    def deliverBody(self, protocol: Any) -> None:
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone

        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(ResponseDone()))


class _Agent:
    """Records each POST (URL, content type, body) and answers C{codes} in turn."""

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)
        self.posts: list[tuple[bytes, bytes, bytes]] = []

    def request(self, method: bytes, url: bytes, headers: Any, body: Any) -> defer.Deferred[Any]:
        assert method == b"POST"
        self.posts.append((url, headers.getRawHeaders(b"content-type")[0], body._inputFile.read()))
        return defer.succeed(_Response(self.codes.pop(0) if self.codes else 200))


def _context(store: RecordingStore) -> Any:
    context = service_context(store=store)
    context.accounts.add_user("tlsrpt@example.test", "pw")
    context.accounts.add_user("postmaster@example.test", "pw")
    return context


def _sender(
    tmp_path: Path, txt: list[str] | None, agent: _Agent | None = None, store: RecordingStore | None = None, **records: Any
) -> tuple[ReportSender, RecordingStore, FakeResolver, task.Clock, _Agent]:
    clock = task.Clock()
    clock.advance(NOW)
    store = store or RecordingStore()
    resolver = FakeResolver({"_smtp._tls.b.test": {"TXT": txt}} if txt is not None else {}, **records)
    reports = tmp_path / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    if not (reports / REPORT_NAME).exists():
        (reports / REPORT_NAME).write_text(json.dumps(REPORT))
    agent = agent or _Agent()
    sender = ReportSender(
        clock,
        resolver,
        _context(store).router,
        lambda f, *a: defer.maybeDeferred(f, *a),
        reports,
        agent,
        enabled=True,
        submitter="mail.example.test",
        sender="postmaster@example.test",
    )
    return sender, store, resolver, clock, agent


def test_a_mailto_report_is_handed_to_the_router_once(tmp_path: Path) -> None:
    sender, store, _, clock, _ = _sender(tmp_path, ["v=TLSRPTv1; rua=mailto:tlsrpt@example.test"])
    sender.send_pending()
    [copy] = store.inbox("tlsrpt@example.test")
    message = email.message_from_bytes(copy, policy=email.policy.default)
    assert message["TLS-Report-Domain"] == "b.test"
    [_, attachment] = message.iter_parts()
    assert json.loads(gzip.decompress(attachment.get_payload(decode=True))) == REPORT
    clock.advance(3600)
    sender.send_pending()
    assert len(store.inbox("tlsrpt@example.test")) == 1


def test_a_restarted_server_does_not_send_a_report_again(tmp_path: Path) -> None:
    sender, store, _, _, _ = _sender(tmp_path, ["v=TLSRPTv1; rua=mailto:tlsrpt@example.test"])
    sender.send_pending()
    again, store_again, _, _, _ = _sender(tmp_path, ["v=TLSRPTv1; rua=mailto:tlsrpt@example.test"])
    again.send_pending()
    assert len(store.inbox("tlsrpt@example.test")) == 1
    assert store_again.inbox("tlsrpt@example.test") == []
    assert json.loads((tmp_path / "reports" / REPORT_NAME.replace(".json", ".sent")).read_text())["-"] == "sent"


def test_an_https_report_is_posted_gzipped(tmp_path: Path) -> None:
    sender, store, _, _, agent = _sender(tmp_path, ["v=TLSRPTv1; rua=https://reports.b.test/v1/tlsrpt"])
    sender.send_pending()
    [(url, kind, body)] = agent.posts
    assert (url, kind) == (b"https://reports.b.test/v1/tlsrpt", b"application/tlsrpt+gzip")
    assert json.loads(gzip.decompress(body)) == REPORT
    assert store.delivered == []


def test_a_failed_post_is_tried_once_more_the_next_day_and_then_never(tmp_path: Path) -> None:
    sender, _, _, clock, agent = _sender(tmp_path, ["v=TLSRPTv1; rua=https://reports.b.test/"], _Agent(500, 503, 200))
    sender.send_pending()
    clock.advance(3600)
    sender.send_pending()
    assert len(agent.posts) == 1  # not again the same day
    clock.advance(86400)
    sender.send_pending()
    assert len(agent.posts) == 2
    clock.advance(86400)
    sender.send_pending()
    assert len(agent.posts) == 2


def test_a_router_refusal_is_tried_again_the_next_day(tmp_path: Path) -> None:
    store = RecordingStore()
    store.failNext("finish", StorageFull())
    sender, _, _, clock, _ = _sender(tmp_path, ["v=TLSRPTv1; rua=mailto:tlsrpt@example.test"], store=store)
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        sender.send_pending()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert store.inbox("tlsrpt@example.test") == []
    assert [e["outcome"] for e in seen if e.get("log_event") == logevents.RELAY_TLS_REPORT_SENT] == ["failed"]
    clock.advance(86400)
    sender.send_pending()
    assert len(store.inbox("tlsrpt@example.test")) == 1


def test_both_kinds_of_rua_are_served(tmp_path: Path) -> None:
    sender, store, _, _, agent = _sender(tmp_path, ["v=TLSRPTv1; rua=mailto:tlsrpt@example.test,https://r.b.test/"])
    sender.send_pending()
    assert len(store.inbox("tlsrpt@example.test")) == 1 and len(agent.posts) == 1


def test_a_lookup_that_fails_is_asked_again_at_the_next_check(tmp_path: Path) -> None:
    sender, store, resolver, clock, _ = _sender(
        tmp_path, ["v=TLSRPTv1; rua=mailto:tlsrpt@example.test"], servfail=["_smtp._tls.b.test"]
    )
    sender.send_pending()
    assert store.delivered == []
    resolver.servfail.clear()
    clock.advance(3600)
    sender.send_pending()
    assert len(store.inbox("tlsrpt@example.test")) == 1


@pytest.mark.parametrize(
    "txt",
    [None, ["v=TLSRPTv1; rua=mailto:tlsrpt@example.test", "v=TLSRPTv1; rua=mailto:postmaster@example.test"]],
    ids=["no record", "two records"],
)
def test_a_domain_without_exactly_one_record_gets_nothing_and_is_not_asked_again(tmp_path: Path, txt: Any) -> None:
    sender, store, resolver, clock, agent = _sender(tmp_path, txt)
    sender.send_pending()
    clock.advance(3600)
    sender.send_pending()
    assert store.delivered == [] and agent.posts == []
    assert resolver.queries == [("_smtp._tls.b.test", "TXT")]


def test_reports_older_than_two_days_are_not_sent(tmp_path: Path) -> None:
    sender, store, _, clock, _ = _sender(tmp_path, ["v=TLSRPTv1; rua=mailto:tlsrpt@example.test"])
    clock.advance(3 * 86400)
    sender.send_pending()
    assert store.delivered == []


def test_sending_switched_off_sends_nothing(tmp_path: Path) -> None:
    sender, store, resolver, _, _ = _sender(tmp_path, ["v=TLSRPTv1; rua=mailto:tlsrpt@example.test"])
    sender.reconfigure(parse(MINIMAL + "[relay]\ntls_report_send = false\n", PATH))
    sender.send_pending()
    assert store.delivered == [] and resolver.queries == []


def test_the_daily_check_writes_yesterdays_reports_then_sends_them(tmp_path: Path) -> None:
    sender, store, _, clock, _ = _sender(tmp_path / "tls-rpt", ["v=TLSRPTv1; rua=mailto:tlsrpt@example.test"])
    (tmp_path / "tls-rpt" / "reports" / REPORT_NAME).unlink()
    reports = TLSReports(tmp_path / "tls-rpt", clock, lambda f, *a: defer.maybeDeferred(f, *a))
    reports.sender = sender
    line = {"policy_domain": "b.test", "policy_type": "sts", "result_type": None, "mx_host": "mx.b.test", "address": "192.0.2.5"}
    (tmp_path / "tls-rpt" / "2026-11-30.jsonl").write_text(json.dumps(line) + "\n")
    reports.start("ignored.example.test")  # the submitter names the reports
    reports.stop()
    [copy] = store.inbox("tlsrpt@example.test")
    message = email.message_from_bytes(copy, policy=email.policy.default)
    [_, attachment] = message.iter_parts()
    assert attachment.get_filename() == REPORT_NAME + ".gz"
    sent = json.loads(gzip.decompress(attachment.get_payload(decode=True)))
    assert (sent["organization-name"], sent["contact-info"]) == ("mail.example.test", "mailto:postmaster@example.test")


# -- config ------------------------------------------------------------------------------------


def test_tls_report_config_defaults_send_as_postmaster_of_the_first_domain_and_the_hostname() -> None:
    config = parse(MINIMAL, PATH)
    assert config.relay.tls_report_send is True is DEFAULT_RELAY.tls_report_send
    assert config.relay.tls_report_submitter is None and config.relay.tls_report_from is None
    assert sender_settings(config) == {"enabled": True, "submitter": "mail.example.test", "sender": "postmaster@example.test"}


def test_tls_report_config_keys_are_read() -> None:
    config = parse(
        MINIMAL + '[relay]\ntls_report_send = false\ntls_report_submitter = "Example.test"\ntls_report_from = "tls-reports@Example.test"\n',
        PATH,
    )
    assert sender_settings(config) == {"enabled": False, "submitter": "example.test", "sender": "tls-reports@example.test"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ('tls_report_send = "yes"', "must be a boolean"),
        ('tls_report_submitter = "not a name"', "is not a valid domain name"),
        ('tls_report_from = "postmaster"', "is not a mail address"),
        ('tls_report_from = "a b@example.test"', "is not a mail address"),
        ('tls_report_from = "postmaster@bad_domain"', "is not a valid domain name"),
    ],
)
def test_bad_tls_report_config_values_are_problems(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(MINIMAL + "[relay]\n" + text + "\n", PATH)
    assert any(expected in problem for problem in raised.value.problems), raised.value.problems


def test_a_reload_applies_the_tls_report_keys(tmp_path: Path) -> None:
    from mailapp import reload
    from tests.relay_helpers import Harness

    sender, _, _, _, _ = _sender(tmp_path, ["v=TLSRPTv1; rua=mailto:tlsrpt@example.test"])
    manager = Harness(tmp_path / "relay").manager
    manager.tls_reports = TLSReports(tmp_path, task.Clock(), lambda f, *a: defer.maybeDeferred(f, *a))
    manager.tls_reports.sender = sender
    old = parse(MINIMAL, PATH)
    new = parse(MINIMAL + '[relay]\ntls_report_send = false\ntls_report_from = "reports@other.test"\n', PATH)
    reload._apply_relay(manager, old, new, [], [])
    assert (sender.enabled, sender.sender, sender.submitter) == (False, "reports@other.test", "mail.example.test")
    assert reload._needs_restart(old, new) == []


def test_a_report_to_a_remote_mailto_is_queued_durably_for_the_relay(tmp_path: Path) -> None:
    from tests.relay_helpers import Harness

    harness = Harness(tmp_path / "relay")
    sender, _, _, _, _ = _sender(tmp_path, ["v=TLSRPTv1; rua=mailto:tlsrpt@b.test"])
    sender._router = harness.router
    sender.sender = "postmaster@a.test"
    sender.send_pending()
    loaded: list[Any] = []
    harness.queue.load().addCallback(loaded.extend)
    [envelope] = loaded
    assert (envelope.sender, [r.address for r in envelope.recipients]) == ("postmaster@a.test", ["tlsrpt@b.test"])
    assert b"\r\nTLS-Report-Domain: b.test\r\n" in Path(harness.queue.message_path(envelope.id)).read_bytes()
