"""
``[server] workers = 2`` and the MX's per-minute rates: messages accepted by
either worker count against one ``mx_messages_per_minute`` for the client
address (each worker tells the other through the parent), so the server as
a whole takes the rate, not twice it. Driven by smtplib, each connection put
on a chosen worker (the harness of L{tests.e2e.test_workers_e2e}).
"""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

from tests.e2e.test_workers_e2e import ALICE, Workers, pytestmark  # noqa: F401  (the Linux-only mark)
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
