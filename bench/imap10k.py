"""
The ``imap-10k`` workload (issue 19): one INBOX of 10,000 varied messages
(plain, multipart/alternative, attachments, forwarded messages, encoded
subjects), the same bytes written into mailapp's Maildir and into Debian's
Dovecot 2.3's when ``/usr/sbin/dovecot`` exists, and the same client
(L{bench.imap10k_load}) timing SELECT, index-only FETCH, ENVELOPE,
BODYSTRUCTURE, the two SEARCHes, two SORTs, THREAD REFERENCES and a QRESYNC
resync after 10 flag changes (RFC 7162; Dovecot 2.3 has it) against each,
side by side.

Dovecot runs as our own instance: a config of its own in a temporary
directory, listening on 127.0.0.1 only, on a free high port, plaintext
LOGIN against a passwd-file, Maildir, no plugins (no full-text index: its
SEARCH BODY reads the messages as ours does); it is stopped after the run.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

SUBJECT_WORD = "quarterly"
BODY_WORD = "invoice"
DOVECOT = Path("/usr/sbin/dovecot")
USER = "bench0@example.test"
PASSWORD = "bench-password"

#: (key in the client's JSON, label in the table)
ROWS = [
    ("select_cold", "SELECT (first, indexes)"),
    ("select_warm", "SELECT (warm, best of 3)"),
    ("fetch_index_first", "FETCH 1:* (FLAGS UID RFC822.SIZE) 1st"),
    ("fetch_index", "FETCH 1:* (FLAGS UID RFC822.SIZE)"),
    ("fetch_envelope_first", "FETCH 1:* (ENVELOPE) 1st"),
    ("fetch_envelope", "FETCH 1:* (ENVELOPE)"),
    ("fetch_bodystructure_first", "FETCH 1:* (BODYSTRUCTURE) 1st"),
    ("fetch_bodystructure", "FETCH 1:* (BODYSTRUCTURE)"),
    ("search_subject_first", "UID SEARCH SUBJECT 1st"),
    ("search_subject", "UID SEARCH SUBJECT"),
    ("search_body_first", "UID SEARCH BODY 1st"),
    ("search_body", "UID SEARCH BODY"),
    ("sort_subject_first", "UID SORT (SUBJECT) 1st"),
    ("sort_subject", "UID SORT (SUBJECT)"),
    ("sort_date_first", "UID SORT (REVERSE DATE) 1st"),
    ("sort_date", "UID SORT (REVERSE DATE)"),
    ("thread_references_first", "UID THREAD REFERENCES 1st"),
    ("thread_references", "UID THREAD REFERENCES"),
    ("select_qresync_first", "SELECT (QRESYNC) after 10 changes 1st"),
    ("select_qresync", "SELECT (QRESYNC) after 10 changes"),
    ("search_body_settled", "UID SEARCH BODY settled"),
]

_WORDS = (
    "meeting agenda project budget review team update schedule release notes draft proposal customer "
    "support server backup network storage migration deadline travel lunch office report figures"
).split()
_NAMES = ["Alice Martin", "Bob Chen", "Carol Dubois", "Dave O'Neil", "Eve Nakamura", "Frank Müller", "Grace Hopper"]


def _text(rng: random.Random, lines: int, word: str | None) -> str:
    out = []
    for n in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 13))]
        if word is not None and n == lines // 2:
            words.insert(3, word)
        out.append(" ".join(words).capitalize() + ".")
    return "\r\n".join(out) + "\r\n"


def _address(rng: random.Random, n: int) -> str:
    name = rng.choice(_NAMES)
    local = name.split()[0].lower()
    if not name.isascii():
        encoded = base64.b64encode(name.encode()).decode()
        return f"=?UTF-8?B?{encoded}?= <{local}{n % 50}@remote.test>"
    return f"{name} <{local}{n % 50}@remote.test>"


def make_message(n: int) -> bytes:
    """Message C{n} of the INBOX (deterministic): headers of a real client, one of five shapes."""
    rng = random.Random(n)
    subject = f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} {n}"
    if n % 100 == 99:
        subject = f"{SUBJECT_WORD} {subject}"
    if n % 7 == 3:
        subject = "=?UTF-8?Q?R=C3=A9sum=C3=A9_" + subject.replace(" ", "_") + "?="
    word = BODY_WORD if n % 50 == 17 else None
    headers = [
        "Return-Path: <" + _address(rng, n).split("<")[1],
        f"Received: from mx{n % 9}.remote.test (mx{n % 9}.remote.test [192.0.2.{n % 250 + 1}])\r\n\tby mail.example.test with ESMTPS id {n:08x}\r\n\tfor <{USER}>; Mon, 7 Feb 1994 21:52:25 -0800",
        f"From: {_address(rng, n)}",
        f"To: Bench User <{USER}>" + (f", {_address(rng, n + 1)}" if n % 3 == 0 else ""),
    ]
    if n % 4 == 1:
        headers.append(f"Cc: {_address(rng, n + 2)}, {_address(rng, n + 3)}")
    headers += [
        f"Subject: {subject}",
        f"Date: {['Mon', 'Tue', 'Wed', 'Thu', 'Fri'][n % 5]}, {n % 28 + 1} Nov 2026 {n % 24:02d}:{n % 60:02d}:07 +0100",
        f"Message-ID: <{n}.{rng.randrange(1 << 30)}@remote.test>",
    ]
    if n % 5 == 2:
        headers.append(f"In-Reply-To: <{n - 1}.1@remote.test>")
    headers.append("MIME-Version: 1.0")
    shape = n % 10
    if shape < 5:  # plain text
        headers.append("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit")
        body = _text(rng, rng.randint(10, 60), word)
    elif shape < 8:  # multipart/alternative
        text = _text(rng, rng.randint(10, 40), word)
        html = "<html><body>" + text.replace("\r\n", "<br>\r\n") + "</body></html>\r\n"
        headers.append(f'Content-Type: multipart/alternative; boundary="alt-{n}"')
        body = (
            f"--alt-{n}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{text}"
            f"--alt-{n}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}--alt-{n}--\r\n"
        )
    elif shape == 8:  # an attachment
        text = _text(rng, rng.randint(5, 20), word)
        blob = base64.encodebytes(rng.randbytes(rng.randint(2000, 12000))).decode().replace("\n", "\r\n")
        headers.append(f'Content-Type: multipart/mixed; boundary="mix-{n}"')
        body = (
            f"This is a multi-part message in MIME format.\r\n--mix-{n}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{text}"
            f'--mix-{n}\r\nContent-Type: application/pdf; name="report-{n}.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
            f'Content-Disposition: attachment; filename="report-{n}.pdf"\r\n\r\n{blob}--mix-{n}--\r\n'
        )
    else:  # a forwarded message
        inner = f"From: {_address(rng, n + 5)}\r\nSubject: inner {n}\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n\r\n" + _text(rng, 8, None)
        headers.append(f'Content-Type: multipart/mixed; boundary="fwd-{n}"')
        body = (
            f"--fwd-{n}\r\nContent-Type: text/plain\r\n\r\n{_text(rng, 4, word)}"
            f"--fwd-{n}\r\nContent-Type: message/rfc822\r\n\r\n{inner}--fwd-{n}--\r\n"
        )
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def write_maildir(maildir: Path, messages: list[bytes], owner: tuple[int, int] | None = None, seen_by_a_client: bool = False) -> None:
    """
    The messages as files in C{maildir}/new (no UIDs in the names: the
    server's first look gives them), or with C{seen_by_a_client} in cur/
    with an empty info (``:2,``), as a Maildir some client has read is.
    """
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(messages):
        # The sizes in the name, as Dovecot's own deliveries (and mailapp's) name them (the files are CRLF:
        # both are the length). Without them Dovecot read every file for its sizes, at each SELECT too
        # (330-400 ms), which is not its figure on a mailbox it delivered itself.
        name = f"{1790000000 + n}.M{n}P1.bench,S={len(data)},W={len(data)}"
        path = maildir / "cur" / (name + ":2,") if seen_by_a_client else maildir / "new" / name
        path.write_bytes(data)
        os.utime(path, (1790000000 + n, 1790000000 + n))
    if owner is not None:
        for root, dirs, files in os.walk(maildir.parent):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), *owner)
        os.chown(maildir.parent, *owner)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_DOVECOT_CONFIG = """
protocols = {protocol}
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
first_valid_uid = 1
mail_plugins =
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%n
}}
service {protocol}-login {{
  inet_listener {protocol} {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener {protocol}s {{
    port = 0
  }}
}}
"""


class Dovecot:
    """
    Our own Dovecot: config, users and Maildir in C{root}; L{start} and
    L{stop}. It speaks C{protocol} (C{"imap"}, or C{"pop3"} for the POP3
    workload) on L{port}.
    """

    def __init__(self, root: Path, messages: list[bytes], protocol: str = "imap") -> None:
        self.root = root
        self.port = _free_port()
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        owner = (os.getuid(), os.getgid())
        if os.getuid() == 0:
            import pwd

            nobody = pwd.getpwnam("nobody")
            owner = (nobody.pw_uid, nobody.pw_gid)
        (root / "dovecot.conf").write_text(_DOVECOT_CONFIG.format(protocol=protocol, root=root, port=self.port, uid=owner[0], gid=owner[1]))
        (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        # In cur/, as a Maildir a client has already read (mailapp's are in new/: its first open indexes them).
        write_maildir(root / "home" / USER.split("@")[0] / "Maildir", messages, owner if os.getuid() == 0 else None, seen_by_a_client=True)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.process = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(self.root / "dovecot.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited early; see {self.root / 'dovecot.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not listen within {timeout} s")

    def cpu_seconds(self) -> float:
        return 0.0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _client(port: int, count: int, timeout: float, root: Path) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.imap10k_load", "--port", str(port), "--user", USER, "--password", PASSWORD,
        "--messages", str(count), "--subject-word", SUBJECT_WORD, "--body-word", BODY_WORD, "--timeout", str(timeout),
    ]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=timeout * 5, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"imap-10k client failed: {result.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def print_table(mailapp: dict[str, Any], dovecot: dict[str, Any] | None) -> None:
    print("\n  (1st: the first time; the others: the best of the repeats after it)")
    print(f"  {'operation':40} {'mailapp ms':>11} {'dovecot ms':>11} {'ratio':>7}")
    for key, label in ROWS:
        ours = mailapp[key] * 1000
        if dovecot is not None:
            theirs = dovecot[key] * 1000
            print(f"  {label:40} {ours:11.1f} {theirs:11.1f} {ours / max(theirs, 1e-3):7.1f}")
        else:
            print(f"  {label:40} {ours:11.1f} {'-':>11} {'-':>7}")
    for key in (
        "search_subject_matches", "search_body_matches", "select_qresync_fetches", "select_qresync_vanished",
        "search_body_settled_matches", "search_body_settled_after",
    ):
        other = dovecot.get(key) if dovecot is not None else None
        print(f"  {key}: mailapp {mailapp.get(key)}" + (f", dovecot {other}" if other is not None else ""))


def imap10k_workload(count: int, with_dovecot: bool) -> Callable[[Path, float], dict[str, Any]]:
    """Both servers, one after the other, over the same C{count} messages; the figures flat, per server."""

    def run(workdir: Path, timeout: float) -> dict[str, Any]:
        from bench import server as bench_server

        root = Path(__file__).resolve().parent.parent
        started = time.perf_counter()
        messages = [make_message(n) for n in range(count)]
        figures: dict[str, Any] = {"messages": count, "inbox_megabytes": sum(map(len, messages)) / 1e6}
        figures["generate_seconds"] = time.perf_counter() - started
        bound = min(timeout, 120.0)

        def prepare(state_dir: Path) -> None:
            write_maildir(state_dir / "mail" / "example.test" / USER.split("@")[0], messages)

        server = bench_server.start([USER], workdir, listeners={"imap": ("imap", "none")}, prepare=prepare)
        try:
            cpu = server.cpu_seconds()
            ours = _client(server.ports["imap"], count, bound, root)
            figures["server_cpu_seconds"] = server.cpu_seconds() - cpu
            figures["server_peak_rss_mb"] = server.peak_rss_bytes() / 2**20
        finally:
            server.stop()
        figures.update({f"mailapp_{key}": value for key, value in ours.items()})
        theirs = None
        if with_dovecot and DOVECOT.exists():
            # Not under C{workdir} (mode 0700): Dovecot's auth and mail processes run as other users.
            dovecot_root = Path(tempfile.mkdtemp(prefix="mailapp-bench-dovecot-"))
            dovecot = Dovecot(dovecot_root, messages)
            try:
                dovecot.start()
                theirs = _client(dovecot.port, count, bound, root)
            finally:
                dovecot.stop()
                shutil.rmtree(dovecot_root, ignore_errors=True)
            figures.update({f"dovecot_{key}": value for key, value in theirs.items()})
            figures["dovecot_version"] = subprocess.run([str(DOVECOT), "--version"], capture_output=True, text=True).stdout.strip()
        print_table(ours, theirs)
        figures["_cleanup"] = server
        return figures

    return run
