"""
``python -m bench.dkim_sign``: the cost of DKIM-signing one message, measured
directly (the server-level figure is the submission-dkim workload, L{bench.submission}): 1,000 signatures
of a 4 KiB message with each algorithm, as L{mailapp.dkim.signing} makes
them, and dkimpy's own pure-Python RSA for comparison. Also how much of
the signing holds the GIL: a thread counting in a loop while another signs,
against the same loop alone (1.0: signing never held it up).

Prints one JSON object; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mailapp.dkim.keys import KeyStore
from mailapp.dkim.signing import dkimpy_sign_one, sign_message, sign_one


def _message(size: int) -> bytes:
    head = (
        b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: a benchmark\r\n"
        b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench@a.test>\r\n\r\n"
    )
    line = b"x" * 76 + b"\r\n"
    return head + line * ((size - len(head)) // len(line))


def _per_signature(function: Any, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        function()
    return (time.perf_counter() - started) / count * 1000


def _commit_rate(state: Path, keys: KeyStore, message: bytes, count: int, sign: bool) -> float:
    """Messages/s through Router -> signer -> Queue.prepare/publish, 20 in flight."""
    from twisted.internet import defer, reactor, task

    from mailapp.delivery import Router
    from mailapp.dkim import DkimSigner
    from mailapp.pools import WorkerPools
    from mailapp.relay.queue import Queue
    from mailapp.testing import FakeAccounts, RecordingStore

    pools = WorkerPools(reactor)
    queue = Queue(state / f"queue-{sign}-{time.monotonic_ns()}", reactor, threadpool=pools.queue)
    router = Router(FakeAccounts(["a.test"]), RecordingStore(), queue=queue)
    router.signer = DkimSigner(keys, reactor, pools.signing, enabled=sign)

    @defer.inlineCallbacks
    def one() -> Any:
        transaction = router.start("alice@a.test", relay_allowed=True, authenticated="alice@a.test")
        yield transaction.addRecipient("bob@b.test")
        transaction.open().write(message)
        yield transaction.commit()

    @defer.inlineCallbacks
    def run() -> Any:
        started = time.perf_counter()
        sender = task.Cooperator()
        work = (one() for _ in range(count))
        yield defer.DeferredList([sender.coiterate(work) for _ in range(20)])
        return count / (time.perf_counter() - started)

    rate: list[float] = []

    def done(result: Any) -> None:
        rate.append(result)
        pools.stop()
        reactor.stop()

    reactor.callWhenRunning(lambda: run().addBoth(done))
    reactor.run()
    return rate[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--commits", type=int, default=0, help="also time N submission-to-relay commits, signing on and off")
    parser.add_argument("--one-commit-run", choices=("signed", "unsigned"), help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_commit_run:
        run_state = Path(args.state)
        rate = _commit_rate(run_state, KeyStore(run_state), _message(args.size), args.commits, args.one_commit_run == "signed")
        print(json.dumps({"rate": rate}))
        return
    with tempfile.TemporaryDirectory() as state:
        store = KeyStore(Path(state))
        store.generate("a.test", "bench")
        keys = store.signing_keys("a.test")
        assert keys is not None
        message = _message(args.size)
        rsa, ed25519 = keys.keys
        figures = {
            "message_bytes": len(message),
            "signatures": args.count,
            "rsa_sha256_ms": _per_signature(lambda: sign_one(message, rsa), args.count),
            "ed25519_sha256_ms": _per_signature(lambda: sign_one(message, ed25519), args.count),
            "both_ms": _per_signature(lambda: sign_message(message, keys), args.count),
            "rsa_sha256_dkimpy_pure_python_ms": _per_signature(lambda: dkimpy_sign_one(message, rsa), max(args.count // 10, 1)),
        }
        if args.commits:
            figures.update(_commit_rates(Path(state), store, message, args.commits))
    print(json.dumps(figures, indent=1))


def _commit_rates(state: Path, keys: KeyStore, message: bytes, count: int) -> dict[str, Any]:
    """Both rates in one reactor run each is impossible (a reactor runs once): a subprocess each, alternately."""
    import subprocess
    import sys

    rates: dict[str, list[float]] = {"signed": [], "unsigned": []}
    for _ in range(2):
        for name in ("unsigned", "signed"):
            done = subprocess.run(
                [sys.executable, "-m", "bench.dkim_sign", "--one-commit-run", name, "--state", str(state), "--commits", str(count), "--size", str(len(message))],
                capture_output=True, text=True, check=True, timeout=600,
            )
            rates[name].append(json.loads(done.stdout)["rate"])
    return {f"commits_per_second_{name}": values for name, values in rates.items()}


if __name__ == "__main__":
    main()
