"""
The service foundation: the twistd plugin, ``twistd mailapp`` start and
stop, the composition root with fakes, the protocol registry, TLS material,
and the in-flight tracker that keeps a shutdown from cutting work off.

Every socket here is on 127.0.0.1, port 0.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.application.service import IServiceMaker, Service
from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailapp import logevents, service, tap
from mailapp.config import Config, Limits, ListenerConfig, RelayConfig, TLSConfig
from mailapp.service import InFlight, ListenerService, ServiceContext, admin_command, makeService, register_protocol
from mailapp.tls import CertificateError, ensure_certificate, server_context_factory
from tests.paths import REPOSITORY

REPO = REPOSITORY
TWISTD = Path(sys.executable).parent / "twistd"
HOSTNAME = "mail.example.test"


# --- helpers ---


def subprocess_env() -> dict[str, str]:
    """The repo first on the path, so twistd finds the dropin whether or not mailapp is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MAILAPP_CONFIG", None)
    return env


def run_twistd(*arguments: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TWISTD), *arguments],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def temporary_directory(testcase: unittest.TestCase) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="mailapp-test-"))
    testcase.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return directory


def make_config(state: Path, *listeners: ListenerConfig, generate: bool = True) -> Config:
    return Config(
        path=Path("etc/test.toml"),
        hostname=HOSTNAME,
        state_dir=state / "state",
        local_domains=("example.test",),
        tls=TLSConfig(cert=state / "tls" / "cert.pem", key=state / "tls" / "key.pem", generate_self_signed=generate),
        listeners=tuple(listeners),
        limits=Limits(),
        relay=RelayConfig(),
    )


def listener_config(name: str = "test", protocol: str = "test-echo", tls: str = "none") -> ListenerConfig:
    return ListenerConfig(
        name=name, protocol=protocol, endpoint="tcp:0:interface=127.0.0.1", tls=tls, allow_plaintext_auth=False
    )


class CapturedLog:
    """Every log event published while a test runs."""

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        observer = self.events.append
        globalLogPublisher.addObserver(observer)
        testcase.addCleanup(globalLogPublisher.removeObserver, observer)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("log_event") == name]


class FakeAccounts:
    def __init__(self, users: int = 0) -> None:
        self.users = users

    def countUsers(self) -> Deferred[int]:
        return defer.succeed(self.users)


class RecordingComponent(Service):
    """A store stand-in that is a service, so its place in start/stop order shows."""

    def __init__(self, name: str, record: list[str]) -> None:
        self.setName(name)
        self.record = record

    def startService(self) -> None:
        super().startService()
        self.record.append(f"start {self.name}")

    def stopService(self) -> None:
        super().stopService()
        self.record.append(f"stop {self.name}")


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.factory.lost.append(reason)
        waiters, self.factory.waiting = self.factory.waiting, []
        for waiter in waiters:
            waiter.callback(None)


class EchoFactory(Factory):
    """Echoes, and lets a test wait until the server side of a connection has closed."""

    protocol = Echo

    def __init__(self) -> None:
        self.lost: list[Failure] = []
        self.waiting: list[Deferred[None]] = []

    def connection_closed(self) -> Deferred[None]:
        if self.lost:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self.waiting.append(waiter)
        return waiter


def echo_over_tls(port: int, cafile: Path, message: bytes = b"ping\r\n") -> tuple[str | None, bytes]:
    """A stdlib client, certificate and host name verified: what a real mail client does."""
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=HOSTNAME) as connection:
            connection.sendall(message)
            received = b""
            while len(received) < len(message):
                chunk = connection.recv(100)
                if not chunk:
                    break
                received += chunk
            return connection.version(), received


# --- the twistd plugin ---


def test_plugin_is_found_in_process() -> None:
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    assert "mailapp" in makers
    assert isinstance(makers["mailapp"].options(), tap.Options)


