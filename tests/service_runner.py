"""
Run the real mailapp service in a subprocess, for end-to-end tests over real
sockets (smtplib, poplib, imaplib block, so the server cannot share their
thread).

:class:`ServiceProcess` writes a config (the caller's listeners, every one on
``tcp:0:interface=127.0.0.1``), starts :func:`mailapp.service.makeService` the
way twistd does, and reads back the port each listener bound, printed by the
child as one JSON line. A subprocess also lets a test kill the server
(SIGKILL) or stop it (SIGTERM) as an operator or the kernel would.

:func:`run_with_store` runs a coroutine against the store API in another
process, for what a test must check or change through the store rather than
through a protocol (for example a deletion another client would make).

Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bench.server import child_pids
from mailapp.accounts import AccountsDatabase
from mailapp.config import Config, parse
from mailapp.store.names import mailbox_directory
from mailapp.testing import cheap_password_hasher

__all__ = ["HOSTNAME", "TIMEOUT", "ServiceProcess", "add_users", "listener", "run_with_store", "unverified_tls"]

HOSTNAME = "mail.example.test"
TIMEOUT = 10.0
#: Seconds a start may take to report its ports. With workers (the default
#: on more than one core) a start is three Python processes importing the
#: whole server; on a loaded 2-core CI machine a restart's workers took 7 s
#: and more. A start that never comes still fails, only later.
START_TIMEOUT = 30.0
REPOSITORY = Path(__file__).resolve().parent.parent

#: The server subprocess: the config file is argv[1]. Privileged start, start,
#: stop before the reactor shuts down (as twistd does); prints
#: {listener name: port} once every listener is bound and, with workers, every
#: worker serves, then runs until a signal.
_RUNNER = r"""
import json, sys
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from mailapp.config import parse
from mailapp.service import ListenerService, makeService

globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
path = Path(sys.argv[1])
service = makeService(parse(path.read_text(encoding="utf-8"), path))
service.privilegedStartService()
service.startService()
reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
listeners = [child for child in service if isinstance(child, ListenerService)]

def announce(ports):
    names = [listener.listener.name for listener in listeners]
    # A unix socket's listener has no port (None): its path is in the config.
    sys.stdout.write(json.dumps({name: getattr(port.getHost(), "port", None) for name, port in zip(names, ports)}) + "\n")
    sys.stdout.flush()

listening = defer.gatherResults([listener.whenListening() for listener in listeners])
if service.supervisor is not None:
    # Workers: the parent's listeners are bound at once, but only the workers answer on them.
    listening.addCallback(lambda ports: service.supervisor.whenReady.addCallback(lambda _: ports))
listening.addCallback(announce)
reactor.run()
"""


def listener(name: str, protocol: str, tls: str = "none", allow_plaintext_auth: bool = False) -> str:
    """One ``[listeners.NAME]`` table on an ephemeral loopback port."""
    return (
        f"\n[listeners.{name}]\nprotocol = {json.dumps(protocol)}\n"
        f'endpoint = "tcp:0:interface=127.0.0.1"\ntls = {json.dumps(tls)}\n'
        f"allow_plaintext_auth = {'true' if allow_plaintext_auth else 'false'}\n"
    )


#: The tests send from 127.0.0.1 at machine speed: the MX's per-address rate is off unless a test sets it.
_UNLIMITED_MX_RATE = "mx_messages_per_minute = 0\nmx_bytes_per_minute = 0\n"


def _unlimited_mx_rate(extra: str) -> str:
    if "mx_messages_per_minute" in extra or "mx_bytes_per_minute" in extra:
        return extra
    if "[limits]\n" in extra:
        return extra.replace("[limits]\n", "[limits]\n" + _UNLIMITED_MX_RATE, 1)
    return extra + "\n[limits]\n" + _UNLIMITED_MX_RATE


def _config_text(state_dir: Path, listeners: str, extra: str) -> str:
    def quoted(path: Path) -> str:
        return json.dumps(str(path))

    extra = _unlimited_mx_rate(extra)

    return f"""
[server]
hostname = "{HOSTNAME}"
state_dir = {quoted(state_dir)}

[domains]
local = ["example.test"]

