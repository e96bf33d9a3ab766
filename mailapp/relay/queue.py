"""
The outbound queue on disk: one message file per accepted message, written
once and shared by all its remote recipients, plus one JSON envelope.

Layout under ``state_dir/queue/``::

    messages/ID        the message bytes, CRLF line endings, as accepted
                       (what the relay client sends as it is: unlike the
                       Maildir, which stores LF, nobody else reads these)
    envelopes/ID.json  the envelope (see L{Envelope}); its presence makes the entry exist
    tmp/               envelopes being written (never read by anyone)
    corrupt/           files that could not be read, moved aside for a person
    control/           requests from the ``mailapp queue`` command (see L{mailapp.relay.control})
    lock               held (flock) by the running server's relay manager

Durability: every file is written under a name nobody reads, fsync'd, then
renamed into place, and its directory fsync'd (one ``syncfs(2)`` per step of
a batch where the system has it). An entry is created in two steps so that
the Router can make local and remote copies together
(L{mailapp.delivery.Transaction.commit}): L{Queue.prepare} writes and syncs
the message file and the envelope under ``tmp/``, L{Queue.publish} renames
the envelope into ``envelopes/`` and syncs the directory. Until then the
manager never sees the entry; a crash in between leaves only files that
L{Queue.load} removes once they are stale.

No pickle and no code: an envelope is plain JSON, validated field by field
when read. A file that fails validation is moved to ``corrupt/`` and logged;
it never stops the server.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from mailapp import logevents
from mailapp.accounts.addresses import domain_key
from mailapp.dsn import DsnParameters, RecipientRequest
from mailapp.store import durable
from mailapp.relay.queuefiles import BatchWriter, Job, WireCopy, write_file

__all__ = [
    "DELIVERED",
    "FAILED",
    "PENDING",
    "CorruptEntry",
    "Envelope",
    "Prepared",
    "Queue",
    "QueueLayout",
    "Recipient",
    "load_entries",
    "read_envelope",
]

_log = Logger()

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
_STATES = (PENDING, DELIVERED, FAILED)

ENVELOPE_VERSION = 1
#: Files in tmp/ (and message files without an envelope) older than this are
#: left-overs of a crash: their message was never acknowledged.
STALE_SECONDS = 3600
_ID = re.compile(r"^[A-Za-z0-9]{4,64}$")


class CorruptEntry(ValueError):
    """An envelope that cannot be read or does not have the promised shape."""


@dataclass
class Recipient:
    """
    One remote recipient of a queue entry and how far it has got.

    C{state} is L{PENDING}, L{DELIVERED} (a remote server said 250 after
    DATA: never sent again) or L{FAILED} (permanent failure or expiry);
    C{notified} says whether the sender has had a DSN about the failure.
    C{notify} and C{orcpt} are the client's DSN parameters for it (RFC 3461,
    L{mailapp.dsn.RecipientRequest}); C{relayed_owed} says that it went to a
    peer without DSN while NOTIFY asked for SUCCESS, and the sender has not
    had its "relayed" DSN yet.
    """

    address: str
    state: str = PENDING
    attempts: int = 0
    last_reply: str = ""
    remote: str = ""
    notified: bool = False
    notify: list[str] = field(default_factory=list)
    orcpt: str = ""
    relayed_owed: bool = False

    @property
    def request(self) -> RecipientRequest:
        return RecipientRequest(tuple(self.notify), self.orcpt)

    @property
    def domain(self) -> str:
        """The recipient's domain as DNS knows it: lower case, A-labels (RFC 6531 3.2)."""
        return domain_key(self.address.rpartition("@")[2])


