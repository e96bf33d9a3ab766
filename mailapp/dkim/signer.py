"""
The server's outbound signer: what the Router asks for the DKIM-Signature
fields of a message on its way to the relay queue
(L{mailapp.interfaces.IMessageSigner}).

Reading the message, finding its From: domain's keys and signing all run
on the ``signing`` worker pool (L{mailapp.pools}), never on the reactor and
never in the queue's writer, whose batches would otherwise wait for every
signature in them.
"""

from __future__ import annotations

from typing import Any

import dkim
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from mailapp import logevents
from mailapp.config import Config
from mailapp.dkim.keys import KeyStore
from mailapp.dkim.signing import from_domain, sign_message
from mailapp.interfaces import IMessageSigner, IMessageWriter
from mailapp.store import messagefile

__all__ = ["DkimSigner"]

_log = Logger()


@implementer(IMessageSigner)
class DkimSigner:
    """
    Signs with the keys of C{keys} on C{threadpool}; a domain without keys
    gets no signature, and nothing is signed while C{enabled} is false
    (``dkim.sign``, applied by a reload through L{reconfigure}).
    """

    def __init__(self, keys: KeyStore, reactor: Any, threadpool: Any, *, enabled: bool = True) -> None:
        self.keys = keys
        self.enabled = enabled
        self._reactor = reactor
        self._threadpool = threadpool

    def reconfigure(self, config: Config) -> None:
        self.enabled = config.dkim.sign

    def sign(self, message: IMessageWriter, queue_id: str = "") -> Deferred[bytes]:
        if not self.enabled:
            return succeed(b"")
        return deferToThreadPool(self._reactor, self._threadpool, self._sign, message, queue_id)

    def _sign(self, message: IMessageWriter, queue_id: str) -> bytes:
        data = messagefile.wire_bytes(message)
        domain = from_domain(data)
        keys = self.keys.signing_keys_for(domain) if domain is not None else None
        if keys is None:
            _log.debug(
                "{log_event} {queue_id}: no keys for the From: domain {domain}",
                log_event=logevents.DKIM_UNSIGNED,
                queue_id=queue_id,
                domain=domain or "(none)",
                reason="no keys",
            )
            return b""
        try:
            fields = sign_message(data, keys)
        except dkim.MessageFormatError as error:
            # A header block dkimpy cannot parse (a line without a colon):
            # the message is the sender's to send as it is, unsigned, not
            # ours to refuse; receivers judge it without our signature.
            _log.warn(
                "{log_event} {queue_id}: not signed, the message cannot be: {reason}",
                log_event=logevents.DKIM_UNSIGNED,
                queue_id=queue_id,
                domain=keys.domain,
                reason=str(error),
            )
            return b""
        _log.debug(
            "{log_event} {queue_id} d={domain} s={selector}",
            log_event=logevents.DKIM_SIGNED,
            queue_id=queue_id,
            domain=keys.domain,
            selector=keys.selector,
        )
        return fields
