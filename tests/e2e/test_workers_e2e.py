"""
``[server] workers = 2``: the real server (a supervising parent and two
worker processes), driven by smtplib, imaplib and poplib.

Which worker accepted a connection is read from ``/proc`` (the worker whose
descriptors hold the server end of the connection), so that every test of
something that must cross processes puts its two sides on different
workers rather than hoping the kernel does.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import shutil
import signal
import smtplib
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.imap_helpers import Raw
from tests.service_runner import TIMEOUT, ServiceProcess, listener, unverified_tls

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the serving worker through Linux's /proc")

ALICE, PASSWORD = "alice@example.test", "alice-secret"
#: A worker starts in about a second on an idle machine; this one is shared.
START_TIMEOUT = 60.0

Client = TypeVar("Client")


class Workers:
    """A server with C{count} workers over C{root}, and what the tests ask of its processes."""

    def __init__(self, root: Path, listeners: str, extra: str = "", count: int = 2) -> None:
        self.server = ServiceProcess(root, listeners, extra)
        text = self.server.config_path.read_text(encoding="utf-8").replace("[server]\n", f"[server]\nworkers = {count}\n", 1)
        self.server.config_path.write_text(text, encoding="utf-8")
        self.count = count
        self.server.add_users({ALICE: PASSWORD})

    def start(self) -> None:
        self.server.start()
        self.wait_ready(self.count)

    def wait_ready(self, started: int) -> None:
        """Until C{started} worker starts in all have said "mailapp starting" (their listeners are adopted by then)."""
        wait_for(lambda: self.server.log().count("] mailapp starting as") - 1 >= started, f"{started} worker starts", self.server)

    def pids(self) -> list[int]:
        """The live worker processes."""
        assert self.server.process is not None
        parent = self.server.process.pid
        found = []
        for task in Path(f"/proc/{parent}/task").iterdir():
            for child in (task / "children").read_text().split():
                try:
                    command = Path(f"/proc/{child}/cmdline").read_bytes()
                except FileNotFoundError:
                    continue
                if b"mailapp.workers.child" in command:
                    found.append(int(child))
        return sorted(found)

    def serving(self, sock: socket.socket, port: int) -> int | None:
        """The process (parent or worker) that holds the server end of C{sock}, a connection to C{port}."""
        assert self.server.process is not None
        inode = _server_inode(port, sock.getsockname()[1])
        if inode is None:
            return None
        for pid in [self.server.process.pid, *self.pids()]:
            try:
                descriptors = os.listdir(f"/proc/{pid}/fd")
            except FileNotFoundError:
                continue
            for fd in descriptors:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
                except OSError:
                    continue
        return None

    def connect_to(
        self,
        worker: int,
        port: int,
        connect: Callable[[], Client],
        sock: Callable[[Client], socket.socket],
        welcome: Callable[[Client], bool] = lambda client: True,
    ) -> Client:
        """
        A client connected (and greeted, as C{welcome} says) by C{worker}:
        new connections until the kernel gives one to it (bounded).
        """
        for _ in range(60):
            client = connect()
            if self.serving(sock(client), port) == worker and welcome(client):
                return client
            sock(client).close()
            time.sleep(0.02)  # its close counted before the next try
        raise AssertionError(f"60 connections to port {port}, none accepted by worker {worker}")

    def imap_session(self, worker: int) -> Raw:
        """An IMAP session on C{worker}, logged in as Alice."""
        port = self.server.port("imap")
        session = self.connect_to(worker, port, lambda: Raw(port), lambda raw: raw.sock)
        assert session.command(b"a", f"LOGIN {ALICE} {PASSWORD}".encode())[-1].startswith(b"a OK")
        return session

    def deliver_through(self, worker: int, subject: str) -> None:
        """A message to Alice over SMTP, accepted by C{worker}."""
        port = self.server.port("smtp")
        _deliver(self.connect_to(worker, port, _smtp(port), lambda client: client.sock), subject)

    def stop(self) -> None:
        if self.server.process is not None and self.server.process.poll() is None:
            self.server.terminate(30)


def _server_inode(port: int, client_port: int) -> int | None:
    """The inode of the server end of 127.0.0.1:client_port -> 127.0.0.1:port, from /proc/net/tcp."""
    local, remote = f"0100007F:{port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[9])
    return None


def wait_for(condition: Callable[[], Any], what: str, server: ServiceProcess, timeout: float = START_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{server.log()[-6000:]}")


LISTENERS = (
    listener("smtp", "smtp")
    + listener("imap", "imap", allow_plaintext_auth=True)
    + listener("pop3", "pop3", allow_plaintext_auth=True)
    + listener("imaps", "imap", tls="implicit")
)


def imap_on(workers: Workers, worker: int) -> imaplib.IMAP4:
    """imaplib, logged in as Alice, on C{worker} (a pid of L{Workers.pids})."""
    port = workers.server.port("imap")
    client = workers.connect_to(worker, port, lambda: imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT), lambda c: c.sock)
    client.login(ALICE, PASSWORD)
    return client


def _smtp(port: int) -> Callable[[], smtplib.SMTP]:
    return lambda: smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)


def _deliver(client: smtplib.SMTP, subject: str) -> None:
    with client:
        client.sendmail("sender@remote.test", [ALICE], f"Subject: {subject}\r\n\r\nhello\r\n")


def test_every_worker_accepts_on_every_listener_and_the_parent_on_none(workers: Workers) -> None:
    pids = workers.pids()
    assert len(pids) == 2
    connect: dict[str, Callable[[int], Any]] = {
        "smtp": lambda port: smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT),
        "imap": lambda port: imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT),
        "pop3": lambda port: poplib.POP3("127.0.0.1", port, timeout=TIMEOUT),
        # Implicit TLS: each worker wraps the adopted socket with its own copy of the certificate.
        "imaps": lambda port: imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=unverified_tls(), timeout=TIMEOUT),
    }
    for name, make in connect.items():
        port = workers.server.port(name)
        seen: set[int | None] = set()
        for _ in range(60):
            client = make(port)
            seen.add(workers.serving(client.sock, port))
            client.sock.close()
            if seen == set(pids):
                break
        assert seen == set(pids), (name, seen, pids)


def test_a_delivery_by_one_worker_is_pushed_to_an_idle_session_on_the_other(workers: Workers) -> None:
    first, second = workers.pids()
    idle = workers.imap_session(first)
    try:
        assert b"* 0 EXISTS" in idle.command(b"b", b"SELECT INBOX")
        idle.send(b"c IDLE\r\n")
        assert idle.line().startswith(b"+ ")
        workers.deliver_through(second, "across")
        sent = time.monotonic()
        # Well before the session's own re-read (30 s): only the cross-process wakeup can tell it.
        idle.sock.settimeout(5.0)
        assert idle.line() == b"* 1 EXISTS"
        assert time.monotonic() - sent < 5.0
        idle.send(b"DONE\r\n")
        assert idle.until(b"c")[-1].startswith(b"c OK")
    finally:
        idle.close()


def test_the_pop3_maildrop_lock_holds_across_workers(workers: Workers) -> None:
    first, second = workers.pids()
    port = workers.server.port("pop3")
    _deliver(smtplib.SMTP("127.0.0.1", workers.server.port("smtp"), timeout=TIMEOUT), "one")
    holder = workers.connect_to(first, port, lambda: poplib.POP3("127.0.0.1", port, timeout=TIMEOUT), lambda c: c.sock)
    holder.user(ALICE)
    holder.pass_(PASSWORD)
    other = workers.connect_to(second, port, lambda: poplib.POP3("127.0.0.1", port, timeout=TIMEOUT), lambda c: c.sock)
    other.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        other.pass_(PASSWORD)
    holder.quit()
    # Released with the first session: the other worker now gets it.
    again = workers.connect_to(second, port, lambda: poplib.POP3("127.0.0.1", port, timeout=TIMEOUT), lambda c: c.sock)
    again.user(ALICE)
    assert again.pass_(PASSWORD).startswith(b"+OK")
    assert again.stat()[0] == 1
    again.quit()


def test_a_killed_worker_is_restarted_and_serves_again(workers: Workers) -> None:
    first, second = workers.pids()
    os.kill(first, signal.SIGKILL)
    workers.wait_ready(3)
    pids = workers.pids()
    assert len(pids) == 2 and first not in pids and second in pids
    assert "worker 1 (pid" in workers.server.log() or "worker 2 (pid" in workers.server.log()
    [restarted] = [pid for pid in pids if pid != second]
    workers.deliver_through(restarted, "after the restart")
    wait_for(lambda: len(list((workers.server.maildir(ALICE) / "new").glob("*"))) == 1, "the message", workers.server, 10)


def test_sighup_is_applied_by_every_worker_and_sigterm_stops_them_all(workers: Workers) -> None:
    pids = workers.pids()
    assert workers.server.process is not None
    config = workers.server.config_path
    config.write_text(config.read_text(encoding="utf-8").replace("[limits]\n", "[limits]\nmax_message_size = 123456\n", 1), encoding="utf-8")
    workers.server.process.send_signal(signal.SIGHUP)
    # The parent and each worker log their own reload.
    wait_for(
        lambda: workers.server.log().count(f"config {config} reloaded") == 3,
        "every worker's reload",
        workers.server,
        20,
    )
    port = workers.server.port("smtp")
    for worker in pids:
        with workers.connect_to(worker, port, _smtp(port), lambda client: client.sock) as client:
            client.ehlo("client.test")
            assert client.esmtp_features["size"] == "123456", worker
    assert workers.server.terminate(30) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    log = workers.server.log()
    assert log.count("mailapp stopped") == 3, "the parent and each worker"


# --- the relay queue: entries queued by either worker are sent by the parent -------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_entries_queued_by_either_worker_are_sent_by_the_parent(tmp_path: Path) -> None:
    b_port = _free_port()
    receiver = ServiceProcess(
        tmp_path / "b",
        f'\n[listeners.smtp]\nprotocol = "smtp"\nendpoint = "tcp:{b_port}:interface=127.0.0.1"\ntls = "none"\n',
    )
    text = receiver.config_path.read_text(encoding="utf-8").replace('local = ["example.test"]', 'local = ["b.test"]')
    receiver.config_path.write_text(text, encoding="utf-8")
    from mailapp.config import parse

    receiver.config = parse(text, receiver.config_path)
    receiver.add_users({"bob@b.test": "bob-secret"})
    sender = Workers(
        tmp_path / "a",
        listener("submission", "submission", allow_plaintext_auth=True),
        f'[relay]\nretry_schedule = [1]\ntransports = {{ "b.test" = "127.0.0.1:{b_port}" }}\n',
    )
    try:
        receiver.start()
        sender.start()
        port = sender.server.port("submission")
        for number, worker in enumerate(sender.pids()):
            with sender.connect_to(worker, port, _smtp(port), lambda client: client.sock) as client:
                client.login(ALICE, PASSWORD)
                assert client.sendmail(ALICE, ["bob@b.test"], f"Subject: from worker {number}\r\n\r\nhi\r\n") == {}
        inbox = receiver.maildir("bob@b.test") / "new"
        wait_for(lambda: inbox.is_dir() and len(list(inbox.iterdir())) == 2, "both messages at B", sender.server, 30)
        subjects = sorted(b"from worker 0" in path.read_bytes() for path in inbox.iterdir())
        assert subjects == [False, True]
        envelopes = sender.server.state_dir / "queue" / "envelopes"
        wait_for(lambda: not list(envelopes.iterdir()), "A's queue to empty", sender.server, 30)
    finally:
        sender.stop()
        if receiver.process is not None and receiver.process.poll() is None:
            receiver.terminate()



# --- failed logins and bans count across workers ---------------------------------------------

SECURITY = "[security]\nauth_failure_delay = 0.1\nauth_failure_delay_max = 0.2\nban_after_failures = 3\nban_window = 60\nban_seconds = 60\n"
BANNED = b"* BYE [UNAVAILABLE] Too many failed logins from your address; try again later"


def _all_banned(port: int, connections: int) -> None:
    """C{connections} new IMAP connections, each refused at its greeting as banned."""
    for _ in range(connections):
        refused = Raw(port)
        assert refused.greeting == BANNED
        refused.close()


def test_failed_logins_on_both_workers_add_up_to_one_ban_that_every_worker_enforces(tmp_path: Path) -> None:
    server = Workers(tmp_path / "a", listener("imap", "imap", allow_plaintext_auth=True), SECURITY)
    try:
        server.start()
        first, second = server.pids()
        port = server.server.port("imap")
        replies = []
        for worker in (first, second, first):
            session = server.connect_to(worker, port, lambda: Raw(port), lambda raw: raw.sock)
            replies.append(session.command(b"a", f"LOGIN {ALICE} wrong".encode())[-1])
            if len(replies) == 3:
                # The third failure, two on this worker and one on the other: the ban.
                assert session.line() == BANNED
            session.close()
        assert all(reply.startswith(b"a NO") for reply in replies), replies
        # Every worker refuses the address now (20 connections reach both; the first test shows how soon).
        _all_banned(port, 20)
    finally:
        server.stop()


# --- metrics: the parent serves them, counted from every worker -----------------------------


def _scrape(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_the_parent_serves_metrics_counted_from_every_worker(tmp_path: Path) -> None:
    server = Workers(tmp_path / "a", listener("smtp", "smtp") + listener("metrics", "metrics"))
    try:
        server.start()
        metrics_port = server.server.port("metrics")
        for worker in server.pids():
            server.deliver_through(worker, "counted")
        accepted = 'mailapp_messages_accepted_total{protocol="smtp"}'
        samples = wait_for(lambda: (s := _scrape(metrics_port)).get(accepted) == 2 and s, "both messages counted", server.server, 20)
        assert samples['mailapp_connections_total{listener="smtp",protocol="smtp"}'] >= 2
        # Per-command timings come from both workers too (telemetry): at least MAIL, RCPT, DATA of each message.
        assert samples['mailapp_command_duration_seconds_count{command="MAIL",protocol="smtp"}'] == 2
        # And the parent itself answered the scrape.
        probe = socket.create_connection(("127.0.0.1", metrics_port), timeout=TIMEOUT)
        try:
            assert wait_for(lambda: server.serving(probe, metrics_port), "the scrape's server", server.server, 5) == server.server.process.pid  # type: ignore[union-attr]
        finally:
            probe.close()
    finally:
        server.stop()


# --- a unix-socket listener survives one worker's stop ---------------------------------------


def test_an_lmtp_unix_socket_still_answers_after_one_worker_stopped_and_restarted(tmp_path: Path) -> None:
    directory = Path(tempfile.mkdtemp(prefix="mailapp-workers-", dir="/tmp"))  # a unix socket path fits in 108 bytes
    path = directory / "lmtp.sock"
    server = Workers(tmp_path / "a", f'\n[listeners.lmtp]\nprotocol = "lmtp"\nendpoint = "unix:{path}"\ntls = "none"\n')
    try:
        server.start()
        first, second = server.pids()
        # SIGTERM to one worker alone: it stops as the server would, and is started again.
        os.kill(first, signal.SIGTERM)
        wait_for(lambda: not Path(f"/proc/{first}").exists() or Path(f"/proc/{first}/stat").read_text().split()[2] == "Z", "worker gone", server.server, 30)
        server.wait_ready(3)
        with smtplib.LMTP(str(path), timeout=TIMEOUT) as client:
            assert client.sendmail("sender@remote.test", [ALICE], "Subject: by lmtp\r\n\r\nhi\r\n") == {}
        wait_for(lambda: len(list((server.server.maildir(ALICE) / "new").glob("*"))) == 1, "the message", server.server, 10)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_workers_stop_on_their_own_when_the_parent_is_killed(workers: Workers) -> None:
    pids = workers.pids()
    workers.server.kill()
    # Their pipe to the parent closes: each stops as on SIGTERM (they are reparented, so not our zombies).
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), "the orphaned workers to exit", workers.server, 30)


def test_a_delivery_by_one_worker_is_told_to_a_notify_session_on_the_other(workers: Workers) -> None:
    first, second = workers.pids()
    watcher = workers.imap_session(first)
    try:
        assert watcher.command(b"b", b"SELECT Drafts")[-1].startswith(b"b OK")
        assert watcher.command(b"c", b"NOTIFY SET (INBOXES (MessageNew MessageExpunge))")[-1].startswith(b"c OK")
        workers.deliver_through(second, "noticed")
        watcher.sock.settimeout(5.0)
        assert watcher.line().startswith(b'* STATUS "INBOX" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY ')
    finally:
        watcher.close()


# --- the webmail: served by the parent alone, so its sessions hold for every request ------------


class _Browser:
    """One browser's cookies against the webmail on C{port} (http.client, every request bounded)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, fields: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        import http.client
        from urllib.parse import urlencode

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}
        body = None
        if fields is not None:
            body = urlencode(fields).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            status, got, text = response.status, response.getheaders(), response.read().decode("utf-8", "replace")
        finally:
            connection.close()
        for name, value in got:
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                if "Max-Age=0" in value:
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = rest.split(";", 1)[0]
        return status, {name.lower(): value for name, value in got}, text

    def sign_in(self, account: str, password: str) -> int:
        import re

        _, _, page = self.request("GET", "/login")
        found = re.search(r'name="login_token" value="([^"]+)"', page)
        assert found is not None, page[:300]
        status, _, _ = self.request("POST", "/login", {"login_token": found.group(1), "username": account, "password": password})
        return status


