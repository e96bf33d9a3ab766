"""
The ``login-burst`` workload (issue 21: "a burst of 200 cold logins pays
argon2id once per connection"): 200 logins at once, 20 for each of 10
accounts with their right passwords, through L{mailapp.accounts.Accounts}
with the production argon2id parameters and no login cache (every login
cold), once with the server's shared checks and once with one check per
login (the code before them), in a process each. Prints JSON.

Run: ``python -m bench.login_burst [--logins 200] [--accounts 10]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _one(logins: int, accounts_count: int, shared: bool) -> dict[str, Any]:
    from twisted.internet import defer, task

    from mailapp.accounts import Accounts, AccountsDatabase
    from mailapp.accounts.passwords import default_password_hasher

    result: dict[str, Any] = {}

    def main(reactor: Any) -> Any:
        path = Path(tempfile.mkdtemp()) / "accounts.sqlite3"
        hasher = default_password_hasher()
        database = AccountsDatabase(path, ["example.test"], hasher=hasher)
        for n in range(accounts_count):
            database.add_user(f"u{n}@example.test", f"password-{n}")
        database.close()
        accounts = Accounts(
            path, ["example.test"], reactor, hasher=hasher, auth_cache_seconds=0, max_queued_verifications=logins
        )
        if not shared:
            accounts._queuedVerify = accounts._boundedVerify  # type: ignore[method-assign]
        checks = [0]
        verify = accounts._verify

        def counted(*arguments: Any) -> Any:
            checks[0] += 1
            return verify(*arguments)

        accounts._verify = counted  # type: ignore[method-assign]
        started = time.monotonic()
        attempts = [
            accounts.authenticate(f"u{n % accounts_count}@example.test", f"password-{n % accounts_count}".encode())
            for n in range(logins)
        ]

        def done(outcomes: Any) -> None:
            result.update(
                seconds=time.monotonic() - started,
                argon2id_checks=checks[0],
                succeeded=sum(1 for ok, _ in outcomes if ok),
            )
            accounts.close()

        return defer.DeferredList(attempts).addCallback(done)

    try:
        task.react(lambda reactor: main(reactor).addCallback(lambda _: None))
    except SystemExit:  # react() always ends with one
        pass
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--accounts", type=int, default=10)
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    for mode in ("each", "shared"):
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(args.logins), str(args.accounts), mode],
            capture_output=True, text=True, timeout=600, check=True,
        )
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
        figures[f"{mode}_seconds"] = outcome["seconds"]
        figures[f"{mode}_argon2id_checks"] = outcome["argon2id_checks"]
        if outcome["succeeded"] != args.logins:
            raise RuntimeError(f"{args.logins - outcome['succeeded']} logins failed ({mode})")
    figures["speedup"] = figures["each_seconds"] / figures["shared_seconds"]
    print(json.dumps(figures))


_CHILD = """
import json, sys
from bench import login_burst
print(json.dumps(login_burst._one(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "shared")))
"""


if __name__ == "__main__":
    main()
