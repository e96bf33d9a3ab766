"""
The IMAP listener: L{IMAPFactory} builds one session per connection and
keeps what the sessions of a process share (the \\Recent claims in
flight, shared reads of new mail), and L{buildFactory} is the builder the service
registers for the ``imap`` protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer
from twisted.python.failure import Failure

from mailapp.imap.notify import StatusReads
from mailapp.imap.policy import IMAPPolicy
from mailapp.imap.session import IMAPServer
from mailapp.imap.snapshots import FolderSnapshot, FolderSnapshots
from mailapp.records import MessageInfo
from mailapp.sessions import SessionFactory, session_limits

if TYPE_CHECKING:
    from mailapp.config import ListenerConfig
    from mailapp.context import ServiceContext
    from mailapp.pools import WorkerPools

__all__ = ["IMAPFactory", "buildFactory"]


class IMAPFactory(SessionFactory):
    """
    Builds sessions for one listener, keeps its connection counts (total and
    per client address), and what the sessions of this process share (the
    L{mailapp.imap.selected.RecentMarkers} every selected folder reads through).
    """

    policy: IMAPPolicy

    def __init__(
        self,
        portal: Any,
        store: Any,
        policy: IMAPPolicy,
        reactor: Any,
        tls: Any = None,
        inflight: Any = None,
        guard: Any = None,
        quotas: Any = None,
        pools: WorkerPools | None = None,
    ) -> None:
        super().__init__(inflight, guard, portal=portal, policy=policy, reactor=reactor, tls=tls)
        #: The server's L{mailapp.quota.Quotas}: APPEND and COPY ask it first (None: no quotas).
        self.quotas = quotas
        #: The server's worker pools: reading a message file runs on the store's (L{offThread}).
        self.pools = pools
        #: Reads of "messages above UID n" in flight, shared (see messagesAfter).
        self._sharedReads: dict[tuple[str, str, int], list[defer.Deferred[list[MessageInfo]]]] = {}
        #: NOTIFY's STATUS reads, shared by the sessions told of the same change (L{mailapp.imap.notify}).
        self.statusReads = StatusReads()
        self.store = store

    # Twisted's Factory is generic over a protocol whose factory is Factory[Self]; SessionFactory is not generic.
    def buildProtocol(self, addr: Any) -> IMAPServer:  # type: ignore[override]
        return IMAPServer(self)

    def offThread(self, function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """
        Run blocking work (scanning or reading a message file) on the
        store's worker pool, never on the reactor thread. A factory built
        without pools (a test of the session alone, which reads no message
        file) runs it at once.
        """
        if self.pools is None:
            return defer.maybeDeferred(function, *args)
        return self.pools.run(self.pools.store, function, *args)

    # The \Recent claims this process has in flight, shared by every listener: kept on the store object.
    def _claiming(self) -> dict[tuple[str, str, int], int]:
        inflight: dict[tuple[str, str, int], int] | None = getattr(self.store, "_imapRecentClaims", None)
        if inflight is None:
            inflight = {}
            try:
                self.store._imapRecentClaims = inflight
            except AttributeError:  # pragma: no cover - a store that takes no attributes
                pass
        return inflight

    def folderSnapshot(self, account: str | None, folder: Any, highest: bool = False) -> defer.Deferred[tuple[FolderSnapshot, int]]:
        """
        The folder's listing, from this process's snapshot when the store
        says it still holds (L{mailapp.imap.snapshots}), and with C{highest}
        its HIGHESTMODSEQ as of the listing or before (L{FolderSnapshots.readWithHighest}).
        """
        snapshots: FolderSnapshots | None = getattr(self.store, "_imapFolderSnapshots", None)
        if snapshots is None:
            snapshots = FolderSnapshots()
            try:
                self.store._imapFolderSnapshots = snapshots
            except AttributeError:  # pragma: no cover - a store that takes no attributes
                pass
        return defer.Deferred.fromCoroutine(snapshots.readWithHighest(account, folder, highest))

    def messagesAfter(self, folder: Any, uid: int) -> defer.Deferred[list[MessageInfo]]:
        """
        The folder's messages above C{uid}, one store read shared by every
        session that asks for the same thing at the same time: a delivery to a
        folder that 100 clients watch wakes them all, and they all want it.
        """
        key = (folder.account.lower(), folder.name, uid)
        mine: defer.Deferred[list[MessageInfo]] = defer.Deferred()
        waiting = self._sharedReads.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        self._sharedReads[key] = [mine]

        def deliver(result: object) -> None:
            for each in self._sharedReads.pop(key, []):
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(list(result))  # type: ignore[call-overload]

        folder.messagesAfter(uid).addBoth(deliver)
        return mine

    def claimRecent(self, account: str | None, folder: Any, uidvalidity: int, uid: int) -> defer.Deferred[range]:
        """
        The UIDs up to C{uid} that this caller is the first session to see,
        claimed in the folder's index (L{mailapp.interfaces.IFolder.claimRecent}),
        so that every process agrees. While a claim of this process that
        covers C{uid} is in flight, it is not asked again: a delivery wakes
        every session here that has the folder selected at once, and the
        first to ask owns what is new, for one write rather than one per
        session. Nothing is remembered once the claim is answered: a folder
        deleted and made again (by another process, perhaps with the same
        name and UIDVALIDITY) must not inherit it.
        """
        key = ((account or "").lower(), folder.name, uidvalidity)
        inflight = self._claiming()
        if inflight.get(key, 0) >= uid:
            return defer.succeed(range(0))
        inflight[key] = uid

        def answered(result: object) -> object:
            if inflight.get(key) == uid:
                del inflight[key]
            return result

        d: defer.Deferred[range] = folder.claimRecent(uid)
        return d.addBoth(answered)


def buildFactory(context: ServiceContext, listener: ListenerConfig) -> IMAPFactory:
    """The builder the service registers for the ``imap`` protocol."""
    config = context.config
    limits = config.limits
    policy = IMAPPolicy(
        hostname=config.hostname,
        max_message_size=limits.max_message_size,
        **session_limits(config, listener),
        timeout=limits.imap_timeout_seconds,
        max_literal=limits.imap_max_literal,
        max_line=limits.imap_max_line,
    )
    tls = context.tls if listener.tls == "starttls" else None
    return IMAPFactory(
        context.portal,
        context.store,
        policy,
        context.reactor,
        tls=tls,
        inflight=context.inflight,
        guard=context.guard,
        quotas=context.quotas,
        pools=context.pools,
    )