@dataclass
class Envelope:
    """
    Everything the queue knows about one message, as stored in
    ``envelopes/ID.json``. Times are Unix seconds.

    C{fence} grows by one each time the manager claims the entry for an
    attempt; a result carrying an older fence is ignored, so a worker that
    lost its claim (an admin retry, delete or bounce meanwhile) can never
    record over the newer state. With one node this is bookkeeping; it is the
    field a shared queue (DESIGN.md) would compare-and-set.
    """

    id: str
    sender: str
    created: float
    size: int
    recipients: list[Recipient]
    attempts: int = 0
    next_attempt: float = 0.0
    fence: int = 0
    warned: bool = False
    #: REQUIRETLS (RFC 8689): only to a next hop with verified TLS that offers REQUIRETLS, else bounced (5.7.10).
    requiretls: bool = False
    #: SMTPUTF8 (RFC 6531): UTF-8 addresses or header fields; only to a next hop that offers SMTPUTF8, else bounced (5.6.7/5.6.9).
    smtputf8: bool = False
    #: The client's RET (FULL or HDRS) and ENVID (xtext) (RFC 3461); empty when not given.
    ret: str = ""
    envid: str = ""
    #: DKIM-signed by the relay as it leaves (L{mailapp.relay.signing}): mail
    #: from one of ours. The queue's copy is as it came; the signature is made
    #: per attempt, after any 8BITMIME downgrade, so that it covers the bytes sent.
    sign: bool = False
    version: int = ENVELOPE_VERSION

    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.state == PENDING]

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> "Envelope":
        """Parse and validate; raise L{CorruptEntry} for anything unexpected."""
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise CorruptEntry(f"not JSON: {error}") from None
        if not isinstance(raw, dict):
            raise CorruptEntry("not a JSON object")

        def get(name: str, kinds: type | tuple[type, ...], source: dict[str, Any] = raw) -> Any:
            value = source.get(name)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
                raise CorruptEntry(f"field {name!r} is missing or has the wrong type")
            return value

        if get("version", int) != ENVELOPE_VERSION:
            raise CorruptEntry(f"unknown envelope version {raw.get('version')!r}")
        recipients = []
        for item in get("recipients", list):
            if not isinstance(item, dict):
                raise CorruptEntry("a recipient is not an object")
            state = get("state", str, item)
            if state not in _STATES:
                raise CorruptEntry(f"unknown recipient state {state!r}")
            address = get("address", str, item)
            if "@" not in address:
                raise CorruptEntry(f"bad recipient address {address!r}")
            recipients.append(
                Recipient(
                    address=address,
                    state=state,
                    attempts=get("attempts", int, item),
                    last_reply=get("last_reply", str, item),
                    remote=get("remote", str, item),
                    notified=get("notified", bool, item),
                    # Optional: envelopes written before DSN parameters have none.
                    notify=[str(word) for word in get("notify", list, item)] if "notify" in item else [],
                    orcpt=get("orcpt", str, item) if "orcpt" in item else "",
                    relayed_owed=get("relayed_owed", bool, item) if "relayed_owed" in item else False,
                )
            )
        if not recipients:
            raise CorruptEntry("no recipients")
        entry_id = get("id", str)
        if not _ID.match(entry_id):
            raise CorruptEntry(f"bad id {entry_id!r}")
        return cls(
            id=entry_id,
            sender=get("sender", str),
            created=float(get("created", (int, float))),
            size=get("size", int),
            recipients=recipients,
            attempts=get("attempts", int),
            next_attempt=float(get("next_attempt", (int, float))),
            fence=get("fence", int),
            warned=get("warned", bool),
            # Optional: envelopes written before REQUIRETLS have none.
            requiretls=get("requiretls", bool) if "requiretls" in raw else False,
            smtputf8=get("smtputf8", bool) if "smtputf8" in raw else False,
            ret=get("ret", str) if "ret" in raw else "",
            envid=get("envid", str) if "envid" in raw else "",
            # Envelopes written before signing at delivery have none: their copies were signed at ingest.
            sign=get("sign", bool) if "sign" in raw else False,
        )


def _recipient(address: str, dsn: DsnParameters | None) -> Recipient:
    request = dsn.request_for(address) if dsn is not None else RecipientRequest()
    return Recipient(address, notify=list(request.notify), orcpt=request.orcpt)


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


@dataclass(frozen=True)
class QueueLayout:
    """Where each part of the queue lives under C{root} (``state_dir/queue``)."""

    root: Path

    @property
    def messages(self) -> Path:
        return self.root / "messages"

    @property
    def envelopes(self) -> Path:
        return self.root / "envelopes"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def corrupt(self) -> Path:
        return self.root / "corrupt"

    @property
    def control(self) -> Path:
        return self.root / "control"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    def message(self, entry_id: str) -> Path:
        return self.messages / entry_id

    def envelope(self, entry_id: str) -> Path:
        return self.envelopes / f"{entry_id}.json"

    def create(self) -> None:
        for directory in (self.root, self.messages, self.envelopes, self.tmp, self.corrupt, self.control):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)


# -- synchronous steps (worker threads, and the admin command) -------------------------


def read_envelope(path: Path) -> Envelope:
    """Read one envelope file; L{CorruptEntry} if it is not a valid one, OSError if unreadable."""
    envelope = Envelope.from_bytes(path.read_bytes())
    if path.name != f"{envelope.id}.json":
        raise CorruptEntry(f"file name does not match id {envelope.id!r}")
    return envelope


