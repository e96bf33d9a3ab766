"""
The pieces of ``[server] workers = N`` in-process: the config key, the
lines between parent and worker, the supervisor's restarts and signals on a
fake clock, and the cross-process halves of the event bus, the relay queue
and the POP3 maildrop lock. The real processes are in
``tests/e2e/test_workers_e2e.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mailapp.config import load as load_config
from mailapp.config import parse
from mailapp.pop3.maildrop import MaildropLocks
from mailapp.records import ADDED, FolderEvent
from mailapp.relay.queue import Envelope, Queue, Recipient, write_envelope_sync
from mailapp.store.events import EventBus
from mailapp.testing import SynchronousReactor, SynchronousThreadPool
from mailapp.workers import channel
from mailapp.workers.configcopy import ConfigCopy
from mailapp.workers.supervisor import BACKOFF_FIRST, BACKOFF_MAX, Supervisor
from tests.unit.test_config import LISTENER, MINIMAL, PATH, only_problem

# --- the config key --------------------------------------------------------------------------


def test_workers_defaults_to_one_process() -> None:
    assert parse(MINIMAL, PATH).workers == 1


def test_workers_must_be_a_positive_integer() -> None:
    assert only_problem(MINIMAL + "workers = 0\n") == "etc/test.toml: server.workers: must be a positive integer, not 0"


def test_workers_above_one_with_a_webmail_listener_is_accepted() -> None:
    text = MINIMAL + 'workers = 2\n[listeners.web]\nprotocol = "webmail"\nendpoint = "tcp:8080:interface=127.0.0.1"\ntls = "none"\n'
    assert parse(text, PATH).workers == 2


def test_workers_above_one_with_smtp_imap_and_pop3_is_accepted() -> None:
    assert parse(LISTENER.replace("[server]\n", "[server]\nworkers = 3\n"), PATH).workers == 3


# --- the lines -------------------------------------------------------------------------------


def test_a_folder_event_survives_its_line() -> None:
    event = FolderEvent(ADDED, "alice@example.test", "INBOX", (3, 4), "Junk")
    message = channel.decode(channel.encode(channel.CHANGED, event=channel.event_to_fields(event)).rstrip(b"\n"))
    assert message is not None and message["kind"] == channel.CHANGED
    assert channel.event_from_fields(message["event"]) == event


def test_a_line_that_is_not_a_message_is_ignored() -> None:
    assert channel.decode(b"Traceback (most recent call last):") is None
    assert channel.decode(b"[1, 2]") is None
    assert channel.event_from_fields({"kind": "added", "account": "a", "folder": "INBOX", "uids": ["x"]}) is None


def test_lines_split_across_reads_come_out_whole_and_an_overlong_one_is_dropped() -> None:
    lines = channel.LineBuffer(max_line=10)
    assert lines.feed(b"ab") == []
    assert lines.feed(b"c\nd") == [b"abc"]
    assert lines.feed(b"x" * 20) == []
    assert lines.feed(b"yy\nok\n") == [b"ok"]


# --- the event bus: another process's change wakes sessions only --------------------------


def test_a_change_made_elsewhere_wakes_the_folders_and_the_accounts_sessions_but_not_the_server_wide_subscribers() -> None:
    bus = EventBus()
    sessions: list[FolderEvent] = []
    indexer: list[FolderEvent] = []
    notify: list[FolderEvent] = []
    bus.subscribe("Alice@example.test", "INBOX", sessions.append)
    bus.subscribeAccount("alice@example.test", notify.append)
    bus.subscribeAll(indexer.append)
    event = FolderEvent(ADDED, "alice@example.test", "INBOX", (1,))
    bus.wake(event)
    assert sessions == [event] and notify == [event] and indexer == []


# --- the relay queue: an entry another process published -----------------------------------


def _queue(tmp_path: Path) -> Queue:
    return Queue(tmp_path / "queue", SynchronousReactor(Clock()), threadpool=SynchronousThreadPool(), use_syncfs=False)


def test_an_entry_published_elsewhere_is_told_to_the_subscribers(tmp_path: Path) -> None:
    queue = _queue(tmp_path)
    told: list[Envelope] = []
    queue.subscribe(told.append)
    envelope = Envelope(id="ABCD1234", sender="a@example.test", created=1.0, size=3, recipients=[Recipient("b@b.test")])
    queue.layout.message("ABCD1234").write_bytes(b"hi\r\n")
    write_envelope_sync(queue.layout, envelope)
    found: list[Any] = []
    queue.publishedElsewhere("ABCD1234").addCallback(found.append)
    assert [e.id for e in told] == ["ABCD1234"] and found[0].id == "ABCD1234"


def test_an_entry_gone_or_badly_named_is_told_to_nobody(tmp_path: Path) -> None:
    queue = _queue(tmp_path)
    told: list[Envelope] = []
    queue.subscribe(told.append)
    found: list[Any] = []
    queue.publishedElsewhere("GONE1234").addCallback(found.append)
    queue.publishedElsewhere("../../etc/passwd").addCallback(found.append)
    assert told == [] and found == [None, None]


# --- the POP3 maildrop lock across processes ------------------------------------------------


def test_a_maildrop_locked_through_the_directory_is_refused_to_another_table(tmp_path: Path) -> None:
    # Two tables over one directory stand for two worker processes.
    first, second = MaildropLocks(tmp_path), MaildropLocks(tmp_path)
    assert first.acquire("Alice@example.test")
    assert not second.acquire("alice@example.test")
    assert second.acquire("bob@example.test")
    first.release("alice@example.test")
    assert second.acquire("alice@example.test")


def test_without_a_directory_the_lock_is_this_tables_only(tmp_path: Path) -> None:
    first, second = MaildropLocks(), MaildropLocks()
    assert first.acquire("alice@example.test") and second.acquire("alice@example.test")
    assert not first.acquire("alice@example.test")


# --- the supervisor, on a fake clock ---------------------------------------------------------


class _Transport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.written: list[bytes] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def write(self, data: bytes) -> None:
        self.written.append(data)


class _ProcessReactor(Clock):
    """A clock that records spawnProcess and connects each protocol to a fake transport."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[int, Any]]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: Any = None, childFDs: Any = None) -> _Transport:
        transport = _Transport(1000 + len(self.spawned))
        protocol.makeConnection(transport)
        self.spawned.append((protocol, args, childFDs))
        return transport


