"""
The store in a crash loop: a real mailapp process takes mail by SMTP from
several pipelining senders while two IMAP clients COPY, MOVE, STORE and
EXPUNGE between INBOX and Archive, and is killed (SIGKILL) at random moments
again and again, each time restarted over the same state, the clients
reconnecting.

What the clients were told decides what must hold at the end (server up,
everything quiet), read through IMAP and from the disk:

- every Message-ID whose ``250`` arrived is in some folder, unless it was
  marked ``\\Deleted`` and an EXPUNGE that could cover it was sent (its
  reply lost to a kill counts: the expunge may have committed);
- a Message-ID is in at most 1 + (COPYs of it answered OK or cut short by a
  kill) places: a MOVE never leaves a duplicate, a refused COPY adds none;
- per folder, UIDs are unique; a UID never comes back with another message
  or after it went; a message new since a client's last look has a UID above
  every UID that client saw there before (UIDs only increase, never reused);
  UIDNEXT never goes down; UIDVALIDITY never changes;
- the index and the Maildir agree: a row for every file, a file for every
  row, and IMAP shows exactly the index.

The RNG is seeded (``CRASH_LOOP_SEED`` to replay a run); the seed and the
figures are printed. Every wait is bounded; the whole test is meant for CI
(about a minute on two cores).
"""

from __future__ import annotations

import json
import os
import random
import re
import smtplib
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailapp.store.index import INDEX_NAME
from mailapp.store.names import folder_directory
from tests.imap_helpers import Raw
from tests.service_runner import TIMEOUT, ServiceProcess, listener

pytestmark = pytest.mark.timeout(120)

USER = "alice@example.test"
PASSWORD = "crash-loop-secret"
LISTENERS = listener("smtp", "smtp") + listener("imap", "imap", allow_plaintext_auth=True)
EXTRA = "\n[limits]\nmax_connections_per_ip = 200\n"
FOLDERS = {"INBOX": "", "Archive": ".Archive"}

#: At least this many SIGKILLs, and at least this many messages acknowledged (250) by SMTP. The
#: issue asked for 10,000 in a minute; on the shared 2-core machine the server ingests about 300
#: small messages a second with nothing else running, and each kill costs about 2 s (1 s to start
#: again, about 1 s for the first open of a mailbox of thousands of messages), so a minute with 20
#: kills reaches 5,500-7,500 (7,482 in 75 s under a load average of 4.5). Since issue 19's and 18's
#: work a start opens more per mailbox (the full-text index file, schema 4's triggers, the Sieve
#: scripts), and clean-clone runs reached 4,443 and 5,020 (the kills' restarts 33 of the 70 s): the
#: floor is the load the kills must land under, not a throughput target (make bench measures that).
KILLS = 20
MESSAGES = 3_000
#: Parallel SMTP senders (connections), and IMAP clients changing the folders.
SENDERS = 12
IMAP_CLIENTS = 2
#: Seconds an IMAP client waits between two changes, at most (the CPU is shared with the deliveries).
PAUSE = 0.05
#: Seconds the server runs between two kills: uniform in this range.
UPTIME = (0.2, 1.8)
#: The loop stops here whatever it reached (the asserts then say what is missing). A clean-clone
#: CI run reached 2,824 in 70 s (20 kills in the first 55 s, then ~100 a second), a quiet machine
#: 3,000 in 61 s: the bound leaves the slower machine room to finish the same load.
DEADLINE = 90.0

_FETCHED = re.compile(rb"^\* \d+ FETCH \(.*?UID (\d+).*?message-id: *<([^>\r\n]+)>", re.IGNORECASE | re.DOTALL)
_FETCHED_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


class Disconnected(Exception):
    """The server went away (killed) in the middle of a conversation."""


@dataclass
class World:
    """What every thread shares: where the server is now, and when to stop."""

    ports: dict[str, int] | None = None
    generation: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self) -> tuple[int, dict[str, int]] | None:
        with self.lock:
            return None if self.ports is None else (self.generation, dict(self.ports))

    def wait(self, after: int) -> tuple[int, dict[str, int]] | None:
        """The server's ports once it is up in a generation after C{after}, or None when stopping."""
        while not self.stop.is_set():
            now = self.current()
            if now is not None and now[0] > after:
                return now
            time.sleep(0.02)
        return None