def test_webmail_sessions_hold_for_every_request_and_its_failures_count_with_the_workers(tmp_path: Path) -> None:
    server = Workers(
        tmp_path / "a",
        listener("imap", "imap", allow_plaintext_auth=True) + listener("web", "webmail"),
        SECURITY,
    )
    try:
        server.start()
        port = server.server.port("web")
        browser = _Browser(port)
        assert browser.sign_in(ALICE, PASSWORD) == 303
        for _ in range(10):
            status, headers, page = browser.request("GET", "/list?f=INBOX")
            assert status == 200, (status, headers.get("location"))
        # The parent serves it: no worker holds the webmail's connections.
        probe = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        try:
            assert wait_for(lambda: server.serving(probe, port), "the webmail's server", server.server, 5) == server.server.process.pid  # type: ignore[union-attr]
        finally:
            probe.close()
        # Two failed IMAP logins on the workers and one failed sign-in at the parent: the ban.
        first, second = server.pids()
        imap_port = server.server.port("imap")
        for worker in (first, second):
            session = server.connect_to(worker, imap_port, lambda: Raw(imap_port), lambda raw: raw.sock)
            assert session.command(b"a", f"LOGIN {ALICE} wrong".encode())[-1].startswith(b"a NO")
            session.close()
        assert _Browser(port).sign_in(ALICE, "wrong") == 401
        # Now every process refuses the address: the webmail says 429, the workers' IMAP says BYE.
        assert _Browser(port).request("GET", "/login")[0] == 429
        _all_banned(imap_port, 10)
    finally:
        server.stop()