class _Socket:
    def fileno(self) -> int:
        return 7

    family = 2


class _Port:
    socket = _Socket()


class _Listener:
    class listener:  # noqa: N801  # what a ListenerService's .listener looks like
        name = "smtp"

    def whenListening(self) -> defer.Deferred[Any]:
        return defer.succeed(_Port())


def _supervisor(count: int = 2, **keys: Any) -> tuple[Supervisor, _ProcessReactor]:
    reactor = _ProcessReactor()
    supervisor = Supervisor(reactor, Path("/etc/mailapp.toml"), count, [_Listener()], publish_log=lambda event: None, **keys)  # type: ignore[list-item]
    supervisor.startService()
    return supervisor, reactor


def _died(protocol: Any, code: int = 1) -> None:
    protocol.processEnded(Failure(ProcessTerminated(exitCode=code)))


def test_every_worker_is_given_every_listening_socket() -> None:
    supervisor, reactor = _supervisor()
    assert len(reactor.spawned) == 2
    for _protocol, args, child_fds in reactor.spawned:
        assert child_fds == {0: "w", 1: "r", 2: "r", 3: 7}
        assert args[args.index("--sockets") + 1] == '[["smtp", 3, 2]]'


def test_a_dead_worker_is_restarted_after_a_back_off_that_doubles_up_to_its_ceiling() -> None:
    supervisor, reactor = _supervisor(count=1)
    delays = []
    for _ in range(9):
        protocol = reactor.spawned[-1][0]
        _died(protocol)
        before = len(reactor.spawned)
        waited = 0.0
        while len(reactor.spawned) == before:
            reactor.advance(0.25)
            waited += 0.25
        delays.append(waited)
    assert delays[:4] == [BACKOFF_FIRST, 2 * BACKOFF_FIRST, 4 * BACKOFF_FIRST, 8 * BACKOFF_FIRST]
    assert delays[-1] == BACKOFF_MAX


