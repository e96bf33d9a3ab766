"""
A real rspamd for the tests and the bench: ``rspamd -f`` on loopback ports
with a minimal local config in a directory of its own, and a redis-server
(on a loopback port, no persistence) for its Bayes classifier, started by
L{RspamdProcess.start} and stopped by L{RspamdProcess.stop}.

The config includes Debian's ``/etc/rspamd/rspamd.conf`` as it is and
overrides, through its own ``LOCAL_CONFDIR``, only what a test needs: the
workers' bind sockets (the proxy worker off), the pid file, the database
directory, the redis server, console logging, the controller's password
(``secure_ip`` moved off loopback, so that the password is what lets us
in), no DNS leaving the machine (a name server that refuses at once), no
greylisting module, and rspamd's test patterns (GTUBE's variants: ``YJS``
for add header, ``ZJS`` for rewrite subject; never in production). The
compiled hyperscan database is kept between runs under
``~/.cache/mailapp-tests/rspamd-hs`` (20 s to build, 1 s to load).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests import needs

__all__ = ["GTUBE", "RspamdProcess"]

#: The GTUBE test string: rspamd's action for it is reject. Its first letter X -> Y is
#: add header, -> Z rewrite subject (test patterns on).
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

PASSWORD = "controller-secret"
_STARTUP_SECONDS = 90.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RspamdProcess:
    """rspamd and its redis under C{root}; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.rspamd = needs.command("rspamd")
        self.redis = needs.command("redis-server")
        self.root = root
        self.normal_port = _free_port()
        self.controller_port = _free_port()
        self.redis_port = _free_port()
        self._rspamd: subprocess.Popen[bytes] | None = None
        self._redis: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.normal_port}"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    def _write_config(self) -> None:
        root = self.root
        for name in ("local.d", "override.d", "db", "run", "log"):
            (root / name).mkdir(parents=True, exist_ok=True)
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mailapp-tests" / "rspamd-hs"
        cache.mkdir(parents=True, exist_ok=True)
        files = {
            "rspamd.conf": '.include "/etc/rspamd/rspamd.conf"\n',
            "override.d/worker-normal.inc": f'bind_socket = "127.0.0.1:{self.normal_port}";\ncount = 1;\n',
            "override.d/worker-controller.inc": (
                f'bind_socket = "127.0.0.1:{self.controller_port}";\npassword = "{PASSWORD}";\n'
                f'enable_password = "{PASSWORD}";\nsecure_ip = "192.0.2.255";\n'
            ),
            "override.d/worker-proxy.inc": f'bind_socket = "127.0.0.1:{_free_port()}";\ncount = 0;\n',
            "override.d/logging.inc": 'type = "console";\nlevel = "notice";\n',
            "override.d/options.inc": (
                f'pidfile = "{root}/run/rspamd.pid";\nenable_test_patterns = true;\n'
                f'hs_cache_dir = "{cache}";\n'
                'dns { nameserver = ["127.0.0.1:1"]; timeout = 0.2s; retransmits = 1; }\n'
            ),
            "local.d/redis.conf": f'servers = "127.0.0.1:{self.redis_port}";\n',
            "local.d/greylist.conf": "enabled = false;\n",
        }
        for name, text in files.items():
            (root / name).write_text(text, encoding="utf-8")

    def start(self) -> None:
        """Start redis and rspamd and wait (bounded) until both workers answer /ping."""
        if self._redis is None:
            with open(self.root / "redis.log", "ab") as log:
                self._redis = subprocess.Popen(
                    [self.redis, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                )
        root = self.root
        command = [self.rspamd, "-f", "-c", str(root / "rspamd.conf")]
        if os.geteuid() == 0:
            command.append("-i")  # as root, the workers stay root: a test's loopback-only rspamd
        for name, value in (("LOCAL_CONFDIR", root), ("DBDIR", root / "db"), ("RUNDIR", root / "run"), ("LOGDIR", root / "log")):
            command += ["--var", f"{name}={value}"]
        with open(root / "rspamd.log", "ab") as log:
            self._rspamd = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + _STARTUP_SECONDS
        for port in (self.normal_port, self.controller_port):
            while not self._pong(port):
                if self._rspamd.poll() is not None:
                    raise AssertionError(f"rspamd exited with {self._rspamd.returncode}\n{self.log()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"rspamd did not answer /ping in {_STARTUP_SECONDS} s\n{self.log()}")
                time.sleep(0.2)

    def _pong(self, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as answer:
                return bool(answer.read().strip() == b"pong")
        except (OSError, urllib.error.URLError):
            return False

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of rspamd's main process and its workers so far (Linux /proc), for the bench."""
        if self._rspamd is None:
            return 0.0
        main = self._rspamd.pid
        total = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # After the command: state, ppid, ..., utime (14th field of the line) and stime (15th).
            if int(entry.name) == main or int(fields[1]) == main:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stat(self) -> dict[str, Any]:
        """The controller's /stat (learned counts among them)."""
        request = urllib.request.Request(self.controller_url + "/stat", headers={"Password": PASSWORD})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    def stop_rspamd(self) -> None:
        """Stop rspamd only (redis keeps what it learned): SIGTERM, SIGKILL after 10 s."""
        process, self._rspamd = self._rspamd, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def stop(self) -> None:
        """Stop both."""
        self.stop_rspamd()
        process, self._redis = self._redis, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(10)

    def log(self) -> str:
        path = self.root / "rspamd.log"
        return path.read_text(encoding="utf-8", errors="replace")[-4000:] if path.exists() else ""
