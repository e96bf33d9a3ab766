"""
The mailbox store: Maildir++ per user with a per-mailbox index, a
group-committing writer, and the per-folder event bus.

Protocols use it only through the interfaces in L{mailapp.interfaces}.
"""

from mailapp.store.events import ADDED, EXPUNGED, FLAGS_CHANGED, EventBus, FolderEvent
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
from mailapp.store.names import INBOX, SPECIAL_FOLDERS
from mailapp.store.records import FolderInfo, FolderStatus, MessageInfo, Usage

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