def test_a_worker_that_ran_a_long_time_is_restarted_after_the_first_delay_again() -> None:
    supervisor, reactor = _supervisor(count=1)
    for _ in range(3):
        _died(reactor.spawned[-1][0])
        reactor.advance(BACKOFF_MAX)
    reactor.advance(3600)
    _died(reactor.spawned[-1][0])
    before = len(reactor.spawned)
    reactor.advance(BACKOFF_FIRST)
    assert len(reactor.spawned) == before + 1


def test_stopping_sends_sigterm_waits_for_every_worker_and_restarts_none() -> None:
    supervisor, reactor = _supervisor()
    transports = [protocol.transport for protocol, _, _ in reactor.spawned]
    stopped = supervisor.stopService()
    assert [t.signals for t in transports] == [["TERM"], ["TERM"]]
    first, second = (protocol for protocol, _, _ in reactor.spawned)
    first.processEnded(Failure(ProcessDone(0)))
    assert not stopped.called
    second.processEnded(Failure(ProcessDone(0)))
    assert stopped.called
    reactor.advance(BACKOFF_MAX)
    assert len(reactor.spawned) == 2


def test_a_worker_that_does_not_stop_in_time_is_killed() -> None:
    supervisor, reactor = _supervisor(count=1, drain_timeout=5.0)
    [transport] = [protocol.transport for protocol, _, _ in reactor.spawned]
    supervisor.stopService()
    reactor.advance(supervisor.stop_timeout)
    assert transport.signals == ["TERM", "KILL"]


def test_reload_passes_sighup_to_every_ready_worker() -> None:
    supervisor, reactor = _supervisor()
    for protocol, _, _ in reactor.spawned:
        protocol.childDataReceived(1, channel.encode(channel.READY))
    supervisor.reload()
    assert [protocol.transport.signals for protocol, _, _ in reactor.spawned] == [["HUP"], ["HUP"]]


def test_a_worker_still_starting_gets_its_sighup_once_ready_not_before() -> None:
    """Before its service installs a handler, SIGHUP's default action would kill the worker."""
    supervisor, reactor = _supervisor()
    first, second = (protocol for protocol, _, _ in reactor.spawned)
    first.childDataReceived(1, channel.encode(channel.READY))
    supervisor.reload()
    assert (first.transport.signals, second.transport.signals) == (["HUP"], [])
    second.childDataReceived(1, channel.encode(channel.READY))
    assert second.transport.signals == ["HUP"]
    second.childDataReceived(1, channel.encode(channel.READY))
    assert second.transport.signals == ["HUP"], "one reload, one SIGHUP"


_CONFIG = """
[server]
hostname = "mx.example.test"
state_dir = "{state}"

[domains]
local = ["example.test"]
"""


def test_workers_read_the_parents_copy_of_the_config_it_runs(tmp_path: Path) -> None:
    source = tmp_path / "mailapp.toml"
    source.write_text(_CONFIG.format(state=tmp_path / "state"))
    config = load_config(source)
    copy = ConfigCopy(tmp_path / "workers-config.toml")
    supervisor, reactor = _supervisor(config=config, config_copy=copy)
    args = reactor.spawned[0][1]
    assert args[args.index("--config") + 1] == str(copy.path)
    assert args[args.index("--config-name") + 1] == "/etc/mailapp.toml"
    assert copy.path.read_text() == source.read_text()
    assert copy.path.stat().st_mode & 0o777 == 0o600


def test_a_half_made_edit_never_reaches_the_workers_copy(tmp_path: Path) -> None:
    """The parent refused it, or has not loaded it: a worker restarted now still starts with what the parent runs."""
    source = tmp_path / "mailapp.toml"
    good = _CONFIG.format(state=tmp_path / "state")
    source.write_text(good)
    config = load_config(source)
    copy = ConfigCopy(tmp_path / "workers-config.toml")
    assert copy.update(config)
    source.write_text(good + "\n[limits]\nbogus = 1\n")
    assert not copy.update(config), "the file no longer says what the parent loaded"
    assert copy.path.read_text() == good


def test_a_change_in_one_worker_goes_to_every_other_worker_and_a_parent_change_to_all() -> None:
    bus = EventBus()
    supervisor, reactor = _supervisor(count=3, events=bus)
    first, second, third = (protocol for protocol, _, _ in reactor.spawned)
    line = channel.encode(channel.CHANGED, event=channel.event_to_fields(FolderEvent(ADDED, "a@example.test", "INBOX", (1,))))
    first.childDataReceived(1, line)
    assert [p.transport.written for p in (first, second, third)] == [[], [line], [line]]
    bus.publish(FolderEvent(ADDED, "a@example.test", "INBOX", (2,)))
    assert all(len(p.transport.written) == count for p, count in ((first, 1), (second, 2), (third, 2)))