def quarantine(layout: QueueLayout, entry_id: str, reason: str) -> None:
    """Move an entry's files to ``corrupt/`` (never delete: a person may want them)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for path in (layout.envelopes / f"{entry_id}.json", layout.message(entry_id)):
        if path.exists():
            try:
                os.rename(path, layout.corrupt / f"{stamp}-{path.name}")
            except OSError:
                pass
    _log.error(
        "queue entry {queue_id} is unreadable and was moved to {directory}: {reason}",
        log_event=logevents.RELAY_CORRUPT_ENTRY,
        queue_id=entry_id,
        directory=str(layout.corrupt),
        reason=reason,
    )


def load_entries(
    layout: QueueLayout, clean: bool = False, now: float | None = None, problems: list[str] | None = None
) -> list[Envelope]:
    """
    Every valid envelope, oldest first. Corrupt ones (and envelopes whose
    message file is missing) are quarantined, unless C{problems} is given:
    then they are only listed there (a reader must not move files under a
    running server). With C{clean}, stale files in ``tmp/`` and message
    files that no envelope names are removed.
    """
    layout.create()
    entries: list[Envelope] = []
    names: set[str] = set()
    for item in sorted(os.scandir(layout.envelopes), key=lambda e: e.name):
        if not item.name.endswith(".json"):
            continue
        entry_id = item.name[: -len(".json")]
        try:
            envelope = read_envelope(Path(item.path))
            if not layout.message(envelope.id).is_file():
                raise CorruptEntry("its message file is missing")
        except FileNotFoundError:
            continue  # removed while we looked: delivered
        except (CorruptEntry, OSError) as error:
            if problems is not None:
                problems.append(f"{entry_id}: {error}")
            else:
                quarantine(layout, entry_id, str(error))
            continue
        entries.append(envelope)
        names.add(envelope.id)
    if clean:
        remove_stale(layout, names, now)
    entries.sort(key=lambda e: (e.created, e.id))
    return entries


def remove_stale(layout: QueueLayout, keep: set[str] | None = None, now: float | None = None) -> int:
    """
    Remove files in ``tmp/`` and message files that no envelope names
    (those in C{keep}, else every envelope on disk), once nobody has written
    to them for L{STALE_SECONDS}: left by a write a crash cut short. Safe
    while the server runs: an entry being written is younger than that.
    Returns how many were removed.
    """
    if keep is None:
        keep = {item.name[: -len(".json")] for item in os.scandir(layout.envelopes) if item.name.endswith(".json")}
    cutoff = (time.time() if now is None else now) - STALE_SECONDS
    removed = 0
    for directory, names in ((layout.tmp, set()), (layout.messages, keep)):
        for item in os.scandir(directory):
            try:
                if item.name not in names and item.stat().st_mtime < cutoff:
                    os.unlink(item.path)
                    removed += 1
            except OSError:
                pass
    return removed


def write_envelope_sync(layout: QueueLayout, envelope: Envelope, use_syncfs: bool = False) -> None:
    """Replace an envelope atomically and durably (for the admin command with the server stopped)."""
    temporary = layout.tmp / f"{envelope.id}.json.{os.getpid()}"
    write_file(temporary, envelope.to_bytes())
    durable.sync_files([temporary], layout.root, use_syncfs)
    durable.rename(temporary, layout.envelope(envelope.id))
    durable.sync_directories([layout.envelopes], layout.root, use_syncfs)


def remove_entry_sync(layout: QueueLayout, entry_id: str, use_syncfs: bool = False) -> None:
    """Remove an entry: envelope first (the entry no longer exists), then its message."""
    durable.unlink(layout.envelope(entry_id))
    durable.unlink(layout.message(entry_id))
    durable.sync_directories([layout.envelopes, layout.messages], layout.root, use_syncfs)


# -- the queue as the server uses it ----------------------------------------------


@dataclass
class Prepared:
    """An entry whose files are durable but which nobody can see yet (see L{Queue.publish})."""

    envelope: Envelope
    temporary: Path


class Queue:
    """
    The queue as the running server uses it: every disk step on worker
    threads, batched. L{prepare} and L{publish} are for the Router; L{save},
    L{remove} and L{load} for the relay manager, which L{subscribe}s to new
    entries.
    """

    def __init__(self, root: Path, reactor: Any, threadpool: Any = None, use_syncfs: bool | None = None) -> None:
        self.layout = QueueLayout(Path(root))
        self.layout.create()
        self.reactor = reactor
        self.threadpool = threadpool if threadpool is not None else reactor.getThreadPool()
        self.use_syncfs = durable.has_syncfs() if use_syncfs is None else use_syncfs
        self._writer = BatchWriter(reactor, self.threadpool, self.layout.root, self.use_syncfs)
        self._subscribers: list[Callable[[Envelope], None]] = []

    def subscribe(self, listener: Callable[[Envelope], None]) -> None:
        """Call C{listener(envelope)} with every entry once L{publish} has made it durable."""
        self._subscribers.append(listener)

    def prepare(
        self,
        message: Any,
        sender: str,
        recipients: Iterable[str],
        entry_id: str,
        *,
        sign: bool = False,
        requiretls: bool = False,
        dsn: DsnParameters | None = None,
        smtputf8: bool = False,
    ) -> Deferred[Prepared]:
        """
        Write the message file (a link to the writer's spool file when it has
        one in wire form, a copy in wire form when it has one with LF line
        ends, else its bytes) and the envelope under ``tmp/``, and sync both.
        C{message} is an L{mailapp.interfaces.IMessageWriter} whose C{finish}
        has fired; it stays the caller's. C{dsn}: the client's DSN
        parameters (RET, ENVID, and each recipient's NOTIFY and ORCPT).
        C{sign}: the relay signs it as it leaves (L{Envelope.sign}).
        """
        now = self.reactor.seconds()
        envelope = Envelope(
            id=entry_id,
            sender=sender,
            created=now,
            size=int(message.size),
            recipients=[_recipient(address, dsn) for address in recipients],
            next_attempt=now,
            requiretls=requiretls,
            smtputf8=smtputf8,
            ret=dsn.ret if dsn is not None else "",
            envid=dsn.envid if dsn is not None else "",
            sign=sign,
        )
        pending = getattr(message, "pending", None)
        stored_size = getattr(message, "stored_size", None)
        content: bytes | Path | WireCopy
        if pending is not None:
            content = pending
        elif stored_size is not None and stored_size != message.size:
            # The spool file has LF line ends, for the Maildir: a link would
            # hand the relay client a file it cannot send as it is.
            content = WireCopy(Path(message.path), int(message.size))
        else:
            content = Path(message.path)
        temporary = self.layout.tmp / f"{entry_id}.json"
        job = Job(writes=[(self.layout.message(entry_id), content), (temporary, envelope.to_bytes())])
        return self._writer.submit(job).addCallback(lambda _: Prepared(envelope, temporary))

    def publish(self, prepared: Prepared) -> Deferred[None]:
        """Make a prepared entry exist (rename, directory sync), then tell the subscribers."""
        job = Job(renames=[(prepared.temporary, self.layout.envelope(prepared.envelope.id))])

        def published(_: None) -> None:
            _log.debug(
                "{log_event} {queue_id} recipients={count}",
                log_event=logevents.RELAY_QUEUED,
                queue_id=prepared.envelope.id,
                count=len(prepared.envelope.recipients),
            )
            for listener in list(self._subscribers):
                listener(prepared.envelope)

        return self._writer.submit(job).addCallback(published)

    def publishedElsewhere(self, entry_id: str) -> Deferred[Envelope | None]:
        """
        Another process of this server (a worker, L{mailapp.workers})
        published entry C{entry_id}: read its envelope and tell the
        subscribers, as L{publish} would have. C{None} (and nobody told)
        when the entry is gone or unreadable: delivered already, or left for
        L{load} at the next start to quarantine. The one place a queue
        learns of entries it did not write; a queue shared between nodes
        backs it with its store's own notification.
        """
        if not _ID.match(entry_id):
            return succeed(None)

        def read() -> Envelope | None:
            try:
                return read_envelope(self.layout.envelope(entry_id))
            except (CorruptEntry, OSError):
                return None

        def tell(envelope: Envelope | None) -> Envelope | None:
            if envelope is not None:
                for listener in list(self._subscribers):
                    listener(envelope)
            return envelope

        return deferToThreadPool(self.reactor, self.threadpool, read).addCallback(tell)

    def discard(self, prepared: Prepared) -> Deferred[None]:
        """Forget a prepared entry (its local copies could not be made)."""
        return self._writer.submit(Job(unlinks=[prepared.temporary, self.layout.message(prepared.envelope.id)]))

    def save(self, envelope: Envelope) -> Deferred[None]:
        """Replace an entry's envelope atomically and durably."""
        temporary = self.layout.tmp / f"{envelope.id}.json.update"
        return self._writer.submit(
            Job(writes=[(temporary, envelope.to_bytes())], renames=[(temporary, self.layout.envelope(envelope.id))])
        )

    def remove(self, entry_id: str) -> Deferred[None]:
        """Remove an entry: its envelope, then its message file."""
        return self._writer.submit(Job(unlinks=[self.layout.envelope(entry_id), self.layout.message(entry_id)]))

    def load(self) -> Deferred[list[Envelope]]:
        """Every valid entry (corrupt ones quarantined, stale left-overs removed)."""
        return deferToThreadPool(self.reactor, self.threadpool, load_entries, self.layout, True)

    def sweep(self) -> Deferred[int]:
        """L{remove_stale} on a worker thread: what L{mailapp.leftovers} calls every hour."""
        return deferToThreadPool(self.reactor, self.threadpool, remove_stale, self.layout)

    def message_path(self, entry_id: str) -> Path:
        return self.layout.message(entry_id)

    def idle(self) -> bool:
        return self._writer.idle()

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run a blocking read (a message file's headers, say) on a worker thread."""
        return deferToThreadPool(self.reactor, self.threadpool, function, *args)
