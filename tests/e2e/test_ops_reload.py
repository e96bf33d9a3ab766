"""
Reloading a running server: SIGHUP to a real ``twist mailapp`` process swaps
the certificate for new connections while an open session goes on, and a
broken config file is refused without stopping anything; and
:meth:`MailService.reload` (what SIGHUP calls) applies limits live and names
what needs a restart. Loopback only, port 0, every wait bounded.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from mailapp.config import load
from mailapp.service import ListenerService, makeService
from mailapp.testing import FakeStore
from tests.ops_runner import (
    TwistServer,
    client_context,
    read_reply,
    served_name,
    write_certificate,
)

pytestmark = pytest.mark.timeout(120)


def _config(root: Path, max_message_size: int = 26214400, extra_listener: str = "") -> str:
    return f"""
[server]
hostname = "mail.example.test"
state_dir = "{root / 'state'}"

[domains]
local = ["example.test"]

[tls]
cert = "{root / 'cert.pem'}"
key = "{root / 'key.pem'}"

[listeners.submissions]
protocol = "submission"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "implicit"

[listeners.smtp]
protocol = "smtp"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "starttls"
{extra_listener}
[limits]
max_message_size = {max_message_size}
"""


def test_sighup_serves_a_new_certificate_to_new_connections_and_keeps_open_sessions(tmp_path: Path) -> None:
    write_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", "old.example.test")
    server = TwistServer(tmp_path, _config(tmp_path))
    server.start(listeners=2)
    try:
        open_session = client_context().wrap_socket(server.connect("submissions"))
        assert served_name(open_session.getpeercert(binary_form=True)) == "old.example.test"
        assert read_reply(open_session).startswith(b"220")

        # What certbot does on renewal: new files in place, then the deploy hook's SIGHUP.
        write_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", "new.example.test")
        seen = len(server.events())
        server.signal(signal.SIGHUP)
        server.wait_for_reload(after=seen)

        with client_context().wrap_socket(server.connect("submissions")) as fresh:
            assert served_name(fresh.getpeercert(binary_form=True)) == "new.example.test"
        open_session.sendall(b"EHLO client.test\r\n")
        assert read_reply(open_session).startswith(b"250")
        open_session.sendall(b"QUIT\r\n")
        assert read_reply(open_session).startswith(b"221")
        open_session.close()
    finally:
        assert server.stop() in (0, -signal.SIGTERM)  # twist ends by re-raising the signal


def test_sighup_with_a_broken_config_keeps_the_old_one_and_keeps_serving(tmp_path: Path) -> None:
    write_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", "old.example.test")
    server = TwistServer(tmp_path, _config(tmp_path))
    server.start(listeners=2)
    try:
        good = server.config_path.read_text()
        server.config_path.write_text(good.replace('tls = "starttls"', 'tls = "sometimes"').replace("max_message_size", "bogus"))
        seen = len(server.events())
        server.signal(signal.SIGHUP)
        failed = server.wait_for_event("service.reload_failed", after=seen)
        assert "sometimes" in failed["problems"] and "limits.bogus" in failed["problems"]
        assert server.alive()
        with client_context().wrap_socket(server.connect("submissions")) as tls:
            assert read_reply(tls).startswith(b"220")
        assert not [e for e in server.events()[seen:] if e.get("log_event") == "service.reloaded"]

        # A broken certificate is refused the same way: the old one stays in use.
        server.config_path.write_text(good)
        (tmp_path / "cert.pem").write_text("not a certificate\n")
        seen = len(server.events())
        server.signal(signal.SIGHUP)
        server.wait_for_event("service.reload_failed", after=seen)
        with client_context().wrap_socket(server.connect("submissions")) as tls:
            assert served_name(tls.getpeercert(binary_form=True)) == "old.example.test"
    finally:
        assert server.stop() in (0, -signal.SIGTERM)  # twist ends by re-raising the signal


def test_reload_applies_new_limits_to_new_sessions_and_names_what_needs_a_restart(tmp_path: Path) -> None:
    write_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", "mail.example.test")
    path = tmp_path / "mailapp.toml"
    path.write_text(_config(tmp_path, max_message_size=1000))
    from twisted.internet.testing import MemoryReactorClock

    from mailapp.testing import FakeAccounts

    root = makeService(load(path), reactor=MemoryReactorClock(), store=FakeStore(), accounts=FakeAccounts())
    smtp = next(child for child in root if isinstance(child, ListenerService) and child.listener.name == "smtp")
    assert smtp.factory.policy.max_message_size == 1000

    extra = '\n[listeners.pop3]\nprotocol = "pop3"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "none"\n'
    path.write_text(_config(tmp_path, max_message_size=2000, extra_listener=extra))
    result = root.reload()

    assert result.ok
    assert "limits" in result.applied and "tls" in result.applied
    assert result.needs_restart == ["listeners"]
    assert smtp.factory.policy.max_message_size == 2000
    assert root.config.limits.max_message_size == 2000


def test_reload_applies_a_new_recipient_limit_without_any_listener_change(tmp_path: Path) -> None:
    # It was applied only when a listener's budgets changed in the same reload.
    write_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", "mail.example.test")
    path = tmp_path / "mailapp.toml"
    path.write_text(_config(tmp_path))
    from twisted.internet.testing import MemoryReactorClock

    from mailapp.testing import FakeAccounts

    root = makeService(load(path), reactor=MemoryReactorClock(), store=FakeStore(), accounts=FakeAccounts())
    router = root.context.router
    assert router.max_recipients == 100
    path.write_text(_config(tmp_path) + "max_recipients = 7\n")
    result = root.reload()
    assert result.ok and "limits" in result.applied
    assert router.max_recipients == 7


def test_reload_of_a_bad_file_changes_nothing(tmp_path: Path) -> None:
    write_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", "mail.example.test")
    path = tmp_path / "mailapp.toml"
    path.write_text(_config(tmp_path, max_message_size=1000))
    from twisted.internet.testing import MemoryReactorClock

    from mailapp.testing import FakeAccounts

    root = makeService(load(path), reactor=MemoryReactorClock(), store=FakeStore(), accounts=FakeAccounts())
    before = root.config
    path.write_text(_config(tmp_path, max_message_size=0))
    result = root.reload()
    assert not result.ok
    assert any("limits.max_message_size" in problem for problem in result.problems)
    assert root.config is before


def test_reload_applies_a_listeners_new_connection_budgets_live(tmp_path: Path) -> None:
    write_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", "mail.example.test")
    path = tmp_path / "mailapp.toml"
    imap = '\n[listeners.imap]\nprotocol = "imap"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "none"\n'
    path.write_text(_config(tmp_path, extra_listener=imap + "max_connections = 100\n"))
    from twisted.internet.testing import MemoryReactorClock

    from mailapp.testing import FakeAccounts

    root = makeService(load(path), reactor=MemoryReactorClock(), store=FakeStore(), accounts=FakeAccounts())
    listener = next(child for child in root if isinstance(child, ListenerService) and child.listener.name == "imap")
    assert (listener.factory.policy.max_connections, listener.factory.policy.max_unauthenticated) == (100, 100)

    path.write_text(_config(tmp_path, extra_listener=imap + "max_connections = 50\nmax_unauthenticated = 7\n"))
    result = root.reload()

    assert result.ok
    assert "listener budgets" in result.applied
    assert result.needs_restart == []
    assert (listener.factory.policy.max_connections, listener.factory.policy.max_unauthenticated) == (50, 7)


def test_reload_applies_an_lmtp_listeners_new_allowed_clients_live(tmp_path: Path) -> None:
    write_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", "mail.example.test")
    path = tmp_path / "mailapp.toml"
    lmtp = '\n[listeners.lmtp]\nprotocol = "lmtp"\nendpoint = "tcp:0"\ntls = "none"\n'
    path.write_text(_config(tmp_path, extra_listener=lmtp + 'allowed_clients = ["192.0.2.0/24"]\n'))
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock

    from mailapp.testing import FakeAccounts

    root = makeService(load(path), reactor=MemoryReactorClock(), store=FakeStore(), accounts=FakeAccounts())
    listener = next(child for child in root if isinstance(child, ListenerService) and child.listener.name == "lmtp")
    client = IPv4Address("TCP", "198.51.100.7", 40000)
    assert not listener.factory.mayUse(client)

    path.write_text(_config(tmp_path, extra_listener=lmtp + 'allowed_clients = ["198.51.100.0/24"]\n'))
    result = root.reload()

    assert result.ok
    assert result.needs_restart == []
    assert listener.factory.mayUse(client)
    assert not listener.factory.mayUse(IPv4Address("TCP", "192.0.2.7", 40000))