# --- connection limits count across workers ----------------------------------------------------


def test_the_per_address_connection_limit_counts_the_connections_of_both_workers(tmp_path: Path) -> None:
    server = Workers(tmp_path / "a", listener("imap", "imap", allow_plaintext_auth=True), "[limits]\nmax_connections_per_ip = 2\n")
    try:
        server.start()
        first, second = server.pids()
        port = server.server.port("imap")
        # Each let in: while one lands on the wrong worker, the other may count it for a moment.
        held = [
            server.connect_to(worker, port, lambda: Raw(port), lambda raw: raw.sock, lambda raw: raw.greeting.startswith(b"* OK"))
            for worker in (first, second)
        ]
        # One open on each worker is the address's two: a third is refused, wherever it lands, once
        # every open and close (connect_to's connections that landed on the wrong worker) is counted.
        wait_for(lambda: not _greeted(port), "a third connection refused", server.server, 10)
        for _ in range(6):
            refused = Raw(port)
            assert b"Too many connections from your address" in refused.greeting, refused.greeting
            refused.close()
        held[0].close()
        # One closed: a connection is let in again (once its close has been counted everywhere).
        wait_for(lambda: _greeted(port), "a connection let in again", server.server, 10)
        held[1].close()
    finally:
        server.stop()


def _greeted(port: int) -> bool:
    session = Raw(port)
    try:
        return session.greeting.startswith(b"* OK")
    finally:
        session.close()


