"""
The MX's sender authentication end to end: ``make bench``'s smtp-4k
ingest, once with loopback exempt (the default: no checks) and once with
every client checked, interleaved (``python -m bench.authentication_e2e``).

With the checks on, the server's DNS is a name server of our own on
loopback (``[relay] nameservers``), answering from memory: bench.test's SPF
(``ip4:127.0.0.0/8``) and DMARC (``p=reject``), so every message gets SPF
for its HELO and MAIL FROM, DKIM ``none`` (the generator does not sign:
``bench.authentication_cost`` times verification), DMARC ``pass`` by SPF,
the field, and is held in memory until the end of DATA. What this adds to
a message is the checks' pipeline: two SPF checks on the pool from MAIL
FROM on, their UDP queries through the reactor, the hop for DMARC.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import server as bench_server
from bench.__main__ import ROOT, USERS, run_generator

ZONE = {
    "bench.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
    "load.bench.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
    "_dmarc.bench.test": {"TXT": ["v=DMARC1; p=reject"]},
}


def serve_dns() -> None:
    """A name server for L{ZONE} on a free UDP port of 127.0.0.1; prints the port, runs until killed."""
    from twisted.internet import reactor
    from twisted.names import dns, server

    from mailapp.testing import FakeResolver

    factory = server.DNSServerFactory(clients=[FakeResolver(ZONE)])
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(port.getHost().port, flush=True)
    reactor.run()


def one_run(checked: bool, dns_port: int, messages: int, workdir: Path) -> dict[str, Any]:
    extra = f'[relay]\nnameservers = ["127.0.0.1:{dns_port}"]\n'
    if checked:
        extra += "[authentication]\nexempt_networks = []\n"
    server = bench_server.start(USERS, workdir, extra=extra)
    try:
        before = server.cpu_seconds()
        result = run_generator(server.ports["smtp"], messages, 4096, 20, 50, [server.maildir_new(u) for u in USERS], 300.0)
        result["server_cpu_ms_per_message"] = (server.cpu_seconds() - before) * 1000 / messages
        if checked:
            sample = next(server.maildir_new(USERS[0]).iterdir()).read_bytes()
            assert b"dmarc=pass header.from=bench.test" in sample, sample[:600]
    finally:
        server.stop()
    bench_server.remove(server)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve-dns", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_dns:
        serve_dns()
        return
    dns = subprocess.Popen([sys.executable, "-m", "bench.authentication_e2e", "--serve-dns"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        port = int(dns.stdout.readline())  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory(prefix="mailapp-bench-") as directory:
            for round_ in range(1, args.rounds + 1):
                for checked in (False, True):
                    result = one_run(checked, port, args.messages, Path(directory))
                    print(
                        f"round {round_} {'checked ' if checked else 'exempt  '}"
                        f" {result['messages_per_second']:7.0f} msg/s   server CPU {result['server_cpu_ms_per_message']:.2f} ms/msg",
                        flush=True,
                    )
    finally:
        dns.terminate()
        dns.wait(timeout=10)


if __name__ == "__main__":
    main()
