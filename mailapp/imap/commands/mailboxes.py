"""
The commands on mailboxes as names (RFC 3501 6.3): CREATE, DELETE, RENAME,
SUBSCRIBE, UNSUBSCRIBE, LIST (LIST-EXTENDED, RFC 5258; LIST-STATUS, RFC
5819; RFC 6154's SPECIAL-USE), LSUB, STATUS (with RFC 8438's SIZE), and
NAMESPACE (RFC 2342). Names are modified UTF-7, or UTF-8 after ENABLE
UTF8=ACCEPT (RFC 6855).

A mailbox name is refused with C{NO [CANNOT]} before it reaches the store
(L{mailapp.imap.wire.decode_mailbox}); the store's own refusals come back
with their RFC 5530 codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    format_mailbox,
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
        return await session.mailbox.folder(as_mailbox(token, session.utf8))
    except (BadMailboxName, BadFolderName) as e:
        session.tagged(tag, b"NO", b"[CANNOT] " + str(e).encode("utf-8", "replace"))
    except NoSuchFolder:
        session.tagged(tag, b"NO", missing)
    return None


async def _folderCall(session: IMAPServer, tag: bytes, call: Callable[[], Awaitable[bytes | None]], ok: bytes) -> None:
    """Run C{call}, answering its errors; its result, if any, is a response code for the OK (CREATE's MAILBOXID)."""
    try:
        code = await call()
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
    await session.complete(tag, ok if code is None else code + b" " + ok)


def create(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 1, "CREATE")

    async def create() -> bytes | None:
        name = as_mailbox(arguments[0], session.utf8)
        if name == "INBOX":
            raise FolderExists()
        await session.mailbox.createFolder(name)
        try:
            folder = await session.mailbox.folder(name)
            return b"[MAILBOXID (%s)]" % (await folder.mailboxId()).encode("ascii")  # RFC 8474 4.1
        except NoSuchFolder:
            return None  # deleted again at once, by another session: created all the same

    return _folderCall(session, tag, create, b"CREATE completed")


def delete(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 1, "DELETE")

    async def delete() -> None:
        name = as_mailbox(arguments[0], session.utf8)
        if name == "INBOX":
            raise BadFolderName("INBOX cannot be deleted")
        if session.selected is not None and session.selected.folder.name == name:
            session.unselect()
        await session.mailbox.deleteFolder(name)

    return _folderCall(session, tag, delete, b"DELETE completed")


def rename(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 2, "RENAME")

    async def rename() -> None:
        old = as_mailbox(arguments[0], session.utf8)
        new = as_mailbox(arguments[1], session.utf8)
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
        if not await session.mailbox.setSubscribed(as_mailbox(arguments[0], session.utf8), True):
            raise NoSuchFolder()

    return _folderCall(session, tag, subscribe, b"SUBSCRIBE completed")


def unsubscribe(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 1, "UNSUBSCRIBE")

    async def unsubscribe() -> None:
        await session.mailbox.setSubscribed(as_mailbox(arguments[0], session.utf8), False)

    return _folderCall(session, tag, unsubscribe, b"UNSUBSCRIBE completed")


def namespace(session: IMAPServer, tag: bytes, arguments: list[Token]) -> None:
    expect_count(arguments, 0, "NAMESPACE")
    session.untagged(b'NAMESPACE (("" "/")) NIL NIL')
    session.tagged(tag, b"OK", b"NAMESPACE completed")


def list_(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    return _list(session, tag, _list_options(arguments), subscribed_only=False)


def lsub(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 2, "LSUB")
    options = _ListOptions(as_string(arguments[0], "reference"), [as_string(arguments[1], "pattern")], single=True)
    return _list(session, tag, options, subscribed_only=True)


_SELECT_OPTIONS = {b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE"}
_RETURN_OPTIONS = {b"SUBSCRIBED", b"CHILDREN", b"STATUS", b"SPECIAL-USE"}


@dataclass
class _ListOptions:
    """A LIST's reference, patterns and RFC 5258 options, as parsed."""

    reference: bytes
    patterns: list[bytes]
    #: One pattern, not in parentheses: ``LIST "" ""`` asks for the delimiter.
    single: bool = False
    select: set[bytes] = field(default_factory=set)
    returns: set[bytes] = field(default_factory=set)
    status: list[bytes] = field(default_factory=list)


def _list_options(arguments: list[Token]) -> _ListOptions:
    """
    ``LIST [(selection options)] reference (pattern / (patterns)) [RETURN (return options)]``
    (RFC 5258 3, with RFC 5819's ``STATUS (items)`` and RFC 6154's
    SPECIAL-USE); L{BadCommand} for an option we do not know, or
    RECURSIVEMATCH without a selection option it could refine.
    """
    select: set[bytes] = set()
    if arguments and isinstance(arguments[0], list):
        select = {_option(o) for o in arguments[0]}
        if select - _SELECT_OPTIONS:
            raise BadCommand("Unknown LIST selection option")
        if b"RECURSIVEMATCH" in select and not select & {b"SUBSCRIBED", b"SPECIAL-USE"}:
            raise BadCommand("RECURSIVEMATCH needs another selection option")
        arguments = arguments[1:]
    returns: set[bytes] = set()
    status: list[bytes] = []
    if len(arguments) == 4 and isinstance(arguments[2], Atom) and arguments[2].upper() == b"RETURN":
        options = as_list(arguments[3], "return options")
        i = 0
        while i < len(options):
            option = _option(options[i])
            if option not in _RETURN_OPTIONS:
                raise BadCommand("Unknown LIST return option")
            if option == b"STATUS":
                if i + 1 >= len(options):
                    raise BadCommand("STATUS needs its items")
                i += 1
                status = _status_items(options[i])
            returns.add(option)
            i += 1
        arguments = arguments[:2]
    expect_count(arguments, 2, "LIST")
    reference = as_string(arguments[0], "reference")
    if isinstance(arguments[1], list):
        patterns = [as_string(p, "pattern") for p in arguments[1]]
        if not patterns:
            raise BadCommand("No LIST pattern")
        return _ListOptions(reference, patterns, False, select, returns, status)
    return _ListOptions(reference, [as_string(arguments[1], "pattern")], not select and not returns, select, returns, status)


def _option(token: Token) -> bytes:
    if not isinstance(token, (Atom, String)):
        raise BadCommand("LIST options are atoms")
    return bytes(token).upper()


async def _list(session: IMAPServer, tag: bytes, options: _ListOptions, subscribed_only: bool) -> None:
    """
    LIST and LSUB. LSUB (RFC 3501 6.3.9) lists the subscribed names the
    pattern matches with no attributes, and, as ``\\Noselect``, a name that
    is not subscribed but matches where a subscribed name below it does not
    (``LSUB "" %`` with only ``a/b`` subscribed lists ``a``). LIST takes
    RFC 5258's options: several patterns; selection SUBSCRIBED (with
    ``\\Subscribed``), REMOTE (nothing is remote) and RECURSIVEMATCH (a
    name whose subscribed descendant the patterns do not match comes with
    ``CHILDINFO ("SUBSCRIBED")``); return SUBSCRIBED and CHILDREN (children
    are always said, RFC 3348), RFC 5819's STATUS, and RFC 6154's
    SPECIAL-USE (the attributes are always said; as a selection option only
    the special folders are listed).
    """
    utf8 = session.utf8
    verb = b"LSUB" if subscribed_only else b"LIST"
    if options.single and not options.patterns[0]:
        session.untagged(verb + b' (\\Noselect) "/" ""')
        await session.complete(tag, verb + b" completed")
        return
    matchers = []
    encoded = False
    for raw_pattern in options.patterns:
        try:
            if utf8:
                reference, pattern = options.reference.decode("utf-8"), raw_pattern.decode("utf-8")
            else:
                reference, pattern = options.reference.decode("imap4-utf-7"), raw_pattern.decode("imap4-utf-7")
        except (UnicodeDecodeError, ValueError):
            # Not modified UTF-7 (``&'+,-`` in imaptest's atoms): matched as sent against
            # the names as sent, as Dovecot does, so LIST is OK and finds what it can.
            reference, pattern = options.reference.decode("latin-1"), raw_pattern.decode("latin-1")
            encoded = True
        matchers.append(mailbox_pattern(reference, pattern))
    folders = await session.mailbox.listFolders()
    names = {f.name: f for f in folders}
    subscribed = {f.name for f in folders if f.subscribed}
    every = set(names)
    for name in list(every):
        parts = name.split(DELIMITER)
        for depth in range(1, len(parts)):
            every.add(DELIMITER.join(parts[:depth]))
    # Subscribed names whose folders were deleted (RFC 3501 6.3.9): only what
    # lists subscriptions shows them, LIST as \NonExistent (RFC 5258 3.4);
    # a plain LIST (imaptest's, most clients') does not read them.
    lists_subscriptions = subscribed_only or b"SUBSCRIBED" in options.select
    lost = set(await session.mailbox.subscribedWithoutFolder()) - every if lists_subscriptions else set()
    subscribed |= lost

    def matches(name: str) -> bool:
        text = encode_mailbox(name).decode("ascii") if encoded else name
        return any(m.match(text) for m in matchers)

    select, returns = options.select, options.returns
    by_subscription = b"SUBSCRIBED" in select
    special_only = b"SPECIAL-USE" in select
    recursive = b"RECURSIVEMATCH" in select
    lines: list[tuple[bytes, str | None]] = []
    candidates = every | lost
    for name in sorted(candidates, key=lambda n: (n != "INBOX", n)):
        if not matches(name):
            continue
        info = names.get(name)
        prefix = name + DELIMITER
        attributes = []
        extended = b""
        if subscribed_only:
            if name not in subscribed:
                if not any(s.startswith(prefix) and not matches(s) for s in subscribed):
                    continue
                attributes.append("\\Noselect")
        else:
            selected = True
            if by_subscription and name not in subscribed:
                selected = False
            if special_only and (info is None or not info.special_use):
                selected = False
            if recursive and not selected:
                # RFC 5258 3.5: a name whose descendant meets the selection
                # but is not matched by the patterns, so is not listed itself.
                if any(s.startswith(prefix) and not matches(s) for s in subscribed):
                    extended = b' (CHILDINFO ("SUBSCRIBED"))'
                else:
                    continue
            elif not selected:
                continue
            if name in lost:
                attributes.append("\\NonExistent")
            elif info is None:
                attributes.append("\\Noselect")
            if name not in lost:
                has_children = any(other.startswith(prefix) for other in every)
                attributes.append("\\HasChildren" if has_children else "\\HasNoChildren")
            if info is not None and info.special_use:
                attributes.append(info.special_use)
            if (by_subscription or b"SUBSCRIBED" in returns) and name in subscribed:
                attributes.append("\\Subscribed")
            if recursive and selected and any(s.startswith(prefix) and not matches(s) for s in subscribed):
                extended = b' (CHILDINFO ("SUBSCRIBED"))'
        line = verb + b" (" + " ".join(attributes).encode("ascii") + b') "/" ' + format_mailbox(name, utf8) + extended
        lines.append((line, name if info is not None else None))
    for line, existing in lines:
        session.untagged(line)
        if options.status and existing is not None:
            # RFC 5819: the STATUS of each selectable mailbox listed, right after it.
            await _status_of(session, tag, existing, options.status, answer_errors=False)
    await session.complete(tag, verb + b" completed")


_STATUS_ITEMS = {
    b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"SIZE", b"DELETED", b"HIGHESTMODSEQ", b"MAILBOXID",
}


def _status_items(token: Token, rev2: bool = False) -> list[bytes]:
    items = [as_string(i, "status item").upper() for i in as_list(token, "status items")]
    if not items or any(i not in _STATUS_ITEMS for i in items):
        raise BadCommand("Unknown STATUS item")
    if rev2 and b"RECENT" in items:
        raise BadCommand("RECENT is not a STATUS item in IMAP4rev2")  # RFC 9051 appendix E
    return items


def status(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Coroutine[Any, Any, None]:
    expect_count(arguments, 2, "STATUS")
    items = _status_items(arguments[1], session.rev2)

    async def status() -> None:
        try:
            name = as_mailbox(arguments[0], session.utf8)
        except BadMailboxName as e:
            session.tagged(tag, b"NO", b"[CANNOT] " + str(e).encode("utf-8", "replace"))
            return
        if await _status_of(session, tag, name, items, answer_errors=True):
            await session.complete(tag, b"STATUS completed")

    return status()


async def _status_of(session: IMAPServer, tag: bytes, name: str, items: list[bytes], answer_errors: bool) -> bool:
    """Send ``* STATUS name (items)`` (SIZE: RFC 8438, the sum of the wire sizes); False (and NO, if asked) when it cannot."""
    try:
        folder = await session.mailbox.folder(name)
        state = await folder.status(refresh=True)
        mailboxid = await folder.mailboxId() if b"MAILBOXID" in items else ""
    except BadFolderName as e:
        if answer_errors:
            session.tagged(tag, b"NO", b"[CANNOT] " + str(e).encode("utf-8", "replace"))
        return False
    except NoSuchFolder:
        if answer_errors:
            session.tagged(tag, b"NO", b"[NONEXISTENT] No such mailbox")
        return False
    values: dict[bytes, int] = {
        b"MESSAGES": state.messages,
        b"UIDNEXT": state.uidnext,
        b"UIDVALIDITY": state.uidvalidity,
        b"UNSEEN": state.unseen,
        b"HIGHESTMODSEQ": state.highestmodseq,  # RFC 7162 3.1.9; asking for it turns CONDSTORE on
        b"RECENT": state.recent,  # claimed by no session yet
        b"SIZE": state.size,
        b"DELETED": state.deleted,  # RFC 9051 6.3.11: the messages with \Deleted set
    }
    if b"HIGHESTMODSEQ" in items:
        await enable_condstore(session)
    body = b" ".join(
        b"MAILBOXID (%s)" % mailboxid.encode("ascii") if item == b"MAILBOXID" else b"%s %d" % (item, values[item]) for item in items
    )
    session.untagged(b"STATUS " + format_mailbox(folder.name, session.utf8) + b" (" + body + b")")
    return True