def test_a_burst_of_connections_is_shared_between_the_workers(workers: Workers) -> None:
    """
    Twenty connections made at once (as imaptest's clients, or every client
    reconnecting after a network blip) and kept open: each worker serves a
    fair part of them. With Twisted's own port the first worker awake took
    up to a hundred a wakeup; imaptest's ten clients once landed nine to one.
    """
    _twenty_connections_shared(workers, TIMEOUT)


def test_connections_waiting_for_a_starting_server_are_shared_between_the_workers(tmp_path: Path) -> None:
    """
    Clients that connect while the server starts (as every client does
    after a restart) wait in the parent's socket: the first worker ready
    must not take them all, which it did while each worker accepted as soon
    as it was ready itself.
    """
    running = Workers(tmp_path / "a", LISTENERS)
    try:
        running.server.start()  # the parent listens: the workers are still starting
        _twenty_connections_shared(running, START_TIMEOUT)
    finally:
        running.stop()


def _twenty_connections_shared(workers: Workers, timeout: float) -> None:
    """Twenty IMAP connections made at once and kept open until greeted: each worker serves at least five."""
    port = workers.server.port("imap")
    clients = [socket.create_connection(("127.0.0.1", port), timeout=timeout) for _ in range(20)]
    try:
        for client in clients:
            assert client.recv(4096).startswith(b"* OK")
        served = [workers.serving(client, port) for client in clients]
        shares = {pid: served.count(pid) for pid in workers.pids()}
        assert sum(shares.values()) == 20, served
        assert min(shares.values()) >= 5, shares
    finally:
        for client in clients:
            client.close()


