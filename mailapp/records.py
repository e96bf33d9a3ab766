"""
The values the contract hands out: what the methods of
L{mailapp.interfaces} fire with or are passed, and the folder names the
contract fixes.

They live beside the interfaces, not in the Maildir store, so that a
protocol (or a fake, or another backend) imports the contract and never the
implementation: loading this module loads nothing but the standard library.
L{mailapp.store.records}, L{mailapp.store.events} and L{mailapp.store.names}
re-export them under their older names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Mapping

__all__ = [
    "FolderPlacement",
    "ADDED",
    "Appended",
    "ChangesSince",
    "Expunged",
    "FlagChange",
    "DELIMITER",
    "EXPUNGED",
    "FLAGS_CHANGED",
    "FOLDER_CREATED",
    "FOLDER_DELETED",
    "FOLDER_KINDS",
    "FOLDER_RENAMED",
    "INBOX",
    "SPECIAL_FOLDERS",
    "SUBSCRIBED",
    "UNSUBSCRIBED",
    "FolderDelta",
    "FolderEvent",
    "FolderInfo",
    "FolderStatus",
    "MIN_TEXT_NEEDLE",
    "MessageInfo",
    "MessageOrigin",
    "TEXT_SCOPES",
    "TextMatches",
    "Usage",
]

# --- folder names ---

#: The one folder every mailbox has; its name is case-insensitive (RFC 3501 5.1).
INBOX: Final = "INBOX"
#: The hierarchy delimiter of folder names (``a/b``), whatever the store keeps on disk.
DELIMITER: Final = "/"
#: The folders every mailbox is created with, and their RFC 6154 special-use attribute.
SPECIAL_FOLDERS: Final[dict[str, str]] = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}


# --- what the store's methods fire with ---


@dataclass(frozen=True)
class FolderPlacement:
    """One stored copy of a delivered message: whose, in which folder, with which flags (L{IMessageStore.deliverPlacements})."""

    account: str
    folder: str = INBOX
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FolderInfo:
    """A folder as LIST shows it: C{special_use} is ``\\Sent`` etc. or None."""

    name: str
    special_use: str | None
    subscribed: bool


@dataclass(frozen=True)
class FolderStatus:
    """A folder's counters, as SELECT and STATUS report them."""

    uidvalidity: int
    uidnext: int
    messages: int
    unseen: int
    #: The highest mod-sequence of the folder (RFC 7162): raised by every change of a message and every expunge.
    highestmodseq: int = 1
    #: Messages no session has claimed as \Recent yet (IMAP STATUS RECENT), as the store's status reads them.
    recent: int = 0
    #: The sum of the messages' wire sizes (STATUS SIZE, RFC 8438).
    size: int = 0
    #: Messages flagged \Deleted (STATUS DELETED, RFC 9051 6.3.11).
    deleted: int = 0


@dataclass(frozen=True)
class MessageInfo:
    """
    One message in a folder's index; C{size} is its size in wire form (CRLF
    line ends: RFC822.SIZE, POP3's LIST), C{internaldate} a POSIX timestamp.
    """

    uid: int
    flags: frozenset[str]
    size: int
    internaldate: float
    #: Its mod-sequence (RFC 7162): raised by every change of it (flags, keywords; a copy or move in is new).
    modseq: int = 1


@dataclass(frozen=True)
class MessageOrigin:
    """
    Which stored message a folder's message is, and since when it is in
    this folder (L{mailapp.interfaces.IFolder.origins}): its EMAILID
    (RFC 8474: the same for its copies in other folders, stable across
    restarts) and its save date (RFC 8514: a POSIX timestamp, None when
    not known, as after a rebuild of the index).
    """

    emailid: str
    savedate: float | None


@dataclass(frozen=True)
class ChangesSince:
    """
    What L{IFolder.changesSince} read in one transaction: the folder's
    token (as L{IFolder.messagesIfChanged} names it), UIDNEXT and
    HIGHESTMODSEQ now, the messages whose mod-sequence is above the one
    asked for (changed or new, in UID order), and the UIDs expunged since
    (None: the store no longer remembers that far back; read the folder
    whole instead).
    """

    token: tuple[int, int]
    uidnext: int
    highestmodseq: int
    changed: list[MessageInfo]
    vanished: list[int] | None


@dataclass(frozen=True)
class Appended:
    """
    What L{IFolder.appendMessage} stored: the message's UID, and its
    folder's UIDVALIDITY read in the same transaction (IMAP's APPENDUID,
    RFC 4315, with no trip of its own).
    """

    uid: int
    uidvalidity: int


@dataclass(frozen=True)
class FolderDelta:
    """
    What one write transaction of this process changed in one folder, read
    inside that transaction under the index's write lock: the folder's
    HIGHESTMODSEQ when it began (C{before}) and when it ended (C{after}),
    the messages it changed (in UID order, as they are now) and the UIDs it
    expunged. Every change with a mod-sequence in C{(before, after]} is in
    it, so a reader that knows the folder up to C{before} knows it up to
    C{after} once it applies this: no read of its own
    (L{mailapp.imap.selected.SelectedFolder}, which chains them). The
    UIDVALIDITY tells a folder made again under the same name apart.
    """

    uidvalidity: int
    before: int
    after: int
    changed: tuple[MessageInfo, ...]
    vanished: tuple[int, ...]

    @property
    def rows(self) -> int:
        """The messages and UIDs it holds: what a view keeping it pays for (L{mailapp.imap.selected.MAX_LINKED_ROWS})."""
        return len(self.changed) + len(self.vanished)


