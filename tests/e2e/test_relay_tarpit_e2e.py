"""
End to end on loopback: a tarpit MX (every reply sent one byte a second)
serves three domains; a healthy MX serves a fourth. The real mailapp relays
to both. The tarpit may hold only its share of the outbound connections,
each ends at its reply deadline, and mail to the healthy MX keeps flowing
meanwhile. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.service_runner import TIMEOUT, ServiceProcess, listener

COMMAND_TIMEOUT = 4
PER_ADDRESS = 2
#: Seconds a tarpit connection must stay open before it is counted (see _Peers._tarpit).
COUNT_AFTER = 0.3


class _Peers:
    """Two asyncio SMTP servers on one background loop: the tarpit and a healthy MX."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.tarpit_open = 0
        self.tarpit_peak = 0
        self.tarpit_durations: list[float] = []
        self.healthy: list[tuple[float, str, int]] = []  # (time, recipient, tarpit connections open then)
        self.ports: dict[str, int] = {}
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(TIMEOUT)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve() -> None:
            tarpit = await asyncio.start_server(self._tarpit, "127.0.0.1", 0)
            healthy = await asyncio.start_server(self._healthy, "127.0.0.1", 0)
            self.ports = {"tarpit": tarpit.sockets[0].getsockname()[1], "healthy": healthy.sockets[0].getsockname()[1]}
            started.set()

        self.loop.run_until_complete(serve())
        self.loop.run_forever()

    async def _tarpit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        began = time.monotonic()
        # Watch for the client closing while we drip, so the count drops when it does, not at our next write.
        closed = asyncio.ensure_future(reader.read())
        # A connection the relay opens the moment it has cut another (its slot freed) can be
        # accepted here before this loop has read the cut one's end: the two would overlap in
        # our count though never in the relay's. So a connection counts once it has stayed
        # open a moment; one held past its share would be open for seconds, and still counted.
        await asyncio.wait([closed], timeout=COUNT_AFTER)
        self.tarpit_open += 1
        self.tarpit_peak = max(self.tarpit_peak, self.tarpit_open)
        try:
            for byte in b"220 tarpit.test " + b"." * 600 + b"\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.wait([closed], timeout=1)
                if closed.done():
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            closed.cancel()
            self.tarpit_open -= 1
            self.tarpit_durations.append(time.monotonic() - began)
            writer.close()

    async def _healthy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 healthy.test ESMTP\r\n")
        recipients: list[str] = []
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"RCPT":
                    recipients.append(line[9:].split(b">")[0].decode())
                if verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    while await reader.readline() not in (b".\r\n", b""):
                        pass
                    for recipient in recipients:
                        self.healthy.append((time.monotonic(), recipient, self.tarpit_open))
                    recipients = []
                    writer.write(b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                elif verb == b"EHLO":
                    writer.write(b"250-healthy.test\r\n250 8BITMIME\r\n")
                else:
                    writer.write(b"250 Ok\r\n")
        finally:
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)


@pytest.fixture
def peers() -> Iterator[_Peers]:
    running = _Peers()
    yield running
    running.stop()


def _wait(condition: Any, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic()


def test_a_tarpit_mx_holds_only_its_share_its_connections_end_at_the_reply_deadline_and_other_mail_flows(
    tmp_path: Any, peers: _Peers
) -> None:
    tarpit, healthy = peers.ports["tarpit"], peers.ports["healthy"]
    server = ServiceProcess(
        tmp_path,
        listener("mx", "smtp"),
        f"""
[relay]
trusted_networks = ["127.0.0.0/8"]
retry_schedule = [2]
max_connections = 6
max_connections_per_domain = 6
max_connections_per_address = {PER_ADDRESS}
command_timeout = {COMMAND_TIMEOUT}
session_timeout = 120
transports = {{ "one.test" = "127.0.0.1:{tarpit}", "two.test" = "127.0.0.1:{tarpit}", "three.test" = "127.0.0.1:{tarpit}", "healthy.test" = "127.0.0.1:{healthy}" }}
""",
    )
    server.start()
    try:
        with smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=TIMEOUT) as client:
            for domain in ("one.test", "two.test", "three.test"):
                for number in range(3):
                    client.sendmail("sender@example.org", [f"user{number}@{domain}"], b"Subject: slow\r\n\r\nhi\r\n")
            _wait(lambda: peers.tarpit_open == PER_ADDRESS, TIMEOUT, "the tarpit to hold its share")
            sent = time.monotonic()
            for number in range(3):
                client.sendmail("sender@example.org", [f"user{number}@healthy.test"], b"Subject: fast\r\n\r\nhi\r\n")
        arrived = _wait(lambda: len(peers.healthy) == 3, TIMEOUT, "mail to the healthy MX")
        assert arrived - sent < COMMAND_TIMEOUT  # before any tarpit connection could have reached its deadline
        assert all(open_then == PER_ADDRESS for _, _, open_then in peers.healthy)  # while the tarpit held its share
        _wait(lambda: len(peers.tarpit_durations) >= PER_ADDRESS, COMMAND_TIMEOUT + 3, "the tarpit connections to end")
        assert peers.tarpit_peak == PER_ADDRESS
        assert max(peers.tarpit_durations) < COMMAND_TIMEOUT + 1.5
    finally:
        server.terminate()
