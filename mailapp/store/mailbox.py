"""
One user's mailbox in the Maildir store (L{MaildirMailbox}): its folders,
their creation, deletion, renaming and subscriptions, and its usage.

A session keeps one mailbox object, pinned to the directory it first opened
(L{mailapp.store.connections.MailboxPin}), so that it cannot outlive its
account's deletion. Changes run on the store's writer, reads on a worker
thread.
"""

from __future__ import annotations

import functools
import os
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, ContextManager

from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from mailapp.errors import BadFolderName, FolderExists, NoSuchFolder
from mailapp.interfaces import IFolder, IMailbox
from mailapp.store import connections, durable, subscriptions
from mailapp.store.database import rollback
from mailapp.store.folder import MaildirFolder
from mailapp.store.folders import create_folder, set_aside
from mailapp.store.names import DELIMITER, INBOX, SPECIAL_FOLDERS, folder_directory, mailbox_directory, normalize_folder
from mailapp.records import FOLDER_CREATED, FOLDER_DELETED, FOLDER_RENAMED, SUBSCRIBED, UNSUBSCRIBED, FolderEvent, FolderInfo, Usage
from mailapp.store.usage import usage as read_usage

if TYPE_CHECKING:
    from mailapp.store.maildir import MaildirStore


@functools.lru_cache(maxsize=4096)
def account_directory(root: Path, account: str) -> Path:
    """
    L{mailbox_directory}, remembered: the reactor thread makes a mailbox
    object for every quota check and delivery, and the encoding is a pure
    function of its arguments (a bad address raises, and is not remembered).
    """
    return mailbox_directory(root, account)


