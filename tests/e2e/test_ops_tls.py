"""
TLS on the listeners, end to end against ``twist mailapp``: TLS 1.2 is the
minimum on implicit-TLS and STARTTLS listeners alike, TLS 1.3 works, and SNI
picks the certificate. Loopback only, port 0, every wait bounded.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops_runner import (
    TwistServer,
    client_context,
    served_name,
    smtp_starttls,
    write_certificate,
)

pytestmark = [
    pytest.mark.timeout(120),
    # The point of these tests is that the deprecated version is refused.
    pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning"),
]

OTHER = "mail.other.test"


def _config(root: Path) -> str:
    return f"""
[server]
hostname = "mail.example.test"
state_dir = "{root / 'state'}"

[domains]
local = ["example.test"]

[tls]
cert = "{root / 'main.pem'}"
key = "{root / 'main.key'}"
sni = {{ "{OTHER}" = {{ cert = "{root / 'other.pem'}", key = "{root / 'other.key'}" }} }}

[listeners.smtp]
protocol = "smtp"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "starttls"

[listeners.submissions]
protocol = "submission"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "implicit"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwistServer]:
    root = tmp_path_factory.mktemp("ops-tls")
    write_certificate(root / "main.pem", root / "main.key", "mail.example.test")
    write_certificate(root / "other.pem", root / "other.key", OTHER)
    running = TwistServer(root, _config(root))
    running.start(listeners=2)
    yield running
    running.stop()


def _implicit(server: TwistServer, context: ssl.SSLContext, name: str | None = None) -> ssl.SSLSocket:
    return context.wrap_socket(server.connect("submissions"), server_hostname=name)


def _starttls(server: TwistServer, context: ssl.SSLContext, name: str | None = None) -> ssl.SSLSocket:
    return smtp_starttls(server.connect("smtp"), context, name)


_TLS11 = {"minimum": ssl.TLSVersion.TLSv1_1, "maximum": ssl.TLSVersion.TLSv1_1, "legacy": True}


def _client_offers_tls11(tmp_path: Path) -> bool:
    """A control: the same client completes a TLS 1.1 handshake with a server that allows it."""
    write_certificate(tmp_path / "c.pem", tmp_path / "c.key", "control.test")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    server_context.minimum_version = ssl.TLSVersion.TLSv1_1
    server_context.load_cert_chain(tmp_path / "c.pem", tmp_path / "c.key")
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    result: list[str | None] = []

    def serve() -> None:
        try:
            connection, _ = listener.accept()
            with server_context.wrap_socket(connection, server_side=True) as tls:
                result.append(tls.version())
        except (OSError, ssl.SSLError):
            result.append(None)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_context(**_TLS11).wrap_socket(raw) as tls,  # type: ignore[arg-type]
        ):
            return tls.version() == "TLSv1.1"
    except (OSError, ssl.SSLError):
        return False
    finally:
        thread.join(10)
        listener.close()


@pytest.fixture(scope="module")
def tls11_available(tmp_path_factory: pytest.TempPathFactory) -> None:
    if not _client_offers_tls11(tmp_path_factory.mktemp("tls11")):
        pytest.skip("this OpenSSL cannot make a TLS 1.1 handshake even at SECLEVEL=0, so refusal cannot be shown")


@pytest.mark.parametrize("connect", [_implicit, _starttls], ids=["implicit", "starttls"])
def test_tls_1_1_handshake_is_refused(server: TwistServer, tls11_available: None, connect) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        connect(server, client_context(**_TLS11)).close()  # type: ignore[arg-type]
    assert server.alive()


@pytest.mark.parametrize("connect", [_implicit, _starttls], ids=["implicit", "starttls"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["1.2", "1.3"])
def test_tls_1_2_and_1_3_handshakes_are_accepted(server: TwistServer, connect, version: ssl.TLSVersion) -> None:
    with connect(server, client_context(minimum=version, maximum=version)) as tls:
        assert tls.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
        if connect is _starttls:
            tls.sendall(b"NOOP\r\n")
        assert tls.recv(4096)[:3] in (b"220", b"250")


def test_tls_1_2_uses_a_forward_secret_aead_cipher(server: TwistServer) -> None:
    context = client_context(minimum=ssl.TLSVersion.TLSv1_2, maximum=ssl.TLSVersion.TLSv1_2)
    with _implicit(server, context) as tls:
        name, _, _ = tls.cipher()  # type: ignore[misc]
        assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)


@pytest.mark.parametrize("connect", [_implicit, _starttls], ids=["implicit", "starttls"])
def test_sni_serves_the_certificate_of_the_name_asked_for(server: TwistServer, connect) -> None:
    with connect(server, client_context(), OTHER) as tls:
        assert served_name(tls.getpeercert(binary_form=True)) == OTHER
    with connect(server, client_context(), "mail.example.test") as tls:
        assert served_name(tls.getpeercert(binary_form=True)) == "mail.example.test"


def test_without_sni_or_for_an_unknown_name_the_main_certificate_is_served(server: TwistServer) -> None:
    with _implicit(server, client_context()) as tls:
        assert served_name(tls.getpeercert(binary_form=True)) == "mail.example.test"
    with _implicit(server, client_context(), "unknown.example.test") as tls:
        assert served_name(tls.getpeercert(binary_form=True)) == "mail.example.test"
