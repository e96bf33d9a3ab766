"""
The store under faults, end to end through the real service: a full disk
(a small tmpfs, so root only), COPY and MOVE racing another session's
EXPUNGE, and SIGKILL in the middle of a large MOVE.
"""

from __future__ import annotations

import errno
import os
import re
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.imap_helpers import PASSWORD, Raw
from tests.service_runner import TIMEOUT, ServiceProcess, listener, run_with_store

USER = "alice@example.test"
LISTENERS = listener("smtp", "smtp") + listener("imap", "imap", allow_plaintext_auth=True)

_APPEND = """
from twisted.internet.defer import gatherResults

async def run(store, argument):
    account, folder_name, count = argument
    folder = await store.mailbox(account).folder(folder_name)
    for start in range(1, count + 1, 200):
        batch = range(start, min(start + 200, count + 1))
        await gatherResults([
            folder.append(b"Subject: m%d\\r\\nMessage-ID: <m%d@test>\\r\\n\\r\\nbody %d\\r\\n" % (n, n, n)) for n in batch
        ])
    return count
"""


def fill(server: ServiceProcess, count: int) -> None:
    """Put C{count} small messages into INBOX through the store (in another process), fast."""
    run_with_store(server.state_dir, _APPEND, [USER, "INBOX", count], timeout=120)


def login(server: ServiceProcess) -> Raw:
    raw = Raw(server.port("imap"))
    assert raw.command(b"l", b"LOGIN %s %s" % (USER.encode(), PASSWORD.encode()))[-1].startswith(b"l OK")
    return raw


def uids_of(raw: Raw, folder: bytes) -> list[int]:
    raw.command(b"s", b"SELECT " + folder)
    lines = raw.command(b"u", b"UID SEARCH ALL")
    [found] = [line for line in lines if line.startswith(b"* SEARCH")]
    return [int(word) for word in found.split()[2:]]