@dataclass(frozen=True)
class Expunged:
    """
    What L{IFolder.expungeDeleted} did: the UIDs removed, ascending, and
    the folder's HIGHESTMODSEQ right after (read in the same transaction:
    IMAP's C{[HIGHESTMODSEQ]} on EXPUNGE, RFC 7162 3.2.10, with no trip of
    its own).
    """

    uids: list[int]
    highestmodseq: int
    #: The transaction's L{FolderDelta}, for the other sessions' views (None: they read the folder).
    delta: FolderDelta | None = None


@dataclass(frozen=True)
class FlagChange:
    """
    What L{IFolder.changeFlags} did: the flags of every message asked for
    that exists, and its mod-sequence now (changed or not); C{modified},
    the UIDs left alone because they changed after C{unchangedSince}.
    """

    flags: dict[int, frozenset[str]]
    modseqs: dict[int, int]
    modified: tuple[int, ...] = ()
    #: The transaction's L{FolderDelta}, for the other sessions' views (None: they read the folder).
    delta: FolderDelta | None = None


#: What L{mailapp.interfaces.IFolder.searchText} can look in: C{body} and
#: C{text} as IMAP's BODY and TEXT keys do (RFC 3501: every text part as
#: sent, HTML source included; TEXT adds every header field), C{shown} and
#: C{shown_body} as the webmail does (HTML reduced to its text; C{shown} adds
#: Subject and From), C{subject}, C{from}, C{recipients} (To and Cc).
TEXT_SCOPES: Final = frozenset({"body", "text", "shown", "shown_body", "subject", "from", "recipients"})
#: The shortest string L{mailapp.interfaces.IFolder.searchText} takes (a
#: trigram index finds nothing shorter): shorter ones are searched by reading.
MIN_TEXT_NEEDLE: Final = 3


@dataclass(frozen=True)
class TextMatches:
    """
    What a folder's full-text index says about a search
    (L{mailapp.interfaces.IFolder.searchText}). It covers the messages in
    C{indexed}; for those, C{found} is exact: per (scope, string) asked,
    the UIDs whose text contains the case-folded string. Any other message
    (delivered since, or one the index could not read exactly) must be
    searched by reading it. C{approximate} is the same for the words asked
    to be found with one edit (SEARCH FUZZY, L{mailapp.store.fuzzy}), and
    C{relevance}, asked with them, how well each covered message matched
    (higher is better; a message found but not ranked is missing).
    """

    indexed: frozenset[int]
    found: Mapping[tuple[str, str], frozenset[int]]
    approximate: Mapping[tuple[str, str], frozenset[int]] = field(default_factory=dict)
    relevance: Mapping[int, float] = field(default_factory=dict)

    def covers(self, uid: int) -> bool:
        """Whether C{found} decides C{uid}."""
        return uid in self.indexed


@dataclass(frozen=True)
class Usage:
    """What one mailbox holds now, all folders together: messages and the sum of their wire sizes (quotas)."""

    messages: int = 0
    bytes: int = 0


# --- what the event bus publishes ---

#: L{FolderEvent.kind}: messages were added (delivery, APPEND, COPY, MOVE).
ADDED: Final = "added"
#: L{FolderEvent.kind}: the flags of messages changed.
FLAGS_CHANGED: Final = "flags_changed"
#: L{FolderEvent.kind}: messages were removed (EXPUNGE, MOVE, DELE).
EXPUNGED: Final = "expunged"
#: L{FolderEvent.kind}, no UIDs: the folder was created (IMAP CREATE, the webmail; a missing parent too).
FOLDER_CREATED: Final = "folder_created"
#: L{FolderEvent.kind}, no UIDs: the folder was deleted.
FOLDER_DELETED: Final = "folder_deleted"
#: L{FolderEvent.kind}, no UIDs: the folder was renamed to C{folder}; its old name is C{source} (one event per folder moved).
FOLDER_RENAMED: Final = "folder_renamed"
#: L{FolderEvent.kind}, no UIDs: the folder's name was subscribed, or unsubscribed (IMAP SUBSCRIBE, UNSUBSCRIBE).
SUBSCRIBED: Final = "subscribed"
UNSUBSCRIBED: Final = "unsubscribed"
#: The kinds that are about a folder itself rather than its messages.
FOLDER_KINDS: Final = frozenset({FOLDER_CREATED, FOLDER_DELETED, FOLDER_RENAMED, SUBSCRIBED, UNSUBSCRIBED})


@dataclass(frozen=True)
class FolderEvent:
    """Something changed in one folder: C{kind} is L{ADDED}, L{FLAGS_CHANGED}, L{EXPUNGED} or one of L{FOLDER_KINDS}."""

    kind: str
    account: str
    folder: str
    uids: tuple[int, ...]
    #: For C{added} by a copy or move: the folder the messages came from (the Junk learner's cue);
    #: for C{folder_renamed}, the old name; None otherwise.
    source: str | None = None
    #: What the change was, exactly, when this process made it in one transaction (L{FolderDelta});
    #: None for what a listener must read for itself (another process's changes, a reconcile, a change
    #: to a folder no session of this process had open).
    delta: FolderDelta | None = field(default=None, compare=False)