def test_a_queued_line_hands_the_entry_to_the_parents_queue() -> None:
    announced: list[str] = []

    class _Queue:
        def publishedElsewhere(self, entry_id: str) -> defer.Deferred[None]:
            announced.append(entry_id)
            return defer.succeed(None)

    supervisor, reactor = _supervisor(queue=_Queue())
    reactor.spawned[1][0].childDataReceived(1, channel.encode(channel.QUEUED, id="ABCD1234"))
    assert announced == ["ABCD1234"]


@pytest.mark.parametrize("count", [1, 2])
def test_workers_start_only_once_every_listener_is_bound(count: int) -> None:
    reactor = _ProcessReactor()
    pending: defer.Deferred[Any] = defer.Deferred()

    class _Slow(_Listener):
        def whenListening(self) -> defer.Deferred[Any]:
            return pending

    supervisor = Supervisor(reactor, Path("/x.toml"), count, [_Slow()], publish_log=lambda event: None)  # type: ignore[list-item]
    supervisor.startService()
    assert reactor.spawned == []
    pending.callback(_Port())
    assert len(reactor.spawned) == count



def test_the_server_is_ready_once_every_worker_has_said_it_serves() -> None:
    supervisor, reactor = _supervisor(count=2)
    first, second = (protocol for protocol, _, _ in reactor.spawned)
    first.childDataReceived(1, channel.encode(channel.READY))
    assert not supervisor.whenReady.called, "one worker of two serves"
    second.childDataReceived(1, channel.encode(channel.READY))
    assert supervisor.whenReady.called


# --- the abuse guard's facts, shared between two processes' guards --------------------------


def _linked_guards() -> tuple[Any, Any, Clock]:
    from mailapp.abuse import AbuseGuard
    from mailapp.config import SecurityConfig

    clock = Clock()
    security = SecurityConfig(ban_after_failures=3, auth_failure_delay=1.0, auth_failure_delay_max=60.0)
    first, second = AbuseGuard(clock.seconds, security), AbuseGuard(clock.seconds, security)
    first.share = second.learn
    second.share = first.learn
    return first, second, clock


def test_failures_in_two_processes_add_up_to_the_delay_and_the_ban() -> None:
    first, second, clock = _linked_guards()
    assert first.failed("imap", "198.51.100.7", "alice@example.test").delay == 1.0
    assert second.failed("pop3", "198.51.100.7", "alice@example.test").delay == 2.0
    third = first.failed("imap", "198.51.100.7", "alice@example.test")
    assert third.banned and third.delay == 4.0
    assert second.banned("198.51.100.7")


def test_a_good_login_in_one_process_forgives_the_account_in_the_other() -> None:
    first, second, clock = _linked_guards()
    first.failed("imap", "198.51.100.7", "alice@example.test")
    second.succeeded("203.0.113.1", "alice@example.test")
    assert first.failed("imap", "203.0.113.9", "alice@example.test").delay == 1.0


def test_messages_accepted_in_either_process_count_against_one_hourly_limit() -> None:
    from mailapp.abuse import AbuseGuard

    clock = Clock()
    first, second = AbuseGuard(clock.seconds, max_messages_per_hour=2), AbuseGuard(clock.seconds, max_messages_per_hour=2)
    first.share, second.share = second.learn, first.learn
    first.messageAccepted("alice@example.test")
    second.messageAccepted("alice@example.test")
    assert not first.mayAcceptMessage("alice@example.test") and not second.mayAcceptMessage("alice@example.test")


def test_a_malformed_fact_is_ignored() -> None:
    first, second, clock = _linked_guards()
    second.learn("failed", {"client": 7})
    second.learn("banned", {"client": "198.51.100.7", "until": "soon"})
    second.learn("unheard-of", {})
    assert not second.banned("198.51.100.7") and second.tracked()["addresses"] == 0


