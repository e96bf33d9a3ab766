"""
Servers a rig host runs: a real mailapp (``twistd -n mailapp``, the way an
operator starts it) and a scripted SMTP peer (``smtp_peer.py``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.rig.network import PYTHON, Host, RigProcess

__all__ = ["MailServer", "ScriptedSMTPPeer"]

BIN = Path(PYTHON).parent
_PEER_SCRIPT = Path(__file__).with_name("smtp_peer.py")


def _endpoint(port: int, address: str) -> str:
    """A Twisted endpoint string (colons in an IPv6 address escaped), as a TOML literal string."""
    return "'tcp:%d:interface=%s'" % (port, address.replace(":", "\\:"))


class MailServer:
    """
    mailapp for C{domain} on C{host}: the MX on port 25 (IPv4 and IPv6, both
    STARTTLS), submission on 587 (STARTTLS, AUTH only after it) and IMAPS on
    993, at the host's own addresses; a self-signed certificate. The relay
    has no ``transports`` and no ``nameservers``: remote mail goes by MX
    through the system resolver, which is the rig's name server.

    @param relay: more ``[relay]`` keys (TOML lines); C{retry_schedule} is
        C{[2]} unless given.
    @param extra: more TOML tables.
    """

    def __init__(self, host: Host, domain: str, relay: str = "", extra: str = "") -> None:
        self.host = host
        self.domain = domain
        self.directory = host.directory / f"mailapp-{domain}"
        self.state_dir = self.directory / "state"
        self.config_path = self.directory / "mailapp.toml"
        self.process: RigProcess | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        if "retry_schedule" not in relay:
            relay = "retry_schedule = [2]\n" + relay
        state = json.dumps(str(self.state_dir))
        self.config_path.write_text(
            f"""
[server]
hostname = {json.dumps(host.hostname)}
state_dir = {state}

[domains]
local = [{json.dumps(domain)}]

[tls]
cert = {json.dumps(str(self.state_dir / "tls" / "cert.pem"))}
key = {json.dumps(str(self.state_dir / "tls" / "key.pem"))}
generate_self_signed = true

[listeners.smtp]
protocol = "smtp"
endpoint = {_endpoint(25, host.ipv4)}
tls = "starttls"

[listeners.smtp6]
protocol = "smtp"
endpoint = {_endpoint(25, host.ipv6)}
tls = "starttls"

[listeners.submission]
protocol = "submission"
endpoint = {_endpoint(587, host.ipv4)}
tls = "starttls"

[listeners.imaps]
protocol = "imap"
endpoint = {_endpoint(993, host.ipv4)}
tls = "implicit"

[relay]
{relay}
{extra}
""",
            encoding="utf-8",
        )

    @property
    def ports(self) -> list[tuple[str, int]]:
        return [(self.host.ipv4, 25), (self.host.ipv6, 25), (self.host.ipv4, 587), (self.host.ipv4, 993)]

    def mailapp(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The admin command (``mailapp --config ... ARGS``) for this server."""
        done = subprocess.run(
            [str(BIN / "mailapp"), "--config", str(self.config_path), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.directory,
            env=self.host.environment(),
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"mailapp {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done

    def add_user(self, address: str, password: str) -> None:
        self.mailapp("user", "add", address, input=password + "\n")

    def start(self, timeout: float = 20.0) -> None:
        """Start ``twistd -n mailapp`` in the host; return once every port accepts."""
        self.process = self.host.popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "mailapp", "--config", str(self.config_path)],
            f"mailapp-{self.domain}.log",
            cwd=self.directory,
        )
        self.host.wait_for_ports(self.ports, timeout=timeout, process=self.process)

    def stop(self) -> int:
        """SIGTERM (SIGKILL after 10 s); the exit status."""
        assert self.process is not None
        return self.process.stop()

    def log(self, tail: int = 6000) -> str:
        return self.process.log(tail) if self.process is not None else ""

    def queue(self) -> list[dict[str, Any]]:
        """``mailapp queue list --json``: the relay queue's entries."""
        return json.loads(self.mailapp("queue", "list", "--json").stdout)  # type: ignore[no-any-return]


class ScriptedSMTPPeer:
    """
    A plain SMTP server on port 25 of C{host} (IPv4 and IPv6) whose n-th
    transaction's end of data gets C{data_replies[n]} (the last repeats), and
    which records every transaction (see ``smtp_peer.py``).
    """

    def __init__(self, host: Host, data_replies: list[str]) -> None:
        self.host = host
        self.record = host.directory / "smtp-peer.jsonl"
        self.record.touch()
        self.script = host.directory / "smtp-peer.json"
        self.script.write_text(
            json.dumps(
                {
                    "addresses": [host.ipv4, host.ipv6],
                    "port": 25,
                    "hostname": host.hostname,
                    "record": str(self.record),
                    "data_replies": data_replies,
                }
            ),
            encoding="utf-8",
        )
        self.process: RigProcess | None = None

    def start(self) -> None:
        self.process = self.host.popen([PYTHON, str(_PEER_SCRIPT), str(self.script)], "smtp-peer.log", stdout_pipe=True)
        self.process.wait_line("ready")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def transactions(self) -> list[dict[str, Any]]:
        """Every transaction so far, in order: n, client, helo, mail_from, rcpt_to, data, reply."""
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def accepted(self) -> list[dict[str, Any]]:
        return [t for t in self.transactions() if t["reply"].startswith("2")]
