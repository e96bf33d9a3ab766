"""
"A small internet" of Linux network namespaces.

One L{Internet} is a bridge in a namespace of its own (nothing is added to
the host's root namespace: no interface, no address, no route) and hosts,
each a namespace with one veth into that bridge, an IPv4 address in
192.0.2.0/24 and an IPv6 address in 2001:db8::/64 (both documentation
ranges, which exist only inside the namespaces; IPv6 without duplicate
address detection, so usable at once). Every host's
``/etc/netns/<namespace>/resolv.conf`` names the rig's DNS host, and
``ip netns exec`` bind-mounts it over ``/etc/resolv.conf``: a process started
with L{Host.popen} or L{Host.run} uses the system resolver path against the
rig's name server. There is no default route: nothing leaves the rig.

Names are ``mailrig-<pid>-<n>-<label>``: unique per run and per internet, so
parallel and failed runs never collide. Tear-down kills every process inside
the namespaces, deletes them (their veths go with them) and their
``/etc/netns`` directories; it runs from the fixture's finalizer, from
C{atexit}, and, for a run that was killed, from L{sweep_stale} at the start
of the next run (namespaces whose pid is no longer alive).
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Host", "Internet", "RigProcess", "RigUnavailable", "PREFIX", "sweep_stale", "rig_namespaces"]

PREFIX = "mailrig"
NETNS_ETC = Path("/etc/netns")
IPV4_NET = ipaddress.IPv4Network("192.0.2.0/24")
IPV6_NET = ipaddress.IPv6Network("2001:db8::/64")
REPOSITORY = Path(__file__).resolve().parent.parent.parent
PYTHON = sys.executable
TIMEOUT = 15.0

_NAME = re.compile(rf"^{PREFIX}-(\d+)-")
_counter = 0
_open: list["Internet"] = []
#: Every namespace and /etc/netns directory L{sweep_stale} removed in this process.
swept: list[str] = []


def _ipv6(index: int) -> str:
    """2001:db8::N for 192.0.2.N, so that a host's two addresses read alike."""
    return str(ipaddress.IPv6Address(f"2001:db8::{index}"))


