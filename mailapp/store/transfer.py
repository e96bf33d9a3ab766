"""
COPY and MOVE between two folders of one mailbox, as one change.

A transfer runs on the writer (in order with every other change of this
process) and inside one ``IMMEDIATE`` index transaction, so an expunge by
another session or process happens wholly before it or wholly after it: the
transfer takes the messages that still exist when it starts and copies or
moves all of them, or (on any failure) none. Messages expunged before it
started are left out, as RFC 9051 6.4.7 allows and Dovecot does; the caller
reports what was transferred (COPYUID) and says NO only when nothing was
left.

Across a crash, the intent record (L{mailapp.store.intent}) decides: it is
durable before the first link, and the next start finishes what it lists.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable

from mailapp.errors import NoSuchFolder
from mailapp.store import connections, durable, intent, outside
from mailapp.store.database import rollback
from mailapp.store.filenames import decode_flags, parse_filename
from mailapp.store.folders import write_meta
from mailapp.store.keywords import message_filename
from mailapp.store.modseq import prune_vanished
from mailapp.store.names import folder_directory


def transfer(
    mailbox_dir: Path,
    pin: connections.MailboxPin | None,
    source: str,
    target: str,
    uids: Iterable[int],
    *,
    move: bool,
    batch_sync: bool,
) -> dict[int, int]:
    """
    Worker thread: copy (or, with C{move}, move) the messages C{uids} of
    folder C{source} that still exist into folder C{target}, keeping flags
    and internal dates. Returns source UID -> target UID for every message
    transferred; empty when none of them exists any more.

    Failures before the index commit take back every link (the index was
    not changed); only L{Exception}s are undone, so a test may raise a
    L{BaseException} to stop it where a crash would.
    """
    wanted = set(uids)
    source_dir = folder_directory(mailbox_dir, source)
    target_dir = folder_directory(mailbox_dir, target)
    # The connection first: the first open of a mailbox in a process
    # finishes an interrupted transfer, under the lock taken next.
    with (
        connections.connection(mailbox_dir, pin) as conn,
        intent.lock(mailbox_dir),
        outside.own_change(source_dir),
        outside.own_change(target_dir),
    ):
        conn.execute("BEGIN IMMEDIATE")
        folder = conn.execute("SELECT uidvalidity, uidnext FROM folders WHERE name = ?", (target,)).fetchone()
        if folder is None:
            raise NoSuchFolder(f"no such folder: {target}")
        rows = [
            row
            for row in conn.execute(
                "SELECT uid, filename, flags, size, internaldate FROM messages WHERE folder = ? ORDER BY uid", (source,)
            )
            if row[0] in wanted
        ]
        if not rows:
            rollback(conn)
            return {}
        uidnext = folder[1]
        saved = time.time()  # each copy's save date into the target (RFC 8514), MOVE's too
        plan: list[tuple[int, int, Path, Path, tuple[object, ...]]] = []
        for uid, filename, flags, size, date in rows:
            parsed = parse_filename(filename.split("/", 1)[1])
            base = parsed.base if parsed else filename
            # The copy is a link to the same file: its name describes it the same way.
            relative = message_filename(
                target_dir,
                base,
                parsed.size if parsed is not None and parsed.size is not None else size,
                uidnext,
                decode_flags(flags),
                wire_size=size if parsed is None or parsed.wire_size is not None else None,
            )
            plan.append((uid, uidnext, source_dir / filename, target_dir / relative, (target, uidnext, relative, flags, size, date, saved)))
            uidnext += 1
        if move:
            # As an expunge does: a rebuild must never hand out the moved UIDs again.
            validity, source_uidnext = conn.execute(
                "SELECT uidvalidity, uidnext FROM folders WHERE name = ?", (source,)
            ).fetchone()
            write_meta(source_dir, validity, source_uidnext)
        intent.record(
            mailbox_dir,
            [(str(src.relative_to(mailbox_dir)), str(dst.relative_to(mailbox_dir))) for _, _, src, dst, _ in plan],
            move,
        )
        linked: list[Path] = []
        done: list[tuple[int, int, Path, Path, tuple[object, ...]]] = []
        try:
            for item in plan:
                try:
                    durable.link(item[2], item[3])
                except FileNotFoundError:
                    continue  # listed but gone from the disk (another tool): not transferred; its UID is skipped
                linked.append(item[3])
                done.append(item)
            if linked:
                durable.sync_directories(sorted({path.parent for path in linked}), mailbox_dir, batch_sync)
            conn.executemany(
                "INSERT INTO messages (folder, uid, filename, flags, size, internaldate, savedate) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [item[4] for item in done],
            )
            conn.execute("UPDATE folders SET uidnext = max(uidnext, ?) WHERE name = ?", (uidnext, target))
            if move:
                conn.executemany(
                    "DELETE FROM messages WHERE folder = ? AND uid = ?", [(source, item[0]) for item in done]
                )
                prune_vanished(conn, source)
            conn.execute("COMMIT")
        except Exception:
            _undo(conn, mailbox_dir, linked)
            raise
        if move:
            for item in done:
                durable.unlink(item[2])
            if done:
                durable.sync_directories(sorted({item[2].parent for item in done}), mailbox_dir, batch_sync)
        intent.forget(mailbox_dir)
    return {item[0]: item[1] for item in done}


def _undo(conn: sqlite3.Connection, mailbox_dir: Path, linked: list[Path]) -> None:
    """Before the commit: nothing is visible yet; remove the links and the record, so a restart redoes nothing."""
    rollback(conn)
    for path in linked:
        durable.unlink(path)
    intent.forget(mailbox_dir)
