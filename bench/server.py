"""
Start a real mailapp (``twistd -n mailapp``) on loopback with a fresh state
directory and a generated config, for a benchmark run, and stop it after.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CONFIG = """
[server]
hostname = "bench.example.test"
state_dir = "{state_dir}"

[domains]
local = ["example.test"]

[tls]
cert = "{state_dir}/tls/cert.pem"
key = "{state_dir}/tls/key.pem"
generate_self_signed = true

[listeners.smtp]
protocol = "smtp"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "none"

[listeners.pop3]
protocol = "pop3"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "none"
allow_plaintext_auth = true

[limits]
max_message_size = 26214400
max_recipients = 100
max_connections = 2000
max_connections_per_ip = 2000
"""

_LISTENING = re.compile(r"listener (\w+) \(\w+, tls=\w+\) listening on 127\.0\.0\.1:(\d+)")


@dataclass
class Server:
    """One running server: its process, ports and state directory."""

    process: subprocess.Popen[bytes]
    state_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    log_path: Path | None = None

    def maildir_new(self, account: str) -> Path:
        local, domain = account.split("@")
        return self.state_dir / "mail" / domain / local / "new"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start(users: list[str], workdir: Path, timeout: float = 30.0) -> Server:
    """Create the state directory and users, start the server, wait until it listens."""
    from mailapp.accounts import AccountsDatabase
    from mailapp.store import ensure_mailbox
    from mailapp.testing import cheap_password_hasher

    state_dir = Path(tempfile.mkdtemp(prefix="state-", dir=workdir))
    config_path = state_dir / "mailapp.toml"
    config_path.write_text(CONFIG.format(state_dir=state_dir))
    with AccountsDatabase(state_dir / "accounts.sqlite3", ["example.test"], hasher=cheap_password_hasher()) as db:
        for user in users:
            db.add_user(user, "bench-password")
            ensure_mailbox(state_dir, user)
    log_path = state_dir / "server.log"
    twistd = Path(sys.executable).parent / "twistd"
    process = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", "--logfile", str(log_path), "mailapp", "--config", str(config_path)],
        cwd=state_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    server = Server(process, state_dir, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited early; see {log_path}")
        text = log_path.read_text() if log_path.exists() else ""
        server.ports = {name: int(port) for name, port in _LISTENING.findall(text)}
        if "smtp" in server.ports:
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"the server did not listen within {timeout} s; see {log_path}")


def remove(server: Server) -> None:
    """Delete a run's state directory (only after the measured run: mass unlinks skew the next one)."""
    shutil.rmtree(server.state_dir, ignore_errors=True)
