"""
``make bench``: start mailapp on loopback, drive each workload from a separate
load-generator process, and print a table (also written as JSON).

Each workload runs ``--runs`` times (default 3) against a fresh state
directory; the table shows the median with min-max. Old state directories
are deleted only after the measured run, since mass unlinks just before a run
skew it. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import twisted

from bench import server as bench_server
from bench.imap10k import ROWS as IMAP10K_ROWS
from bench.imap10k import imap10k_workload
from bench.submission import submission_dkim_workload

USERS = [f"bench{i}@example.test" for i in range(10)]
ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cores": os.cpu_count(),
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor()),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "kernel": platform.release(),
    }


def run_generator(port: int, messages: int, size: int, concurrency: int, per_connection: int, maildirs: list[Path], timeout: float) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.smtp_load", "--port", str(port), "--messages", str(messages), "--size", str(size),
        "--concurrency", str(concurrency), "--per-connection", str(per_connection), "--timeout", str(timeout),
        "--expect", str(messages if maildirs else 0),
    ]
    for user in USERS:
        command += ["--recipient", user]
    for maildir in maildirs:
        command += ["--maildir", str(maildir)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=timeout + 30, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"load generator failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


#: A 20-rule Sieve script, none of whose rules matches the generator's messages: every
#: test runs and the implicit keep files each one in INBOX, where the generator counts it.
SIEVE_20_RULES = 'require ["fileinto", "imap4flags"];\n' + "".join(
    f'if anyof (header :contains "subject" "no-match-{n}", address :is "from" "nobody{n}@example.net") {{ fileinto "Rule{n}"; }}\n'
    for n in range(20)
)


def _install_sieve(state_dir: Path) -> None:
    from mailapp.sieve.scripts import ScriptStore, sieve_directory

    scripts = ScriptStore(sieve_directory(state_dir))
    for user in USERS:
        scripts.put(user, "rules", SIEVE_20_RULES)
        scripts.activate(user, "rules")


def smtp_workload(
    messages: int, size: int, concurrency: int, per_connection: int, extra: str = "", scanner: Any = None, sieve: bool = False,
    with_postfix: bool = False,
) -> Callable[[Path, float], dict[str, Any]]:
    """
    C{extra}: more of the server's config (``[spam]``, with ``--rspamd``); C{scanner}: the rspamd whose CPU is counted;
    C{sieve}: every recipient has L{SIEVE_20_RULES} active; C{with_postfix}: the same load against Postfix after
    mailapp's, in the same run (L{_against_postfix}).
    """

    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        server = bench_server.start(USERS, workdir, extra=extra, prepare=_install_sieve if sieve else None)
        try:
            cpu_before = server.cpu_seconds()
            rspamd_before = scanner.cpu_seconds() if scanner is not None else 0.0
            result = run_generator(server.ports["smtp"], messages, size, concurrency, per_connection, [server.maildir_new(u) for u in USERS], timeout)
            result["server_cpu_ms_per_message"] = (server.cpu_seconds() - cpu_before) * 1000 / messages
            if scanner is not None:
                result["rspamd_cpu_ms_per_message"] = (scanner.cpu_seconds() - rspamd_before) * 1000 / messages
            result["server_peak_rss_mb"] = server.peak_rss_bytes() / 2**20
        finally:
            server.stop()
        if with_postfix:
            result.update(_against_postfix(result, messages, size, concurrency, per_connection, timeout))
        result["_cleanup"] = server
        return result

    return run


#: The SMTP figures compared with Postfix's, and how the line labels them.
POSTFIX_ROWS = [("messages_per_second", "msg/s", "{:.0f}"), ("megabytes_per_second", "MB/s", "{:.1f}")]


def _against_postfix(ours: dict[str, Any], messages: int, size: int, concurrency: int, per_connection: int, timeout: float) -> dict[str, Any]:
    """
    The same generator against a private Postfix (L{bench.postfix_peer}),
    right after mailapp in the same run, until every message is a file in a
    ``new/``; Postfix's figures and the ratios (mailapp's over Postfix's:
    above 1 is faster). Skipped, with the reason, where Postfix cannot run.
    """
    from bench.postfix_peer import PostfixPeer, unavailable

    reason = unavailable()
    if reason is not None:
        print(f"  (no Postfix side by side: {reason}; --no-postfix skips it)")
        return {}
    peer = PostfixPeer(USERS)
    try:
        peer.start()
        cpu = peer.cpu_seconds()
        theirs = run_generator(peer.port, messages, size, concurrency, per_connection, [peer.maildir_new(u) for u in USERS], timeout)
        theirs["cpu_ms_per_message"] = (peer.cpu_seconds() - cpu) * 1000 / messages
        version = peer.version()
    finally:
        peer.stop()
        os.sync()  # the instance's files were just removed: their writeback is not the next run's to pay
    figures: dict[str, Any] = {"postfix_version": version, "postfix_cpu_ms_per_message": theirs["cpu_ms_per_message"]}
    line = []
    for key, label, fmt in POSTFIX_ROWS:
        figures[f"postfix_{key}"] = theirs[key]
        figures[f"postfix_ratio_{key}"] = ours[key] / max(theirs[key], 1e-9)
        line.append(f"{label} mailapp {fmt.format(ours[key])} postfix {fmt.format(theirs[key])} ratio {figures[f'postfix_ratio_{key}']:.2f}")
    print("  " + ";  ".join(line))
    return figures


def null_sink_workload(messages: int, size: int, concurrency: int, per_connection: int) -> Callable[[Path, float], dict[str, Any]]:
    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        sink = subprocess.Popen([sys.executable, "-m", "bench.null_sink"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            port = int(sink.stdout.readline())  # type: ignore[union-attr]
            return run_generator(port, messages, size, concurrency, per_connection, [], timeout)
        finally:
            sink.terminate()
            sink.wait(timeout=10)

    return run


#: The POP3 figures compared with Dovecot's, and how the table labels them.
POP3_ROWS = [
    ("stat_list_retr_seconds", "STAT+LIST+RETR x N, one at a time"),
    ("retr_seconds", "RETR x N, one at a time"),
    ("pipelined_retr_seconds", "RETR x N, pipelined"),
]


def _maildrop_bytes(maildir: Path) -> list[bytes]:
    """The messages of a Maildir (new/ and cur/), in the order of their names (arrival)."""
    files = [path for sub in ("new", "cur") if (maildir / sub).is_dir() for path in (maildir / sub).iterdir()]
    return [path.read_bytes() for path in sorted(files, key=lambda path: path.name)]


def _pop3_client(port: int, user: str, timeout: float) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.pop3_load", "--port", str(port), "--user", user, "--password", "bench-password", "--timeout", str(timeout)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout + 30,
    )
    if result.returncode != 0:
        raise RuntimeError(f"POP3 client failed: {result.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def pop3_workload(messages: int, with_dovecot: bool) -> Callable[[Path, float], dict[str, Any]]:
    """
    Fill one INBOX with C{messages} x 4 KiB over SMTP, then time one POP3
    session; then, when C{/usr/sbin/dovecot} exists, the same session against
    Dovecot's POP3 over a Maildir of the same bytes (the files mailapp
    stored), and the ratios (mailapp's time over Dovecot's).
    """

    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        from bench.imap10k import DOVECOT, PASSWORD, USER, Dovecot

        assert USER == USERS[0] and PASSWORD == "bench-password"
        server = bench_server.start(USERS, workdir)
        try:
            user = USERS[0]
            command = [
                sys.executable, "-m", "bench.smtp_load", "--port", str(server.ports["smtp"]), "--messages", str(messages),
                "--size", "4096", "--concurrency", "10", "--per-connection", "100", "--recipient", user,
                "--maildir", str(server.maildir_new(user)), "--expect", str(messages), "--timeout", str(timeout),
            ]
            subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=timeout + 30)
            stored = _maildrop_bytes(server.maildir_new(user).parent) if with_dovecot and DOVECOT.exists() else []
            # The full-text indexer's pass over the new mail would otherwise share the CPU with the session.
            settle = server.wait_quiet()
            cpu = server.cpu_seconds()
            figures = _pop3_client(server.ports["pop3"], user, timeout)
            figures["server_cpu_seconds"] = server.cpu_seconds() - cpu
            figures["settle_seconds"] = settle
            if figures["messages"] != messages:
                raise RuntimeError(f"expected {messages} messages, POP3 listed {figures['messages']}")
        finally:
            server.stop()
        if stored:
            # Not under C{workdir} (mode 0700): Dovecot's auth and mail processes run as other users.
            dovecot_root = Path(tempfile.mkdtemp(prefix="mailapp-bench-dovecot-pop3-"))
            dovecot = Dovecot(dovecot_root, stored, protocol="pop3")
            try:
                dovecot.start()
                theirs = _pop3_client(dovecot.port, USER, timeout)
            finally:
                dovecot.stop()
                shutil.rmtree(dovecot_root, ignore_errors=True)
            if theirs["messages"] != messages or theirs["octets"] != figures["octets"]:
                raise RuntimeError(f"Dovecot's maildrop differs: {theirs['messages']} messages, {theirs['octets']} octets")
            for key, label in POP3_ROWS:
                figures[f"dovecot_{key}"] = theirs[key]
                figures[f"ratio_{key}"] = figures[key] / max(theirs[key], 1e-6)
                print(f"  {label:38} mailapp {figures[key]:.3f} s  dovecot {theirs[key]:.3f} s  ratio {figures[f'ratio_{key}']:.2f}")
        figures["_cleanup"] = server
        return figures

    return run


def _run_json(command: list[str], timeout: float, what: str) -> dict[str, Any]:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=timeout, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed: {result.stderr[-3000:]}")
    return json.loads(result.stdout)


SEARCH_TERM = "quarterly"


def fill_maildir(maildir: Path, count: int, every: int = 100) -> int:
    """
    Write C{count} messages of about 4 KiB straight into C{maildir}/new, as a
    migration would (no UIDs in the names: the server's first open gives them).
    Every C{every}-th Subject carries L{SEARCH_TERM}. Returns the bytes written.
    """
    new = maildir / "new"
    new.mkdir(parents=True, exist_ok=True)
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    body = line * 48
    total = 0
    for n in range(count):
        subject = f"message {n} {SEARCH_TERM} report" if n % every == every - 1 else f"message {n}"
        data = (
            f"From: Sender {n} <sender{n}@remote.test>\r\nTo: bench0@example.test\r\nSubject: {subject}\r\n"
            f"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <{n}@remote.test>\r\n\r\n{body}"
        ).encode()
        (new / f"{1700000000 + n}.M{n}P1.bench").write_bytes(data)
        total += len(data)
    return total


def imap_workload(messages: int, bodies: int, pushes: int) -> Callable[[Path, float], dict[str, Any]]:
    """
    One user's INBOX of C{messages} x 4 KiB: C{messages} - 1 written as
    Maildir files before the server starts, the last delivered by SMTP (the
    server's first open of the mailbox, which indexes the files: timed apart).
    """

    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        user = USERS[0]
        written: dict[str, float] = {}

        def prepare(state_dir: Path) -> None:
            started = time.perf_counter()
            written["bytes"] = fill_maildir(state_dir / "mail" / "example.test" / user.split("@")[0], messages - 1)
            written["seconds"] = time.perf_counter() - started

        server = bench_server.start(
            [user], workdir, listeners={"smtp": ("smtp", "none"), "imap": ("imap", "none")},
            production_hash_users=[user], prepare=prepare,
        )
        try:
            figures = _run_json(
                [
                    sys.executable, "-m", "bench.imap_load", "--imap-port", str(server.ports["imap"]), "--smtp-port", str(server.ports["smtp"]),
                    "--user", user, "--messages", str(messages), "--bodies", str(bodies), "--pushes", str(pushes),
                    "--search-term", SEARCH_TERM, "--search-expect", str((messages - 1) // 100), "--timeout", str(min(timeout, 300)),
                ],
                timeout + 30, "IMAP generator",
            )
            figures["fill_seconds"] = written["seconds"]
            figures["inbox_megabytes"] = written["bytes"] / 1e6
            figures["server_peak_rss_mb"] = server.peak_rss_bytes() / 2**20
        finally:
            server.stop()
        figures["_cleanup"] = server
        return figures

    return run


def idle_workload(connections: int, users: int, pushes: int) -> Callable[[Path, float], dict[str, Any]]:
    """C{connections} IMAP sessions of C{users} users, all in IDLE at once; server RSS and push latency."""

    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        accounts = [f"idle{i}@example.test" for i in range(users)]
        server = bench_server.start(
            accounts, workdir, timeout=120, listeners={"smtp": ("smtp", "none"), "imap": ("imap", "none")},
            max_connections=connections + 100, production_hash_users=accounts,
        )
        try:
            figures = _run_json(
                [
                    sys.executable, "-m", "bench.idle_load", "--imap-port", str(server.ports["imap"]), "--smtp-port", str(server.ports["smtp"]),
                    "--server-pid", str(server.process.pid), "--users", str(users), "--connections", str(connections),
                    "--pushes", str(pushes), "--timeout", str(min(timeout, 120)),
                ],
                timeout + 30, "IDLE generator",
            )
            figures["server_open_files_limit"] = server.open_files_limit()
            figures["server_peak_rss_mb"] = server.peak_rss_bytes() / 2**20
        finally:
            server.stop()
        figures["_cleanup"] = server
        return figures

    return run


def relay_workload(count: int, size: int, connections: int | None = None) -> Callable[[Path, float], dict[str, Any]]:
    """
    Instance A with C{count} x C{size} entries already in its queue (written
    while A was stopped) relays them to instance B (A's [relay] transports
    sends b.test to B's SMTP listener, STARTTLS). Figure: C{count} divided by
    the time from A listening to the last file in B's Maildir.
    """

    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        recipient = "bob@b.test"
        b = bench_server.start([recipient], workdir, domain="b.test", hostname="mx.b.test", listeners={"smtp": ("smtp", "starttls")})
        a = None
        watcher = None
        try:
            fill: dict[str, Any] = {}

            def prepare(state_dir: Path) -> None:
                fill.update(
                    _run_json(
                        [sys.executable, "-m", "bench.relay_load", "fill", "--queue", str(state_dir / "queue"), "--count", str(count),
                         "--size", str(size), "--recipient", recipient],
                        120, "relay queue fill",
                    )
                )

            maildir = b.maildir_new(recipient)
            watcher = subprocess.Popen(
                [sys.executable, "-m", "bench.relay_load", "watch", "--maildir", str(maildir), "--expect", str(count), "--timeout", str(timeout)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            b_cpu = b.cpu_seconds()
            relay = f'[relay]\ntransports = {{ "b.test" = "127.0.0.1:{b.ports["smtp"]}" }}\nretry_schedule = [1]\n'
            if connections is not None:
                relay += (
                    f"max_connections = {connections}\nmax_connections_per_domain = {connections}\n"
                    f"max_connections_per_address = {connections}\n"
                )
            a = bench_server.start(["alice@a.test"], workdir, domain="a.test", hostname="mail.a.test", extra=relay, prepare=prepare)
            a_cpu = a.cpu_seconds()
            out, err = watcher.communicate(timeout=timeout + 30)
            if watcher.returncode != 0:
                raise RuntimeError(f"relay watcher failed: {err[-2000:]}")
            seen = json.loads(out)
            a_cpu, b_cpu = a.cpu_seconds() - a_cpu, b.cpu_seconds() - b_cpu
            deadline = time.monotonic() + 60
            envelopes = a.state_dir / "queue" / "envelopes"
            while any(envelopes.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = len(list(envelopes.iterdir()))
            if left:
                raise RuntimeError(f"{left} entries still in A's queue after every message reached B")
            elapsed = seen["last_file"] - a.listening_at
            figures = {
                "messages": count,
                "seconds": elapsed,
                "messages_per_second": count / elapsed,
                "relay_from_process_start_per_second": count / (seen["last_file"] - a.started_at),
                "relay_steady_per_second": (count - 1) / max(seen["last_file"] - seen["first_file"], 1e-6),
                "first_arrival_seconds": seen["first_file"] - a.listening_at,
                "a_startup_seconds": a.listening_at - a.started_at,
                "a_cpu_ms_per_message": a_cpu * 1000 / count,
                "b_cpu_ms_per_message": b_cpu * 1000 / count,
                "fill_seconds": fill.get("fill_seconds"),
                "server_peak_rss_mb": a.peak_rss_bytes() / 2**20,
            }
        finally:
            if watcher is not None and watcher.poll() is None:
                watcher.kill()
                watcher.wait(timeout=10)
            if a is not None:
                a.stop()
            b.stop()
        figures["_cleanup"] = [a, b]
        return figures

    return run


def dkim_sign_workload(count: int) -> Callable[[Path, float], dict[str, Any]]:
    """DKIM signing measured directly, in-process (the server-level figure is submission-dkim): L{bench.dkim_sign}."""

    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        return _run_json([sys.executable, "-m", "bench.dkim_sign", "--count", str(count)], timeout, "dkim signing")

    return run


def login_burst_workload(logins: int) -> Callable[[Path, float], dict[str, Any]]:
    """Cold logins at once, argon2id shared per account and password or paid per login: L{bench.login_burst}."""

    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        return _run_json([sys.executable, "-m", "bench.login_burst", "--logins", str(logins)], timeout, "login burst")

    return run


def workloads(args: argparse.Namespace) -> dict[str, tuple[str, Callable[[Path, float], dict[str, Any]]]]:
    n, big = args.messages, args.large_messages
    spam, rspamd = getattr(args, "spam_extra", ""), getattr(args, "rspamd_process", None)
    scanned = " (scanned by rspamd)" if spam else ""
    # Postfix scans nothing: beside a scanned mailapp its figure would compare two different jobs.
    postfix = not args.no_postfix and not spam
    peer = "; Postfix side by side when installed" if postfix else ""
    return {
        "smtp-4k": (
            f"SMTP ingest, {n} x 4 KiB, {args.concurrency} connections, 50 per connection{scanned}{peer}",
            smtp_workload(n, 4096, args.concurrency, 50, spam, rspamd, with_postfix=postfix),
        ),
        "smtp-4k-sieve": (
            f"SMTP ingest, {n} x 4 KiB, {args.concurrency} connections, 50 per connection, each of the 10 recipients with a 20-rule Sieve script",
            smtp_workload(n, 4096, args.concurrency, 50, spam, rspamd, sieve=True),
        ),
        "smtp-4k-single": (
            f"SMTP ingest, {n // 5} x 4 KiB, {args.concurrency} connections, 1 per connection{scanned}{peer}",
            smtp_workload(n // 5, 4096, args.concurrency, 1, spam, rspamd, with_postfix=postfix),
        ),
        "smtp-100k": (
            f"SMTP ingest, {big} x 100 KiB, {args.concurrency} connections, 10 per connection{scanned}{peer}",
            smtp_workload(big, 100 * 1024, args.concurrency, 10, spam, rspamd, with_postfix=postfix),
        ),
        "pop3": (f"POP3, one session over {args.pop3_messages} x 4 KiB: STAT, LIST, UIDL, RETR of each, then RETR of each pipelined; Dovecot 2.3 side by side when installed", pop3_workload(args.pop3_messages, not args.no_dovecot)),
        "imap": (f"IMAP, one INBOX of {args.imap_messages} x 4 KiB: LOGIN+SELECT, UID FETCH 1:* (UID FLAGS), FETCH {args.imap_bodies} BODY.PEEK[], SEARCH SUBJECT, IDLE push x {args.imap_pushes}", imap_workload(args.imap_messages, args.imap_bodies, args.imap_pushes)),
        "imap-10k": (
            f"IMAP, one INBOX of {args.imap10k_messages} varied messages, mailapp and (when installed) Dovecot 2.3 side by side: "
            "SELECT, FETCH 1:* (FLAGS UID RFC822.SIZE), (ENVELOPE), (BODYSTRUCTURE), UID SEARCH SUBJECT, UID SEARCH BODY",
            imap10k_workload(args.imap10k_messages, not args.no_dovecot),
        ),
        "idle": (f"IMAP IDLE, {args.idle_connections} connections of {args.idle_users} users at once; {args.imap_pushes} deliveries to 5 of them", idle_workload(args.idle_connections, args.idle_users, args.imap_pushes)),
        "relay": (f"relay, {args.relay_messages} x 4 KiB from A's queue into B (loopback, STARTTLS)", relay_workload(args.relay_messages, 4096, args.relay_connections)),
        "null-sink-4k": (f"generator alone against a null sink, {n} x 4 KiB", null_sink_workload(n, 4096, args.concurrency, 50)),
        "login-burst": ("200 cold logins at once, 20 for each of 10 accounts, production argon2id: one check per login against shared checks", login_burst_workload(200)),
        "dkim-sign": ("DKIM signatures of a 4 KiB message, 1,000 per algorithm, in-process", dkim_sign_workload(1000)),
        "submission-dkim": (
            f"submission (AUTH PLAIN) to remote recipients, queued durably, {n} x 4 KiB, {args.concurrency} connections, "
            "50 per connection, then delivered by the relay to a null sink (signed as it leaves): unsigned, "
            "signed in the signing process (the default) and signed in threads (signing_process = false), "
            "one server each, in rotating order",
            submission_dkim_workload(n, 4096, args.concurrency, 50),
        ),
    }


FIGURES = [
    ("messages_per_second", "msg/s", "{:.0f}"),
    ("megabytes_per_second", "MB/s", "{:.1f}"),
    *[(f"postfix_{key}", f"postfix {label}", fmt) for key, label, fmt in POSTFIX_ROWS],
    *[(f"postfix_ratio_{key}", f"ratio {label}", "{:.2f}") for key, label, _ in POSTFIX_ROWS],
    ("server_cpu_ms_per_message", "srv CPU ms/msg", "{:.2f}"),
    ("postfix_cpu_ms_per_message", "postfix CPU ms/msg", "{:.2f}"),
    ("rspamd_cpu_ms_per_message", "rspamd CPU ms/msg", "{:.2f}"),
    ("server_peak_rss_mb", "srv peak RSS MiB", "{:.0f}"),
    ("generator_cpu_seconds", "gen CPU s", "{:.2f}"),
    ("seconds", "wall s", "{:.2f}"),
    ("stat_seconds", "STAT s", "{:.4f}"),
    ("list_seconds", "LIST s", "{:.4f}"),
    ("uidl_seconds", "UIDL s", "{:.4f}"),
    ("retr_seconds", "RETR all s", "{:.3f}"),
    ("stat_list_retr_seconds", "STAT+LIST+RETR s", "{:.3f}"),
    ("pipelined_retr_seconds", "RETR piped s", "{:.3f}"),
    ("server_cpu_seconds", "srv CPU s", "{:.3f}"),
    *[(f"dovecot_{key}", f"dove {label}", "{:.3f}") for key, label in (("stat_list_retr_seconds", "STAT+LIST+RETR s"), ("retr_seconds", "RETR all s"), ("pipelined_retr_seconds", "RETR piped s"))],
    *[(f"ratio_{key}", f"ratio {label}", "{:.2f}") for key, label in (("stat_list_retr_seconds", "STAT+LIST+RETR"), ("retr_seconds", "RETR all"), ("pipelined_retr_seconds", "RETR piped"))],
    ("first_open_seconds", "first open s", "{:.2f}"),
    ("first_login_select_seconds", "1st LOGIN+SEL s", "{:.3f}"),
    ("first_login_seconds", "1st LOGIN s", "{:.3f}"),
    ("login_select_seconds", "2nd LOGIN+SEL s", "{:.4f}"),
    ("login_seconds", "2nd LOGIN s", "{:.4f}"),
    ("uid_fetch_seconds", "UID FETCH 1:* s", "{:.3f}"),
    ("fetch_bodies_seconds", "FETCH bodies s", "{:.3f}"),
    ("search_seconds", "SEARCH SUBJ s", "{:.3f}"),
    ("push_p50_ms", "push p50 ms", "{:.1f}"),
    ("push_p99_ms", "push p99 ms", "{:.1f}"),
    ("push_from_data_p50_ms", "push p50 DATA ms", "{:.1f}"),
    ("first_logins_seconds", "first logins s", "{:.2f}"),
    ("connect_seconds", "connect+IDLE s", "{:.2f}"),
    ("server_rss_before_mb", "srv RSS before MiB", "{:.0f}"),
    ("server_rss_mb", "srv RSS MiB", "{:.0f}"),
    ("server_rss_kb_per_connection", "srv KiB/conn", "{:.1f}"),
    ("idle_push_p50_ms", "push p50 (all) ms", "{:.1f}"),
    ("idle_push_p99_ms", "push p99 (all) ms", "{:.1f}"),
    ("idle_push_first_p50_ms", "push p50 (1st) ms", "{:.1f}"),
    ("relay_steady_per_second", "first-last msg/s", "{:.0f}"),
    ("relay_from_process_start_per_second", "from A exec msg/s", "{:.0f}"),
    ("first_arrival_seconds", "1st arrival s", "{:.2f}"),
    ("a_cpu_ms_per_message", "A CPU ms/msg", "{:.2f}"),
    ("b_cpu_ms_per_message", "B CPU ms/msg", "{:.2f}"),
    ("rsa_sha256_ms", "rsa-sha256 ms", "{:.2f}"),
    ("ed25519_sha256_ms", "ed25519 ms", "{:.2f}"),
    ("both_ms", "both (1 msg) ms", "{:.2f}"),
    ("rsa_sha256_dkimpy_pure_python_ms", "pure-Py RSA ms", "{:.1f}"),
    ("each_seconds", "per login s", "{:.2f}"),
    ("each_argon2id_checks", "per login checks", "{:.0f}"),
    ("shared_seconds", "shared s", "{:.2f}"),
    ("shared_argon2id_checks", "shared checks", "{:.0f}"),
    ("speedup", "speedup", "{:.1f}"),
    ("unsigned_messages_per_second", "unsigned msg/s", "{:.0f}"),
    ("signed_messages_per_second", "signed msg/s", "{:.0f}"),
    ("signed_share", "signed/unsigned", "{:.2f}"),
    ("threads_messages_per_second", "threads msg/s", "{:.0f}"),
    ("threads_share", "threads/unsigned", "{:.2f}"),
    ("unsigned_server_cpu_ms_per_message", "unsigned CPU ms", "{:.2f}"),
    ("signed_server_cpu_ms_per_message", "signed CPU ms", "{:.2f}"),
    ("signed_signing_process_cpu_ms_per_message", "+ signer CPU ms", "{:.2f}"),
    ("threads_server_cpu_ms_per_message", "threads CPU ms", "{:.2f}"),
    ("unsigned_delivery_messages_per_second", "delivery unsigned msg/s", "{:.0f}"),
    ("signed_delivery_messages_per_second", "delivery signed msg/s", "{:.0f}"),
    ("signed_delivery_share", "delivery signed/unsigned", "{:.2f}"),
    ("threads_delivery_share", "delivery threads/unsigned", "{:.2f}"),
    ("unsigned_delivery_server_cpu_ms_per_message", "delivery unsigned CPU ms", "{:.2f}"),
    ("signed_delivery_server_cpu_ms_per_message", "delivery signed CPU ms", "{:.2f}"),
    ("signed_delivery_signing_process_cpu_ms_per_message", "+ delivery signer CPU ms", "{:.2f}"),
    ("threads_delivery_server_cpu_ms_per_message", "delivery threads CPU ms", "{:.2f}"),
    ("load_average_before", "load avg (1 min)", "{:.2f}"),
    *[(f"{server}_{key}", f"{server[:4]} {label}", "{:.4f}") for server in ("mailapp", "dovecot") for key, label in IMAP10K_ROWS],
]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key, _, _ in FIGURES:
        values = [r[key] for r in runs if key in r]
        if values:
            summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="smtp-4k,smtp-4k-single,smtp-100k,pop3,null-sink-4k", help="comma-separated names")
    parser.add_argument("--messages", type=int, default=5000, help="4 KiB messages per run (default 5000)")
    parser.add_argument("--large-messages", type=int, default=1000, help="100 KiB messages per run (default 1000)")
    parser.add_argument("--pop3-messages", type=int, default=1000, help="messages in the POP3 maildrop (default 1000)")
    parser.add_argument("--imap-messages", type=int, default=10_000, help="messages in the IMAP INBOX (default 10000)")
    parser.add_argument("--imap-bodies", type=int, default=1000, help="full bodies fetched in one FETCH (default 1000)")
    parser.add_argument("--imap-pushes", type=int, default=100, help="messages delivered during IDLE, one at a time (default 100)")
    parser.add_argument("--imap10k-messages", type=int, default=10_000, help="messages in the imap-10k INBOX (default 10000)")
    parser.add_argument("--no-dovecot", action="store_true", help="imap-10k, pop3: mailapp alone, even when /usr/sbin/dovecot exists")
    parser.add_argument(
        "--no-postfix", action="store_true",
        help="smtp-4k, smtp-4k-single, smtp-100k: mailapp alone, even when Postfix is installed (it needs root)",
    )
    parser.add_argument("--idle-connections", type=int, default=2000, help="IMAP connections in IDLE at once (default 2000; up to 10000)")
    parser.add_argument("--idle-users", type=int, default=100, help="users those connections log in as (one argon2id check each; default 100)")
    parser.add_argument("--relay-messages", type=int, default=1000, help="entries in A's queue (default 1000)")
    parser.add_argument(
        "--relay-connections", type=int, default=None,
        help="A's relay.max_connections_per_domain (and max_connections) for the relay workload (default: the config's, 10)",
    )
    parser.add_argument(
        "--rspamd", action="store_true",
        help="scan the SMTP workloads' mail with a real rspamd, started on loopback as the tests start it (tests/rspamd_runner.py)",
    )
    parser.add_argument(
        "--workers", type=_worker_counts, default=[1, 2],
        help="[server] workers of every server started, comma-separated: each workload runs once per count "
        "(default 1,2: one process, then a parent and two workers; issue 21)",
    )
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on each run, seconds")
    parser.add_argument("--output", default=str(ROOT / "bench-results" / "latest.json"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mailapp-bench-"))
    rspamd = None
    if args.rspamd:
        from tests.rspamd_runner import RspamdProcess

        rspamd = RspamdProcess(workdir / "rspamd")
        rspamd.start()
        args.spam_extra = f'\n[spam]\nrspamd_url = "{rspamd.url}"\n'
        args.rspamd_process = rspamd
    try:
        return _measure(parser, args, workdir)
    finally:
        if rspamd is not None:
            rspamd.stop()
            shutil.rmtree(workdir / "rspamd", ignore_errors=True)
            os.rmdir(workdir) if workdir.exists() and not any(workdir.iterdir()) else None


def _worker_counts(text: str) -> list[int]:
    """``--workers 1,2``: the worker counts each workload runs with."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of worker counts: {text!r}") from None
    if not counts or any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError(f"worker counts are positive integers: {text!r}")
    return counts


def _measure(parser: argparse.ArgumentParser, args: argparse.Namespace, workdir: Path) -> int:
    available = workloads(args)
    chosen = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in available]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(available)}")

    info = machine()
    info["load_average"] = os.getloadavg()
    print(
        f"mailapp bench on {info['cores']} cores, {info['cpu']}, Python {info['python']}, Twisted {info['twisted']}, "
        f"workers = {', '.join(map(str, args.workers))}, load average {' '.join(f'{n:.2f}' for n in info['load_average'])}"
    )
    results: dict[str, Any] = {"machine": info, "workloads": {}, "rspamd": bool(args.rspamd), "workers": args.workers}
    previous: Any = None
    for name, title, run, workers in [(n, *available[n], w) for n in chosen for w in args.workers]:
        bench_server.WORKERS = workers
        runs = []
        for _ in range(args.runs):
            result = run(workdir, args.timeout)
            server = result.pop("_cleanup", None)
            for old in previous if isinstance(previous, list) else [previous]:
                if old is not None:
                    bench_server.remove(old)
            previous = server
            runs.append(result)
        label_of_run = name if len(args.workers) == 1 else f"{name} (workers = {workers})"
        summary = {"title": title, "workers": workers, **summarize(runs), "all_runs": runs}
        results["workloads"][label_of_run] = summary
        print(f"\n{label_of_run}: {title}")
        for key, label, fmt in FIGURES:
            figure = summary.get(key)
            if figure:
                print(f"  {label:18} {fmt.format(figure['median']):>10}   ({fmt.format(figure['min'])} - {fmt.format(figure['max'])})")
    for old in previous if isinstance(previous, list) else [previous]:
        if old is not None:
            bench_server.remove(old)
    os.rmdir(workdir) if not any(workdir.iterdir()) else None
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(f"\nwritten to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
