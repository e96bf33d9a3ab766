"""
The per-mailbox index: a small SQLite database beside the Maildir, derived
from it and rebuilt when it is missing or damaged.

This module is the index's name for the rest of the code and the tests;
the index is made of one module per concept:

  - L{mailapp.store.filenames}: what a Maildir file name carries (UID,
    sizes, flags) and how flags are kept in the index;
  - L{mailapp.store.keywords}: each folder's ``dovecot-keywords`` letters;
  - L{mailapp.store.folders}: folder directories, their ``mailapp-folder``
    record (UIDVALIDITY, UIDNEXT), and their rows;
  - L{mailapp.store.database}: the SQLite file, its schema, damage noticed
    by every connection;
  - L{mailapp.store.connections}: the pool of connections, pinned to their
    mailbox's directory, and the repair of a damaged index;
  - L{mailapp.store.repair}: opening an index, checked at the first open,
    and moving a damaged one aside;
  - L{mailapp.store.rebuild}: an index built from the Maildir, keeping
    UIDVALIDITY and UIDs;
  - L{mailapp.store.reconcile}: an index brought in line with what crashes
    and other tools changed;
  - L{mailapp.store.usage}: the mailbox's usage (its quota's count), a
    total kept by triggers in the same transaction as every change.

Everything there is synchronous and runs on a worker thread.
"""

from mailapp.store.connections import (
    REPAIR_WAIT_SECONDS,
    DirectoryIdentity,
    IndexRepaired,
    MailboxPin,
    close_idle_connections,
    connection,
    directory_identity,
    reset_connections,
    retry_after_repair,
)
from mailapp.store.database import INDEX_NAME, SCHEMA_VERSION, IndexDamaged, is_damage, rollback
from mailapp.store.filenames import ParsedName, decode_flags, encode_flags, format_filename, parse_filename
from mailapp.store.folders import (
    META_NAME,
    create_folder,
    ensure_default_folders,
    make_folder_directory,
    message_counts,
    read_meta,
    write_meta,
)
from mailapp.store.keywords import KEYWORDS_NAME, keyword_letters, message_filename, read_keywords
from mailapp.store.reconcile import FolderChanges, reconcile, reconcile_running_folder
from mailapp.store.usage import count_usage, usage

__all__ = [
    "INDEX_NAME",
    "KEYWORDS_NAME",
    "META_NAME",
    "REPAIR_WAIT_SECONDS",
    "SCHEMA_VERSION",
    "DirectoryIdentity",
    "FolderChanges",
    "IndexDamaged",
    "IndexRepaired",
    "MailboxPin",
    "ParsedName",
    "close_idle_connections",
    "connection",
    "count_usage",
    "create_folder",
    "decode_flags",
    "directory_identity",
    "encode_flags",
    "ensure_default_folders",
    "format_filename",
    "is_damage",
    "keyword_letters",
    "make_folder_directory",
    "message_counts",
    "message_filename",
    "parse_filename",
    "read_keywords",
    "read_meta",
    "reconcile",
    "reconcile_running_folder",
    "reset_connections",
    "retry_after_repair",
    "rollback",
    "usage",
    "write_meta",
]
