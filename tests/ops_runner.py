"""
Run mailapp the production way for the operations tests: ``twist
--log-format=json mailapp --config FILE`` in a subprocess, every listener on
127.0.0.1 port 0, and read its ports (and everything else) back from the
JSON log lines. Every wait is bounded.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parent.parent
TWIST = Path(sys.executable).parent / "twist"
TIMEOUT = 15.0


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MAILAPP_CONFIG", None)
    return env


def write_certificate(cert: Path, key: Path, name: str) -> x509.Certificate:
    """A self-signed certificate for ``name`` (and 127.0.0.1), written as PEM; returns it."""
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return certificate


def served_name(der: bytes | None) -> str:
    """The common name of a certificate the server sent (``getpeercert(binary_form=True)``)."""
    assert der is not None
    certificate = x509.load_der_x509_certificate(der)
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def client_context(
    minimum: ssl.TLSVersion | None = None, maximum: ssl.TLSVersion | None = None, legacy: bool = False
) -> ssl.SSLContext:
    """An unverified client context (the test certificates are self-signed), pinned to versions."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if legacy:
        # OpenSSL 3 refuses TLS 1.0/1.1 at its default security level: lower it
        # so that this client really offers TLS 1.1 and the server must refuse.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if minimum is not None:
        context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    return context


class TwistServer:
    """
    One ``twist mailapp`` process. ``config`` is the whole TOML text; the
    caller's listeners should use ``tcp:0:interface=127.0.0.1``.
    """

    def __init__(self, root: Path, config: str, arguments: tuple[str, ...] = ("--log-format=json",)) -> None:
        self.root = root
        self.config_path = root / "mailapp.toml"
        self.log_path = root / "server.log"
        self.error_path = root / "server.err"
        root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config, encoding="utf-8")
        self.arguments = arguments
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    def start(self, listeners: int) -> None:
        with open(self.log_path, "wb") as out, open(self.error_path, "wb") as err:
            self.process = subprocess.Popen(
                [str(TWIST), *self.arguments, "mailapp", "--config", str(self.config_path)],
                cwd=self.root,
                env=environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        events = self.wait_for(lambda events: len(_listening(events)) >= listeners, "every listener to listen")
        for event in _listening(events):
            self.ports[event["listener"]] = int(event["address"].rsplit(":", 1)[1])

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log event so far (twist separates records with RS, 0x1e)."""
        if not self.log_path.exists():
            return []
        found = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip("\x1e").strip()
            if line:
                found.append(json.loads(line))
        return found

    def wait_for(self, condition: Callable[[list[dict[str, Any]]], bool], what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            events = self.events()
            if condition(events):
                return events
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the server exited ({self.process.returncode}) waiting for {what}\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n{self.output()}")

    def wait_for_event(self, name: str, after: int = 0) -> dict[str, Any]:
        """The first event named ``name`` among those after the first ``after`` events."""
        events = self.wait_for(lambda events: any(e.get("log_event") == name for e in events[after:]), name)
        return next(e for e in events[after:] if e.get("log_event") == name)

    def wait_for_reload(self, after: int = 0) -> None:
        """
        The parent and every worker it started logged C{service.reloaded}
        after the first C{after} events: each process applies a SIGHUP
        itself, the workers just after the parent.
        """

        def everyone(events: list[dict[str, Any]]) -> bool:
            workers = {e.get("worker") for e in events if e.get("log_event") == "workers.started"}
            reloaded = {e.get("worker") for e in events[after:] if e.get("log_event") == "service.reloaded"}
            return None in reloaded and workers <= reloaded

        self.wait_for(everyone, "every process to reload")

    def output(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        error = self.error_path.read_text(errors="replace") if self.error_path.exists() else ""
        return f"--- stdout ---\n{text[-6000:]}\n--- stderr ---\n{error[-3000:]}"

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(TIMEOUT)
        return self.process.returncode

    def connect(self, name: str) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.ports[name]), timeout=TIMEOUT)


def _listening(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event.get("log_event") == "service.listening"]


def read_reply(sock: Any) -> bytes:
    """One whole SMTP reply (the lines up to the one with a space after the code)."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and any(len(line) >= 4 and line[3:4] == b" " for line in lines[:-1]):
            return data


def smtp_starttls(sock: socket.socket, context: ssl.SSLContext, server_hostname: str | None = None) -> ssl.SSLSocket:
    """Greeting, EHLO, STARTTLS, then the handshake (which may raise ssl.SSLError)."""
    assert read_reply(sock).startswith(b"220")
    sock.sendall(b"EHLO client.test\r\n")
    assert b"STARTTLS" in read_reply(sock)
    sock.sendall(b"STARTTLS\r\n")
    assert read_reply(sock).startswith(b"220")
    return context.wrap_socket(sock, server_hostname=server_hostname)