def test_a_changed_number_of_workers_is_logged_as_needing_a_restart() -> None:
    from mailapp import reload

    old = parse(LISTENER.replace("[server]\n", "[server]\nworkers = 1\n"), PATH)
    new = parse(LISTENER.replace("[server]\n", "[server]\nworkers = 2\n"), PATH)
    assert reload._needs_restart(old, new) == ["server.workers"]


def test_workers_above_one_with_a_metrics_listener_is_accepted() -> None:
    text = MINIMAL + 'workers = 2\n[listeners.metrics]\nprotocol = "metrics"\nendpoint = "tcp:9125:interface=127.0.0.1"\ntls = "none"\n'
    assert parse(text, PATH).workers == 2


def test_a_workers_failed_login_line_in_the_parents_log_is_the_one_fail2ban_reads() -> None:
    """Written by the parent for a worker, the line is a single process's: the shipped filter (and the one an operator copied) matches it."""
    from io import StringIO

    from twisted.logger import Logger, eventAsJSON, textFileLogObserver

    from tests.unit.test_abuse import fail2ban_hosts

    made: list[dict[str, Any]] = []
    observer = made.append
    Logger(namespace="mailapp.abuse", observer=observer).info(
        "auth failed protocol={protocol} client={client} account={quoted_account}",
        protocol="imap", client="203.0.113.9", quoted_account='"alice@example.test"',
    )  # fmt: skip
    written: list[dict[str, Any]] = []
    reactor = _ProcessReactor()
    supervisor = Supervisor(reactor, Path("/etc/mailapp.toml"), 1, [_Listener()], publish_log=written.append)  # type: ignore[list-item]
    supervisor.startService()
    reactor.spawned[0][0].childDataReceived(1, channel.encode(channel.LOG, event=eventAsJSON(made[0])))
    output = StringIO()
    textFileLogObserver(output)(written[0])
    assert written[0]["worker"] == 1
    assert fail2ban_hosts(output.getvalue().splitlines()) == ["203.0.113.9"]


def test_a_workers_telemetry_goes_to_the_parents_publisher_marked_with_the_worker() -> None:
    seen: list[dict[str, Any]] = []
    supervisor, reactor = _supervisor(telemetry=seen.append)
    event = {"log_event": "session.command", "protocol": "smtp", "command": "MAIL", "seconds": 0.001}
    reactor.spawned[1][0].childDataReceived(1, channel.encode(channel.TELEMETRY, event=event))
    assert seen == [{**event, "worker": 2}]


def test_the_parents_guard_learns_the_workers_facts_and_tells_them_its_own() -> None:
    from mailapp.abuse import AbuseGuard

    clock = Clock()
    guard = AbuseGuard(clock.seconds)
    supervisor, reactor = _supervisor(guard=guard)
    first, second = (protocol for protocol, _, _ in reactor.spawned)
    line = channel.encode(channel.ABUSE, fact="failed", fields={"client": "198.51.100.7", "account": "alice@example.test"})
    first.childDataReceived(1, line)
    assert guard.tracked()["addresses"] == 1 and second.transport.written == [line]
    guard.failed("webmail", "198.51.100.8", "bob@example.test")
    assert all(b'"fact":"failed"' in protocol.transport.written[-1] for protocol in (first, second))
    supervisor.stopService()
    assert guard.share is None


# --- connection counts across processes ------------------------------------------------------


def test_connections_of_other_processes_count_and_a_dead_ones_are_forgotten() -> None:
    from mailapp.sessions import ConnectionCounts

    counts = ConnectionCounts()
    shared: list[tuple[str, int]] = []
    counts.share = lambda client, delta: shared.append((client, delta))
    counts.add("198.51.100.7")
    counts.learn("2", "198.51.100.7", 1)
    counts.learn("3", "198.51.100.7", 1)
    assert (counts.total, counts.of("198.51.100.7")) == (3, 3)
    assert shared == [("198.51.100.7", 1)]  # only this process's own connections go out
    counts.forget("3")
    assert (counts.total, counts.of("198.51.100.7")) == (2, 2)
    counts.remove("198.51.100.7")
    assert (counts.total, counts.of("198.51.100.7"), shared[-1]) == (1, 1, ("198.51.100.7", -1))


