"""
Every contract in mailapp, in one place.

Protocols (SMTP, POP3, IMAP, webmail) depend on these interfaces; the core
(accounts, store, delivery) implements them, and ``mailapp.testing`` ships
in-memory fakes of them. Every method that may touch a disk, a database or a
password hash returns a Deferred, even where the embedded backend could answer
at once, so that a networked backend fits without changing a protocol.

Addresses are ``str`` in the form ``local@domain``; an *account* is the
canonical address of a user (domain lower-cased, local part as created).
Folder names are ``str`` with ``/`` as the hierarchy delimiter; ``INBOX`` is
case-insensitive and always exists.

Every method is typed, with what its Deferred fires with, so that mypy
(with the mypy_zope plugin) checks each implementation and fake against its
interface and types the results where a protocol uses them. The records
they fire with are in L{mailapp.records}, beside this module. Attributes
are annotated as well as declared (C{events: IEventBus = Attribute(...)}):
the annotation is what mypy reads, the C{Attribute} what zope.interface
and C{verifyObject} see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeAlias

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from mailapp.records import Appended, ChangesSince, Expunged, FlagChange, FolderEvent, FolderInfo, FolderPlacement, FolderStatus, MessageInfo, MessageOrigin, Usage

if TYPE_CHECKING:
    # Only named in annotations: the accounts implementation defines them,
    # and the contract must not load it (SQLite, argon2) to be imported.
    from mailapp.accounts import Profile, QuotaOverride, Resolution, SenderRule, SenderVerdict
    from mailapp.records import TextMatches

#: The C{message} of L{IMessageStore.deliver} and L{IFolder.appendMessage}:
#: an L{IMessageWriter} that the same store's C{newMessage} made, whose file
#: the store takes over. Each store takes only its own writer class, which a
#: zope interface cannot say with a type, so the contract leaves it open
#: here and each implementation names its class.
WriterFromThisStore: TypeAlias = Any


class IAccounts(Interface):
    """
    Domains, users and aliases, as the running server sees them.

    Changes made by the ``mailapp`` command while the server runs are visible
    to the next call: implementations must not cache past a change.
    """

    def isLocalDomain(domain: str) -> Deferred[bool]:
        """
        Fire with ``True`` if mail for C{domain} is delivered here.
        The comparison is case-insensitive.
        """

    def resolve(address: str) -> Deferred[Resolution | None]:
        """
        Work out where mail to C{address} goes.

        Fires with a L{mailapp.accounts.Resolution}: the local accounts
        (canonical addresses, duplicates collapsed) and remote addresses it
        expands to, through aliases, catch-alls and C{+tag} addressing.
        Fires with ``None`` when the domain is local but nobody there takes
        the address; with a resolution naming C{address} itself as remote
        when the domain is not local.
        """

    def domainDirectory(domain: str) -> Deferred[Any]:
        """
        Fire with a L{mailapp.accounts.resolution.DomainDirectory}: all that
        C{domain} holds (whether it is local, its users, aliases and
        catch-all), in one lookup, for resolving several recipients in it
        with L{mailapp.accounts.resolution.resolve_address} and no lookup
        each; or with ``None`` when the domain is too big for that (more
        than L{mailapp.accounts.resolution.DOMAIN_DIRECTORY_LIMIT} users and
        aliases): then use L{resolve} for each. A snapshot: the caller holds
        it for one message only. Costs a few L{resolve}s: worth it for a
        message with several recipients in the domain, not for one.
        """

    def ownsAddress(account: str, address: str) -> Deferred[bool]:
        """
        Fire with ``True`` if C{account} may use C{address} as its envelope
        sender: its own address, a C{+tag} of it, or an alias that resolves
        to it.
        """

    def authenticate(username: str, password: bytes) -> Deferred[str]:
        """
        Check a password off the reactor thread.

        Fires with the canonical account name, or fails with
        L{twisted.cred.error.UnauthorizedLogin}. An unknown user and a wrong
        password fail the same way in about the same time.
        """

    def countUsers() -> Deferred[int]:
        """Fire with the number of users (for the first-start hint)."""

    def quotaOverride(account: str) -> Deferred[QuotaOverride | None]:
        """
        Fire with the L{mailapp.accounts.QuotaOverride} the admin set for
        C{account} (its C{None} fields follow the config), or C{None} when
        C{account} is not a user. Read at every check, never cached, so
        that a change made while the server runs applies to the next message.
        """

    def senderVerdict(recipient: str, sender: str) -> Deferred[SenderVerdict | None]:
        """
        Fire with what the allow and block lists of C{recipient} say about
        envelope sender C{sender} (L{mailapp.accounts.senderlists}): the
        entry that matched, from the user's own list (when C{recipient}
        reaches exactly one user) or else from the recipient's domain's, or
        C{None} when neither names the sender (the null sender included).
        Read at every RCPT, never cached.
        """

    def senderRules(account: str) -> Deferred[list[SenderRule]]:
        """
        Fire with user C{account}'s own list (L{mailapp.accounts.SenderRule}s,
        by action then entry). Fails with L{mailapp.errors.AccountError} when
        C{account} is not a user.
        """

    def setSenderRule(account: str, pattern: str, action: str) -> Deferred[SenderRule]:
        """
        Put C{pattern} (an address, a domain or C{*.domain}) on user
        C{account}'s list as C{"allow"} or C{"block"}, replacing its action
        if it is there. Fails with L{mailapp.errors.AccountError}, saying
        what is wrong, for a bad entry or action. The webmail's settings
        write through this, with the command's validation.
        """

    def removeSenderRule(account: str, pattern: str) -> Deferred[SenderRule]:
        """
        Take C{pattern} off user C{account}'s list; fire with the entry
        removed, or fail with L{mailapp.errors.AccountError} if it was not there.
        """

    def setPassword(account: str, password: str) -> Deferred[None]:
        """
        Replace user C{account}'s password, hashed off the reactor. Fails
        with L{mailapp.errors.AccountError}, saying why, when the password
        may not be chosen (L{mailapp.accounts.check_new_password}, the one
        policy) or C{account} is not a user. The caller checks the current
        password first (L{authenticate}).
        """

    def profile(account: str) -> Deferred[Profile]:
        """
        Fire with user C{account}'s L{mailapp.accounts.Profile} (display
        name and signature, empty when never set); fail with
        L{mailapp.errors.AccountError} when C{account} is not a user.
        """

    def setProfile(account: str, display_name: str, signature: str) -> Deferred[Profile]:
        """
        Store user C{account}'s display name and signature
        (L{mailapp.accounts.check_profile}); fire with what was stored, or
        fail with L{mailapp.errors.AccountError} saying what is wrong.
        """


class IEventBus(Interface):
    """
    Per-folder change notifications within one process.

    A notification is a hint, never the truth: a subscriber re-reads the
    folder state from the store when notified.
    """

    def subscribe(account: str, folder: str, listener: Callable[[FolderEvent], object]) -> Callable[[], None]:
        """
        Call C{listener(event)} with every L{mailapp.records.FolderEvent}
        published for C{(account, folder)}, on the reactor thread.

        Returns a zero-argument callable that unsubscribes.
        """

    def subscribeAll(listener: Callable[[FolderEvent], object]) -> Callable[[], None]:
        """
        Call C{listener(event)} with every event of every folder (a
        server-wide subscriber such as L{mailapp.spam.JunkLearner}); returns
        the callable that unsubscribes.
        """

    def subscribeAccount(account: str, listener: Callable[[FolderEvent], object]) -> Callable[[], None]:
        """
        Call C{listener(event)} with every event of every folder of
        C{account} (compared case-insensitively), the folder events
        (created, deleted, renamed, subscribed) too: what an IMAP NOTIFY
        session watching several folders follows with one subscription, at
        a cost per event independent of how many folders the account has.
        Returns the callable that unsubscribes.
        """

    def publish(event: FolderEvent) -> None:
        """Deliver C{event} to the subscribers of its folder, then to those of its account, then to those of every folder."""

    def watched(account: str, folder: str) -> bool:
        """
        Whether anything in this process subscribed to C{(account, folder)}
        itself: whether a change there is worth describing exactly
        (L{mailapp.records.FolderDelta}) for the sessions that have it open.
        """

    def wake(event: FolderEvent) -> None:
        """
        Deliver C{event}, a change another process of this server made, to
        the subscribers of its folder and of its account (sessions re-read
        it); those of every folder act on their own process's changes and
        are not told.
        """


class IFreeSpace(Interface):
    """
    How much room a store has left for new messages: what SMTP asks at every
    C{MAIL FROM}, to refuse a transaction with C{452 4.3.1} before its data
    rather than after it (L{IMessageStore.freeSpace}).
    """

    def available() -> int | None:
        """
        Free bytes, or C{None} when the store cannot say (then nothing is
        refused). Answered at once, with no Deferred: it is asked on the
        reactor for every transaction, so an implementation answers from a
        figure it keeps fresh (the Maildir store's statvfs(2), at most once
        a second), never from a round trip.
        """


class IMessageStore(Interface):
    """
    Every user's mailboxes.

    Delivery is durable: when a Deferred from L{deliver} fires, the message
    file has been fsync'd, renamed into place, and its directory fsync'd.
    """

    events: IEventBus = Attribute("The L{IEventBus} this store publishes on.")
    freeSpace: IFreeSpace = Attribute("The L{IFreeSpace} of where this store writes new messages.")

    def mailbox(account: str) -> IMailbox:
        """
        Return the L{IMailbox} of C{account}, creating its folders on first
        use (INBOX, Sent, Drafts, Trash, Junk, Archive).
        """

    def newMessage() -> IMessageWriter:
        """
        Return a fresh L{IMessageWriter}: a message being received, spooled
        to disk as it arrives, to be delivered with L{deliver} or discarded.
        """

    def deliver(message: WriterFromThisStore, accounts: Iterable[str], folder: str = "INBOX") -> Deferred[dict[str, int]]:
        """
        Deliver one received message to the C{folder} of every account in
        C{accounts} (duplicates, compared case-insensitively, collapsed),
        written once and shared (hard links): the stored bytes are exactly
        what was written to C{message}, so per-message trace headers are
        written first by the receiver.

        @param message: an L{IMessageWriter} from L{newMessage} whose
            C{finish} has fired.

        Fires with a dict mapping each account to the UID its copy got, once
        every copy is durable. Fails with L{mailapp.errors.StoreError} and
        leaves no copy visible if any copy could not be made durable.
        """


    def deliverPlacements(message: WriterFromThisStore, placements: Sequence[FolderPlacement]) -> Deferred[list[int]]:
        """
        L{deliver}, with a folder and flags per copy: what a user's Sieve
        script chose (L{mailapp.sieve}). One account may have several
        placements (C{fileinto} and C{keep}); every folder must exist.
        Every copy is written in one durable batch, all or none.

        Fires with the UID of each placement's copy, in order; fails as
        L{deliver} does (L{mailapp.errors.NoSuchFolder} for a missing folder).
        """


class IMessageWriter(Interface):
    """
    A message arriving over the network, streamed to a spool file so that
    memory stays bounded whatever its size.
    """

    size: int = Attribute("Bytes written so far: the message's size in wire form (CRLF), whatever the file holds.")

    def write(data: bytes) -> Deferred[None]:
        """
        Append C{data}. Returns a Deferred that fires when the writer is ready
        for more; a producer should pause until then (back-pressure).
        """

    def finish() -> Deferred[None]:
        """Fire when every byte written so far is on disk (fsync'd)."""

    def discard() -> Deferred[None]:
        """Remove the spool file. Safe to call at any time, more than once."""


class IMailbox(Interface):
    """One user's folders."""

    account: str = Attribute("The canonical address of the owner.")

    def listFolders() -> Deferred[list[FolderInfo]]:
        """
        Fire with a list of L{mailapp.records.FolderInfo}, INBOX first, then by
        name.
        """

    def createFolder(name: str) -> Deferred[None]:
        """
        Create C{name} and any missing parent. Fails with
        L{mailapp.errors.FolderExists} or L{mailapp.errors.BadFolderName}.
        """

    def deleteFolder(name: str) -> Deferred[None]:
        """Delete C{name} and its messages. INBOX cannot be deleted."""

    def renameFolder(old: str, new: str) -> Deferred[None]:
        """Rename C{old} (and its children) to C{new}."""

    def setSubscribed(name: str, subscribed: bool) -> Deferred[bool]:
        """
        Mark C{name} subscribed or not (IMAP LSUB); fires with C{False} when
        the folder does not exist, and nothing changes; but unsubscribing a
        name of L{subscribedWithoutFolder} forgets it and fires with C{True}.
        """

    def subscribedWithoutFolder() -> Deferred[list[str]]:
        """
        Fire with the sorted names still subscribed whose folders were
        deleted: a subscription outlives its folder (RFC 3501 6.3.9). A
        folder created again under such a name starts subscribed.
        """

    def usage() -> Deferred[Usage]:
        """
        Fire with the L{mailapp.records.Usage} of every folder together: the
        number of messages and the sum of their (wire) sizes, as the index
        lists them now. Computed from the index each time, never kept as a
        counter, so that it cannot drift from what is stored, across
        crashes and rebuilds; messages marked \\Deleted count until expunged.
        """

    def folder(name: str) -> Deferred[IFolder]:
        """
        Fire with the L{IFolder} called C{name}; fail with
        L{mailapp.errors.NoSuchFolder} or L{mailapp.errors.BadFolderName}.
        """


class IFolder(Interface):
    """
    One folder and its index: UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, and per
    message its UID, flags, size, internal date and mod-sequence (raised by
    every change of the message, by whatever process or tool made it). Nothing here opens a message file except
    L{openMessage}.
    """

    name: str = Attribute("The folder name, C{INBOX} or C{a/b}.")
    account: str = Attribute("The owner's canonical address.")

    def status(refresh: bool = False) -> Deferred[FolderStatus]:
        """
        Fire with a L{mailapp.records.FolderStatus}. With C{refresh}, take
        in changes made behind the store's back first, as L{refresh} does
        (in the same trip when there are none: IMAP's STATUS).
        """

    def refresh() -> Deferred[None]:
        """
        Take in changes made to the folder behind the store's back (another
        delivery agent adding files, a tool deleting or renaming them), and
        publish them as C{added}, C{expunged} and C{flags_changed}; fire with
        C{None} when done. Cheap when nothing changed (a folder of any size:
        a couple of C{stat} calls), so sessions call it at SELECT, NOOP,
        STATUS and each IDLE poll. A store that nothing else can change does
        nothing.
        """

    def messages() -> Deferred[list[MessageInfo]]:
        """
        Fire with a list of L{mailapp.records.MessageInfo} in UID order: the
        folder as it is now.
        """

    def messagesIfChanged(known: tuple[int, int] | None) -> Deferred[tuple[tuple[int, int], int, list[MessageInfo] | None]]:
        """
        Fire with (token, UIDNEXT, messages): the token (UIDVALIDITY and a
        change counter) names the folder's state, changing with every
        message added, removed or changed, by whatever process; the
        messages are L{messages}' list, or None when the token is still
        C{known} (the caller has them). One read, cheap when unchanged
        whatever the folder's size. Fails with L{mailapp.errors.NoSuchFolder}.
        """

    def messagesAfter(uid: int) -> Deferred[list[MessageInfo]]:
        """
        Fire with the L{mailapp.records.MessageInfo} of the messages whose UID
        is above C{uid}, in UID order: what a session that has seen up to
        C{uid} needs when it is told of new mail (cheap on a large folder).
        """

    def openMessage(uid: int) -> Deferred[IO[bytes]]:
        """
        Fire with a seekable binary file object positioned at the start of
        the message in wire form (CRLF line endings, byte for byte what was
        received, whatever form the file has on disk): offsets are wire
        offsets, and C{seek(0, os.SEEK_END)} returns the size, the same as
        L{mailapp.records.MessageInfo.size}. The caller closes it. Fails with
        L{mailapp.errors.NoSuchMessage}. A message expunged moments ago is
        still read (for the sessions that have it in view; the Maildir
        store holds it for L{mailapp.store.expunged.HOLD_SECONDS}).
        """

    def readMessage(uid: int, limit: int) -> Deferred[bytes | None]:
        """
        Fire with the whole message in wire form (as L{openMessage} reads
        it) as bytes when it is at most C{limit} bytes, else with C{None}
        (stream it with L{openMessage}).
        One trip to a worker thread: what a protocol uses for small messages.
        Fails with L{mailapp.errors.NoSuchMessage}.
        """

    def readMessages(uids: Sequence[int], limit: int) -> Deferred[dict[int, bytes]]:
        """
        Fire with UID -> the whole message in wire form (as L{readMessage})
        for each of C{uids} of at most C{limit} bytes, in one trip to a
        worker thread: what a protocol reads ahead of the commands a client
        is about to send (POP3's RETRs). A message that is gone or bigger
        than C{limit} is left out (read it alone, which says which); the
        caller bounds the batch (count times C{limit}). Never fails for one
        message.
        """

    def cachedStructures(uids: Sequence[int], version: int) -> Deferred[dict[int, bytes]]:
        """
        Fire with UID -> the cached structure blob of version C{version}
        kept for each of C{uids} that has one (L{saveStructures}; the
        store never looks inside a blob). Messages without one, or with a
        blob of another version, are left out: the caller computes and
        saves theirs. One read, never a message file.
        """

    def mailboxId() -> Deferred[str]:
        """
        Fire with the folder's MAILBOXID (RFC 8474): unique, the same after
        a RENAME and a restart, new for a folder deleted and made again.
        Fails with L{mailapp.errors.NoSuchFolder}.
        """

    def origins(uids: Sequence[int]) -> Deferred[dict[int, MessageOrigin]]:
        """
        Fire with UID -> L{mailapp.records.MessageOrigin} for each of
        C{uids} the folder still has: its EMAILID (the same for its copies
        in other folders, across restarts and rebuilds) and its save date
        (RFC 8514; None when not known). A message expunged moments ago
        that L{openMessage} still reads is there too, with its EMAILID and
        no save date. One read of the index, never a message file.
        """

    def saveStructures(blobs: Mapping[int, bytes], version: int) -> Deferred[None]:
        """
        Keep C{blobs} (UID -> opaque blob of version C{version}) with the
        messages that still exist, replacing what they had; the store may
        keep fewer (a blob over its size bound). A blob is dropped with its
        message (expunge, move) and never outlives the file it describes.
        """

    def searchText(
        terms: Sequence[tuple[str, str]], approximate: Sequence[tuple[str, str]] = ()
    ) -> Deferred[TextMatches | None]:
        """
        Ask the folder's full-text index about C{terms}: (scope, string)
        pairs, the scope one of L{mailapp.records.TEXT_SCOPES}, the string
        case-folded and at least three characters long; and about
        C{approximate}, (scope, word) pairs of case-folded words of five
        letters or more to be found with one edit (SEARCH FUZZY's rule,
        L{mailapp.store.fuzzy}), answered in C{approximate} with a
        C{relevance} per message. Fires with a
        L{mailapp.records.TextMatches}, exact for the messages it covers
        (every other message must be searched by reading it: one delivered
        since, or one the index could not read exactly), or with None when
        the store keeps no such index for now (search by reading every
        message). Never reads a message file. Fails with
        L{mailapp.errors.NoSuchFolder}.
        """

    def setFlags(uids: Iterable[int], flags: Iterable[str], mode: str = "replace") -> Deferred[dict[int, frozenset[str]]]:
        """
        Change flags of C{uids}. C{mode} is C{"replace"}, C{"add"} or
        C{"remove"}. Fires with a dict UID -> new frozenset of flags for the
        messages that exist, and publishes C{flags_changed}.
        """

    def changeFlags(
        uids: Iterable[int], flags: Iterable[str], mode: str = "replace", unchangedSince: int | None = None
    ) -> Deferred[FlagChange]:
        """
        As L{setFlags}, with mod-sequences (RFC 7162): fires with a
        L{mailapp.records.FlagChange}, every existing message's flags and
        mod-sequence after the change. With C{unchangedSince}, a message
        whose mod-sequence is above it is left alone and listed in
        C{modified} (STORE's UNCHANGEDSINCE); the rest change in the same
        transaction. A message whose flags do not change keeps its
        mod-sequence.
        """

    def highestModseq() -> Deferred[int]:
        """
        Fire with the folder's highest mod-sequence (L{status}'s
        C{highestmodseq}) in one read by primary key: what SELECT's
        HIGHESTMODSEQ answers. Fails with L{mailapp.errors.NoSuchFolder}.
        """

    def firstRecent() -> Deferred[int]:
        """
        Fire with the lowest UID no L{claimRecent} has taken yet: the
        messages at or above it are IMAP's C{\\Recent} to whoever claims
        them next (EXAMINE and STATUS read it; they claim nothing). Fails
        with L{mailapp.errors.NoSuchFolder}.
        """

    def claimRecent(uid: int) -> Deferred[range]:
        """
        Take every UID up to C{uid} that no earlier claim took, and fire with
        the range of them the caller now owns (empty when another claim got
        there first). Atomic across every process sharing the store, and
        kept across restarts: each UID is handed out once, so that a message
        is C{\\Recent} in exactly one IMAP session (RFC 3501 2.3.2). The
        store knows nothing of sessions; the caller decides what a claim is
        for. Fails with L{mailapp.errors.NoSuchFolder}.
        """

    def changesSince(modseq: int) -> Deferred[ChangesSince]:
        """
        Fire with a L{mailapp.records.ChangesSince}: what changed after
        mod-sequence C{modseq} (the messages changed or added, the UIDs
        expunged) with the folder's token, UIDNEXT and HIGHESTMODSEQ, in
        one read: what a reader that knew the folder at C{modseq} needs to
        know it now, in time proportional to the changes, not the folder.
        Fails with L{mailapp.errors.NoSuchFolder}.
        """

    def vanishedSince(modseq: int) -> Deferred[list[int] | None]:
        """
        Fire with the UIDs expunged (or moved out) after mod-sequence
        C{modseq}, ascending, or None when the store no longer remembers
        that far back (it keeps a bounded number): QRESYNC's VANISHED
        (EARLIER). Fails with L{mailapp.errors.NoSuchFolder}.
        """

    def expunge(uids: Iterable[int]) -> Deferred[list[int]]:
        """
        Remove C{uids}; fires with the sorted list of UIDs removed and
        publishes C{expunged}. They leave L{messages} at once; L{openMessage}
        and L{readMessage} still read them for a while.
        """

    def expungeDeleted(wanted: Callable[[int], bool] | None = None) -> Deferred[Expunged]:
        """
        Remove the messages flagged C{\\Deleted} now (those whose UID
        C{wanted} accepts, if given; it runs on a worker thread), as
        L{expunge} does: IMAP's EXPUNGE, UID EXPUNGE and CLOSE.
        The flags are read where the removal happens, in one trip: no flag
        change can slip between the choice and the removal.
        """

    def append(data: bytes, flags: Iterable[str] = (), internaldate: float | None = None) -> Deferred[int]:
        """
        Store C{data} durably with C{flags}; fires with its UID and publishes
        C{added}.
        """

    def appendMessage(message: WriterFromThisStore, flags: Iterable[str] = (), internaldate: float | None = None) -> Deferred[Appended]:
        """
        Store a message received into an L{IMessageWriter} (whose C{finish}
        has fired) durably with C{flags}, so that a large APPEND never sits
        in memory; fires with a L{mailapp.records.Appended} (its UID and the
        folder's UIDVALIDITY) and publishes C{added}. The writer's
        file belongs to the store from then on.
        """

    def copyTo(uids: Iterable[int], target: IFolder) -> Deferred[dict[int, int]]:
        """
        Copy C{uids} (with their flags) into C{target}, a folder of the same
        mailbox; fires with a dict source UID -> new UID, and publishes
        C{added} on the target. All or nothing for the messages that still
        exist when the copy runs: those expunged before it are left out (the
        dict says which were copied; empty when none was left), and on a
        failure the target is as it was.
        """

    def moveTo(uids: Iterable[int], target: IFolder) -> Deferred[dict[int, int]]:
        """
        Move C{uids} into C{target} (RFC 6851): as L{copyTo}, and the moved
        messages leave this folder in the same change (publishes C{expunged}
        here and C{added} there). A message is never in both folders, not
        even after a crash: the next start finishes an interrupted move.
        """


class IMessageSigner(Interface):
    """
    Signs mail on its way out (DKIM, L{mailapp.dkim.signer.DkimSigner}): the
    relay asks as it sends a message that came from one of ours (submission,
    the webmail, the relay's DSNs; L{mailapp.relay.signing}).
    """

    def sign(message: bytes | Path, queue_id: str = "") -> Deferred[bytes]:
        """
        Fire with the header fields to put on top of C{message} (its bytes in
        wire form, or the path of a file holding them; CRLF line ends;
        C{b""} when its From: domain has no keys), computed off the reactor,
        where the file is read too. Fails when it cannot sign with keys it
        has (the caller defers the message rather than send it unsigned).
        """
