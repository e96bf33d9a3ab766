"""
L{JunkLearner}: the Junk folder teaches rspamd, whichever client filed
the message. It subscribes to every folder's events on the store's bus and
acts on the C{added} events of a copy or move (those carry the folder the
messages came from): into Junk from elsewhere is ``/learnspam``, out of
Junk into any folder but Trash is ``/learnham`` (deleting spam is no
sign that it was ham). IMAP COPY and MOVE, the webmail's move and any
other client all go through the store's transfer, so one subscriber
serves them all.

Each message is read through the store (its worker pool, never the
reactor) and posted to the controller one at a time; a failure to learn is
logged (C{spam.learn_failed}) and never fails the move, which has
committed before the event is published.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from mailapp import logevents
from mailapp.config import Config
from mailapp.config.spam import SpamConfig
from mailapp.interfaces import IMessageStore
from mailapp.records import ADDED, FolderEvent
from mailapp.spam.client import RspamdClient
from mailapp.spam.decisions import JUNK

__all__ = ["JunkLearner", "lesson"]

_log = Logger()

#: Moving spam here is deleting it, not saying it was ham.
_TRASH = "Trash"


def lesson(event: FolderEvent) -> bool | None:
    """What C{event} teaches: True (spam), False (ham) or None (nothing)."""
    if event.kind != ADDED or event.source is None or event.source == event.folder:
        return None
    if event.folder == JUNK:
        return True
    if event.source == JUNK and event.folder != _TRASH:
        return False
    return None


class JunkLearner(Service):
    """Subscribed to C{store}'s events while running; C{settings} is the current C{[spam]} (replaced on SIGHUP)."""

    def __init__(self, store: IMessageStore, client: RspamdClient | Any, settings: SpamConfig) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self._unsubscribe: Callable[[], None] | None = None
        #: The learning in progress (a test, and stopService, wait for it).
        self.pending: defer.Deferred[None] = defer.succeed(None)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._follow()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self._unfollow()
        return self.pending

    def reconfigure(self, config: Config) -> None:
        """SIGHUP: the new C{[spam]} applies to the next message learned (and starts or stops the listening)."""
        self.settings = config.spam
        if self.running:
            self._follow()

    def _follow(self) -> None:
        """Listen to the store's events only while there is a controller to teach: nothing is paid for when off."""
        if self.settings.controller_url is None:
            self._unfollow()
        elif self._unsubscribe is None:
            self._unsubscribe = self.store.events.subscribeAll(self.observe)

    def _unfollow(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def observe(self, event: FolderEvent) -> None:
        """An event of the store's bus: learn what it teaches, after what is being learned already."""
        spam = lesson(event)
        if spam is None or self.settings.controller_url is None:
            return
        for uid in event.uids:
            self.pending.addCallback(self._next, event, uid, spam)

    def _next(self, _: object, event: FolderEvent, uid: int, spam: bool) -> defer.Deferred[None]:
        return self._learn(event, uid, spam)

    def _learn(self, event: FolderEvent, uid: int, spam: bool) -> defer.Deferred[None]:
        settings = self.settings
        url = settings.controller_url
        if url is None:
            return defer.succeed(None)
        as_ = "spam" if spam else "ham"

        def read(folder: Any) -> Any:
            return folder.readMessage(uid, settings.max_scan_size)

        def post(message: bytes | None) -> Any:
            if message is None:
                _log.info(
                    "not learned as {as_}: {account} {folder} {uid} is over max_scan_size",
                    log_event=logevents.SPAM_LEARN_FAILED, as_=as_, account=event.account, folder=event.folder,
                    uid=uid, error="too big",
                )
                return None
            d = self.client.learn(url, settings.controller_password, spam, message, float(settings.timeout))
            return d.addCallback(learned)

        def learned(code: int) -> None:
            _log.info(
                "learned {account} {folder} {uid} as {as_} ({code})",
                log_event=logevents.SPAM_LEARNED, as_=as_, account=event.account, folder=event.folder, uid=uid,
                source=event.source, code=code, already=code == 208,
            )

        def failed(reason: Any) -> None:
            _log.warn(
                "could not learn {account} {folder} {uid} as {as_}: {error}",
                log_event=logevents.SPAM_LEARN_FAILED, as_=as_, account=event.account, folder=event.folder,
                uid=uid, error=reason.getErrorMessage(),
            )

        d = defer.maybeDeferred(self.store.mailbox(event.account).folder, event.folder)
        return d.addCallback(read).addCallback(post).addErrback(failed)
