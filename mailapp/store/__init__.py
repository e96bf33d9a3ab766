"""
The mailbox store: Maildir++ per user with a per-mailbox index, a
group-committing writer, and the per-folder event bus.

Protocols use it only through the interfaces in L{mailapp.interfaces} and
the records of L{mailapp.records}. Importing this package loads neither the
Maildir implementation nor its index: the names below that come from
L{mailapp.store.maildir} are imported on first use (PEP 562), so that
C{import mailapp.pop3} (which names C{mailapp.store.records}, and so runs
this file) does not load the store a protocol must not depend on.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mailapp.records import ADDED, EXPUNGED, FLAGS_CHANGED, INBOX, SPECIAL_FOLDERS, FolderEvent, FolderInfo, FolderStatus, MessageInfo, Usage
from mailapp.store.events import EventBus

if TYPE_CHECKING:
    from mailapp.store.maildir import (
        DELETED_NAME,
        MaildirFolder,
        MaildirMailbox,
        MaildirStore,
        ensure_mailbox,
        mailbox_usage,
        open_message_file,
        read_message_file,
        retire_domain_mailboxes,
        retire_mailbox,
    )

__all__ = [
    "ADDED",
    "DELETED_NAME",
    "EXPUNGED",
    "FLAGS_CHANGED",
    "INBOX",
    "SPECIAL_FOLDERS",
    "EventBus",
    "FolderEvent",
    "FolderInfo",
    "FolderStatus",
    "MaildirFolder",
    "MaildirMailbox",
    "MaildirStore",
    "MessageInfo",
    "Usage",
    "ensure_mailbox",
    "mailbox_usage",
    "open_message_file",
    "read_message_file",
    "retire_domain_mailboxes",
    "retire_mailbox",
]

#: The names of L{__all__} this package hands on from L{mailapp.store.maildir},
#: loaded when first asked for: those the imports above did not define.
_FROM_MAILDIR = frozenset(name for name in __all__ if name not in globals())


def __getattr__(name: str) -> Any:
    if name in _FROM_MAILDIR:
        value = getattr(importlib.import_module("mailapp.store.maildir"), name)
        globals()[name] = value  # once: later lookups do not come here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
