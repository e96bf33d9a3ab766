"""
The outage of the hardening issue, end to end with the real service and
small configured limits: trickling SMTP connections (one byte every few
seconds) are cut at their deadlines while IMAP, POP3 and submission keep
serving; webmail connections beyond its budget are refused; a client
trickling HTTP request headers is cut. Every wait is bounded.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import time
from pathlib import Path

from tests.service_runner import TIMEOUT, ServiceProcess, listener

ALICE = "alice@example.test"


def _trickle_until_closed(sock: socket.socket, data: bytes, every: float, limit: float) -> float:
    """Send C{data} a byte at a time every C{every} seconds until the server closes; the seconds it took."""
    started = time.monotonic()
    sock.settimeout(every)
    position = 0
    while time.monotonic() - started < limit:
        try:
            sock.sendall(data[position % len(data) : position % len(data) + 1])
            position += 1
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    return time.monotonic() - started
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - started
    raise AssertionError(f"still open after {limit} s")


def test_trickling_smtp_connections_are_cut_at_their_deadlines_while_the_others_keep_serving(tmp_path: Path) -> None:
    server = ServiceProcess(
        tmp_path,
        listener("smtp", "smtp") + listener("submission", "submission", allow_plaintext_auth=True)
        + listener("pop3", "pop3", allow_plaintext_auth=True) + listener("imap", "imap", allow_plaintext_auth=True),
        "[limits]\nmax_connections = 40\nmax_connections_per_ip = 40\nsmtp_session_seconds = 6\ncommand_line_seconds = 3\n",
    )
    server.add_users({ALICE: "alice-secret"})
    server.start()
    try:
        started = time.monotonic()
        tricklers = []
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", server.port("smtp")), timeout=TIMEOUT)
            assert sock.recv(500).startswith(b"220")
            tricklers.append(sock)
        # Half send one byte at a time of a line that never ends; half a whole NOOP every second.
        line_cut = _trickle_until_closed(tricklers[0], b"NOOPNOOPNOOP", 0.5, limit=10)
        assert 2.5 <= line_cut <= 5, line_cut
        session_cut = _trickle_until_closed(tricklers[1], b"NOOP\r\n", 0.2, limit=12)
        assert session_cut <= 8, session_cut
        with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=TIMEOUT) as submission:
            submission.login(ALICE, "alice-secret")
            assert submission.sendmail(ALICE, [ALICE], b"Subject: note\r\n\r\nstill served\r\n") == {}
        pop = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=TIMEOUT)
        pop.user(ALICE)
        pop.pass_("alice-secret")
        assert pop.stat()[0] == 1
        pop.quit()
        imap = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=TIMEOUT)
        imap.login(ALICE, "alice-secret")
        assert imap.select("INBOX")[0] == "OK"
        imap.logout()
        # The idle ones, which sent nothing, are gone by the session deadline.
        for sock in tricklers[2:]:
            sock.settimeout(max(0.1, 8 - (time.monotonic() - started)))
            assert sock.recv(500).startswith(b"421 4.4.2"), "idle SMTP connection not cut"
        assert time.monotonic() - started < 15
    finally:
        for sock in tricklers:
            sock.close()
        server.terminate()


def test_webmail_connections_beyond_the_budget_are_refused_and_a_header_trickler_is_cut(tmp_path: Path) -> None:
    server = ServiceProcess(
        tmp_path,
        listener("webmail", "webmail") + "max_connections = 5\n",
        "[limits]\nmax_connections = 40\nmax_connections_per_ip = 40\ncommand_line_seconds = 3\n",
    )
    server.start()
    held: list[socket.socket] = []
    try:
        for _ in range(5):
            held.append(socket.create_connection(("127.0.0.1", server.port("webmail")), timeout=TIMEOUT))
        time.sleep(0.3)
        refused = []
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", server.port("webmail")), timeout=TIMEOUT)
            refused.append(sock.recv(500))
            sock.close()
        assert all(answer.startswith(b"HTTP/1.1 503") for answer in refused), refused
        for sock in held:
            sock.close()
        held.clear()
        time.sleep(0.3)
        trickler = socket.create_connection(("127.0.0.1", server.port("webmail")), timeout=TIMEOUT)
        held.append(trickler)
        cut = _trickle_until_closed(trickler, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100, 0.5, limit=10)
        assert 2.5 <= cut <= 5, cut
        # A normal request is still answered.
        with socket.create_connection(("127.0.0.1", server.port("webmail")), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /login HTTP/1.1\r\nHost: mail.example.test\r\nConnection: close\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200"), "webmail not serving"
        log = server.log_path.read_text(encoding="utf-8", errors="replace")
        assert log.count("session refused protocol=webmail") == 1, log.count("session refused protocol=webmail")
    finally:
        for sock in held:
            sock.close()
        server.terminate()


def test_a_thousand_trickling_mx_connections_from_50_addresses_leave_imap_pop3_and_submission_serving(tmp_path: Path) -> None:
    """The hardening issue's own figure, with the default budgets: the MX takes its quarter, readers log in."""
    server = ServiceProcess(
        tmp_path,
        listener("smtp", "smtp") + listener("submission", "submission", allow_plaintext_auth=True)
        + listener("pop3", "pop3", allow_plaintext_auth=True) + listener("imap", "imap", allow_plaintext_auth=True),
    )
    server.add_users({ALICE: "alice-secret"})
    server.start()
    sockets: list[socket.socket] = []
    try:
        started = time.monotonic()
        for number in range(1000):
            sock = socket.socket()
            sock.settimeout(TIMEOUT)
            sock.bind((f"127.0.0.{10 + number % 50}", 0))
            sock.connect(("127.0.0.1", server.port("smtp")))
            sockets.append(sock)
        greetings = [sock.recv(200) for sock in sockets]
        admitted = [sock for sock, greeting in zip(sockets, greetings) if greeting.startswith(b"220")]
        refused = [greeting for greeting in greetings if greeting.startswith(b"421 4.3.2")]
        assert len(admitted) + len(refused) == 1000, {g[:20] for g in greetings}
        assert 0 < len(admitted) <= 250, len(admitted)
        connected = time.monotonic() - started
        for sock in admitted:
            sock.sendall(b"N")  # a command that trickles
        served = []
        for _ in range(3):
            step = time.monotonic()
            imap = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=TIMEOUT)
            imap.login(ALICE, "alice-secret")
            imap.select("INBOX")
            imap.logout()
            pop = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=TIMEOUT)
            pop.user(ALICE)
            pop.pass_("alice-secret")
            pop.quit()
            with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=TIMEOUT) as submission:
                submission.login(ALICE, "alice-secret")
                submission.sendmail(ALICE, [ALICE], b"Subject: still here\r\n\r\nbody\r\n")
            served.append(time.monotonic() - step)
            for sock in admitted:
                sock.sendall(b"O")
        print(f"\n1,000 MX connections: {len(admitted)} admitted, {len(refused)} refused in {connected:.1f} s; "
              f"IMAP+POP3+submission rounds took {', '.join(f'{s:.2f}' for s in served)} s")
        assert max(served) < 5.0
    finally:
        for sock in sockets:
            sock.close()
        server.terminate()