def test_twistd_help_lists_mailapp(tmp_path: Path) -> None:
    result = run_twistd("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:1] == ["mailapp"] for line in result.stdout.splitlines()), result.stdout


def test_twistd_with_a_bad_config_prints_every_problem_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(
        """
colour = "blue"
[server]
hostname = "mail.example.test"
[listeners.smtp]
protocol = "smtp"
endpoint = "tcp:x"
tls = "starttls"
"""
    )
    result = run_twistd("-n", "--pidfile=", "mailapp", "--config", "bad.toml", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "bad.toml: colour: unknown key" in result.stderr
    assert "bad.toml: listeners.smtp.endpoint: bad endpoint string 'tcp:x'" in result.stderr
    assert "2 configuration problems:" in result.stderr


def test_twistd_with_a_missing_config_file_says_so_without_a_traceback(tmp_path: Path) -> None:
    result = run_twistd("-n", "--pidfile=", "mailapp", "--config", "absent.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert "absent.toml: cannot read config file: No such file or directory" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


_MISSING_COMPONENTS = [
    module for module in ("mailapp.store", "mailapp.accounts", "mailapp.auth") if find_spec(module) is None
]


@pytest.mark.skipif(
    bool(_MISSING_COMPONENTS), reason=f"not written yet: {', '.join(_MISSING_COMPONENTS)} (needed by a real start)"
)
def test_twistd_starts_logs_each_listener_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "mailapp.toml").write_text(
        """
[server]
hostname = "mail.example.test"
state_dir = "state"
[domains]
local = ["example.test"]
[tls]
cert = "state/tls/cert.pem"
key = "state/tls/key.pem"
generate_self_signed = true
[listeners.smtp]
protocol = "smtp"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "starttls"
[listeners.imaps]
protocol = "imap"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "implicit"
[listeners.webmail]
protocol = "webmail"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "none"
"""
    )
    log_file = tmp_path / "twistd.log"
    environment = subprocess_env()
    environment["PATH"] = os.pathsep.join(
        entry for entry in environment.get("PATH", "").split(os.pathsep) if Path(entry).resolve() != TWISTD.parent.resolve()
    )
    process = subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile=", f"--logfile={log_file}", "mailapp", "--config", "mailapp.toml"],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Run from the venv without it on PATH, as after a fresh clone: the hint names the script.
        hint = f"no users yet: add one with: {TWISTD.parent / 'mailapp'} --config mailapp.toml user add you@example.test"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            if log_file.exists() and hint in log_file.read_text():
                break
            time.sleep(0.2)
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_file.read_text()
    # twistd re-raises the signal that stopped it once shutdown is done
    # (twisted.application.app._exitWithSignal), so a clean stop is -SIGTERM.
    assert returncode == -signal.SIGTERM, log
    assert hint in log
    for name in ("smtp", "imaps", "webmail"):
        listening = f"listener {name} (" in log and "listening on 127.0.0.1:" in log
        skipped = f"listener {name} skipped: the " in log
        assert listening or skipped, f"{name} neither listened nor was skipped:\n{log}"
    assert "mailapp stopped" in log
    assert "Traceback" not in log
    assert (tmp_path / "state" / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(
    bool(_MISSING_COMPONENTS), reason=f"not written yet: {', '.join(_MISSING_COMPONENTS)} (needed by a real start)"
)
@pytest.mark.parametrize("command", ["twistd", "twist"])
def test_a_port_that_cannot_bind_exits_non_zero_with_one_line_per_port(tmp_path: Path, command: str) -> None:
    busy = [socket.socket(), socket.socket()]
    for sock in busy:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
    ports = [sock.getsockname()[1] for sock in busy]
    (tmp_path / "mailapp.toml").write_text(
        f"""
[server]
hostname = "mail.example.test"
state_dir = "state"
[domains]
local = ["example.test"]
[listeners.smtp]
protocol = "smtp"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "none"
[listeners.imap]
protocol = "imap"
endpoint = "tcp:{ports[0]}:interface=127.0.0.1"
tls = "none"
[listeners.pop3]
protocol = "pop3"
endpoint = "tcp:{ports[1]}:interface=127.0.0.1"
tls = "none"
"""
    )
    arguments = ["-n", "--pidfile="] if command == "twistd" else ["--log-format=text"]
    try:
        result = subprocess.run(
            [str(TWISTD.parent / command), *arguments, "mailapp", "--config", "mailapp.toml"],
            cwd=tmp_path,
            env=dict(subprocess_env(), PYTHONFAULTHANDLER="1"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        for sock in busy:
            sock.close()
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    for name, port in zip(("imap", "pop3"), ports):
        lines = [line for line in output.splitlines() if f"cannot listen on 127.0.0.1:{port}: address in use" in line]
        assert len(lines) == 1 and f"(listener {name})" in lines[0], output
    assert "Traceback" not in output
    assert "ReactorNotRunning" not in output


# --- the admin command named in hints ---


def _script(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "python").touch()
    script = directory / "mailapp"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    return script


def test_admin_command_is_the_venv_script_when_it_is_not_on_path(tmp_path: Path) -> None:
    script = _script(tmp_path / "repo" / ".venv" / "bin")
    python = str(script.parent / "python")
    assert admin_command(python, search_path="/usr/bin", cwd=str(tmp_path / "repo")) == ".venv/bin/mailapp"
    assert admin_command(python, search_path="", cwd=str(tmp_path / "elsewhere")) == str(script)


def test_admin_command_is_plain_mailapp_when_the_shell_finds_this_one(tmp_path: Path) -> None:
    script = _script(tmp_path / "venv" / "bin")
    assert admin_command(str(script.parent / "python"), search_path=str(script.parent), cwd=str(tmp_path)) == "mailapp"


def test_admin_command_is_plain_mailapp_without_a_script_beside_the_interpreter(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    assert admin_command(str(tmp_path / "bin" / "python"), search_path="", cwd=str(tmp_path)) == "mailapp"


def test_admin_command_is_quoted_for_the_shell(tmp_path: Path) -> None:
    script = _script(tmp_path / "my repo" / "bin")
    assert admin_command(str(script.parent / "python"), search_path="", cwd=str(tmp_path / "other")) == f"'{script}'"


# --- tap.Options ---


def test_options_with_a_bad_config_exit_1_after_printing_the_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.toml").write_text("[server]\n")
    with pytest.raises(SystemExit) as raised:
        tap.Options().parseOptions(["--config", str(tmp_path / "bad.toml")])
    assert raised.value.code == 1
    assert f"{tmp_path / 'bad.toml'}: server.hostname: is required" in capsys.readouterr().err


def test_options_check_reports_ok_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        tap.Options().parseOptions(["--check", "--config", str(REPO / "etc" / "mailapp.toml")])
    assert raised.value.code == 0
    assert capsys.readouterr().out == f"{REPO / 'etc' / 'mailapp.toml'}: OK (9 listeners)\n"


def test_options_read_the_config_path_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "from-env.toml").write_text('[server]\nhostname = "env.example.test"\n')
    monkeypatch.setenv("MAILAPP_CONFIG", str(tmp_path / "from-env.toml"))
    options = tap.Options()
    options.parseOptions([])
    assert options.loadedConfig.hostname == "env.example.test"


def test_options_default_to_etc_mailapp_toml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILAPP_CONFIG", raising=False)
    monkeypatch.chdir(REPO)
    options = tap.Options()
    options.parseOptions([])
    assert options["config"] == "etc/mailapp.toml"
    assert options.loadedConfig.hostname == HOSTNAME


# --- log event names ---


def test_log_event_names_are_unique_and_namespaced() -> None:
    names = [value for key, value in vars(logevents).items() if key.isupper() and isinstance(value, str)]
    assert len(names) == len(set(names)) == len(logevents.all_events())
    for name in names:
        area, _, what = name.partition(".")
        assert area.isidentifier() and what.isidentifier() and name == name.lower(), name


# --- the context builders are given ---


def test_a_service_context_requires_every_part_a_server_always_has() -> None:
    optional = [field.name for field in dataclasses.fields(ServiceContext) if field.default is not dataclasses.MISSING]
    assert optional == ["relay"]
    with pytest.raises(TypeError, match="router"):
        ServiceContext(config=None, reactor=None, store=None, accounts=None, portal=None, tls=None, inflight=None)  # type: ignore[arg-type, call-arg]


def test_no_builder_guesses_at_a_context_part_with_getattr() -> None:
    # Every part a server always has is a required field: read it. (mailapp/imap
    # is left to the IMAP split; its builder still guesses.)
    import re

    import mailapp

    root = Path(mailapp.__file__).parent
    guesses = [
        f"{path.relative_to(root)}:{number}"
        for path in sorted(root.rglob("*.py"))
        if "imap" not in path.relative_to(root).parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"getattr\(\s*(self\.)?context\s*,", line)
    ]
    assert guesses == []


# --- InFlight ---


class InFlightTests(unittest.TestCase):
    def test_drain_with_nothing_in_flight_fires_at_once(self) -> None:
        self.assertIs(self.successResultOf(InFlight(Clock()).drain(10)), True)

    def test_drain_waits_for_every_tracked_deferred(self) -> None:
        inflight = InFlight(Clock())
        first: Deferred[str] = Deferred()
        second: Deferred[str] = Deferred()
        inflight.track(first)
        inflight.track(second)
        drained = inflight.drain(10)
        first.callback("one")
        self.assertNoResult(drained)
        second.errback(RuntimeError("failed work still counts as finished"))
        self.assertIs(self.successResultOf(drained), True)
        self.failureResultOf(second, RuntimeError)

    def test_drain_gives_up_after_its_bound(self) -> None:
        clock = Clock()
        inflight = InFlight(clock)
        stuck: Deferred[None] = Deferred()
        inflight.track(stuck)
        drained = inflight.drain(10)
        clock.advance(9.9)
        self.assertNoResult(drained)
        clock.advance(0.1)
        self.assertIs(self.successResultOf(drained), False)
        self.assertEqual(len(inflight), 1)
        stuck.callback(None)
        self.assertEqual(len(inflight), 0)

    def test_finishing_in_time_cancels_the_timer(self) -> None:
        clock = Clock()
        inflight = InFlight(clock)
        work: Deferred[None] = Deferred()
        inflight.track(work)
        drained = inflight.drain(10)
        work.callback(None)
        self.assertIs(self.successResultOf(drained), True)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_track_passes_the_result_through(self) -> None:
        inflight = InFlight(Clock())
        work: Deferred[int] = Deferred()
        self.assertIs(inflight.track(work), work)
        work.callback(42)
        self.assertEqual(self.successResultOf(work), 42)
        self.assertEqual(len(inflight), 0)


# --- makeService with fakes ---


class MakeServiceTests(unittest.TestCase):
    def setUp(self) -> None:
        self.patch(service, "PROTOCOL_BUILDERS", {})
        self.log = CapturedLog(self)
        self.directory = temporary_directory(self)
        self.built: list[tuple[ServiceContext, ListenerConfig]] = []
        self.factory = EchoFactory()

        def build_echo(context: ServiceContext, listener: ListenerConfig) -> IProtocolFactory:
            self.built.append((context, listener))
            return self.factory

        register_protocol("test-echo", build_echo)

    def test_registering_a_protocol_twice_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            register_protocol("test-echo", lambda context, listener: Factory())

    @defer.inlineCallbacks
    def test_listener_with_a_builder_listens_and_logs_its_real_address(self) -> Iterator[Deferred[Any]]:
        config = make_config(self.directory, listener_config())
        store = object()
        accounts = FakeAccounts(users=1)
        root = makeService(config, store=store, accounts=accounts, portal="portal")
        [(context, listener)] = self.built
        self.assertEqual((context.store, context.accounts, context.portal, context.tls), (store, accounts, "portal", None))
        self.assertEqual(listener.name, "test")

        root.startService()
        self.addCleanup(root.stopService)
        child = root.getServiceNamed("listener:test")
        port = yield child.whenListening()
        address = port.getHost()
        self.assertEqual(address.host, "127.0.0.1")
        self.assertNotEqual(address.port, 0)
        [event] = self.log.named(logevents.LISTENING)
        self.assertEqual((event["listener"], event["address"]), ("test", f"127.0.0.1:{address.port}"))

        reply = yield threads.deferToThread(_echo_plain, address.port)
        self.assertEqual(reply, b"hello\r\n")
        yield self.factory.connection_closed()

    @defer.inlineCallbacks
    def test_a_listener_says_once_that_it_listens_and_nothing_of_its_factory(self) -> Iterator[Deferred[Any]]:
        root = makeService(make_config(self.directory, listener_config()), store=object(), accounts=FakeAccounts(users=1), portal=None)
        root.startService()
        port = yield root.getServiceNamed("listener:test").whenListening()
        number = port.getHost().port
        yield root.stopService()
        ours = [event for event in self.log.events if event.get("log_namespace", "").startswith("mailapp")]
        self.assertEqual(
            [formatEvent(event) for event in ours if str(number) in formatEvent(event)],
            [f"listener test (test-echo, tls=none) listening on 127.0.0.1:{number}"],
        )
        # Twisted's tcp.Port still logs "EchoFactory starting on N" unconditionally; its
        # factory lines ("Starting factory <... at 0x...>", "Stopping factory") are gone.
        self.assertEqual(
            [line for line in map(formatEvent, self.log.events) if line.startswith(("Starting factory", "Stopping factory"))], []
        )

    def test_every_listener_is_built_from_one_context_with_every_shared_part(self) -> None:
        config = make_config(self.directory, listener_config(), listener_config(name="second"))
        root = makeService(config, reactor=MemoryReactorClock(), store=object(), accounts=FakeAccounts(1), portal=None)
        [(first, _), (second, _)] = self.built
        self.assertIs(first, second)
        self.assertIs(root.context, first)
        missing = [field.name for field in dataclasses.fields(first) if getattr(first, field.name) is None]
        # A fake store gets no relay; no listener needs TLS.
        self.assertEqual(missing, ["tls", "relay"])
        self.assertIs(first.router.quotas, first.quotas)

    def test_listener_without_a_builder_is_skipped_with_one_warning(self) -> None:
        config = make_config(self.directory, listener_config(name="pop3", protocol="pop3"))
        root = makeService(config, reactor=MemoryReactorClock(), store=object(), accounts=FakeAccounts(), portal=None)
        # No listener (the server's own services, the sweeper and the Junk learner, are there still).
        self.assertEqual([child.name for child in root if isinstance(child, ListenerService)], [])
        [event] = self.log.named(logevents.LISTENER_SKIPPED)
        self.assertEqual((event["listener"], event["protocol"]), ("pop3", "pop3"))

    def test_state_directory_is_created_private(self) -> None:
        config = make_config(self.directory)
        makeService(config, reactor=MemoryReactorClock(), store=object(), accounts=FakeAccounts(), portal=None)
        self.assertEqual(config.state_dir.stat().st_mode & 0o777, 0o700)

    def test_no_users_hint_names_the_config_and_first_local_domain(self) -> None:
        root = makeService(
            make_config(self.directory), reactor=MemoryReactorClock(), store=object(), accounts=FakeAccounts(0), portal=None
        )
        root.startService()
        [event] = self.log.named(logevents.NO_USERS)
        self.assertEqual((event["config_path"], event["domain"]), ("etc/test.toml", "example.test"))

    def test_no_users_hint_gives_a_command_that_runs_from_the_repository(self) -> None:
        root = makeService(
            make_config(self.directory), reactor=MemoryReactorClock(), store=object(), accounts=FakeAccounts(0), portal=None
        )
        root.startService()
        [event] = self.log.named(logevents.NO_USERS)
        self.assertEqual(event["command"], admin_command())
        self.assertIn(f"add one with: {admin_command()} --config etc/test.toml user add you@example.test", formatEvent(event))

    def test_no_hint_once_there_are_users(self) -> None:
        root = makeService(
            make_config(self.directory), reactor=MemoryReactorClock(), store=object(), accounts=FakeAccounts(2), portal=None
        )
        root.startService()
        self.assertEqual(self.log.named(logevents.NO_USERS), [])

    def test_stop_closes_listeners_then_waits_for_in_flight_work_then_stops_the_store(self) -> None:
        reactor = MemoryReactorClock()
        record: list[str] = []
        store = RecordingComponent("store", record)
        root = makeService(
            make_config(self.directory, listener_config()), reactor=reactor, store=store, accounts=FakeAccounts(1), portal=None
        )
        root.startService()
        listener = root.getServiceNamed("listener:test")
        commit: Deferred[None] = Deferred()
        root.inflight.track(commit)

        stopping = root.stopService()
        self.assertFalse(listener.running)
        self.assertTrue(store.running)
        self.assertNoResult(stopping)

        commit.callback(None)
        self.successResultOf(stopping)
        self.assertEqual(record, ["start store", "stop store"])
        self.assertEqual(self.log.named(logevents.DRAIN_TIMEOUT), [])
        self.assertEqual(len(self.log.named(logevents.STOPPED)), 1)

    def test_stop_gives_up_on_stuck_work_after_the_bound_and_says_so(self) -> None:
        reactor = MemoryReactorClock()
        store = RecordingComponent("store", [])
        root = makeService(
            make_config(self.directory, listener_config()), reactor=reactor, store=store, accounts=FakeAccounts(1), portal=None
        )
        root.startService()
        root.inflight.track(Deferred())
        stopping = root.stopService()
        reactor.advance(service.DRAIN_TIMEOUT_SECONDS)
        self.successResultOf(stopping)
        self.assertFalse(store.running)
        [event] = self.log.named(logevents.DRAIN_TIMEOUT)
        self.assertEqual(event["count"], 1)

    def test_a_listener_that_cannot_listen_stops_the_server(self) -> None:
        reactor = MemoryReactorClock()

        def refuse(port: int, factory: Any, backlog: int = 50, interface: str = "") -> None:
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "Address already in use"))

        reactor.listenTCP = refuse  # type: ignore[method-assign]
        config = make_config(self.directory, listener_config(), listener_config(name="second"))
        root = makeService(config, reactor=reactor, store=object(), accounts=FakeAccounts(1), portal=None)
        root.startService()
        self.assertEqual([event["listener"] for event in self.log.named(logevents.LISTEN_FAILED)], ["test", "second"])
        event = self.log.named(logevents.LISTEN_FAILED)[0]
        self.assertEqual(event["address"], "127.0.0.1:0")
        self.assertTrue(event["reason"].startswith("address in use"), event["reason"])
        # Two failures, one stop: a second reactor.stop would raise ReactorNotRunning.
        self.assertEqual(len(reactor.whenRunningHooks), 1)
        self.assertEqual(root.exit_status, 1)
        reactor.run()  # the memory reactor runs its when-running hooks, then stops
        self.assertTrue(reactor.hasStopped)
        self.successResultOf(root.stopService())

    @defer.inlineCallbacks
    def test_implicit_tls_listener_completes_a_verified_handshake(self) -> Iterator[Deferred[Any]]:
        config = make_config(self.directory, listener_config(tls="implicit"))
        root = makeService(config, store=object(), accounts=FakeAccounts(1), portal=None)
        [(context, _)] = self.built
        self.assertIsNotNone(context.tls)
        root.startService()
        self.addCleanup(root.stopService)
        port = yield root.getServiceNamed("listener:test").whenListening()
        version, echoed = yield threads.deferToThread(echo_over_tls, port.getHost().port, config.tls.cert)
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(echoed, b"ping\r\n")
        yield self.factory.connection_closed()


def _echo_plain(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"hello\r\n")
        received = b""
        while len(received) < 7:
            chunk = connection.recv(100)
            if not chunk:
                break
            received += chunk
        return received


class ListenerServiceTests(unittest.TestCase):
    def test_cancelled_listen_is_not_reported_as_a_failure(self) -> None:
        failures: list[Failure] = []

        class NeverListens:
            def listen(self, factory: Any) -> Deferred[Any]:
                return Deferred()

        child = ListenerService(listener_config(), NeverListens(), Factory(), lambda listener, reason: failures.append(reason))  # type: ignore[arg-type]
        child.startService()
        self.successResultOf(child.stopService())
        self.assertEqual(failures, [])


# --- TLS material ---


class CertificateTests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        self.tls = TLSConfig(self.directory / "tls" / "cert.pem", self.directory / "tls" / "key.pem", True)

    def test_generated_certificate_names_the_host_and_loads(self) -> None:
        ensure_certificate(self.tls, HOSTNAME)
        certificate = x509.load_pem_x509_certificate(self.tls.cert.read_bytes())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn(HOSTNAME, names.get_values_for_type(x509.DNSName))
        self.assertIsNotNone(server_context_factory(self.tls).getContext())

    def test_generated_key_is_private_and_its_directory_too(self) -> None:
        ensure_certificate(self.tls, HOSTNAME)
        self.assertEqual(self.tls.key.stat().st_mode & 0o777, 0o600)
        self.assertEqual(self.tls.key.parent.stat().st_mode & 0o777, 0o700)

    def test_existing_files_are_left_alone(self) -> None:
        ensure_certificate(self.tls, HOSTNAME)
        before = (self.tls.cert.read_bytes(), self.tls.key.read_bytes())
        ensure_certificate(self.tls, "other.example.test")
        self.assertEqual((self.tls.cert.read_bytes(), self.tls.key.read_bytes()), before)

    def test_an_existing_key_is_reused_when_only_the_certificate_is_missing(self) -> None:
        ensure_certificate(self.tls, HOSTNAME)
        key = self.tls.key.read_bytes()
        self.tls.cert.unlink()
        ensure_certificate(self.tls, HOSTNAME)
        self.assertEqual(self.tls.key.read_bytes(), key)
        server_context_factory(self.tls).getContext()

    def test_missing_files_are_an_error_when_not_generating(self) -> None:
        tls = TLSConfig(self.tls.cert, self.tls.key, generate_self_signed=False)
        with self.assertRaises(CertificateError) as raised:
            ensure_certificate(tls, HOSTNAME)
        self.assertIn(str(tls.cert), str(raised.exception))
        self.assertFalse(tls.cert.exists())

    def test_a_key_that_does_not_match_the_certificate_is_refused(self) -> None:
        ensure_certificate(self.tls, HOSTNAME)
        other = TLSConfig(self.directory / "other" / "cert.pem", self.directory / "other" / "key.pem", True)
        ensure_certificate(other, HOSTNAME)
        with self.assertRaises(CertificateError):
            server_context_factory(TLSConfig(self.tls.cert, other.key, False))

    @defer.inlineCallbacks
    def test_intermediates_in_the_certificate_file_are_sent_to_clients(self) -> Iterator[Deferred[Any]]:
        root_file = _write_chain(self.directory, self.tls)
        factory = EchoFactory()
        from twisted.internet import reactor
        from twisted.protocols.tls import TLSMemoryBIOFactory

        port = reactor.listenTCP(
            0, TLSMemoryBIOFactory(server_context_factory(self.tls), False, factory), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        version, echoed = yield threads.deferToThread(echo_over_tls, port.getHost().port, root_file)
        self.assertEqual(echoed, b"ping\r\n")
        yield factory.connection_closed()


def _write_chain(directory: Path, tls: TLSConfig) -> Path:
    """A root, an intermediate and a leaf; the cert file holds leaf + intermediate. Returns the root's file."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(HOSTNAME)]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    root_key, middle_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = issue("Test Root", root_key, "Test Root", root_key, ca=True)
    middle = issue("Test Intermediate", middle_key, "Test Root", root_key, ca=True)
    leaf = issue(HOSTNAME, leaf_key, "Test Intermediate", middle_key, ca=False)
    tls.cert.parent.mkdir(parents=True, exist_ok=True)
    tls.cert.write_bytes(b"".join(each.public_bytes(serialization.Encoding.PEM) for each in (leaf, middle)))
    tls.key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    root_file = directory / "root.pem"
    root_file.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    return root_file


def test_twistds_log_file_is_rotated_at_its_size_and_only_the_configured_number_of_old_files_is_kept(tmp_path: Path) -> None:
    (tmp_path / "mailapp.toml").write_text(
        """
[server]
hostname = "mail.example.test"
state_dir = "state"
log_file_max_bytes = 2000
log_file_keep = 2
[domains]
local = ["example.test"]
[tls]
cert = "state/tls/cert.pem"
key = "state/tls/key.pem"
generate_self_signed = true
[listeners.smtp]
protocol = "smtp"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "none"
"""
    )
    log_file = tmp_path / "logs" / "mailapp.log"
    log_file.parent.mkdir()
    process = subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile=", f"--logfile={log_file}", "mailapp", "--config", "mailapp.toml"],
        cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None and time.monotonic() < deadline and process.poll() is None:
            text = "".join(path.read_text(errors="replace") for path in log_file.parent.iterdir())
            found = [line.rsplit("127.0.0.1:", 1)[1].split()[0] for line in text.splitlines() if "listening on 127.0.0.1:" in line]
            port = int(found[0].rstrip(".,)")) if found else None
            time.sleep(0.1)
        assert port is not None, process.stdout.read() if process.stdout else ""
        # Each SMTP session logs a few lines: enough of them rotate the file many times over.
        for _ in range(60):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
                connection.recv(1024)
                connection.sendall(b"QUIT\r\n")
                connection.recv(1024)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    names = sorted(path.name for path in log_file.parent.iterdir())
    assert names == ["mailapp.log", "mailapp.log.1", "mailapp.log.2"], names
    assert all(path.stat().st_size <= 2000 + 1000 for path in log_file.parent.iterdir())
    assert "mailapp stopped" in log_file.read_text()
