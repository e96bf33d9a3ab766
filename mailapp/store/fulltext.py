"""
The full-text index of a mailbox: an SQLite FTS5 file of its own beside the
index (C{<maildir>/mailapp-fulltext.sqlite3}), filled in the background
after deliveries commit, used by SEARCH BODY/TEXT and the webmail search.

Its own file, not tables in the index, so that its writes never take the
index's write lock (a delivery batch never waits for text to be indexed),
its schema changes on its own (C{PRAGMA user_version} = L{SCHEMA_VERSION}),
and losing it costs nothing but time: it is derived from the message files
and built again whenever it is missing, damaged or of another version.

Tables:

- ``folders``: per folder, the UIDVALIDITY the rows belong to and
  ``indexed_through``, the highest UID indexed (the watermark): UIDs only
  grow, so the indexer goes on from there;
- ``docs``: one row per indexed message, (folder, uid) and whether its text
  is exact (L{mailapp.store.textextract}: a message beyond the scan's
  bounds is searched by reading it). A search takes as covered only the
  messages with an exact row: one delivered since, or listed again below
  the watermark (an index that lost its WAL tail in a power cut and was
  reconciled from the Maildir), is read;
- ``text``: the FTS5 table, its rowid the doc's id, with the trigram
  tokenizer (SQLite 3.34+), case-sensitive over text that is already
  case-folded: a phrase of three characters or more then matches exactly
  where the string occurs, as IMAP's substring search does. Shorter
  strings are searched by reading the files.

SEARCH FUZZY's approximate words (L{mailapp.store.fuzzy}) are answered
from the same file, with no table of their own: the messages that can
hold a word within one edit are those holding one of its one-edit variants, as far as
trigrams can say (L{_candidates_query}; a GLOB scan for the one edit of a
five-letter word they cannot), and each is checked against its stored text with
the same rule a read message is checked with, so that the answer is exact
here too. A fuzzy search also asks for relevance: SQLite's bm25 of the
strings actually found (the exact words, and for an approximate one what
it matched), one more query.

Rows of expunged or moved messages are not deleted as they go: a search
only asks about the UIDs its folder still lists, and the indexer deletes
rows whose message is gone when it finds more rows than messages. A folder
deleted (or made again, with another UIDVALIDITY) loses its rows at the
indexer's next pass, and the index rebuild (L{mailapp.store.rebuild})
empties the file.

Writes are compare-and-set on a folder's (UIDVALIDITY, watermark): a pass
whose folder was reset or indexed by someone else meanwhile (a second
process, a rebuild) writes nothing.

L{FullTextIndexer} runs the passes on its own worker thread, one at a time,
bounded per pass and paced, so that it never competes with a burst of
deliveries for long. Everything else here is synchronous.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import quote
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from mailapp import logevents
from mailapp.records import ADDED, MIN_TEXT_NEEDLE, FolderEvent, TextMatches
from mailapp.store import fuzzy, messagefile
from mailapp.store.database import INDEX_NAME, is_damage
from mailapp.store.filenames import parse_filename
from mailapp.store.names import folder_directory
from mailapp.store.textextract import MessageText, extract

__all__ = ["FULLTEXT_NAME", "MIN_NEEDLE", "SCHEMA_VERSION", "FullTextIndexer", "index_pending", "reset", "search"]

_log = Logger()

FULLTEXT_NAME = "mailapp-fulltext.sqlite3"
#: 1: folders, docs, and the trigram ``text`` table.
SCHEMA_VERSION = 1
#: The shortest string the trigram index can find; shorter ones are searched by reading.
MIN_NEEDLE = MIN_TEXT_NEEDLE
#: Messages one indexer pass reads at most (then it yields, and goes on later).
PASS_MESSAGES = 400

_COLUMNS = ("header", "subject", "sender", "recipients", "plain", "markup", "html_text")
#: Which columns each scope (L{mailapp.records.TEXT_SCOPES}) looks in.
_SCOPE_COLUMNS = {
    "body": ("plain", "markup"),
    "text": ("header", "plain", "markup"),
    "shown": ("subject", "sender", "plain", "html_text"),
    "shown_body": ("plain", "html_text"),
    "subject": ("subject",),
    "from": ("sender",),
    "recipients": ("recipients",),
}

_SCHEMA = (
    "CREATE TABLE folders (name TEXT PRIMARY KEY, uidvalidity INTEGER NOT NULL, indexed_through INTEGER NOT NULL)",
    "CREATE TABLE docs (id INTEGER PRIMARY KEY, folder TEXT NOT NULL, uid INTEGER NOT NULL, exact INTEGER NOT NULL, UNIQUE (folder, uid))",
    f"CREATE VIRTUAL TABLE text USING fts5({', '.join(_COLUMNS)}, tokenize = 'trigram case_sensitive 1')",
)

#: Mailboxes whose file was checked (quick_check) by this process.
_checked: set[Path] = set()
_checked_lock = threading.Lock()


class _Reset(Exception):
    """The file was damaged or of another version and has been removed: start again."""


def path_of(mailbox_dir: Path) -> Path:
    return mailbox_dir / FULLTEXT_NAME


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(str(path) + suffix)
        except FileNotFoundError:
            pass


def _discard(mailbox_dir: Path, error: BaseException) -> None:
    """Remove a damaged or foreign file: it is built again from the messages, never an error to a client."""
    _remove(path_of(mailbox_dir))
    with _checked_lock:
        _checked.discard(mailbox_dir)
    _log.warn(
        "store.fulltext_reset {mailbox}: {error}",
        log_event=logevents.FULLTEXT_RESET,
        mailbox=str(mailbox_dir),
        error=str(error),
    )


def _open(mailbox_dir: Path, create: bool, check: bool = False) -> sqlite3.Connection | None:
    """
    A connection to the mailbox's full-text file, made with its schema when
    new (C{create}); None when there is none and C{create} is false. Raises
    L{_Reset} (having removed the file) when it is damaged or of another
    version.
    """
    path = path_of(mailbox_dir)
    if not create and not path.exists():
        return None
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    except sqlite3.Error as e:
        _discard(mailbox_dir, e)
        raise _Reset() from e
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        elif version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"unknown full-text schema version {version}")
        if check:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("malformed: " + "; ".join(str(p) for p in problems[:3]))
    except sqlite3.Error as e:
        conn.close()
        if isinstance(e, sqlite3.OperationalError) and not is_damage(e):
            raise  # busy, locked, full, read-only: a reset would not cure it
        _discard(mailbox_dir, e)
        raise _Reset() from e
    return conn


def _folders(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    return {name: (uidvalidity, through) for name, uidvalidity, through in conn.execute("SELECT name, uidvalidity, indexed_through FROM folders")}


def _forget_folder(conn: sqlite3.Connection, name: str) -> None:
    """Inside the caller's transaction: every row of C{name}."""
    ids = [(row[0],) for row in conn.execute("SELECT id FROM docs WHERE folder = ?", (name,))]
    conn.executemany("DELETE FROM text WHERE rowid = ?", ids)
    conn.execute("DELETE FROM docs WHERE folder = ?", (name,))
    conn.execute("DELETE FROM folders WHERE name = ?", (name,))