def test_limits_hold_exactly_for_clients_connecting_one_after_another_on_different_workers(tmp_path: Path) -> None:
    """
    A client's connections on every listener count against
    max_connections_per_ip, and a listener's max_unauthenticated holds,
    whichever worker takes each connection: near a limit a worker waits a
    few milliseconds for the others' counts (SessionFactory.admitSoon).
    Without that wait, with the connections spread over both workers, a
    third connection of a client limited to two got in (3 runs of 3).
    """
    running = Workers(
        tmp_path / "a",
        listener("smtp", "smtp") + listener("pop3", "pop3") + listener("imap", "imap"),
        "[limits]\nmax_connections = 30\nmax_connections_per_ip = 2\n",
    )
    try:
        running.start()
        opened: list[socket.socket] = []

        def connect(name: str) -> bytes:
            sock = socket.create_connection(("127.0.0.1", running.server.port(name)), timeout=TIMEOUT)
            opened.append(sock)
            return sock.recv(200)

        for _ in range(3):
            assert connect("smtp").startswith(b"220 ")
            assert connect("pop3").startswith(b"+OK")
            assert connect("imap").startswith(b"* BYE"), "a third connection of a client limited to two"
            for sock in opened:
                sock.close()
            opened.clear()
            time.sleep(0.2)  # their closes counted in both workers
    finally:
        running.stop()