@implementer(IMailbox)
class MaildirMailbox:
    """One user's folders; cheap to make, no I/O until used."""

    def __init__(self, store: MaildirStore, account: str) -> None:
        self.store = store
        self.account = account
        self.directory = account_directory(store.root, account)
        #: A session keeps one mailbox object; this ties it to the directory
        #: it first opened, so it cannot outlive its account's deletion.
        self.pin = connections.MailboxPin()

    def _connect(self) -> ContextManager[sqlite3.Connection]:
        return connections.connection(self.directory, self.pin)

    def _announce(self, kind: str, names: list[str] | list[tuple[str, str | None]]) -> None:
        """Publish a folder event per name (a (name, old name) pair for a rename), on the reactor once the change is made."""
        for each in names:
            name, source = each if isinstance(each, tuple) else (each, None)
            self.store.events.publish(FolderEvent(kind, self.account, name, (), source))

    def listFolders(self) -> Deferred[list[FolderInfo]]:
        def read() -> list[FolderInfo]:
            with self._connect() as conn:
                rows = conn.execute("SELECT name, subscribed FROM folders").fetchall()
            folders = [FolderInfo(name, SPECIAL_FOLDERS.get(name), bool(subscribed)) for name, subscribed in rows]
            return sorted(folders, key=lambda f: (f.name != INBOX, f.name))

        return self.store.run(read)

    def usage(self) -> Deferred[Usage]:
        def read() -> Usage:
            with self._connect() as conn:
                return read_usage(conn)

        return self.store.run(read)

    def createFolder(self, name: str) -> Deferred[None]:
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return fail(e)

        def create() -> list[str]:
            created = []
            with self._connect() as conn:
                parts = name.split(DELIMITER)
                for depth in range(1, len(parts)):
                    parent = DELIMITER.join(parts[:depth])
                    if create_folder(conn, self.directory, parent):
                        created.append(parent)
                if not create_folder(conn, self.directory, name):
                    raise FolderExists(f"folder exists: {name}")
                created.append(name)
                if subscriptions.forget(self.directory, name):
                    conn.execute("UPDATE folders SET subscribed = 1 WHERE name = ?", (name,))
            return created

        return self.store.write(create).addCallback(lambda created: self._announce(FOLDER_CREATED, created))

    def deleteFolder(self, name: str) -> Deferred[None]:
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return fail(e)
        if name == INBOX:
            return fail(BadFolderName("INBOX cannot be deleted"))

        def delete() -> None:
            with self._connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute("SELECT subscribed FROM folders WHERE name = ?", (name,)).fetchone()
                    if row is None:
                        raise NoSuchFolder(f"no such folder: {name}")
                    conn.execute("DELETE FROM folders WHERE name = ?", (name,))
                    conn.execute("DELETE FROM messages WHERE folder = ?", (name,))
                    aside = set_aside(self.directory, folder_directory(self.directory, name))
                    conn.execute("COMMIT")
                except BaseException:
                    rollback(conn)
                    raise
                if row[0]:
                    # RFC 3501 6.3.9: the subscription stays (mailapp.store.subscriptions).
                    subscriptions.remember(self.directory, name)
                if aside is not None:
                    shutil.rmtree(aside, ignore_errors=True)

        return self.store.write(delete).addCallback(lambda _: self._announce(FOLDER_DELETED, [name]))

    def renameFolder(self, old: str, new: str) -> Deferred[None]:
        try:
            old, new = normalize_folder(old), normalize_folder(new)
        except BadFolderName as e:
            return fail(e)
        if INBOX in (old, new):
            return fail(BadFolderName("renaming INBOX is not supported"))

        def rename() -> list[tuple[str, str | None]]:
            with self._connect() as conn:
                names = [r[0] for r in conn.execute("SELECT name FROM folders").fetchall()]
                if old not in names:
                    raise NoSuchFolder(f"no such folder: {old}")
                if new in names:
                    raise FolderExists(f"folder exists: {new}")
                moving = [n for n in names if n == old or n.startswith(old + DELIMITER)]
                parts = new.split(DELIMITER)
                renamed: list[tuple[str, str | None]] = []
                for depth in range(1, len(parts)):
                    parent = DELIMITER.join(parts[:depth])
                    if parent not in names and parent not in moving:
                        create_folder(conn, self.directory, parent)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for name in moving:
                        target = new + name[len(old) :]
                        os.rename(folder_directory(self.directory, name), folder_directory(self.directory, target))
                        conn.execute("UPDATE folders SET name = ? WHERE name = ?", (target, name))
                        conn.execute("UPDATE messages SET folder = ? WHERE folder = ?", (target, name))
                        renamed.append((target, name))
                    conn.execute("COMMIT")
                except BaseException:
                    rollback(conn)
                    raise
                durable.fsync_directory(self.directory)
                return renamed

        return self.store.write(rename).addCallback(lambda renamed: self._announce(FOLDER_RENAMED, renamed))

    def setSubscribed(self, name: str, subscribed: bool) -> Deferred[bool]:
        """
        Mark C{name} subscribed or not (IMAP SUBSCRIBE/UNSUBSCRIBE); fires
        with C{False} when no such folder exists (nothing changes then), but
        unsubscribing the name of a deleted folder forgets it (True).
        """
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return fail(e)

        def change() -> bool:
            with self._connect() as conn:
                cursor = conn.execute("UPDATE folders SET subscribed = ? WHERE name = ?", (int(bool(subscribed)), name))
                if cursor.rowcount > 0:
                    return True
            return not subscribed and subscriptions.forget(self.directory, name)

        def changed(done: bool) -> bool:
            if done:
                self._announce(SUBSCRIBED if subscribed else UNSUBSCRIBED, [name])
            return done

        return self.store.write(change).addCallback(changed)

    def subscribedWithoutFolder(self) -> Deferred[list[str]]:
        return self.store.run(lambda: sorted(subscriptions.read(self.directory)))

    def folder(self, name: str) -> Deferred[IFolder]:
        try:
            name = normalize_folder(name)
        except BadFolderName as e:
            return fail(e)

        def find() -> MaildirFolder:
            with self._connect() as conn:
                exists = conn.execute("SELECT 1 FROM folders WHERE name = ?", (name,)).fetchone()
            if exists is None:
                raise NoSuchFolder(f"no such folder: {name}")
            return MaildirFolder(self, name)

        def opened(folder: MaildirFolder) -> MaildirFolder:
            # A folder opened is a folder about to be searched: its full-text
            # file catches up now if a restart or a rebuild left it behind.
            self.store.fulltext.changed(self.directory)
            return folder

        return self.store.run(find).addCallback(opened)
