"""
The POP3 workload: one session that logs in, then times STAT, LIST, UIDL and
RETR of every message, one command at a time as a mail client does; then
RETR of every message again, pipelined (RFC 2449: every command sent in one
write, then every response read), as fetchmail and getmail do. A small
socket client rather than poplib, whose line-by-line reading would be what
we measured. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import time


class Client:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.line()

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buffer += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        if not line.startswith(b"+OK"):
            raise RuntimeError(f"unexpected reply {line!r}")
        return line

    def multiline_reply(self) -> bytes:
        """The rest of a multi-line response whose status line was read: its body, unstuffing left undone."""
        start = 0
        while True:
            if self.buffer.startswith(b".\r\n"):
                self.buffer = self.buffer[3:]
                return b""
            end = self.buffer.find(b"\r\n.\r\n", max(0, start - 4))
            if end >= 0:
                body, self.buffer = self.buffer[: end + 2], self.buffer[end + 5 :]
                return body
            start = len(self.buffer)
            self._fill()

    def command(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def multiline(self, text: str) -> bytes:
        self.command(text)
        return self.multiline_reply()

    def pipelined(self, commands: list[str]) -> list[bytes]:
        """Send every command in one write, then read every multi-line response, in order."""
        self.sock.sendall(b"".join(text.encode() + b"\r\n" for text in commands))
        bodies = []
        for _ in commands:
            self.line()
            bodies.append(self.multiline_reply())
        return bodies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    client = Client(args.host, args.port, args.timeout)
    client.command(f"USER {args.user}")
    client.command(f"PASS {args.password}")
    timings = {}
    start = time.perf_counter()
    count = int(client.command("STAT").split()[1])
    timings["stat_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    client.multiline("LIST")
    timings["list_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    client.multiline("UIDL")
    timings["uidl_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    octets = 0
    for number in range(1, count + 1):
        octets += len(client.multiline(f"RETR {number}"))
    timings["retr_seconds"] = time.perf_counter() - start
    timings["stat_list_retr_seconds"] = timings["stat_seconds"] + timings["list_seconds"] + timings["retr_seconds"]
    start = time.perf_counter()
    pipelined = sum(map(len, client.pipelined([f"RETR {number}" for number in range(1, count + 1)])))
    timings["pipelined_retr_seconds"] = time.perf_counter() - start
    if pipelined != octets:
        raise RuntimeError(f"pipelined RETRs returned {pipelined} octets, one at a time {octets}")
    client.command("QUIT")
    print(json.dumps({"messages": count, "octets": octets, **timings}))


if __name__ == "__main__":
    main()