def reset(mailbox_dir: Path) -> None:
    """Empty the mailbox's full-text file (the index rebuild does): the indexer fills it again."""
    try:
        conn = _open(mailbox_dir, create=False)
    except _Reset:
        return
    if conn is None:
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM text")
        conn.execute("DELETE FROM docs")
        conn.execute("DELETE FROM folders")
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if not is_damage(e):
            raise
        conn.close()
        _discard(mailbox_dir, e)
        return
    conn.close()


def _read_text(directory: Path, filename: str) -> MessageText | None:
    path = directory / filename
    parsed = parse_filename(path.name)
    with messagefile.open_message(path, parsed.wire_size if parsed is not None else None) as handle:
        return extract(handle)


def index_pending(mailbox_dir: Path, budget: int = PASS_MESSAGES) -> bool:
    """
    One pass over C{mailbox_dir}: forget folders that are gone (or made
    again), drop rows of messages no longer listed, and index up to
    C{budget} messages above each folder's watermark, oldest first, one
    transaction per folder. Returns whether messages are left to index.
    Worker thread.
    """
    index = _open_index(mailbox_dir)
    if index is None:
        return False  # retired, or never made: nothing to index, and nothing to create
    try:
        with _checked_lock:
            check = mailbox_dir not in _checked
        try:
            conn = _open(mailbox_dir, create=True, check=check)
        except _Reset:
            conn = _open(mailbox_dir, create=True)
        assert conn is not None
        with _checked_lock:
            _checked.add(mailbox_dir)
        try:
            return _index_pending(conn, index, mailbox_dir, budget)
        except _IndexError:
            raise
        except sqlite3.DatabaseError as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not is_damage(e):
                raise
            conn.close()
            _discard(mailbox_dir, e)
            return True
        finally:
            conn.close()
    finally:
        index.close()