def test_a_close_this_process_never_heard_opened_counts_nothing() -> None:
    from mailapp.sessions import ConnectionCounts

    counts = ConnectionCounts()
    counts.learn("2", "198.51.100.7", -1)
    assert (counts.total, counts.of("198.51.100.7"), counts.elsewhere) == (0, 0, {"2": {}})


def test_the_parent_passes_connections_on_with_their_origin_and_forgets_a_dead_workers() -> None:
    from mailapp.sessions import ConnectionCounts

    counts = ConnectionCounts()
    supervisor, reactor = _supervisor(count=2, counts=counts)
    first, second = (protocol for protocol, _, _ in reactor.spawned)
    first.childDataReceived(1, channel.encode(channel.CONNECTIONS, client="198.51.100.7", delta=1))
    assert counts.of("198.51.100.7") == 1
    assert channel.decode(second.transport.written[-1].rstrip(b"\n")) == {
        "kind": "connections", "client": "198.51.100.7", "delta": 1, "origin": "1",
    }
    counts.add("203.0.113.5")  # the parent's own (its webmail)
    assert b'"origin":"parent"' in first.transport.written[-1]
    _died(first)
    assert counts.of("198.51.100.7") == 0
    assert channel.decode(second.transport.written[-1].rstrip(b"\n")) == {"kind": "connections", "origin": "1", "forget": True}
    # The restarted worker starts with the parent's view: the parent's own connection.
    reactor.advance(BACKOFF_MAX)
    restarted = reactor.spawned[-1][0]
    assert [channel.decode(line.rstrip(b"\n")) for line in restarted.transport.written] == [
        {"kind": "connections", "client": "203.0.113.5", "delta": 1, "origin": "parent"}
    ]


# --- the MX's early-talker passes, shared between workers ----------------------------------


def test_a_client_that_passed_on_one_worker_is_greeted_at_once_on_the_others() -> None:
    from twisted.internet.testing import StringTransport

    from mailapp.postscreen.earlytalk import PassMemory
    from mailapp.workers.child import ParentLink

    clock = Clock()
    here, there = PassMemory(clock.seconds), PassMemory(clock.seconds)
    sender, receiver = ParentLink(clock), ParentLink(clock)
    transport = StringTransport()
    sender.makeConnection(transport)
    receiver.makeConnection(StringTransport())
    sender.attachPasses("smtp", here)
    receiver.attachPasses("smtp", there)
    here.passed("192.0.2.7", 60.0)
    line = transport.value()
    assert channel.decode(line.rstrip(b"\n")) == {"kind": channel.PASSED, "listener": "smtp", "ip": "192.0.2.7", "seconds": 60.0}
    assert channel.PASSED in channel.FANNED_OUT
    receiver.dataReceived(line)
    assert there.known("192.0.2.7")
    clock.advance(61)
    assert not there.known("192.0.2.7")


# --- what the supervising parent loads -------------------------------------------------------

_BUILD_SUPERVISING_PARENT = """
import sys
from pathlib import Path
from twisted.internet.testing import MemoryReactorClock
from mailapp.config import load
from mailapp.service import makeService
from mailapp.testing import FakeAccounts, FakeStore
directory = Path(sys.argv[1])
path = directory / "mailapp.toml"
path.write_text(
    f'[server]\\nhostname = "mx.example.test"\\nstate_dir = "{directory / "state"}"\\nworkers = 2\\n'
    '[listeners.smtp]\\nprotocol = "smtp"\\nendpoint = "tcp:0:interface=127.0.0.1"\\ntls = "none"\\n'
    '[listeners.imap]\\nprotocol = "imap"\\nendpoint = "tcp:0:interface=127.0.0.1"\\ntls = "none"\\n'
)
makeService(load(path), reactor=MemoryReactorClock(), store=FakeStore(), accounts=FakeAccounts())
print("\\n".join(name for name in sys.modules if name.startswith("mailapp")))
"""


def test_the_supervising_parent_never_imports_the_protocols_its_workers_serve(tmp_path: Path) -> None:
    # Every restart of a worker waits for the parent's start; importing
    # the SMTP and IMAP sessions it never runs cost it half a second.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _BUILD_SUPERVISING_PARENT, str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    loaded = set(done.stdout.split())
    assert "mailapp.service" in loaded, done.stderr
    assert not loaded & {"mailapp.smtp", "mailapp.imap.server"}, sorted(loaded)
