"""
The relay manager under a fake clock: the retry schedule, expiry, delay
warnings, DSN content, per-recipient outcomes, restart safety, corrupt queue
files and admin requests. Days of retries run in milliseconds.
"""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from mailapp import logevents
from mailapp.config import HostPort
from mailapp.relay import control
from mailapp.relay.client import Reply
from mailapp.relay.queue import DELIVERED, FAILED, PENDING, read_envelope
from mailapp.store import MaildirStore

from tests.relay_helpers import B_HOP, C_HOP, OK, FakeClient, FakeNetwork, Harness, HeldThreadPool

DAY = 24 * 3600
NO_SUCH_USER = Reply(550, ("5.1.1 <bob@b.test>: Recipient address rejected: no such user",))
TRY_LATER = Reply(451, ("4.3.0 try again later",))


@pytest.fixture
def events():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def named(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e.get("log_event") == name]


def dsn_parts(data: bytes) -> tuple[email.message.Message, list[email.message.Message]]:
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    return message, list(message.get_payload())


def test_a_message_for_a_remote_domain_is_sent_at_once_and_leaves_the_queue(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.network.servers[B_HOP] = lambda r: OK
    h.start()
    queue_id = h.submit("alice@a.test", ["bob@b.test"])
    [(when, hop, sender, rcpts, data, _)] = h.network.sent
    assert (hop, sender, rcpts) == (B_HOP, "alice@a.test", ["bob@b.test"])
    assert data.startswith(b"Return-Path: <alice@a.test>\r\n") and data.endswith(b"Hi.\r\n")
    assert h.envelopes() == []
    assert not (tmp_path / "queue" / "messages" / queue_id).exists()


def test_retries_follow_the_schedule_then_repeat_the_last_interval(tmp_path: Path) -> None:
    h = Harness(tmp_path, schedule=(300, 600, 1200, 2400, 3600))
    h.start()
    start = h.clock.seconds()
    h.submit("alice@a.test", ["bob@b.test"])  # B refuses connections
    h.clock.pump([60] * (4 * 60 * 3))  # twelve hours
    times = [when - start for when, _ in h.network.attempts]
    assert times[:8] == [0, 300, 900, 2100, 4500, 8100, 11700, 15300]
    [envelope] = [read_envelope(p) for p in (tmp_path / "queue" / "envelopes").iterdir()]
    assert envelope.recipients[0].state == PENDING
    assert envelope.recipients[0].last_reply.startswith("451 4.4.1 cannot connect to")


def test_a_4xx_reply_is_retried_and_a_later_250_delivers(tmp_path: Path) -> None:
    h = Harness(tmp_path, schedule=(300,))
    replies = iter([TRY_LATER, TRY_LATER, OK])
    h.network.servers[B_HOP] = lambda r: next(replies)
    h.start()
    h.submit("alice@a.test", ["bob@b.test"])
    h.clock.pump([300, 300])
    assert [s[5]["bob@b.test"].code for s in h.network.sent] == [451, 451, 250]
    assert h.envelopes() == []
    assert h.store.inbox("alice@a.test") == []  # no DSN for a temporary failure


def test_each_recipient_gets_its_own_outcome_and_the_sender_a_dsn_for_the_550(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.network.servers[B_HOP] = lambda r: NO_SUCH_USER if r == "bob@b.test" else OK
    h.start()
    body = b"From: Alice <alice@a.test>\r\nSubject: the plan\r\nMessage-ID: <plan@a.test>\r\n\r\nsecret body\r\n"
    queue_id = h.submit("alice@a.test", ["bob@b.test", "carol@b.test"], body)
    [send] = h.network.sent
    assert send[3] == ["bob@b.test", "carol@b.test"]  # one transaction for the domain
    assert h.envelopes() == []
    [dsn] = h.store.inbox("alice@a.test")
    assert dsn.startswith(b"Return-Path: <>\r\n")
    message, parts = dsn_parts(dsn)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["To"] == "<alice@a.test>"
    assert message["Auto-Submitted"] == "auto-replied"
    human, status, headers = parts
    assert "<bob@b.test>: 550 5.1.1" in human.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    report = status.as_string()
    assert "Reporting-MTA: dns; mail.a.test" in report
    assert f"X-Mailapp-Queue-ID: {queue_id}" in report
    assert "Final-Recipient: rfc822; bob@b.test" in report
    assert "Action: failed" in report
    assert "Status: 5.1.1" in report
    assert "Diagnostic-Code: smtp; 550 5.1.1 <bob@b.test>: Recipient address rejected: no such user" in report
    assert "carol@b.test" not in report
    assert headers.get_content_type() == "text/rfc822-headers"
    original = headers.get_payload()
    assert "Subject: the plan" in original and "Message-ID: <plan@a.test>" in original
    assert "secret body" not in dsn.decode()


def test_expiry_bounces_after_max_lifetime_with_status_4_4_7(tmp_path: Path, events: list[dict]) -> None:
    h = Harness(tmp_path, schedule=(3600,), max_lifetime=5 * DAY)
    h.network.servers[B_HOP] = lambda r: TRY_LATER
    h.start()
    start = h.clock.seconds()
    h.submit("alice@a.test", ["bob@b.test"])
    h.clock.pump([3600] * (5 * 24 - 1))
    assert h.envelopes() != []
    assert h.store.inbox("alice@a.test") == []
    h.clock.pump([3600, 3600])
    assert h.envelopes() == []
    assert h.network.attempts[-1][0] - start == 5 * DAY  # one last try at the deadline
    [dsn] = h.store.inbox("alice@a.test")
    report = dsn.decode()
    assert "Action: failed" in report and "Status: 4.4.7" in report
    assert "Diagnostic-Code: smtp; delivery time expired; last reply: 451 4.3.0 try again later" in report
    [expired] = named(events, logevents.RELAY_EXPIRED)
    assert expired["recipient"] == "bob@b.test"


def test_delay_warning_is_sent_once(tmp_path: Path) -> None:
    h = Harness(tmp_path, schedule=(600,), delay_warning=3600)
    h.start()
    h.submit("alice@a.test", ["bob@b.test"])
    h.clock.pump([600] * 5)
    assert h.store.inbox("alice@a.test") == []
    h.clock.pump([600] * 20)
    [warning] = h.store.inbox("alice@a.test")
    assert b"Action: delayed" in warning and b"Will-Retry-Until: " in warning
    assert b"Subject: Delayed Mail (still being retried)" in warning
    assert h.envelopes() != []


def test_no_dsn_for_the_null_sender_the_double_bounce_is_logged(tmp_path: Path, events: list[dict]) -> None:
    h = Harness(tmp_path)
    h.network.servers[B_HOP] = lambda r: NO_SUCH_USER
    h.start()
    h.submit("", ["bob@b.test"])
    assert h.store.delivered == []
    assert h.envelopes() == []
    [event] = named(events, logevents.RELAY_DOUBLE_BOUNCE)
    assert event["recipient"] == "bob@b.test"


def test_a_dsn_to_a_remote_sender_is_queued_with_the_null_sender(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.network.servers[B_HOP] = lambda r: NO_SUCH_USER
    h.network.servers[C_HOP] = lambda r: OK
    h.start()
    h.submit("dave@c.test", ["bob@b.test"])
    [bounced, dsn] = h.network.sent
    assert dsn[2:4] == ("", ["dave@c.test"])
    assert b"multipart/report" in dsn[4]


def test_recipients_in_two_domains_are_sent_separately(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.network.servers[B_HOP] = lambda r: OK
    h.network.servers[C_HOP] = lambda r: OK
    h.start()
    h.submit("alice@a.test", ["bob@b.test", "dave@c.test", "carol@b.test"])
    assert sorted((s[1], tuple(s[3])) for s in h.network.sent) == [
        (B_HOP, ("bob@b.test", "carol@b.test")),
        (C_HOP, ("dave@c.test",)),
    ]


def test_a_restart_never_resends_to_a_recipient_recorded_as_delivered(tmp_path: Path) -> None:
    h = Harness(tmp_path, schedule=(300,))
    h.network.servers[B_HOP] = lambda r: OK
    h.start()
    h.submit("alice@a.test", ["bob@b.test", "dave@c.test"])  # c.test refuses
    [envelope] = [read_envelope(p) for p in (tmp_path / "queue" / "envelopes").iterdir()]
    assert {r.address: r.state for r in envelope.recipients} == {"bob@b.test": DELIVERED, "dave@c.test": PENDING}
    h.stop()

    again = Harness(tmp_path, clock=h.clock, network=h.network, schedule=(300,))
    h.network.servers[C_HOP] = lambda r: OK
    again.start()
    h.clock.advance(300)
    assert [(s[1], s[3]) for s in h.network.sent] == [(B_HOP, ["bob@b.test"]), (C_HOP, ["dave@c.test"])]
    assert again.envelopes() == []


class _DiskWatchingNetwork(FakeNetwork):
    """Records, as each transaction starts (its MAIL FROM), what the queue on disk says of every message."""

    def __init__(self, clock, queue_root: Path) -> None:
        super().__init__(clock)
        self.queue_root = queue_root
        self.on_disk_at_mail: list[dict[str, dict[str, str]]] = []

    def connect(self, hop):
        self.attempts.append((self.clock.seconds(), hop.address))
        network = self

        class Client(FakeClient):
            def send(self, sender, recipients, source, size):
                envelopes = [read_envelope(path) for path in (network.queue_root / "envelopes").glob("*.json")]
                network.on_disk_at_mail.append({e.id: {r.address: r.state for r in e.recipients} for e in envelopes})
                return super().send(sender, recipients, source, size)

        return defer.succeed(Client(self, hop, self.servers[hop.address]))


def _relay_two_messages_over_one_connection(tmp_path: Path, first: list[str], reply) -> tuple[list[str], _DiskWatchingNetwork]:
    pool = HeldThreadPool()
    h = Harness(tmp_path, pool=pool, max_connections_per_domain=1)
    network = _DiskWatchingNetwork(h.clock, tmp_path / "queue")
    h.manager.connect = network.connect
    network.servers[B_HOP] = reply
    ids = [h.submit("alice@a.test", first), h.submit("alice@a.test", ["erin@b.test"])]
    pool.held = True  # from here every disk write waits until the test runs it
    h.start()
    for _ in range(100):
        pool.run()
        h.clock.advance(0.1)
    assert [s[3] for s in network.sent] == [first, ["erin@b.test"]]
    return ids, network


def test_a_250_is_on_disk_before_the_next_mail_from_on_the_same_connection(tmp_path: Path) -> None:
    (first, second), network = _relay_two_messages_over_one_connection(tmp_path, ["bob@b.test"], lambda r: OK)
    before_first, before_second = network.on_disk_at_mail
    assert set(before_first) == {first, second}
    assert set(before_second) == {second}, "the first message's entry was still queued when the next MAIL FROM went out"


def test_a_250_for_some_recipients_is_saved_before_the_next_mail_from_on_the_same_connection(tmp_path: Path) -> None:
    reply = lambda r: TRY_LATER if r == "carol@b.test" else OK  # noqa: E731
    (first, _), network = _relay_two_messages_over_one_connection(tmp_path, ["bob@b.test", "carol@b.test"], reply)
    assert network.on_disk_at_mail[1][first] == {"bob@b.test": DELIVERED, "carol@b.test": PENDING}


def test_an_entry_in_flight_when_the_process_died_is_sent_at_the_next_start(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.submit("alice@a.test", ["bob@b.test"])  # queued, manager never started ("died")
    assert len(h.envelopes()) == 1
    again = Harness(tmp_path, clock=h.clock)
    again.network.servers[B_HOP] = lambda r: OK
    again.start()
    h.clock.advance(0)
    assert [s[3] for s in again.network.sent] == [["bob@b.test"]]
    assert again.envelopes() == []


def test_corrupt_queue_files_are_moved_aside_and_logged(tmp_path: Path, events: list[dict]) -> None:
    h = Harness(tmp_path)
    queue_id = h.submit("alice@a.test", ["bob@b.test"])
    envelopes = tmp_path / "queue" / "envelopes"
    orphan = read_envelope(envelopes / f"{queue_id}.json")
    orphan.id = "NOMESSAGE"
    (envelopes / "NOMESSAGE.json").write_bytes(orphan.to_bytes())
    (envelopes / "BROKEN1.json").write_bytes(b"{not json")
    (envelopes / "BROKEN2.json").write_text(json.dumps({"version": 1, "id": "BROKEN2"}))
    h.network.servers[B_HOP] = lambda r: OK
    h.start()
    h.clock.advance(0)
    assert len(h.network.sent) == 1
    assert h.envelopes() == []
    moved = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "queue" / "corrupt").iterdir())
    assert moved == ["BROKEN1.json", "BROKEN2.json", "NOMESSAGE.json"]
    assert len(named(events, logevents.RELAY_CORRUPT_ENTRY)) == 3


def test_connections_per_domain_are_limited(tmp_path: Path) -> None:
    from twisted.internet.defer import Deferred

    h = Harness(tmp_path, max_connections=3, max_connections_per_domain=2, max_connections_per_address=3)
    h.network.servers[B_HOP] = lambda r: OK
    h.network.hold = Deferred()
    h.start()
    for number in range(6):
        h.submit("alice@a.test", [f"user{number}@b.test"])
    assert h.network.open_sends == 2
    assert len(h.network.attempts) == 2
    h.network.hold.callback(None)
    assert len(h.network.sent) == 6
    assert h.network.peak_sends == 2
    assert len(h.network.attempts) == 2  # the two connections carried all six
    assert h.envelopes() == []


def test_admin_bounce_sends_a_dsn_and_removes_the_entry(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.start()
    queue_id = h.submit("alice@a.test", ["bob@b.test"])
    result = h.manager.apply("bounce", queue_id)
    assert result == {"ok": True, "verb": "bounce", "ids": [queue_id]}
    [dsn] = h.store.inbox("alice@a.test")
    assert b"Diagnostic-Code: smtp; " + control.ADMIN_BOUNCE_REPLY.encode() in dsn
    assert h.envelopes() == []


def test_admin_retry_tries_at_once_and_delete_forgets(tmp_path: Path) -> None:
    h = Harness(tmp_path, schedule=(3600,))
    h.start()
    first = h.submit("alice@a.test", ["bob@b.test"])
    second = h.submit("alice@a.test", ["carol@b.test"])
    h.network.servers[B_HOP] = lambda r: OK
    assert h.manager.apply("delete", second)["ok"]
    assert h.manager.apply("retry", None) == {"ok": True, "verb": "retry", "ids": [first]}
    h.clock.advance(0)
    assert [s[3] for s in h.network.sent] == [["bob@b.test"]]
    assert h.envelopes() == []
    assert h.manager.apply("delete", "NOSUCHID") == {"ok": False, "error": "no queue entry NOSUCHID"}


def test_control_requests_from_the_command_are_applied_by_the_running_manager(tmp_path: Path) -> None:
    h = Harness(tmp_path, schedule=(3600,))
    h.start()
    queue_id = h.submit("alice@a.test", ["bob@b.test"])
    layout = h.queue.layout
    assert control.try_lock(layout) is None  # the manager holds it
    name = control.submit(layout, "bounce", queue_id)
    h.clock.advance(control.POLL_INTERVAL)
    result = control.wait_for_result(layout, name, timeout=1)
    assert result == {"ok": True, "verb": "bounce", "ids": [queue_id]}
    assert h.envelopes() == []
    assert len(h.store.inbox("alice@a.test")) == 1


def test_a_bounce_made_while_the_server_was_stopped_is_reported_at_start(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    queue_id = h.submit("alice@a.test", ["bob@b.test"])
    path = tmp_path / "queue" / "envelopes" / f"{queue_id}.json"
    envelope = control.apply_to_envelope(read_envelope(path), "bounce", h.clock.seconds())
    assert envelope is not None and envelope.recipients[0].state == FAILED
    path.write_bytes(envelope.to_bytes())
    again = Harness(tmp_path, clock=h.clock)
    again.start()
    h.clock.advance(0)
    assert again.network.attempts == []
    assert len(again.store.inbox("alice@a.test")) == 1
    assert again.envelopes() == []


def test_a_large_message_spooled_with_lf_is_queued_and_sent_with_crlf(tmp_path: Path) -> None:
    # The Maildir stores LF; the queue keeps CRLF (what the client sends), so
    # a spool file written with LF is copied in wire form, not linked.
    h = Harness(tmp_path)
    h.network.servers[B_HOP] = lambda r: OK
    h.start()
    writer = MaildirStore(tmp_path / "mail", reactor=h.reactor).newMessage()
    body = b"Subject: big\r\n\r\n" + b"a line of the body\r\n" * 10000
    writer.write(body)
    assert writer.finish().called
    assert b"\r" not in writer.path.read_bytes()
    prepared = h.queue.prepare(writer, "alice@a.test", ["bob@b.test"], "Q1")
    assert prepared.called
    assert (tmp_path / "queue" / "messages" / "Q1").read_bytes() == body
    assert h.queue.publish(prepared.result).called
    assert h.network.delivered_to("bob@b.test") == [body]


TARPIT = "192.0.2.66"
HEALTHY = "192.0.2.77"
SHARED_TARPIT = {
    "b.test": HostPort(TARPIT, 25),
    "c.test": HostPort(TARPIT, 25),
    "d.test": HostPort(TARPIT, 25),
    "e.test": HostPort(HEALTHY, 25),
}


def test_domains_sharing_one_slow_mx_hold_only_its_share_and_mail_to_others_flows(tmp_path: Path) -> None:
    from twisted.internet.defer import Deferred

    h = Harness(tmp_path, transports=SHARED_TARPIT, max_connections=10, max_connections_per_domain=5, max_connections_per_address=4)
    h.network.servers[TARPIT] = lambda r: OK
    h.network.servers[HEALTHY] = lambda r: OK
    h.network.holds[TARPIT] = Deferred()
    h.start()
    for number in range(5):
        for domain in ("b.test", "c.test", "d.test"):
            h.submit("alice@a.test", [f"user{number}@{domain}"])
    assert h.network.open_connections[TARPIT] == 4
    for number in range(3):
        h.submit("alice@a.test", [f"user{number}@e.test"])
    assert len(h.network.delivered_to("user2@e.test")) == 1
    assert len([s for s in h.network.sent if s[1] == HEALTHY]) == 3
    h.network.holds.pop(TARPIT).callback(None)
    assert len([s for s in h.network.sent if s[1] == TARPIT]) == 15
    assert h.network.peak_connections[TARPIT] == 4
    assert h.envelopes() == []


def test_work_waiting_for_a_share_of_an_address_counts_no_attempt(tmp_path: Path) -> None:
    from twisted.internet.defer import Deferred

    h = Harness(tmp_path, transports=SHARED_TARPIT, max_connections=10, max_connections_per_domain=5, max_connections_per_address=1)
    h.network.servers[TARPIT] = lambda r: OK
    h.network.holds[TARPIT] = Deferred()
    h.start()
    h.submit("alice@a.test", ["bob@b.test"])
    waiting = h.submit("alice@a.test", ["carol@c.test"])
    assert [address for _, address in h.network.attempts] == [TARPIT]
    h.clock.advance(3600)  # no retry is due: it never tried
    assert [address for _, address in h.network.attempts] == [TARPIT]
    assert h.manager.entries[waiting].envelope.recipients[0].attempts == 0
    h.network.holds.pop(TARPIT).callback(None)
    assert len(h.network.delivered_to("carol@c.test")) == 1
    assert h.envelopes() == []


def test_the_default_share_of_one_address_is_a_fifth_of_all_connections(tmp_path: Path) -> None:
    assert Harness(tmp_path, max_connections=50).manager.max_connections_per_address == 10
    assert Harness(tmp_path, max_connections=3).manager.max_connections_per_address == 1