class _IndexError(Exception):
    """The mailbox's index (not the full-text file) failed a read: the pass stops, the file is not to blame."""


def _open_index(mailbox_dir: Path) -> sqlite3.Connection | None:
    """
    A read-only connection to the mailbox's index, or None when there is
    none. Read-only, not borrowed from the pool: the pool creates a missing
    mailbox, and the indexer must never recreate one an account deletion
    just moved away. (It needs no reconcile either: a message the index
    does not list yet is never taken as indexed, see L{search}.)
    """
    path = mailbox_dir / INDEX_NAME
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA busy_timeout = 10000")
    except sqlite3.Error:
        return None
    return conn


def _read(index: sqlite3.Connection, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
    try:
        return index.execute(sql, parameters).fetchall()
    except sqlite3.Error as e:
        raise _IndexError(str(e)) from e


def _index_pending(conn: sqlite3.Connection, index: sqlite3.Connection, mailbox_dir: Path, budget: int) -> bool:
    listed = {name: uidvalidity for name, uidvalidity in _read(index, "SELECT name, uidvalidity FROM folders", ())}
    known = _folders(conn)
    stale = [name for name, (uidvalidity, _) in known.items() if listed.get(name) != uidvalidity]
    if stale:
        conn.execute("BEGIN IMMEDIATE")
        for name in stale:
            _forget_folder(conn, name)
        conn.execute("COMMIT")
        for name in stale:
            del known[name]
    more = False
    for name, uidvalidity in sorted(listed.items()):
        through = known.get(name, (uidvalidity, 0))[1]
        rows = _read(index, "SELECT uid, filename FROM messages WHERE folder = ? AND uid > ? ORDER BY uid LIMIT ?", (name, through, budget + 1))
        live = _read(index, "SELECT count(*) FROM messages WHERE folder = ? AND uid <= ?", (name, through))[0][0]
        if len(rows) > budget:
            rows = rows[:budget]
            more = True
        _drop_gone(conn, index, name, through, live)
        if not rows:
            continue
        directory = folder_directory(mailbox_dir, name)
        texts: list[tuple[int, MessageText]] = []
        for uid, filename in rows:
            texts.append((uid, _text_of(index, directory, name, uid, filename)))
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = conn.execute("SELECT uidvalidity, indexed_through FROM folders WHERE name = ?", (name,)).fetchone()
            if (now is None and through != 0) or (now is not None and tuple(now) != (uidvalidity, through)):
                conn.execute("ROLLBACK")  # reset or indexed by someone else meanwhile: their state stands
                more = True
                continue
            for uid, text in texts:
                cursor = conn.execute("INSERT OR REPLACE INTO docs (folder, uid, exact) VALUES (?, ?, ?)", (name, uid, int(text.exact)))
                conn.execute(
                    f"INSERT INTO text (rowid, {', '.join(_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant names
                    (cursor.lastrowid, text.header, text.subject, text.sender, text.recipients, text.plain, text.markup, text.html_text),
                )
            conn.execute(
                "INSERT OR REPLACE INTO folders (name, uidvalidity, indexed_through) VALUES (?, ?, ?)", (name, uidvalidity, rows[-1][0])
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return more


def _text_of(index: sqlite3.Connection, directory: Path, folder: str, uid: int, filename: str) -> MessageText:
    """The text of one message; an unreadable one (gone, renamed by a flag change since) is marked inexact, to be read at search time."""
    for _ in range(2):
        try:
            text = _read_text(directory, filename)
            if text is not None:
                return text
        except FileNotFoundError:
            found = _read(index, "SELECT filename FROM messages WHERE folder = ? AND uid = ?", (folder, uid))
            row = found[0] if found else None
            if row is None or row[0] == filename:
                break
            filename = row[0]
        except OSError:
            break
    return MessageText(exact=False)


def _drop_gone(conn: sqlite3.Connection, index: sqlite3.Connection, folder: str, through: int, live: int) -> None:
    """Delete the rows of C{folder}'s messages expunged or moved away, when there are more rows than messages."""
    rows = conn.execute("SELECT count(*) FROM docs WHERE folder = ? AND uid <= ?", (folder, through)).fetchone()[0]
    if rows <= live:
        return
    kept = {row[0] for row in _read(index, "SELECT uid FROM messages WHERE folder = ? AND uid <= ?", (folder, through))}
    gone = [(doc, uid) for doc, uid in conn.execute("SELECT id, uid FROM docs WHERE folder = ?", (folder,)) if uid not in kept]
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("DELETE FROM text WHERE rowid = ?", [(doc,) for doc, _ in gone])
        conn.executemany("DELETE FROM docs WHERE id = ?", [(doc,) for doc, _ in gone])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _phrase(needle: str) -> str:
    return '"' + needle.replace('"', '""') + '"'


def search(
    mailbox_dir: Path,
    folder: str,
    uidvalidity: int,
    terms: Sequence[tuple[str, str]],
    approximate: Sequence[tuple[str, str]] = (),
) -> TextMatches | None:
    """
    What the full-text file says about C{terms} ((scope, case-folded
    string), each string at least L{MIN_NEEDLE} characters) and
    C{approximate} ((scope, case-folded word) found with one edit,
    L{mailapp.store.fuzzy}) in C{folder} of UIDVALIDITY C{uidvalidity};
    None when it has nothing to say (no file yet, damaged: it is built
    again). With C{approximate}, the answer's C{relevance} is the bm25 of
    what was found. Worker thread.
    """
    try:
        conn = _open(mailbox_dir, create=False)
    except (_Reset, sqlite3.OperationalError):
        return None
    if conn is None:
        return None
    try:
        state = conn.execute("SELECT uidvalidity, indexed_through FROM folders WHERE name = ?", (folder,)).fetchone()
        if state is None or state[0] != uidvalidity:
            return TextMatches(frozenset(), {})
        # The messages indexed exactly, each by its own row: not "every UID up to
        # the watermark", since an index that lost its WAL tail in a power cut can
        # list a message again, below the watermark, that was never indexed.
        indexed = frozenset(row[0] for row in conn.execute("SELECT uid FROM docs WHERE folder = ? AND exact = 1", (folder,)))
        found: dict[tuple[str, str], frozenset[int]] = {}
        for scope, needle in terms:
            if len(needle) < MIN_NEEDLE or scope not in _SCOPE_COLUMNS:
                raise ValueError(f"cannot search {scope!r} for {needle!r}")
            query = "{" + " ".join(_SCOPE_COLUMNS[scope]) + "} : " + _phrase(needle)
            # CROSS JOIN: the match first, then its docs by id. Left to itself the
            # planner walks the folder's docs and runs the match once per row (680 ms
            # for 2,000 messages, 0.9 ms this way).
            rows = conn.execute(
                "SELECT docs.uid FROM (SELECT rowid AS id FROM text WHERE text MATCH ?) AS matched"
                " CROSS JOIN docs ON docs.id = matched.id WHERE docs.folder = ? AND docs.exact = 1",
                (query, folder),
            )
            found[(scope, needle)] = frozenset(row[0] for row in rows)
        if not approximate:
            return TextMatches(indexed, found)
        near: dict[tuple[str, str], frozenset[int]] = {}
        strings: set[tuple[str, str]] = {(scope, needle) for scope, needle in terms}
        for scope, word in approximate:
            if len(word) < fuzzy.APPROXIMATE_LENGTH or scope not in _SCOPE_COLUMNS:
                raise ValueError(f"cannot search {scope!r} for {word!r} approximately")
            matched = _approximate(conn, folder, scope, word)
            near[(scope, word)] = frozenset(matched)
            strings.update((scope, text) for text in matched.values())
        return TextMatches(indexed, found, near, _relevance(conn, folder, strings))
    except sqlite3.DatabaseError as e:
        if is_damage(e):
            conn.close()
            _discard(mailbox_dir, e)
        return None
    finally:
        conn.close()


#: Stored texts read per query while checking approximate words.
_CHECK_BATCH = 256


def _approximate(conn: sqlite3.Connection, folder: str, scope: str, word: str) -> dict[int, str]:
    """
    The UIDs of C{folder}'s exactly indexed messages whose C{scope} holds
    C{word} within one edit, each with the string it matched: the
    candidates by L{_candidates_query}, then each one's stored text
    checked.
    """
    columns = _SCOPE_COLUMNS[scope]
    candidates, patterns = _candidates_query(word)
    query = "{" + " ".join(columns) + "} : (" + candidates + ")"
    rows = conn.execute(
        "SELECT docs.id, docs.uid FROM (SELECT rowid AS id FROM text WHERE text MATCH ?) AS matched"
        " CROSS JOIN docs ON docs.id = matched.id WHERE docs.folder = ? AND docs.exact = 1",
        (query, folder),
    ).fetchall()
    if patterns:
        # What trigrams cannot pin down, SQLite's GLOB scans for (in C, over the folder's rows).
        where = " OR ".join(f"text.{column} GLOB ?" for column in columns for _ in patterns)
        rows += conn.execute(
            f"SELECT docs.id, docs.uid FROM docs JOIN text ON text.rowid = docs.id WHERE docs.folder = ? AND docs.exact = 1 AND ({where})",  # noqa: S608 - constant names, placeholders
            (folder, *[pattern for _ in columns for pattern in patterns]),
        ).fetchall()
    uid_of = dict(rows)
    ids = sorted(uid_of)
    needle = fuzzy.Approximate(word)
    found: dict[int, str] = {}
    select = ", ".join(columns)
    for start in range(0, len(ids), _CHECK_BATCH):
        batch = ids[start : start + _CHECK_BATCH]
        marks = ", ".join("?" * len(batch))
        for row in conn.execute(f"SELECT rowid, {select} FROM text WHERE rowid IN ({marks})", batch):  # noqa: S608 - constant names, placeholders
            for value in row[1:]:
                hit = fuzzy.find(needle, value or "")
                if hit is not None:
                    found[uid_of[row[0]]] = hit
                    break
    return found


def _candidates_query(word: str) -> tuple[str, list[str]]:
    """
    An FTS5 query (without its columns) and GLOB patterns that, together,
    every text holding C{word} within one edit matches. One alternative
    per edit: a deletion or a swap is a string of its own, a phrase; a
    substitution or an insertion at letter i leaves the letters before and
    after it, both phrases when both are trigrams long, else the one that
    is; when neither is (a five-letter word's middle letter substituted:
    two letters either side) the edit is a GLOB pattern instead, which
    SQLite checks row by row. Far narrower than "head OR tail" when a
    piece is common (for "invoice", "ice" is in "office" and "notice").
    Words are letters and digits only, so nothing in them is a GLOB or
    FTS5 operator.
    """
    n = len(word)
    alternatives = {_phrase(word)}
    for i in range(n):
        alternatives.add(_phrase(word[:i] + word[i + 1 :]))  # deleted
        if i + 1 < n:
            alternatives.add(_phrase(word[:i] + word[i + 1] + word[i] + word[i + 2 :]))  # swapped
    patterns = []
    for before, after, gap in [(word[:i], word[i + 1 :], "?") for i in range(n)] + [(word[:i], word[i:], "?") for i in range(1, n)]:
        kept = [_phrase(part) for part in (before, after) if len(part) >= MIN_NEEDLE]
        if not kept:
            patterns.append("*" + before + gap + after + "*")
        else:
            alternatives.add(kept[0] if len(kept) == 1 else "(" + " AND ".join(kept) + ")")
    return " OR ".join(sorted(alternatives)), patterns


def _relevance(conn: sqlite3.Connection, folder: str, strings: set[tuple[str, str]]) -> dict[int, float]:
    """
    Per UID of C{folder}, how relevant its text is to C{strings} ((scope,
    string) found): minus SQLite's bm25 over them all, so higher is better.
    Strings shorter than a trigram cannot be ranked and are left out.
    """
    groups: dict[str, list[str]] = {}
    for scope, text in sorted(strings):
        if len(text) >= MIN_NEEDLE:
            groups.setdefault(scope, []).append(_phrase(text))
    if not groups:
        return {}
    query = " OR ".join("({" + " ".join(_SCOPE_COLUMNS[scope]) + "} : (" + " OR ".join(phrases) + "))" for scope, phrases in groups.items())
    rows = conn.execute(
        "SELECT docs.uid, matched.score FROM (SELECT rowid AS id, bm25(text) AS score FROM text WHERE text MATCH ?) AS matched"
        " CROSS JOIN docs ON docs.id = matched.id WHERE docs.folder = ? AND docs.exact = 1",
        (query, folder),
    )
    return {uid: -score for uid, score in rows}


class FullTextIndexer:
    """
    Keeps every mailbox's full-text file caught up: told of each change
    (C{changed}: the store's ADDED events, a folder opened), it runs
    L{index_pending} for the mailboxes that changed, one pass at a time on
    C{threadpool} (one thread of its own in the server), never on the
    reactor and never inside a delivery batch. Passes are paced: each
    waits C{delay} first (deliveries that commit meanwhile are indexed
    together), and after one that took C{t} seconds the next waits
    C{2t}, so that it takes at most about a third of a core from
    deliveries and sessions (on two cores at 50% a 10,000-message catch-up
    after the first SELECT slowed that session's first FETCH ENVELOPE
    noticeably). While messages keep arriving it waits for a lull of
    C{quiet} seconds, up to C{max_wait}: on two cores any CPU it takes
    during a burst is taken from SMTP ingest (an interleaved smtp-4k A/B
    lost 6-22% of its messages per second indexing alongside). Searches
    meanwhile read what is not indexed, so waiting costs only their speed.
    """

    def __init__(self, reactor: Any, threadpool: Any, mailbox_of: Callable[[str], Path], delay: float = 0.5) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._mailbox_of = mailbox_of
        self.delay = delay
        self._dirty: set[Path] = set()
        self._running = False
        self._waiting: list[Deferred[None]] = []
        #: How long the last pass took: the next one waits twice as long.
        self._last = 0.0
        #: Seconds without a new message a pass waits for, and at most how long it waits.
        self.quiet = 1.0
        self.max_wait = 30.0
        #: When the last message arrived (time.monotonic()); read by the indexer's thread.
        self._last_added = 0.0

    def event(self, event: FolderEvent) -> None:
        """An event bus listener: new messages in a folder."""
        if event.kind == ADDED:
            self._last_added = time.monotonic()
            try:
                self.changed(self._mailbox_of(event.account))
            except Exception:  # noqa: BLE001 - an address the store cannot name has no mailbox to index
                pass

    def changed(self, mailbox_dir: Path) -> None:
        """C{mailbox_dir} has messages to index (or may have: it is looked at)."""
        self._dirty.add(mailbox_dir)
        self._schedule()

    def caughtUp(self) -> Deferred[None]:
        """Fires once nothing is left to index (tests, and the bench, wait on it)."""
        if not self._dirty and not self._running:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def _schedule(self) -> None:
        # No timer on the reactor: the pause before each pass is slept on the
        # indexer's own thread, so that nothing is left scheduled when the
        # server (or a test) stops.
        if self._running or not self._dirty:
            return
        batch, self._dirty = sorted(self._dirty), set()
        self._running = True
        pause = max(self.delay, 2 * self._last)
        d = deferToThreadPool(self._reactor, self._threadpool, _pass, batch, pause, self._busy)

        def done(result: Any) -> None:
            self._running = False
            if isinstance(result, tuple):
                left, seconds = result
                self._dirty |= left
                self._last = seconds
            if self._dirty:
                self._schedule()
            else:
                waiting, self._waiting = self._waiting, []
                for w in waiting:
                    w.callback(None)

        d.addBoth(done)

    def _busy(self, waited: float) -> bool:
        """(the indexer's thread) Whether to wait on: messages arrived in the last C{quiet} seconds, and C{max_wait} is not over."""
        return waited < self.max_wait and time.monotonic() - self._last_added < self.quiet


#: How often a pass waiting for a lull in deliveries looks again.
_LULL_STEP = 0.1


def _pass(mailbox_dirs: list[Path], pause: float, busy: Callable[[float], bool]) -> tuple[set[Path], float]:
    """
    Worker thread: after C{pause} seconds and while C{busy(seconds waited)},
    one pass over each mailbox; the ones with more to do, and how long the pass took.
    """
    began = time.monotonic()
    if pause > 0:
        time.sleep(pause)
    while busy(time.monotonic() - began):
        time.sleep(_LULL_STEP)
    started = time.monotonic()
    left: set[Path] = set()
    for mailbox_dir in mailbox_dirs:
        try:
            if index_pending(mailbox_dir):
                left.add(mailbox_dir)
        except Exception as e:  # noqa: BLE001 - logged; the next change tries again, searches read the files meanwhile
            _log.error(
                "store.fulltext_failed {mailbox}: {error!r}",
                log_event=logevents.FULLTEXT_FAILED,
                mailbox=str(mailbox_dir),
                error=e,
            )
    return left, time.monotonic() - started