[tls]
cert = {quoted(state_dir / "tls" / "cert.pem")}
key = {quoted(state_dir / "tls" / "key.pem")}
generate_self_signed = true
{listeners}
{extra}
"""


class ServiceProcess:
    """
    One mailapp server process over a state directory under C{root}.
    :meth:`start` may be called again after :meth:`kill` or :meth:`terminate`:
    the state persists.

    @param listeners: ``[listeners.*]`` tables, e.g. from :func:`listener`.
    @param extra: more TOML (``[limits]``, ``[relay]``).
    """

    def __init__(self, root: Path, listeners: str, extra: str = "") -> None:
        self.root = root
        self.state_dir = root / "state"
        self.config_path = root / "mailapp.toml"
        root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(_config_text(self.state_dir, listeners, extra), encoding="utf-8")
        self.config: Config = parse(self.config_path.read_text(encoding="utf-8"), self.config_path)
        self.log_path = root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    def add_users(self, passwords: Mapping[str, str], aliases: Mapping[str, Iterable[str]] | None = None) -> None:
        """Create users (and aliases); works before the server starts and while it runs."""
        add_users(self.state_dir, self.config.local_domains, passwords, aliases)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _RUNNER, str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=environment,
            )
        self.ports = json.loads(self._read_line(timeout))

    def _read_line(self, timeout: float) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        data = b""
        try:
            while not data.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise AssertionError(f"the server did not report its ports in time\n{self.log()}")
                chunk = os.read(self.process.stdout.fileno(), 4096)
                if not chunk:
                    raise AssertionError(f"the server exited before listening\n{self.log()}")
                data += chunk
        finally:
            selector.close()
        return data

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(TIMEOUT)
        self._close_pipe()

    def terminate(self, timeout: float = TIMEOUT) -> int:
        """SIGTERM, and SIGKILL if it has not exited after C{timeout} seconds; the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(TIMEOUT)
        self._close_pipe()
        return self.process.returncode

    def _close_pipe(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def port(self, name: str) -> int:
        return self.ports[name]

    def maildir(self, account: str) -> Path:
        return mailbox_directory(self.state_dir / "mail", account)

    def _pids(self) -> list[int]:
        """The server's processes: the parent and its children (the workers, the signing process)."""
        assert self.process is not None
        return [self.process.pid, *child_pids(self.process.pid)]

    def status(self, name: str) -> dict[str, int]:
        """
        A field of /proc/PID/status in kB (VmRSS, VmHWM), for memory checks
        on Linux, summed over the server's processes: with workers the one
        that served is a child, and the parent alone would measure nothing.
        A sum bounds each process's growth from above, so a bound on it still holds for each.
        """
        found: dict[str, int] = {}
        for pid in self._pids():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue  # it ended meanwhile
            for line in lines:
                key, _, value = line.partition(":")
                if key == name:
                    found[key] = found.get(key, 0) + int(value.split()[0])
        return found

    def reset_peak_memory(self) -> int:
        """Reset VmHWM to the current resident size (Linux 4.0+ ``clear_refs``) in every server process; returns their sum in kB."""
        for pid in self._pids():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                continue
        return self.status("VmHWM")["VmHWM"]


def add_users(
    state_dir: Path,
    local_domains: Iterable[str],
    passwords: Mapping[str, str],
    aliases: Mapping[str, Iterable[str]] | None = None,
) -> None:
    database = AccountsDatabase(state_dir / "accounts.sqlite3", tuple(local_domains), hasher=cheap_password_hasher())
    with database:
        for address, password in passwords.items():
            database.add_user(address, password)
        for source, targets in (aliases or {}).items():
            database.add_alias(source, list(targets))


def unverified_tls() -> ssl.SSLContext:
    """The dev certificate is self-signed: encrypt, but do not check who we talk to."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_STORE_RUNNER = r"""
import json, sys
from pathlib import Path

from twisted.internet import defer, task

from mailapp.store import MaildirStore

namespace = {}
exec(sys.argv[2], namespace)


def main(reactor):
    store = MaildirStore(Path(sys.argv[1]), reactor=reactor)

    async def run():
        result = await namespace["run"](store, json.loads(sys.argv[3]))
        sys.stdout.write(json.dumps(result))

    return defer.Deferred.fromCoroutine(run())


task.react(main)
"""


def run_with_store(state_dir: Path, code: str, argument: Any = None, timeout: float = 60.0) -> Any:
    """
    Run C{code}, which defines ``async def run(store, argument)``, in a new
    process over the store in C{state_dir} (a L{mailapp.store.MaildirStore},
    used through its Deferred API with ``await``); return what ``run``
    returns, through JSON.
    """
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    finished = subprocess.run(
        [sys.executable, "-c", _STORE_RUNNER, str(state_dir / "mail"), textwrap.dedent(code), json.dumps(argument)],
        capture_output=True,
        timeout=timeout,
        env=environment,
        check=False,
    )
    if finished.returncode != 0:
        raise AssertionError(f"store script failed ({finished.returncode}):\n{finished.stderr.decode(errors='replace')}")
    return json.loads(finished.stdout)
