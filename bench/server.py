"""
Start a real mailapp (``twistd -n mailapp``) on loopback with a fresh state
directory and a generated config, for a benchmark run, and stop it after.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CONFIG = """
[server]
hostname = "{hostname}"
state_dir = "{state_dir}"
workers = {workers}

[domains]
local = ["{domain}"]

[tls]
cert = "{state_dir}/tls/cert.pem"
key = "{state_dir}/tls/key.pem"
generate_self_signed = true

[security]
# Bursts of logins from one address (idle, login-burst, submission) are the workload, not an attack.
ban_exempt_networks = ["127.0.0.0/8"]
{listeners}
[limits]
max_message_size = 26214400
max_recipients = 100
max_connections = {max_connections}
max_connections_per_ip = {max_connections}
# A benchmark measures throughput, not the defences: every client is 127.0.0.1.
mx_messages_per_minute = 0
mx_bytes_per_minute = 0
{extra}
"""

#: ``[server] workers`` of every server the bench starts (``make bench --workers N``).
WORKERS = 1

#: Listeners of the default server: name -> (protocol, tls mode).
DEFAULT_LISTENERS = {"smtp": ("smtp", "none"), "pop3": ("pop3", "none")}

#: Twisted's default listen(2) backlog is 50; a few thousand clients connecting
#: at once would see SYNs dropped and retried a second later.
BACKLOG = 1024


def _listener(name: str, protocol: str, tls: str) -> str:
    text = f'\n[listeners.{name}]\nprotocol = "{protocol}"\nendpoint = "tcp:0:interface=127.0.0.1:backlog={BACKLOG}"\ntls = "{tls}"\n'
    if protocol in ("pop3", "imap", "submission"):
        text += "allow_plaintext_auth = true\nmax_unauthenticated = {max_connections}\n"
    if protocol in ("smtp", "pop3", "imap", "submission"):
        # The whole ceiling for each listener (the defaults keep shares for the others).
        text += "max_connections = {max_connections}\n"
    return text


_production_hash: str | None = None


def production_password_hash(password: str = "bench-password") -> str:
    """One argon2id hash with the server's own parameters, made once per harness process."""
    global _production_hash
    if _production_hash is None:
        from mailapp.accounts import default_password_hasher

        _production_hash = default_password_hasher().hash(password)
    return _production_hash


def child_pids(pid: int) -> list[int]:
    """Process C{pid}'s live child processes (its worker processes, its signing process), from /proc."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _raise_nofile() -> None:
    """In the server's child process, before exec: the soft open-files limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536), hard))


_LISTENING = re.compile(r"listener (\w+) \(\w+, tls=\w+\) listening on 127\.0\.0\.1:(\d+)")


