"""The plain records the store hands to protocols."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FolderInfo:
    """A folder as LIST shows it: C{special_use} is ``\\Sent`` etc. or None."""

    name: str
    special_use: str | None
    subscribed: bool


@dataclass(frozen=True)
class FolderStatus:
    uidvalidity: int
    uidnext: int
    messages: int
    unseen: int


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


@dataclass(frozen=True)
class Usage:
    """What one mailbox holds now, all folders together: messages and the sum of their wire sizes (quotas)."""

    messages: int = 0
    bytes: int = 0