@dataclass
class Ledger:
    """What the clients were told, for the final verdict."""

    acknowledged: list[str] = field(default_factory=list)
    attempts: int = 0
    #: Message-ID -> COPYs of it answered OK or cut short (each may have added one copy).
    copies: Counter[str] = field(default_factory=Counter)
    #: Message-IDs a STORE +FLAGS (\Deleted) was sent for, with the time it was sent.
    doomed: dict[str, float] = field(default_factory=dict)
    #: Message-IDs named by a UID EXPUNGE answered OK or cut short.
    uid_expunged: set[str] = field(default_factory=set)
    #: Send times of plain EXPUNGEs answered OK or cut short (each covers whatever was doomed before it).
    expunges: list[float] = field(default_factory=list)
    #: (command, outcome) -> count; outcome is OK, NO or cut (no reply: the server was killed).
    commands: Counter[tuple[str, str]] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    #: folder -> UIDVALIDITY, from the first SELECT on.
    uidvalidity: dict[str, int] = field(default_factory=dict)
    #: folder -> [(when the SELECT's reply had arrived, UIDNEXT it reported, who)]. Two clients'
    #: SELECTs overlap: a reply says nothing about the state before its command was sent.
    uidnext: dict[str, list[tuple[float, int, str]]] = field(default_factory=lambda: defaultdict(list))
    #: (folder, uidvalidity) -> uid -> Message-ID, every pairing ever fetched.
    names: dict[tuple[str, int], dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    #: (folder, uidvalidity) -> uid -> when a client's full listing had shown it gone (absent after being there).
    gone: dict[tuple[str, int], dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def violate(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)


# -- SMTP senders -------------------------------------------------------------------------------------


_ENVELOPE = b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<" + USER.encode() + b">\r\nDATA\r\n"


def _send_loop(world: World, ledger: Ledger, number: int, seed: int) -> None:
    """
    One SMTP connection at a time, pipelining (RFC 2920): MAIL, RCPT and
    DATA in one write, and the next message's three with the end of this
    one's data, so each message costs about one round trip. A fresh
    Message-ID per attempt, counted once its 250 has arrived.
    """
    generation, attempt = 0, 0
    while not world.stop.is_set():
        now = world.current()
        if now is None:
            time.sleep(0.02)
            continue
        generation, ports = now
        try:
            client = smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=TIMEOUT)
        except OSError:
            world.wait(generation)
            continue
        try:
            client.ehlo("sender.remote.test")
            client.send(_ENVELOPE)
            while True:
                replies = [client.getreply()[0] for _ in range(3)]
                if replies != [250, 250, 354]:
                    if replies[2] == 354:
                        client.send(b".\r\n")
                        client.getreply()
                    client.send(b"RSET\r\n")
                    client.getreply()
                    if world.stop.is_set():
                        break
                    client.send(_ENVELOPE)
                    continue
                attempt += 1
                message_id = f"{seed}.{number}.{attempt}@crash.test"
                with ledger.lock:
                    ledger.attempts += 1
                last = world.stop.is_set()
                client.send(
                    f"Message-ID: <{message_id}>\r\nSubject: crash loop {number}/{attempt}\r\n"
                    f"From: s@remote.test\r\n\r\nbody {attempt}\r\n.\r\n".encode() + (b"" if last else _ENVELOPE)
                )
                code, _ = client.getreply()
                if code == 250:
                    with ledger.lock:
                        ledger.acknowledged.append(message_id)
                if last:
                    break
        except (OSError, smtplib.SMTPException):
            pass  # killed: whatever had no 250 yet is not counted
        finally:
            try:
                client.close()
            except OSError:
                pass
        world.wait(generation)


# -- IMAP clients -------------------------------------------------------------------------------------


class ImapClient:
    """One IMAP session at a time; each lost connection (a kill) ends it, and the next one logs in again."""

    def __init__(self, world: World, ledger: Ledger, rng: random.Random, name: str) -> None:
        self.world, self.ledger, self.rng, self.name = world, ledger, rng, name
        self.raw: Raw | None = None
        self.tags = 0
        self.generation = 0
        #: folder -> this client's last full listing (uidvalidity, uids), for "new UIDs only go up".
        self.listing: dict[str, tuple[int, set[int]]] = {}

    def command(self, text: bytes) -> list[bytes]:
        assert self.raw is not None
        self.tags += 1
        tag = b"%s%d" % (self.name.encode(), self.tags)
        try:
            return self.raw.command(tag, text)
        except (OSError, AssertionError) as e:  # Raw says AssertionError for a closed connection
            raise Disconnected(str(e)) from e

    def run(self) -> None:
        generation = 0
        while not self.world.stop.is_set():
            now = self.world.current()
            if now is None:
                time.sleep(0.02)
                continue
            generation, ports = now
            self.generation = generation
            try:
                self.raw = Raw(ports["imap"])
                reply = self.command(b"LOGIN " + USER.encode() + b" " + PASSWORD.encode())
                if not reply[-1].split(b" ", 2)[1:2] == [b"OK"]:
                    raise Disconnected(repr(reply[-1]))
                while not self.world.stop.is_set():
                    self.one_change()
                    time.sleep(self.rng.uniform(0, PAUSE))
            except (Disconnected, OSError):
                pass
            finally:
                if self.raw is not None:
                    self.raw.close()
                    self.raw = None
            self.world.wait(generation)

    def select(self, folder: str) -> tuple[int, int, float]:
        """SELECT C{folder}: (messages, UIDVALIDITY, when it was sent); checks UIDVALIDITY and UIDNEXT."""
        sent = time.monotonic()
        lines = self.command(b"SELECT " + folder.encode())
        if not lines[-1].split(b" ")[1] == b"OK":
            raise Disconnected(repr(lines[-1]))
        arrived = time.monotonic()
        text = b"\n".join(lines)
        exists = int(re.search(rb"\* (\d+) EXISTS", text).group(1))
        validity = int(re.search(rb"UIDVALIDITY (\d+)", text).group(1))
        uidnext = int(re.search(rb"UIDNEXT (\d+)", text).group(1))
        who = f"{self.name} in server generation {self.generation}, {exists} messages"
        ledger = self.ledger
        with ledger.lock:
            first = ledger.uidvalidity.setdefault(folder, validity)
            if first != validity:
                ledger.violations.append(f"{folder}: UIDVALIDITY {first} became {validity} ({who})")
            before = [seen for seen in ledger.uidnext[folder] if seen[0] < sent]
            if before:
                highest = max(before, key=lambda seen: seen[1])
                if uidnext < highest[1]:
                    ledger.violations.append(f"{folder}: UIDNEXT went down from {highest[1]} ({highest[2]}) to {uidnext} ({who})")
            ledger.uidnext[folder].append((arrived, uidnext, who))
        return exists, validity, sent

    def list_uids(self, folder: str, validity: int, selected: float) -> list[int]:
        """
        Every UID of the folder selected at C{selected}; checks that UIDs new
        since this client's last listing only went up, and that no UID any
        client saw go before that SELECT was sent is back.
        """
        lines = self.command(b"UID SEARCH ALL")
        if not lines[-1].split(b" ")[1] == b"OK":
            raise Disconnected(repr(lines[-1]))
        arrived = time.monotonic()
        [found] = [line for line in lines if line.startswith(b"* SEARCH")]
        uids = [int(word) for word in found.split()[2:]]
        key = (folder, validity)
        ledger = self.ledger
        with ledger.lock:
            if len(set(uids)) != len(uids):
                ledger.violations.append(f"{folder}: a UID listed twice: {sorted(u for u, n in Counter(uids).items() if n > 1)}")
            gone = ledger.gone[key]
            back = sorted(uid for uid in uids if gone.get(uid, selected) < selected)
            if back:
                ledger.violations.append(f"{folder}: UIDs {back[:10]} came back after they went ({self.name})")
            before = self.listing.get(folder)
            if before is not None and before[0] == validity:
                previous = before[1]
                highest = max(previous, default=0)
                low = sorted(uid for uid in set(uids) - previous if uid <= highest)
                if low:
                    ledger.violations.append(f"{folder}: new UIDs {low[:10]} not above {highest}, the highest seen before ({self.name})")
                for uid in previous - set(uids):
                    gone.setdefault(uid, arrived)
            self.listing[folder] = (validity, set(uids))
        return uids

    def fetch(self, folder: str, validity: int, uids: list[int]) -> dict[int, tuple[str, bytes]]:
        """UID -> (Message-ID, flags) of C{uids}; checks that a UID always names the same message."""
        wanted = b",".join(b"%d" % uid for uid in uids)
        lines = self.command(b"UID FETCH " + wanted + b" (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        if not lines[-1].split(b" ")[1] == b"OK":
            raise Disconnected(repr(lines[-1]))
        found = {}
        for line in lines[:-1]:
            match = _FETCHED.search(line)
            if match:
                flags = _FETCHED_FLAGS.search(line)
                found[int(match.group(1))] = (match.group(2).decode(), flags.group(1) if flags else b"")
        names = self.ledger.names[(folder, validity)]
        with self.ledger.lock:
            for uid, (message_id, _) in found.items():
                known = names.setdefault(uid, message_id)
                if known != message_id:
                    self.ledger.violations.append(f"{folder}: UID {uid} was <{known}>, now <{message_id}>")
        return found

    def outcome(self, kind: str, text: bytes) -> str:
        """Send one change; OK, NO, or cut (the server died before it answered)."""
        try:
            reply = self.command(text)[-1]
        except Disconnected:
            with self.ledger.lock:
                self.ledger.commands[(kind, "cut")] += 1
            raise
        verdict = reply.split(b" ")[1].decode()
        with self.ledger.lock:
            self.ledger.commands[(kind, verdict)] += 1
        return verdict

    def one_change(self) -> None:
        rng, ledger = self.rng, self.ledger
        folder = rng.choice(list(FOLDERS))
        other = next(name for name in FOLDERS if name != folder)
        _, validity, selected = self.select(folder)
        uids = self.list_uids(folder, validity, selected)
        if not uids:
            time.sleep(0.05)
            return
        start = rng.randrange(len(uids))
        chosen = uids[start : start + rng.randint(1, 25)]
        found = self.fetch(folder, validity, chosen)
        chosen = [uid for uid in chosen if uid in found]
        if not chosen:
            return
        ids = [found[uid][0] for uid in chosen]
        uid_set = b",".join(b"%d" % uid for uid in chosen)
        kind = rng.choices(["COPY", "MOVE", "STORE", "EXPUNGE"], weights=[2, 3, 3, 2])[0]
        if kind == "COPY":
            # Counted before the reply: a kill may cut it short after its commit (or its intent record).
            with ledger.lock:
                ledger.copies.update(ids)
            if self.outcome("COPY", b"UID COPY " + uid_set + b" " + other.encode()) != "OK":
                with ledger.lock:
                    ledger.copies.subtract(ids)
        elif kind == "MOVE":
            self.outcome("MOVE", b"UID MOVE " + uid_set + b" " + other.encode())
        elif kind == "STORE":
            flag = rng.choice([b"\\Seen", b"\\Flagged", b"$Crash", b"Later"])
            sign = rng.choice([b"+", b"-"])
            self.outcome("STORE", b"UID STORE " + uid_set + b" " + sign + b"FLAGS (" + flag + b")")
        else:
            with ledger.lock:
                for message_id in ids:
                    ledger.doomed.setdefault(message_id, time.monotonic())
            if self.outcome("STORE", b"UID STORE " + uid_set + b" +FLAGS.SILENT (\\Deleted)") != "OK":
                return
            if rng.random() < 0.5:
                with ledger.lock:
                    ledger.uid_expunged.update(ids)
                self.outcome("EXPUNGE", b"UID EXPUNGE " + uid_set)
            else:
                with ledger.lock:
                    ledger.expunges.append(time.monotonic())
                self.outcome("EXPUNGE", b"EXPUNGE")


# -- the final state ----------------------------------------------------------------------------------


def _final_listing(server: ServiceProcess) -> tuple[dict[str, list[tuple[int, str]]], dict[str, int]]:
    """folder -> [(uid, Message-ID)] in sequence order, and folder -> UIDVALIDITY, through IMAP."""
    raw = Raw(server.port("imap"))
    try:
        assert raw.command(b"l", b"LOGIN " + USER.encode() + b" " + PASSWORD.encode())[-1].startswith(b"l OK")
        listing = raw.command(b"L", b'LIST "" "*"')
        names = sorted(line.rsplit(b" ", 1)[1].strip(b'"').decode() for line in listing[:-1])
        assert set(FOLDERS) <= set(names), listing
        found, validities = {}, {}
        for folder in names:
            selected = raw.command(b"s", b"SELECT " + folder.encode())
            assert selected[-1].startswith(b"s OK"), selected
            text = b"\n".join(selected)
            validities[folder] = int(re.search(rb"UIDVALIDITY (\d+)", text).group(1))
            pairs = []
            if int(re.search(rb"\* (\d+) EXISTS", text).group(1)):
                lines = raw.command(b"f", b"FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                assert lines[-1].startswith(b"f OK"), lines[-1]
                for line in lines[:-1]:
                    match = _FETCHED.search(line)
                    assert match, line
                    pairs.append((int(match.group(1)), match.group(2).decode()))
            found[folder] = pairs
        raw.command(b"o", b"LOGOUT")
        return found, validities
    finally:
        raw.close()


def _disk_against_index(server: ServiceProcess) -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, set[int]]]:
    """folder -> message file names on disk, folder -> file names the index lists, folder -> the index's UIDs."""
    mailbox = server.maildir(USER)
    connection = sqlite3.connect(f"file:{mailbox / INDEX_NAME}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT folder, uid, filename FROM messages").fetchall()
        folders = [name for (name,) in connection.execute("SELECT name FROM folders")]
    finally:
        connection.close()
    on_disk = {
        folder: {f"{sub}/{name}" for sub in ("new", "cur") for name in os.listdir(folder_directory(mailbox, folder) / sub)}
        for folder in folders
    }
    directories = sorted(p.name for p in mailbox.iterdir() if p.is_dir() and p.name.startswith("."))
    assert directories == sorted(folder_directory(mailbox, f).name for f in folders if f != "INBOX"), directories
    listed: dict[str, set[str]] = defaultdict(set)
    uids: dict[str, set[int]] = defaultdict(set)
    for folder, uid, filename in rows:
        listed[folder].add(filename)
        uids[folder].add(uid)
    return on_disk, dict(listed), dict(uids)


def _usage_against_rows(server: ServiceProcess) -> tuple[tuple[int, int], tuple[int, int]]:
    """The usage total the quota reads, and a count of the index's rows, in one read transaction."""
    connection = sqlite3.connect(f"file:{server.maildir(USER) / INDEX_NAME}?mode=ro", uri=True, isolation_level=None)
    try:
        connection.execute("BEGIN")
        kept = connection.execute("SELECT messages, bytes FROM usage WHERE id = 0").fetchone()
        counted = connection.execute("SELECT count(*), coalesce(sum(size), 0) FROM messages").fetchone()
        connection.execute("COMMIT")
    finally:
        connection.close()
    return tuple(kept), tuple(counted)


def test_sigkills_under_smtp_and_imap_load_lose_nothing_acknowledged_duplicate_nothing_moved_and_never_reuse_uids(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("CRASH_LOOP_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"crash loop seed {seed} (CRASH_LOOP_SEED={seed} replays the schedule)")
    rng = random.Random(seed)
    started = time.monotonic()
    server = ServiceProcess(tmp_path, LISTENERS, EXTRA)
    server.add_users({USER: PASSWORD})
    server.start()
    raw = Raw(server.port("imap"))
    assert raw.command(b"l", b"LOGIN " + USER.encode() + b" " + PASSWORD.encode())[-1].startswith(b"l OK")
    assert raw.command(b"c", b"SELECT Archive")[-1].startswith(b"c OK")  # a special folder: always there
    raw.close()

    world, ledger = World(ports=dict(server.ports), generation=1), Ledger()
    threads = [threading.Thread(target=_send_loop, args=(world, ledger, n, seed), daemon=True) for n in range(SENDERS)]
    clients = [ImapClient(world, ledger, random.Random(rng.random()), f"c{n}") for n in range(IMAP_CLIENTS)]
    threads += [threading.Thread(target=client.run, daemon=True) for client in clients]
    for thread in threads:
        thread.start()
    kills, downtime, kill_phase, acknowledged_while_killing = 0, 0.0, 0.0, 0
    try:
        while time.monotonic() - started < DEADLINE:
            if kills >= KILLS:
                if not kill_phase:
                    kill_phase, acknowledged_while_killing = time.monotonic() - started, len(ledger.acknowledged)
                if len(ledger.acknowledged) >= MESSAGES:
                    break
                time.sleep(0.05)
                continue
            time.sleep(rng.uniform(*UPTIME))
            with world.lock:
                world.ports = None
            server.kill()
            kills += 1
            down = time.monotonic()
            server.start()
            downtime += time.monotonic() - down
            with world.lock:
                world.ports, world.generation = dict(server.ports), world.generation + 1
        loop_seconds = time.monotonic() - started
        world.stop.set()
        for thread in threads:
            thread.join(TIMEOUT + 5)
        assert not any(thread.is_alive() for thread in threads), "a client did not stop"

        final, validities = _final_listing(server)
        on_disk, listed, index_uids = _disk_against_index(server)
        usage_kept, usage_counted = _usage_against_rows(server)
    finally:
        world.stop.set()
        if server.process is not None and server.process.poll() is None:
            server.terminate()

    places: Counter[str] = Counter()
    for folder in final:
        places.update(message_id for _, message_id in final[folder])
    acknowledged = set(ledger.acknowledged)

    def excused(message_id: str) -> bool:
        doomed_at = ledger.doomed.get(message_id)
        if doomed_at is None:
            return False
        return message_id in ledger.uid_expunged or any(sent >= doomed_at for sent in ledger.expunges)

    lost = sorted(m for m in acknowledged if places[m] == 0 and not excused(m))
    duplicated = sorted(m for m, n in places.items() if n > 1 + max(ledger.copies[m], 0))
    figures = {
        "seed": seed,
        "acknowledged": len(ledger.acknowledged),
        "smtp_attempts": ledger.attempts,
        "kills": kills,
        "restart_seconds": round(downtime, 1),
        "commands": {f"{kind} {outcome}": count for (kind, outcome), count in sorted(ledger.commands.items())},
        "final": {folder: len(final[folder]) for folder in final if final[folder] or folder in FOLDERS},
        "gone_by_expunge": sum(1 for m in acknowledged if places[m] == 0),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "violations": len(ledger.violations),
        "kill_phase_seconds": round(kill_phase, 1),
        "acknowledged_in_kill_phase": acknowledged_while_killing,
        "loop_seconds": round(loop_seconds, 1),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(figures))
    log = server.log()

    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:5]}\n{log[-3000:]}"
    assert not duplicated, f"{len(duplicated)} messages in more places than COPY explains: {[(m, places[m], ledger.copies[m]) for m in duplicated[:5]]}"
    assert not ledger.violations, "\n".join(ledger.violations[:20])
    assert sorted(on_disk) == sorted(final), (sorted(on_disk), sorted(final))
    for folder in final:
        uids = [uid for uid, _ in final[folder]]
        assert uids == sorted(set(uids)), f"{folder}: UIDs not unique and increasing in sequence order"
        if folder not in FOLDERS:
            assert not uids, f"{folder}: messages only INBOX and Archive should hold"
            continue
        assert validities[folder] == ledger.uidvalidity[folder], folder
        # No file without a row, no row without a file, and IMAP shows exactly the index.
        assert on_disk[folder] == listed.get(folder, set()), (
            folder,
            sorted(on_disk[folder] - listed.get(folder, set()))[:5],
            sorted(listed.get(folder, set()) - on_disk[folder])[:5],
        )
        assert set(uids) == index_uids.get(folder, set()), folder
        # Every UID the clients ever saw with a message still names that message.
        names = ledger.names[(folder, ledger.uidvalidity[folder])]
        assert all(names.get(uid, message_id) == message_id for uid, message_id in final[folder]), folder
    # The quota's usage total came through every kill with its rows: the
    # first open after each start never had to recount it.
    assert usage_kept == usage_counted, (usage_kept, usage_counted)
    assert usage_kept[0] == sum(len(names) for names in on_disk.values()), usage_kept
    assert "store.index_usage_recounted" not in log, log[-3000:]
    assert kills >= KILLS, f"only {kills} kills in {DEADLINE} s"
    count, commands = len(ledger.acknowledged), ledger.commands
    assert count >= MESSAGES, f"only {count} messages acknowledged in {DEADLINE} s"
    assert all(commands[(kind, "OK")] > 0 for kind in ("COPY", "MOVE", "STORE", "EXPUNGE")), commands