def test_a_listeners_budget_for_clients_not_logged_in_holds_exactly_with_two_workers(tmp_path: Path) -> None:
    """Idle IMAP clients connecting one after another: exactly the listener's share of those not logged in get in."""
    running = Workers(tmp_path / "a", LISTENERS, "[limits]\nmax_connections = 40\nmax_connections_per_ip = 40\n")
    try:
        running.start()
        idle, greetings = [], []
        for _ in range(20):  # one after another, each greeted before the next
            idle.append(socket.create_connection(("127.0.0.1", running.server.port("imap")), timeout=TIMEOUT))
            greetings.append(idle[-1].recv(500))
        # Three listeners with logins (imap, imaps, pop3) share half of 40: six each may wait to log in.
        assert sum(greeting.startswith(b"* OK") for greeting in greetings) == 6, greetings
        for sock in idle:
            sock.close()
    finally:
        running.stop()


def test_a_script_activated_by_another_process_files_the_very_next_message_on_every_worker(workers: Workers) -> None:
    # Deliveries to an account without a script skip the script reads
    # (mailapp.sieve.presence); each worker must learn of an activation made
    # elsewhere (here: this process, as the CLI or ManageSieve on the other
    # worker would) before it answers the next message.
    from mailapp.sieve.scripts import ScriptStore, sieve_directory

    scripts = ScriptStore(sieve_directory(workers.server.state_dir))
    first, second = workers.pids()
    workers.deliver_through(first, "before any script")
    scripts.put(ALICE, "main", 'require ["fileinto", "mailbox"]; fileinto :create "Filed";')
    for round, worker in enumerate((first, second, second, first)):
        scripts.activate(ALICE, "main")
        workers.deliver_through(worker, f"filed {round}")
        scripts.activate(ALICE, None)
        workers.deliver_through(worker, f"kept {round}")
    maildir = workers.server.maildir(ALICE)

    def subjects(directory: Path) -> set[str]:
        found = set()
        for sub in ("new", "cur"):
            for path in (directory / sub).glob("*") if (directory / sub).is_dir() else ():
                found.add(path.read_bytes().split(b"Subject: ", 1)[1].split(b"\n", 1)[0].strip().decode())
        return found

    assert subjects(maildir / ".Filed") == {f"filed {n}" for n in range(4)}
    assert subjects(maildir) == {"before any script", *(f"kept {n}" for n in range(4))}
