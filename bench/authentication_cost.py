"""
The MX's sender authentication, per message: what SPF, DKIM and DMARC cost
the server, timed directly (``python -m bench.authentication_cost``).

``make bench``'s SMTP workloads come from 127.0.0.1, which
``[authentication] exempt_networks`` exempts by default, so they never run
the checks; and with them on, their figure would be the DNS of the
machine's resolver. This times the checks themselves: one 4 KiB message
from a.test with two signatures (rsa-sha256 2048-bit and ed25519-sha256,
as mailapp's own signing makes them), SPF ``pass`` for HELO and MAIL FROM,
DMARC ``p=reject`` passing, its DNS answered at once from memory
(L{mailapp.testing.FakeResolver}). Two paths:

- ``inline``: the checks on this thread (CPU only: pyspf, dkimpy, DMARC, the field);
- ``threaded``: as the server runs them, on a worker pool, each DNS query
  handed to the reactor and waited for (L{mailapp.dnsthread}).

Prints the median and p90 in ms per message of each, and for DKIM alone.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from typing import Any

import dkim
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer, task
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool

from mailapp.authentication.checks import InboundChecks
from mailapp.authentication.dkim import verify_signatures
from mailapp.config import DEFAULT_AUTHENTICATION
from mailapp.dnsthread import ServiceDNS
from mailapp.testing import FakeResolver
from mailapp.testing.threads import SynchronousThreadPool


def _message() -> tuple[bytes, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ed = nacl.signing.SigningKey.generate()
    body = b"".join(b"line %04d of a four kilobyte message, some text to hash........\r\n" % i for i in range(60))
    text = (
        b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: cost\r\nDate: Tue, 01 Dec 2026 12:00:00 +0000\r\n"
        b"Message-ID: <cost@a.test>\r\n\r\n" + body
    )
    headers = [b"from", b"to", b"subject", b"date", b"message-id"]
    signed = dkim.sign(text, b"rsa", b"a.test", pem, include_headers=headers) + text
    signed = dkim.sign(signed, b"ed", b"a.test", base64.b64encode(bytes(ed)), include_headers=headers, signature_algorithm=b"ed25519-sha256") + signed
    zone = {
        "a.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
        "mail.a.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
        "rsa._domainkey.a.test": {"TXT": [_split("v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())]},
        "ed._domainkey.a.test": {"TXT": ["v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(ed.verify_key)).decode()]},
        "_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject"]},
    }
    return signed, zone


def _split(record: str) -> tuple[str, ...]:
    return tuple(record[i : i + 255] for i in range(0, len(record), 255))


def _summary(name: str, samples: list[float]) -> str:
    samples = sorted(samples)
    p90 = samples[int(len(samples) * 0.9)]
    return f"{name:<44} median {statistics.median(samples) * 1000:6.2f} ms   p90 {p90 * 1000:6.2f} ms   (n={len(samples)})"


def inline(message: bytes, zone: dict[str, Any], count: int) -> list[str]:
    clock = Clock()
    checks = InboundChecks(clock, ServiceDNS(clock, FakeResolver(zone)), SynchronousThreadPool(), "mx.b.test")
    whole, dkim_only = [], []
    for _ in range(count):
        started = time.perf_counter()
        check = checks.start(DEFAULT_AUTHENTICATION, "192.0.2.10", "mail.a.test", "alice@a.test")
        verdict: list[Any] = []
        check.finish(message).addCallback(verdict.append)
        whole.append(time.perf_counter() - started)
        assert b"dmarc=pass" in verdict[0].header and verdict[0].header.count(b"dkim=pass") == 2, verdict[0].header
        started = time.perf_counter()
        results = verify_signatures(message, ServiceDNS(clock, FakeResolver(zone)).lookup())
        dkim_only.append(time.perf_counter() - started)
        assert [r.result for r in results] == ["pass", "pass"]
    return [_summary("inline: SPF x2 + DKIM x2 + DMARC + field", whole), _summary("inline: DKIM x2 alone (rsa-2048, ed25519)", dkim_only)]


def threaded(message: bytes, zone: dict[str, Any], count: int) -> None:
    """Prints its line and exits (C{task.react})."""
    from twisted.internet import reactor

    pool = ThreadPool(minthreads=0, maxthreads=8, name="bench-authentication")
    pool.start()
    checks = InboundChecks(reactor, ServiceDNS(reactor, FakeResolver(zone)), pool, "mx.b.test")
    samples: list[float] = []

    @defer.inlineCallbacks
    def run(_: Any) -> Any:
        for _ in range(count):
            started = time.perf_counter()
            check = checks.start(DEFAULT_AUTHENTICATION, "192.0.2.10", "mail.a.test", "alice@a.test")
            verdict = yield check.finish(message)
            samples.append(time.perf_counter() - started)
            assert b"dmarc=pass" in verdict.header
        print(_summary("threaded: the same, on a pool, DNS via reactor", samples))
        pool.stop()

    task.react(lambda r: run(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    args = parser.parse_args()
    message, zone = _message()
    for _ in range(20):  # warm: imports, the suffix list, key parsing caches
        verify_signatures(message, ServiceDNS(Clock(), FakeResolver(zone)).lookup())
    print(f"one {len(message)}-byte message, {args.messages} times")
    for line in inline(message, zone, args.messages):
        print(line)
    threaded(message, zone, args.messages)


if __name__ == "__main__":
    main()