@dataclass
class Server:
    """One running server: its process, ports and state directory."""

    process: subprocess.Popen[bytes]
    state_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    log_path: Path | None = None
    #: Wall-clock times (Unix seconds): the process was started; every listener was up.
    started_at: float = 0.0
    listening_at: float = 0.0

    def maildir_new(self, account: str) -> Path:
        local, domain = account.split("@")
        return self.state_dir / "mail" / domain / local / "new"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far, its worker processes' included."""
        total = _process_cpu_seconds(self.process.pid)
        for pid in self.worker_pids():
            try:
                total += _process_cpu_seconds(pid)
            except OSError:
                pass
        return total

    def _children(self) -> list[int]:
        """The server process's live child processes."""
        return child_pids(self.process.pid)

    def worker_pids(self) -> list[int]:
        """The live worker processes (``[server] workers`` > 1); [] for one process."""
        found = []
        for child in self._children():
            try:
                if b"mailapp.workers.child" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
            except OSError:
                pass
        return found

    def wait_quiet(self, quiet_for: float = 3.0, timeout: float = 90.0, interval: float = 0.5, busy: float = 0.02) -> float:
        """
        Wait until the server has used less than C{busy} CPU seconds in
        every C{interval} for C{quiet_for} seconds on end (its background
        work after a fill is done: the full-text indexer waits for a second
        without deliveries, then passes over the new mail), at most
        C{timeout} seconds. Returns the seconds waited.
        """
        started = time.monotonic()
        quiet_since = started
        before = self.cpu_seconds()
        while time.monotonic() - started < timeout:
            time.sleep(interval)
            now = self.cpu_seconds()
            if now - before >= busy:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_for:
                break
            before = now
        return time.monotonic() - started

    def children_cpu_seconds(self) -> float:
        """
        CPU time so far of the server's live child processes (the DKIM
        signing process) other than its workers (which L{cpu_seconds}
        counts): work the server hands off, which its own figure does not
        count.
        """
        workers = set(self.worker_pids())
        total = 0.0
        for child in self._children():
            if child in workers:
                continue
            try:
                total += _process_cpu_seconds(child)
            except OSError:
                pass
        return total

    def _status(self, key: str) -> int:
        """C{key} of /proc/PID/status in bytes, summed over the server process and its workers."""
        total = 0
        for pid in [self.process.pid, *self.worker_pids()]:
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            total += next((int(line.split()[1]) * 1024 for line in lines if line.startswith(key + ":")), 0)
        return total

    def peak_rss_bytes(self) -> int:
        return self._status("VmHWM")

    def rss_bytes(self) -> int:
        return self._status("VmRSS")

    def open_files_limit(self) -> int:
        """The server process's soft RLIMIT_NOFILE."""
        for line in Path(f"/proc/{self.process.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start(
    users: list[str],
    workdir: Path,
    timeout: float = 30.0,
    *,
    domain: str = "example.test",
    hostname: str = "bench.example.test",
    listeners: dict[str, tuple[str, str]] | None = None,
    max_connections: int = 2000,
    extra: str = "",
    production_hash_users: list[str] | tuple[str, ...] = (),
    prepare: Callable[[Path], None] | None = None,
    workers: int | None = None,
) -> Server:
    """
    Create the state directory and users, start the server, wait until every
    listener listens. Users get a cheap argon2id hash (which the server
    upgrades, at full cost, on the first login) except C{production_hash_users},
    who get one with the server's own parameters, as real accounts have.
    C{prepare(state_dir)} runs after the users exist and before the server starts.
    C{workers}: its ``[server] workers`` (default L{WORKERS}); with more
    than one, it is ready once every worker has started too.
    """
    from mailapp.accounts import AccountsDatabase
    from mailapp.store import ensure_mailbox
    from mailapp.testing import cheap_password_hasher

    listeners = DEFAULT_LISTENERS if listeners is None else listeners
    state_dir = Path(tempfile.mkdtemp(prefix="state-", dir=workdir))
    config_path = state_dir / "mailapp.toml"
    config_path.write_text(
        CONFIG.format(
            state_dir=state_dir, domain=domain, hostname=hostname, max_connections=max_connections, extra=extra,
            workers=WORKERS if workers is None else workers,
            listeners="".join(_listener(name, protocol, tls) for name, (protocol, tls) in listeners.items()).format(
                max_connections=max_connections
            ),
        )
    )
    with AccountsDatabase(state_dir / "accounts.sqlite3", [domain], hasher=cheap_password_hasher()) as db:
        for user in users:
            canonical = db.add_user(user, "bench-password")
            if user in production_hash_users:
                db.update_hash(canonical, production_password_hash())
            ensure_mailbox(state_dir, user)
    if prepare is not None:
        prepare(state_dir)
    count = WORKERS if workers is None else workers
    log_path = state_dir / "server.log"
    twistd = Path(sys.executable).parent / "twistd"
    started_at = time.time()
    process = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", "--logfile", str(log_path), "mailapp", "--config", str(config_path)],
        cwd=state_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        preexec_fn=_raise_nofile,  # noqa: PLW1509 - the harness starts no threads
    )
    server = Server(process, state_dir, log_path=log_path, started_at=started_at)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited early; see {log_path}")
        text = log_path.read_text() if log_path.exists() else ""
        server.ports = {name: int(port) for name, port in _LISTENING.findall(text)}
        # The parent says "mailapp starting" once, and each worker once.
        started = text.count("] mailapp starting as") - 1
        if all(name in server.ports for name in listeners) and (count <= 1 or started >= count):
            server.listening_at = time.time()
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"the server did not listen within {timeout} s; see {log_path}")


def remove(server: Server) -> None:
    """Delete a run's state directory (only after the measured run: mass unlinks skew the next one)."""
    shutil.rmtree(server.state_dir, ignore_errors=True)


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process C{pid} so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
