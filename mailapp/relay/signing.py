"""
DKIM signing as a message leaves: the relay signs mail of ours
(L{mailapp.relay.queue.Envelope.sign}) for each attempt, just before it
sends, instead of the Router signing it before the 250.

Why at delivery, as PowerMTA and KumoMTA do:

- The 250 never waits for a signature. Signing before it cost a third of
  durable submission ingest on two cores, even in a signing process of its
  own (BENCHMARKS.md, ``submission-dkim``); here the signature is made
  while the message waits for its next hop anyway.
- The signature covers the bytes that are sent: a message downgraded for a
  next hop without 8BITMIME (L{mailapp.relay.downgrade}) is signed after
  the conversion, so our own 8-bit mail no longer bounces with 5.6.3.
- A queued message is signed with the domain's keys of the moment it
  leaves: a ``mailapp dkim rotate`` applies to mail already queued.

Never unsigned by accident: a signing that fails (an unreadable key, a
signing process that does not answer) defers the attempt with 4.3.0, and
the message is retried like any other temporary failure. A domain without
keys, or signing turned off (``[dkim] sign = false``), sends it as it is.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import logevents
from mailapp.interfaces import IMessageSigner
from mailapp.tracefields import return_path_length

__all__ = ["SignedSource", "signature_for"]

_log = Logger(namespace="mailapp.relay.manager")


class SignedSource:
    """
    A message source (C{read(size)}, C{close()}) with C{fields} (our
    DKIM-Signature lines) below the message's leading ``Return-Path:``, where
    the relay client still finds that trace field at the top of the first
    chunk and strips it (RFC 5321 4.4) instead of sending it on under our
    signatures.
    """

    def __init__(self, fields: bytes, inner: Any) -> None:
        self._fields = fields
        self._inner = inner
        self._first = True

    def read(self, size: int) -> Deferred[bytes]:
        if not self._first:
            read: Deferred[bytes] = self._inner.read(size)
            return read
        self._first = False

        def below_return_path(head: bytes) -> bytes:
            cut = return_path_length(head)
            return head[:cut] + self._fields + head[cut:]

        first: Deferred[bytes] = self._inner.read(size)
        return first.addCallback(below_return_path)

    def close(self) -> None:
        self._inner.close()


def signature_for(signer: IMessageSigner | None, message: Any, queue_id: str) -> Deferred[bytes]:
    """
    The DKIM-Signature fields for C{message} (the queue's copy, a path, or a
    converted copy's bytes): C{b""} when it goes unsigned, or a failure
    (logged) when signing with keys we have failed.
    """
    if signer is None:
        return defer.succeed(b"")

    def failed(failure: Failure) -> Failure:
        _log.failure("signing {queue_id} failed", failure, log_event=logevents.DKIM_SIGN_FAILED, queue_id=queue_id)
        return failure

    return signer.sign(message, queue_id).addErrback(failed)