def message_ids(raw: Raw, folder: bytes) -> list[bytes]:
    """The Message-ID of every message in C{folder}, read from the message itself."""
    raw.command(b"s", b"SELECT " + folder)
    lines = raw.command(b"f", b"FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    return sorted(m.group(1) for line in lines for m in [re.search(rb"<(m\d+@test)>", line)] if m)


def uid_set(text: bytes) -> list[int]:
    found = []
    for part in text.split(b","):
        first, _, last = part.partition(b":")
        found.extend(range(int(first), int(last or first) + 1))
    return found


def bases(server: ServiceProcess, folder_dir: str) -> list[str]:
    directory = server.maildir(USER) / folder_dir if folder_dir else server.maildir(USER)
    return [name.split(",", 1)[0] for sub in ("new", "cur") for name in os.listdir(directory / sub)]


# -- a full disk -------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs for the state directory."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as a disk that fills up")
    state = tmp_path / "root" / "state"
    state.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(state)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield tmp_path / "root"
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill_disk(path: Path) -> None:
    """Write C{path} until the filesystem has no byte left."""
    with open(path, "wb", buffering=0) as handle:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e


def test_a_full_disk_answers_store_append_copy_no_unavailable_keeps_mail_readable_and_recovers_when_freed(small_disk):
    server = ServiceProcess(small_disk, LISTENERS, "\n[limits]\nmin_free_disk = 1048576\n")
    server.add_users({USER: PASSWORD})
    server.start()
    try:
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as smtp:
            for n in range(1, 21):
                smtp.sendmail("s@remote.test", [USER], b"Subject: m%d\r\nMessage-ID: <m%d@test>\r\n\r\nbody %d\r\n" % (n, n, n))
        raw = login(server)
        assert len(uids_of(raw, b"INBOX")) == 20
        before = raw.command(b"f", b"FETCH 1:20 (FLAGS BODY.PEEK[])")
        filler = server.state_dir / "filler"
        fill_disk(filler)

        reply = raw.command(b"a", b"STORE 1:20 +FLAGS (\\Flagged)")[-1]
        assert reply == b"a NO [UNAVAILABLE] Not enough disk space; try again later"
        # Every message is still readable, with the flags it had: nothing changed.
        assert raw.command(b"f", b"FETCH 1:20 (FLAGS BODY.PEEK[])") == before
        literal = b"Subject: appended\r\n\r\n" + b"x" * 5000 + b"\r\n"
        raw.send(b"b APPEND INBOX {%d}\r\n" % len(literal))
        assert raw.line().startswith(b"+")
        raw.send(literal + b"\r\n")
        assert raw.until(b"b")[-1] == b"b NO [UNAVAILABLE] Not enough disk space; try again later"
        assert raw.command(b"c", b"COPY 1:20 Archive")[-1] == b"c NO [UNAVAILABLE] Not enough disk space; try again later"
        time.sleep(1.1)  # past the second for which SMTP keeps the free space it last read
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as smtp:
            smtp.ehlo()
            assert smtp.mail("s@remote.test") == (452, b"4.3.1 Insufficient system storage")

        filler.unlink()
        time.sleep(1.1)  # the free space SMTP sees is at most a second old
        assert raw.command(b"a", b"STORE 1:20 +FLAGS.SILENT (\\Flagged)")[-1].startswith(b"a OK")
        after = raw.command(b"f", b"FETCH 1:20 (FLAGS BODY.PEEK[])")
        assert all(b"\\Flagged" in line.split(b"BODY[]")[0] for line in after[:-1])
        assert [re.sub(rb"\\Flagged ?", b"", line, count=1) for line in after] == before
        raw.send(b"b APPEND INBOX {%d}\r\n" % len(literal))
        assert raw.line().startswith(b"+")
        raw.send(literal + b"\r\n")
        assert b"APPENDUID" in raw.until(b"b")[-1]
        assert b"COPYUID" in raw.command(b"c", b"COPY 1:20 Archive")[-1]
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as smtp:
            smtp.sendmail("s@remote.test", [USER], b"Subject: after\r\n\r\nspace again\r\n")
        assert len(uids_of(raw, b"INBOX")) == 22
        assert len(uids_of(raw, b"Archive")) == 20
        raw.close()
    finally:
        server.terminate()


# -- COPY and MOVE racing another session's EXPUNGE ---------------------------------------------------


@pytest.fixture
def running(tmp_path: Path) -> Iterator[ServiceProcess]:
    server = ServiceProcess(tmp_path, LISTENERS)
    server.add_users({USER: PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.terminate()


@pytest.mark.parametrize("verb", [b"COPY", b"MOVE"])
def test_copy_or_move_racing_an_expunge_leaves_the_target_exactly_as_its_reply_says(running, verb):
    trials, count = 12, 40
    fill(running, count * trials)
    mover, expunger = login(running), login(running)
    for trial in range(trials):
        mover.command(b"s", b"SELECT INBOX")
        inbox = uids_of(expunger, b"INBOX")
        mine = inbox[:count]
        doomed = mine[5 + trial % 7 :: 3]
        expunger.command(b"d", b"UID STORE %s +FLAGS.SILENT (\\Deleted)" % ",".join(map(str, doomed)).encode())
        archive_before = set(uids_of(running_view := login(running), b"Archive"))
        ids_before = set(message_ids(running_view, b"INBOX"))
        # Both at once: the EXPUNGE of part of the range and the COPY/MOVE of all of it.
        mover.send(b"m UID %s %d:%d Archive\r\n" % (verb, mine[0], mine[-1]))
        expunger.send(b"x EXPUNGE\r\n")
        moved = mover.until(b"m")
        assert expunger.until(b"x")[-1].startswith(b"x OK")
        archive_after = set(uids_of(running_view, b"Archive"))
        added = sorted(archive_after - archive_before)
        codes = [re.search(rb"\[COPYUID \d+ ([\d:,]+) ([\d:,]+)\]", line) for line in moved]
        [code] = [c for c in codes if c] or [None]
        if moved[-1].startswith(b"m NO"):
            assert code is None and added == [], (trial, moved)
            continue
        assert moved[-1].startswith(b"m OK"), (trial, moved)
        assert code is not None, (trial, moved)
        sources, targets = uid_set(code.group(1)), uid_set(code.group(2))
        assert targets == added, (trial, moved)
        assert set(sources) <= set(mine) and len(sources) == len(targets)
        left = set(uids_of(running_view, b"INBOX"))
        if verb == b"MOVE":
            assert not set(sources) & left, trial
            # Every message that was there is in exactly one of the two folders (or was expunged).
            inbox_ids = message_ids(running_view, b"INBOX")
            archive_ids = message_ids(running_view, b"Archive")
            assert not set(inbox_ids) & set(archive_ids), trial
            assert set(inbox_ids) | set(archive_ids) <= ids_before | set(archive_ids)
        else:
            assert set(mine) - set(doomed) <= left | set(doomed)
        running_view.close()
    mover.close()
    expunger.close()


# -- SIGKILL in the middle of a large MOVE ----------------------------------------------------------


def _files_in(directory: Path) -> int:
    try:
        return sum(len(os.listdir(directory / sub)) for sub in ("new", "cur"))
    except FileNotFoundError:
        return 0


def test_a_move_killed_at_any_moment_leaves_each_message_in_exactly_one_folder(tmp_path):
    count = 2000
    server = ServiceProcess(tmp_path, LISTENERS)
    server.add_users({USER: PASSWORD})
    fill(server, count)
    folders = {b"INBOX": "", b"Archive": ".Archive"}
    mailbox = server.maildir(USER)
    # When to kill, measured from the outside: a delay after the command, the
    # intent record appearing, the target half linked, the source half
    # emptied (after the commit), the untagged COPYUID report.
    moments = ["0.02s", "record", "half linked", "all linked", "half unlinked", "COPYUID"]
    seen: dict[str, bool] = {}
    try:
        for moment in moments:
            server.start()
            raw = login(server)
            source = next(name for name in folders if len(uids_of(raw, name)) == count)
            target = next(name for name in folders if name != source)
            source_dir, target_dir = mailbox / folders[source], mailbox / folders[target]
            raw.command(b"s", b"SELECT " + source)
            raw.send(b"m MOVE 1:* " + target + b"\r\n")
            deadline = time.monotonic() + 30
            reached = True
            if moment == "COPYUID":
                while not raw.line().startswith(b"* OK [COPYUID"):
                    pass
            elif moment.endswith("s"):
                time.sleep(float(moment[:-1]))
            else:
                condition = {
                    "record": lambda: (mailbox / "mailapp-transfer").exists(),
                    "half linked": lambda: _files_in(target_dir) >= count // 2,
                    "all linked": lambda: _files_in(target_dir) >= count,
                    "half unlinked": lambda: _files_in(source_dir) <= count // 2,
                }[moment]
                while not condition():
                    if time.monotonic() > deadline:
                        reached = False
                        break
            server.kill()
            seen[moment] = reached and (mailbox / "mailapp-transfer").exists()
            raw.close()
            server.start()
            raw = login(server)
            inbox, archive = uids_of(raw, b"INBOX"), uids_of(raw, b"Archive")
            # The first open of the mailbox (the SELECT) has finished the interrupted move.
            on_disk = bases(server, "") + bases(server, ".Archive")
            assert len(on_disk) == count and len(set(on_disk)) == count, (moment, len(on_disk), len(set(on_disk)))
            assert not (mailbox / "mailapp-transfer").exists()
            assert len(set(inbox)) == len(inbox) and len(set(archive)) == len(archive)
            # All or nothing: a MOVE of everything leaves everything in one folder.
            assert sorted((len(inbox), len(archive))) == [0, count], (moment, len(inbox), len(archive))
            ids = message_ids(raw, b"INBOX") + message_ids(raw, b"Archive")
            assert len(ids) == count and len(set(ids)) == count, moment
            raw.close()
            server.kill()
        # The kills inside the move did land inside it (its record was still there).
        assert all(seen[moment] for moment in ("record", "half linked", "all linked", "half unlinked")), seen
    finally:
        if server.process is not None and server.process.poll() is None:
            server.terminate()
