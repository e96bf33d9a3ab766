"""
Fault injection for the relay's at-least-once promise: a real mailapp
process relays messages to a peer SMTP server in this test, and is killed
(SIGKILL) again and again while it does, and restarted over the same state.

The peer counts deliveries per Message-ID. After each kill the test looks at
what only SMTP's own window can explain (RFC 1047): messages the peer has
taken (and answered 250) since the previous kill that the queue on disk
still lists as pending.
Each of those is sent again after the restart; nothing else may be. The
window holds at most one transaction per relay connection, so no kill can
account for more duplicates than there are connections. Every wait is
bounded; the whole test takes well under a minute.
"""

from __future__ import annotations

import email.parser
import json
import random
import smtplib
import socket
import socketserver
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from mailapp.relay.queue import PENDING, read_envelope
from tests.service_runner import TIMEOUT, ServiceProcess, listener

pytestmark = pytest.mark.timeout(90)

MESSAGES = 300
KILLS = 8
#: Relay connections to the peer: each can have one transaction in SMTP's window.
CONNECTIONS = 2
DEADLINE = 60.0


class CountingPeer:
    """A next hop that takes every message (PIPELINING, no delay) and counts it per Message-ID before its 250."""

    def __init__(self, port: int) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        peer = self

        class Session(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    self.converse()
                except OSError:
                    pass  # the sender was killed

            def converse(self) -> None:
                self.wfile.write(b"220 peer.test ESMTP\r\n")
                while True:
                    line = self.rfile.readline(4096)
                    if not line:
                        return
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        self.wfile.write(b"250-peer.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                    elif verb == b"DATA":
                        self.wfile.write(b"354 go ahead\r\n")
                        if not peer.take(self.rfile):
                            return  # the sender died mid-DATA: nothing was taken
                        self.wfile.write(b"250 2.0.0 taken\r\n")
                    elif verb == b"QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:  # HELO, MAIL, RCPT, RSET, NOOP
                        self.wfile.write(b"250 ok\r\n")

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            request_queue_size = 64  # every relay connection at once, after each restart

        self.server = Server(("127.0.0.1", port), Session, bind_and_activate=False)
        self.server.daemon_threads = True

    def take(self, stream) -> bool:
        """Read one message's data; count it if it ended with the final dot (else the sender died mid-message)."""
        lines = []
        while True:
            line = stream.readline(65536)
            if not line:
                return False
            if line == b".\r\n":
                break
            lines.append(line)
        headers = email.parser.BytesHeaderParser().parsebytes(b"".join(lines))
        with self.lock:
            self.counts[str(headers["Message-ID"])] += 1
        return True

    def start(self) -> None:
        self.server.server_bind()
        self.server.server_activate()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def taken(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _pending_on_disk(queue: Path) -> set[str]:
    """The Message-IDs of every queued message with a recipient still pending, as a restart would see them."""
    found = set()
    for path in (queue / "envelopes").glob("*.json"):
        envelope = read_envelope(path)
        if any(r.state == PENDING for r in envelope.recipients):
            head = (queue / "messages" / envelope.id).read_bytes().split(b"\r\n\r\n", 1)[0]
            found.add(str(email.parser.BytesHeaderParser().parsebytes(head + b"\r\n\r\n")["Message-ID"]))
    return found


def _done(peer: CountingPeer, queue: Path, ids: list[str]) -> bool:
    return set(ids) <= set(peer.taken()) and not list((queue / "envelopes").glob("*.json"))


def test_sigkills_while_relaying_duplicate_only_what_smtps_window_holds(tmp_path: Path) -> None:
    started = time.monotonic()
    port = _free_port()
    peer = CountingPeer(port)
    server = ServiceProcess(
        tmp_path,
        listener("smtp", "smtp"),
        "[relay]\n"
        f'transports = {{ "peer.test" = "127.0.0.1:{port}" }}\n'
        'trusted_networks = ["127.0.0.0/8"]\n'
        "retry_schedule = [1]\n"
        f"max_connections_per_domain = {CONNECTIONS}\n",
    )
    queue = server.state_dir / "queue"
    ids = [f"<{number}.faults@example.test>" for number in range(MESSAGES)]
    rng = random.Random()
    in_window: list[int] = []
    taken_at_last_kill: Counter[str] = Counter()
    server.start()
    try:
        # Queue everything while the peer is not listening yet: every message waits for its retry.
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as client:
            for message_id in ids:
                body = f"Message-ID: {message_id}\r\nSubject: fault {message_id}\r\n\r\nbody\r\n".encode()
                assert client.sendmail("sender@example.test", ["user@peer.test"], body) == {}
        peer.start()

        while len(in_window) < KILLS and time.monotonic() - started < DEADLINE / 2:
            # Kill at a random moment while the relay is sending: after a few more deliveries, plus a random delay.
            before = sum(peer.taken().values())
            wanted = before + rng.randint(1, 25)
            while sum(peer.taken().values()) < wanted and time.monotonic() - started < DEADLINE / 2:
                if set(ids) <= set(peer.taken()):
                    break
                time.sleep(0.001)
            if _done(peer, queue, ids):
                break  # nothing left to relay
            time.sleep(rng.uniform(0, 0.02))
            server.kill()
            time.sleep(0.05)  # a message the peer was reading when we died is counted by now
            taken = peer.taken()
            # Taken (again) since the last kill and still pending: this kill landed in its window.
            fresh = {m for m in _pending_on_disk(queue) if taken[m] > taken_at_last_kill[m]}
            in_window.append(len(fresh))
            taken_at_last_kill = taken
            server.start()

        while time.monotonic() - started < DEADLINE:
            if _done(peer, queue, ids):
                break
            time.sleep(0.05)
        taken = peer.taken()
        log = server.log()
    finally:
        if server.process is not None and server.process.poll() is None:
            server.terminate()
        peer.stop()

    duplicates = sum(count - 1 for count in taken.values())
    print(
        json.dumps(
            {
                "messages": MESSAGES,
                "kills": len(in_window),
                "in_window_per_kill": in_window,
                "duplicates": duplicates,
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )
    assert sorted(taken) == sorted(ids), "a message never arrived\n" + log[-3000:]
    assert not list((queue / "envelopes").glob("*.json")), "the queue did not empty"
    assert len(in_window) >= 4, f"only {len(in_window)} kills landed while relaying"
    # Only SMTP's window may send a message twice, and it holds one transaction per connection.
    assert duplicates <= sum(in_window)
    assert all(count <= CONNECTIONS for count in in_window), in_window
    assert time.monotonic() - started < DEADLINE + 5
