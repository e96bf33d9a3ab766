"""
The server's outbound signer: what the relay asks for the DKIM-Signature
fields of a message of ours as it leaves (L{mailapp.interfaces.IMessageSigner},
L{mailapp.relay.signing}).

Reading the message, finding its From: domain's keys and signing
(L{mailapp.dkim.worker.sign_request}) run in the signing process
(L{mailapp.dkim.process}) when the server has one, which is the default
(``[dkim] signing_processes``), or else on the ``signing`` worker pool
(L{mailapp.pools}): never on the reactor, and never in the queue's writer,
whose batches would otherwise wait for every signature in them. The
process is the default because threads share the reactor's GIL: signing
there halved durable submission ingest (BENCHMARKS.md), when it was done
before the 250.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from mailapp import logevents
from mailapp.config import Config
from mailapp.dkim.keys import KeyStore
from mailapp.dkim.process import SigningFailed, SigningProcess
from mailapp.dkim.worker import sign_request
from mailapp.interfaces import IMessageSigner

__all__ = ["DkimSigner", "SigningFailed"]

_log = Logger()


@implementer(IMessageSigner)
class DkimSigner(Service):
    """
    Signs with the keys of C{keys}, in C{process} when given (a service:
    stopping it lets the process answer what it has, then ends it), else on
    C{threadpool}; a domain without keys gets no signature, and nothing is
    signed while C{enabled} is false (``dkim.sign``, applied by a reload
    through L{reconfigure}).
    """

    def __init__(
        self,
        keys: KeyStore,
        reactor: Any,
        threadpool: Any,
        *,
        enabled: bool = True,
        process: SigningProcess | None = None,
    ) -> None:
        self.keys = keys
        self.enabled = enabled
        self.process = process
        self._reactor = reactor
        self._threadpool = threadpool

    def reconfigure(self, config: Config) -> None:
        self.enabled = config.dkim.sign

    def sign(self, message: bytes | Path, queue_id: str = "") -> Deferred[bytes]:
        if not self.enabled:
            return succeed(b"")
        # A path is read where the signing happens (the child, or a thread), never on the reactor.
        header: dict[str, Any] = {"queue_id": queue_id}
        payload = b""
        if isinstance(message, Path):
            header["path"] = str(message)
        else:
            payload = message
        answered: Deferred[tuple[dict[str, Any], bytes]]
        if self.process is not None:
            answered = self.process.request(header, payload)
        else:
            answered = deferToThreadPool(self._reactor, self._threadpool, sign_request, self.keys, header, payload)
        return answered.addCallback(self._signed, queue_id)

    def _signed(self, result: tuple[dict[str, Any], bytes], queue_id: str) -> bytes:
        answer, fields = result
        status, domain, reason = answer.get("status"), answer.get("domain"), answer.get("reason")
        if status == "signed":
            _log.debug(
                "{log_event} {queue_id} d={domain} s={selector}",
                log_event=logevents.DKIM_SIGNED,
                queue_id=queue_id,
                domain=domain,
                selector=answer.get("selector"),
            )
            return fields
        if status == "unsigned":
            # No keys for the From: domain (debug); or a header block dkimpy
            # cannot parse (a line without a colon): the message is the
            # sender's to send as it is, unsigned, not ours to refuse;
            # receivers judge it without our signature (warn).
            emit = _log.debug if reason == "no keys" else _log.warn
            emit(
                "{log_event} {queue_id}: not signed ({domain}): {reason}",
                log_event=logevents.DKIM_UNSIGNED,
                queue_id=queue_id,
                domain=domain,
                reason=reason,
            )
            return b""
        raise SigningFailed(str(reason))

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.process.stop() if self.process is not None else succeed(None)
