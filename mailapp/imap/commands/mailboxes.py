"""
The commands on mailboxes as names (RFC 3501 6.3): CREATE, DELETE, RENAME,
SUBSCRIBE, UNSUBSCRIBE, LIST (with RFC 6154's SPECIAL-USE), LSUB, STATUS,
and NAMESPACE (RFC 2342).

A mailbox name is refused with C{NO [CANNOT]} before it reaches the store
(L{mailapp.imap.wire.decode_mailbox}); the store's own refusals come back
with their RFC 5530 codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine

from mailapp.errors import BadFolderName, FolderExists, NoSuchFolder
from mailapp.imap.commands.condstore import enable_condstore
from mailapp.imap.wire import (
    DELIMITER,
    Atom,
    BadCommand,
    BadMailboxName,
    String,
    Token,
    as_list,
    as_mailbox,
    as_string,
    encode_mailbox,
    expect_count,
    format_value,
    mailbox_pattern,
)

if TYPE_CHECKING:
    from mailapp.imap.session import IMAPServer

__all__ = [
    "create", "delete", "list_", "lsub", "namespace", "open_folder", "rename", "status", "subscribe", "unsubscribe",
]


async def open_folder(session: IMAPServer, tag: bytes, token: Token, missing: bytes = b"[NONEXISTENT] No such mailbox") -> Any:
    """
    The store's folder a mailbox-name argument names; None once C{NO} is
    answered (C{[CANNOT]} for a refused name, C{missing} for a folder that
    does not exist: APPEND and COPY say C{[TRYCREATE]}).
    """
    try:
        return await session.mailbox.folder(as_mailbox(token))
    except (BadMailboxName, BadFolderName) as e:
        session.tagged(tag, b"NO", b"[CANNOT] " + str(e).encode("utf-8", "replace"))
    except NoSuchFolder:
        session.tagged(tag, b"NO", missing)
    return None


async def _folderCall(session: IMAPServer, tag: bytes, call: Callable[[], Awaitable[None]], ok: bytes) -> None:
    try:
        await call()
    except BadMailboxName as e:
        session.tagged(tag, b"NO", b"[CANNOT] " + str(e).encode("utf-8", "replace"))
        return
    except FolderExists:
        session.tagged(tag, b"NO", b"[ALREADYEXISTS] Mailbox already exists")
        return
    except NoSuchFolder:
        session.tagged(tag, b"NO", b"[NONEXISTENT] No such mailbox")
        return
    except BadFolderName as e:
        session.tagged(tag, b"NO", b"[CANNOT] " + str(e).encode("utf-8", "replace"))
        return
    await session.complete(tag, ok)


def create(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 1, "CREATE")

    async def create() -> None:
        name = as_mailbox(arguments[0])
        if name == "INBOX":
            raise FolderExists()
        await session.mailbox.createFolder(name)

    return _folderCall(session, tag, create, b"CREATE completed")


def delete(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 1, "DELETE")

    async def delete() -> None:
        name = as_mailbox(arguments[0])
        if name == "INBOX":
            raise BadFolderName("INBOX cannot be deleted")
        if session.selected is not None and session.selected.folder.name == name:
            session.unselect()
        await session.mailbox.deleteFolder(name)

    return _folderCall(session, tag, delete, b"DELETE completed")


def rename(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 2, "RENAME")

    async def rename() -> None:
        old = as_mailbox(arguments[0])
        new = as_mailbox(arguments[1])
        if new == "INBOX" or new.startswith("INBOX/"):
            raise FolderExists()
        if old == "INBOX":
            await _renameInbox(session, new)
            return
        await session.mailbox.renameFolder(old, new)

    return _folderCall(session, tag, rename, b"RENAME completed")


async def _renameInbox(session: IMAPServer, new: str) -> None:
    """RFC 3501 6.3.5: renaming INBOX moves its messages to a new folder and leaves INBOX empty."""
    await session.mailbox.createFolder(new)
    inbox = await session.mailbox.folder("INBOX")
    target = await session.mailbox.folder(new)
    uids = [m.uid for m in await inbox.messages()]
    if uids:
        await inbox.moveTo(uids, target)


def subscribe(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 1, "SUBSCRIBE")

    async def subscribe() -> None:
        if not await session.mailbox.setSubscribed(as_mailbox(arguments[0]), True):
            raise NoSuchFolder()

    return _folderCall(session, tag, subscribe, b"SUBSCRIBE completed")


def unsubscribe(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 1, "UNSUBSCRIBE")

    async def unsubscribe() -> None:
        await session.mailbox.setSubscribed(as_mailbox(arguments[0]), False)

    return _folderCall(session, tag, unsubscribe, b"UNSUBSCRIBE completed")


def namespace(session: IMAPServer, tag: bytes, arguments: list[Token]) -> None:
    expect_count(arguments, 0, "NAMESPACE")
    session.untagged(b'NAMESPACE (("" "/")) NIL NIL')
    session.tagged(tag, b"OK", b"NAMESPACE completed")


def list_(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _list(session, tag, arguments, subscribed_only=False)


def lsub(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _list(session, tag, arguments, subscribed_only=True)


async def _list(session: IMAPServer, tag: bytes, arguments: list[Token], subscribed_only: bool) -> None:
    """
    LIST and LSUB. LSUB (RFC 3501 6.3.9) lists the subscribed names the
    pattern matches with no attributes, and, as ``\\Noselect``, a name that
    is not subscribed but matches where a subscribed name below it does not
    (``LSUB "" %`` with only ``a/b`` subscribed lists ``a``). LIST's
    selection option SUBSCRIBED and return option SUBSCRIBED (RFC 5258) are
    honoured too, with ``\\Subscribed``, for clients that send them anyway.
    """
    special_only = subscribed_selection = return_subscribed = False
    if arguments and isinstance(arguments[0], list) and not subscribed_only:
        options = {bytes(o).upper() for o in arguments[0] if isinstance(o, (Atom, String))}
        special_only = b"SPECIAL-USE" in options
        subscribed_selection = b"SUBSCRIBED" in options
        arguments = arguments[1:]
    if len(arguments) == 4 and isinstance(arguments[2], Atom) and arguments[2].upper() == b"RETURN":
        if isinstance(arguments[3], list):
            return_subscribed = any(isinstance(o, (Atom, String)) and bytes(o).upper() == b"SUBSCRIBED" for o in arguments[3])
        arguments = arguments[:2]
    expect_count(arguments, 2, "LIST")
    raw_reference, raw_pattern = as_string(arguments[0], "reference"), as_string(arguments[1], "pattern")
    encoded = False
    try:
        reference, pattern = raw_reference.decode("imap4-utf-7"), raw_pattern.decode("imap4-utf-7")
    except (UnicodeDecodeError, ValueError):
        # Not modified UTF-7 (``&'+,-`` in imaptest's atoms): matched as sent against
        # the names as sent, as Dovecot does, so LIST is OK and finds what it can.
        reference, pattern = raw_reference.decode("latin-1"), raw_pattern.decode("latin-1")
        encoded = True
    verb = b"LSUB" if subscribed_only else b"LIST"
    if not pattern:
        session.untagged(verb + b' (\\Noselect) "/" ""')
        await session.complete(tag, verb + b" completed")
        return
    folders = await session.mailbox.listFolders()
    names = {f.name: f for f in folders}
    subscribed = {f.name for f in folders if f.subscribed}
    every = set(names)
    for name in list(every):
        parts = name.split(DELIMITER)
        for depth in range(1, len(parts)):
            every.add(DELIMITER.join(parts[:depth]))
    regex = mailbox_pattern(reference, pattern)

    def matches(name: str) -> bool:
        return bool(regex.match(encode_mailbox(name).decode("ascii") if encoded else name))

    lines = []
    for name in sorted(every, key=lambda n: (n != "INBOX", n)):
        if not matches(name):
            continue
        info = names.get(name)
        prefix = name + DELIMITER
        attributes = []
        if subscribed_only:
            if name not in subscribed:
                if not any(s.startswith(prefix) and not matches(s) for s in subscribed):
                    continue
                attributes.append("\\Noselect")
        else:
            if subscribed_selection and name not in subscribed:
                continue
            if special_only and (info is None or not info.special_use):
                continue
            if info is None:
                attributes.append("\\Noselect")
            has_children = any(other.startswith(prefix) for other in every)
            attributes.append("\\HasChildren" if has_children else "\\HasNoChildren")
            if info is not None and info.special_use:
                attributes.append(info.special_use)
            if (subscribed_selection or return_subscribed) and name in subscribed:
                attributes.append("\\Subscribed")
        lines.append(verb + b" (" + " ".join(attributes).encode("ascii") + b') "/" ' + format_value(encode_mailbox(name)))
    for line in lines:
        session.untagged(line)
    await session.complete(tag, verb + b" completed")


_STATUS_ITEMS = {b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"HIGHESTMODSEQ"}


def status(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 2, "STATUS")
    items = [as_string(i, "status item").upper() for i in as_list(arguments[1], "status items")]
    if not items or any(i not in _STATUS_ITEMS for i in items):
        raise BadCommand("Unknown STATUS item")

    async def status() -> None:
        try:
            name = as_mailbox(arguments[0])
            folder = await session.mailbox.folder(name)
            await folder.refresh()
            state = await folder.status()
        except (BadMailboxName, BadFolderName) as e:
            session.tagged(tag, b"NO", b"[CANNOT] " + str(e).encode("utf-8", "replace"))
            return
        except NoSuchFolder:
            session.tagged(tag, b"NO", b"[NONEXISTENT] No such mailbox")
            return
        values: dict[bytes, int] = {
            b"MESSAGES": state.messages,
            b"UIDNEXT": state.uidnext,
            b"UIDVALIDITY": state.uidvalidity,
            b"UNSEEN": state.unseen,
            b"HIGHESTMODSEQ": state.highestmodseq,  # RFC 7162 3.1.9; asking for it turns CONDSTORE on
        }
        if b"HIGHESTMODSEQ" in items:
            await enable_condstore(session)
        if b"RECENT" in items:
            marker = session.factory.recentMarker(session.account, folder.name, state.uidvalidity)
            values[b"RECENT"] = sum(1 for m in await folder.messages() if m.uid > marker)
        body = b" ".join(b"%s %d" % (item, values[item]) for item in items)
        session.untagged(b"STATUS " + format_value(encode_mailbox(folder.name)) + b" (" + body + b")")
        await session.complete(tag, b"STATUS completed")

    return status()