class RigUnavailable(Exception):
    """The rig cannot be built here (not root, no iproute2, no namespaces)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except FileNotFoundError as error:
        raise RigUnavailable("iproute2's ip command is not installed") from error
    if check and done.returncode != 0:
        raise RigUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def rig_namespaces() -> list[str]:
    """Every namespace named like the rig's, of any run."""
    done = _ip("netns", "list", check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [name for name in names if _NAME.match(name)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_start(pid: int) -> float | None:
    """When C{pid} started (seconds since the epoch), from /proc; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")


def _owner_is_gone(pid: int, made: Path) -> bool:
    """Whether the run that made C{made} (with pid C{pid} in its name) has ended, pid reuse included."""
    if pid == os.getpid():
        return False
    if not _alive(pid):
        return True
    started = _process_start(pid)
    try:
        return started is not None and started > made.stat().st_mtime + 1
    except FileNotFoundError:
        return False


def _kill_namespace_processes(namespace: str, timeout: float = 5.0) -> None:
    """SIGKILL whatever still runs inside C{namespace}, and wait until it is gone."""
    deadline = time.monotonic() + timeout
    while True:
        done = _ip("netns", "pids", namespace, check=False)
        pids = [int(p) for p in done.stdout.split() if p.isdigit() and int(p) != os.getpid()]
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _delete_namespace(namespace: str) -> None:
    _kill_namespace_processes(namespace)
    _ip("netns", "del", namespace, check=False)
    shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)


def sweep_stale() -> list[str]:
    """Delete the rig's namespaces left by runs that died (their pid is gone); the names swept."""
    found = []
    for namespace in rig_namespaces():
        match = _NAME.match(namespace)
        assert match is not None
        if _owner_is_gone(int(match.group(1)), Path("/run/netns") / namespace):
            _delete_namespace(namespace)
            found.append(namespace)
    if NETNS_ETC.is_dir():
        for directory in NETNS_ETC.iterdir():
            match = _NAME.match(directory.name)
            if match and _owner_is_gone(int(match.group(1)), directory):
                shutil.rmtree(directory, ignore_errors=True)
                found.append(f"/etc/netns/{directory.name}")
    swept.extend(found)
    return found


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when pytest dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class RigProcess:
    """
    A process inside a host, its stdout and stderr in C{log_path}. C{ready}
    (a line the process prints on stdout when it is ready) is waited for by
    L{wait_ready}; stop with L{stop} (SIGTERM, then SIGKILL after a timeout).
    """

    def __init__(self, host: "Host", argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None, stdout_pipe: bool = False) -> None:
        self.host = host
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                host.command(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log,
                env=dict(env) if env is not None else host.environment(),
                cwd=cwd,
                preexec_fn=_die_with_parent,
            )
        host.processes.append(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self, tail: int = 6000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-tail:]

    def wait_line(self, expected: str, timeout: float = TIMEOUT) -> None:
        """Wait for C{expected} on the process's stdout (a pipe); fail with its log."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        selector = selectors.DefaultSelector()
        selector.register(stdout, selectors.EVENT_READ)
        data = b""
        try:
            while expected.encode() not in data:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise AssertionError(f"{self.argv[0]} in {self.host.label} was not ready in {timeout} s\n{self.log()}")
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    raise AssertionError(f"{self.argv[0]} in {self.host.label} exited ({self.process.wait()}) before it was ready\n{self.log()}")
                data += chunk
        finally:
            selector.close()

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, SIGKILL if still running after C{timeout} seconds; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self in self.host.processes:
            self.host.processes.remove(self)
        return self.process.returncode


class Host:
    """One machine on the rig's net: a namespace, an IPv4 and an IPv6 address, a name."""

    def __init__(self, internet: "Internet", label: str, index: int, hostname: str) -> None:
        self.internet = internet
        self.label = label
        self.index = index
        self.hostname = hostname
        self.namespace = f"{internet.prefix}-{label}"
        self.ipv4 = str(IPV4_NET[index])
        self.ipv6 = _ipv6(index)
        self.processes: list[RigProcess] = []
        self.directory = internet.root / label
        self.directory.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"<Host {self.label} {self.hostname} {self.ipv4} {self.ipv6}>"

    @property
    def addresses(self) -> tuple[str, str]:
        return self.ipv4, self.ipv6

    def command(self, argv: Sequence[str]) -> list[str]:
        """C{argv} as run inside this host."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def environment(self, **extra: str) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(REPOSITORY), **extra)

    def run(self, argv: Sequence[str], timeout: float = 60.0, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run C{argv} in this host to its end; its output as text."""
        done = subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout, env=self.environment(), input=input, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in {self.label} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def popen(self, argv: Sequence[str], log_name: str, **kwargs: Any) -> RigProcess:
        """Start C{argv} in this host; stdout and stderr go to C{log_name} in the host's directory."""
        return RigProcess(self, argv, self.directory / log_name, **kwargs)

    def python(self, code: str, argument: Any = None, timeout: float = 60.0) -> Any:
        """
        Run C{code} with this host's network and resolv.conf: it reads its
        argument as JSON from ``sys.argv[1]`` and prints its result as JSON.
        """
        done = self.run([PYTHON, "-c", code, json.dumps(argument)], timeout=timeout)
        return json.loads(done.stdout)

    def wait_for_ports(self, endpoints: Iterable[tuple[str, int]], timeout: float = TIMEOUT, process: RigProcess | None = None) -> None:
        """Wait until every (address, port) accepts a TCP connection, from inside this host."""
        endpoints = list(endpoints)
        done = subprocess.run(
            self.command([PYTHON, "-c", _WAIT_FOR_PORTS, json.dumps({"endpoints": endpoints, "timeout": timeout})]),
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            check=False,
        )
        if done.returncode != 0:
            log = process.log() if process is not None else ""
            raise AssertionError(f"ports {endpoints} in {self.label} did not accept in {timeout} s: {done.stderr.strip()}\n{log}")


_WAIT_FOR_PORTS = r"""
import json, socket, sys, time
arguments = json.loads(sys.argv[1])
deadline = time.monotonic() + arguments["timeout"]
for address, port in arguments["endpoints"]:
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            break
        except OSError as error:
            if time.monotonic() > deadline:
                sys.exit(f"{address}:{port}: {error}")
            time.sleep(0.05)
"""


class Internet:
    """
    The rig: a bridge namespace and hosts on it. Build with L{Internet.build};
    L{close} tears everything down (and is safe to call twice).

    @ivar dns: the DNS host (L{tests.rig.dns.DNSServer} on it is C{name_server}).
    """

    def __init__(self, root: Path) -> None:
        global _counter
        _counter += 1
        self.root = root
        self.prefix = f"{PREFIX}-{os.getpid()}-{_counter}"
        self.bridge_namespace = f"{self.prefix}-bridge"
        self.hosts: dict[str, Host] = {}
        self.namespaces: list[str] = []
        self._next_index = 10
        self.closed = False
        self.timings: dict[str, float] = {}

    @classmethod
    def build(cls, root: Path) -> "Internet":
        """Sweep stale runs, make the bridge and the DNS host (not yet serving), or raise L{RigUnavailable}."""
        started = time.monotonic()
        if os.geteuid() != 0:
            raise RigUnavailable("not running as root")
        if shutil.which("ip") is None:
            raise RigUnavailable("iproute2's ip command is not installed")
        sweep_stale()
        root.mkdir(parents=True, exist_ok=True)
        internet = cls(root)
        _open.append(internet)
        try:
            internet._add_namespace(internet.bridge_namespace)
            _ip("-n", internet.bridge_namespace, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
            _ip("-n", internet.bridge_namespace, "link", "set", "br0", "up")
            from tests.rig.dns import DNSServer

            internet.dns_host = internet.add_host("dns", hostname="ns.rig.test", index=2)
            internet.dns = DNSServer(internet.dns_host)
        except BaseException:
            internet.close()
            raise
        internet.timings["build"] = time.monotonic() - started
        return internet

    def _add_namespace(self, namespace: str) -> None:
        self.namespaces.append(namespace)
        _ip("netns", "add", namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")

    def add_host(self, label: str, hostname: str | None = None, index: int | None = None) -> Host:
        """A new host on the net, named C{hostname} in its /etc/hosts (default C{label}.rig.test)."""
        if label in self.hosts:
            raise ValueError(f"host {label} exists")
        started = time.monotonic()
        if index is None:
            index, self._next_index = self._next_index, self._next_index + 1
        host = Host(self, label, index, hostname or f"{label}.rig.test")
        etc = NETNS_ETC / host.namespace
        etc.mkdir(parents=True, exist_ok=True)
        name_server = str(IPV4_NET[2])
        (etc / "resolv.conf").write_text(f"# the mailapp test rig\nnameserver {name_server}\n", encoding="ascii")
        (etc / "hosts").write_text(
            f"127.0.0.1 localhost\n::1 localhost\n{host.ipv4} {host.hostname}\n{host.ipv6} {host.hostname}\n", encoding="ascii"
        )
        self._add_namespace(host.namespace)
        self.hosts[label] = host
        port = f"h{index}"
        bridge = self.bridge_namespace
        _ip("-n", bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
        _ip("-n", bridge, "link", "set", port, "master", "br0", "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.ipv4}/{IPV4_NET.prefixlen}", "dev", "eth0")
        _ip("-n", host.namespace, "addr", "add", f"{host.ipv6}/{IPV6_NET.prefixlen}", "dev", "eth0", "nodad")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        self.timings["hosts"] = self.timings.get("hosts", 0.0) + time.monotonic() - started
        self.timings["host_count"] = len(self.hosts)
        return host

    def unused_address(self) -> tuple[str, str]:
        """An IPv4 and an IPv6 address on the rig's net that no host has (a host that is down)."""
        index, self._next_index = self._next_index, self._next_index + 1
        return str(IPV4_NET[index]), _ipv6(index)

    def log_report(self, tail: int = 4000) -> str:
        """The end of every log the rig's processes wrote (for a failed test's output)."""
        parts = []
        for path in sorted(self.root.rglob("*.log")):
            text = path.read_text(encoding="utf-8", errors="replace")[-tail:]
            parts.append(f"----- {path} (last {tail} characters) -----\n{text}\n")
        return "".join(parts)

    def close(self) -> None:
        """Stop every process, delete every namespace and /etc/netns directory. Idempotent."""
        if self.closed:
            return
        started = time.monotonic()
        self.closed = True
        for host in list(self.hosts.values()):
            for process in list(host.processes):
                try:
                    process.stop(timeout=5)
                except Exception:
                    pass
        for namespace in reversed(self.namespaces):
            _delete_namespace(namespace)
        if self in _open:
            _open.remove(self)
        self.timings["close"] = time.monotonic() - started


def _close_all() -> None:
    for internet in list(_open):
        internet.close()


atexit.register(_close_all)


def check_addresses_are_the_rigs(addresses: Iterable[str]) -> None:
    """Guard for helpers: traffic goes only to rig addresses (or loopback)."""
    for text in addresses:
        address = ipaddress.ip_address(text)
        if not (address.is_loopback or address in IPV4_NET or address in IPV6_NET):
            raise ValueError(f"{text} is not an address of the rig")

