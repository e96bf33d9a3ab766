"""
``[server] workers = 2``, the MX's per-minute rates and each listener's own
budgets: messages accepted by either worker count against one
``mx_messages_per_minute`` for the client address, and sessions open (or
not logged in yet) on either worker against one ``max_connections`` (and
``max_unauthenticated``) for the listener (each worker tells the other
through the parent), so the server as a whole takes the rate and the
budget, not twice them. Driven by smtplib and raw IMAP lines, each
connection put on a chosen worker (the harness of
L{tests.e2e.test_workers_e2e}).
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.test_workers_e2e import ALICE, PASSWORD, Workers, pytestmark, wait_for  # noqa: F401  (the Linux-only mark)
from tests.imap_helpers import Raw
from tests.service_runner import TIMEOUT, listener

#: A fact crosses to the other worker through the parent in milliseconds; the wait allowed for it on a shared machine.
SHARED_WITHIN = 1.0


def _mail_from(workers: Workers, worker: int) -> tuple[int, bytes]:
    """A new SMTP connection on C{worker}: EHLO, then MAIL FROM's reply (the message is counted there)."""
    port = workers.server.port("smtp")
    client = workers.connect_to(worker, port, lambda: smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT), lambda c: c.sock)
    try:
        client.ehlo("client.example")
        code, text = client.mail("sender@remote.test")
        if code == 250:
            assert client.rcpt(ALICE)[0] == 250
            assert client.data(b"Subject: rate\r\n\r\nhello\r\n")[0] == 250
        return code, text
    finally:
        client.close()


def test_mx_messages_accepted_by_both_workers_count_against_one_per_minute_rate(tmp_path: Path) -> None:
    server = Workers(tmp_path / "a", listener("smtp", "smtp"), "[limits]\nmx_messages_per_minute = 2\nmx_bytes_per_minute = 0\n")
    try:
        server.start()
        first, second = server.pids()
        assert _mail_from(server, first)[0] == 250
        assert _mail_from(server, second)[0] == 250
        # Two in this minute, one through each worker: a third is refused by either (per worker, each
        # would still take one more), once the other's count has come through the parent (milliseconds;
        # no retry here, since an accepted retry would itself count).
        time.sleep(SHARED_WITHIN)
        for worker in (first, second):
            assert _mail_from(server, worker) == (451, b"4.7.1 Too much mail from your address; try again later"), worker
    finally:
        server.stop()


def _greeting(port: int) -> bytes:
    session = Raw(port)
    try:
        return session.greeting
    finally:
        session.close()


def test_a_listeners_own_budgets_count_the_sessions_of_both_workers(tmp_path: Path) -> None:
    imap = listener("imap", "imap", allow_plaintext_auth=True) + "max_connections = 3\nmax_unauthenticated = 2\n"
    server = Workers(tmp_path / "a", imap)
    try:
        server.start()
        first, second = server.pids()
        port = server.server.port("imap")
        greeted: Callable[[Raw], bool] = lambda raw: raw.greeting.startswith(b"* OK")
        waiting = [server.connect_to(worker, port, lambda: Raw(port), lambda raw: raw.sock, greeted) for worker in (first, second)]
        # One not logged in on each worker is the listener's two: a third is refused, wherever it lands
        # (per worker, each would let one more in), once every open and close is counted everywhere.
        wait_for(lambda: b"Too many connections waiting to log in" in _greeting(port), "a third waiting session refused", server.server, 10)
        for _ in range(6):
            assert b"Too many connections waiting to log in; try again later" in _greeting(port)
        # One logs in: it leaves the budget of those waiting, and a session is let in again.
        assert waiting[0].command(b"a", f"LOGIN {ALICE} {PASSWORD}".encode())[-1].startswith(b"a OK")
        wait_for(lambda: _greeting(port).startswith(b"* OK"), "a session let in again", server.server, 10)
        third = server.connect_to(first, port, lambda: Raw(port), lambda raw: raw.sock, greeted)
        # Three open across the two workers, the listener's max_connections.
        wait_for(lambda: b"Too many connections; try again later" in _greeting(port), "a fourth session refused", server.server, 10)
        for _ in range(6):
            assert b"Too many connections; try again later" in _greeting(port)
        for session in (*waiting, third):
            session.close()
    finally:
        server.stop()
