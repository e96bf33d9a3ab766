"""
The forwarded copy, sealed: what the relay queue takes when an alias of
ours sends a message on to another domain (L{mailapp.forwarding}).

The Router hands the message as received (an
L{mailapp.interfaces.IMessageWriter} whose C{finish} has fired) and the
forwarding alias's domain; L{ForwardSealer.copy_for} fires with what to
queue: a L{SealedCopy} (the ARC set on top of the message, in wire form)
or, when the domain has no key or sealing fails for any reason, the
message itself, unsealed, exactly as before there was ARC. Sealing never
refuses or loses mail: its failures are logged (``arc.unsealed``), never
raised.

The stored copy starts with our own ``Return-Path:``
(L{mailapp.delivery.Transaction.traceHeaders}), which the relay client
removes as it sends (RFC 5321 4.4) only from the very top: the seal is
made over the message without it and put below it, so that what leaves is
the ARC set on top of the message, exactly as sealed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from mailapp import logevents
from mailapp.authentication.arcseal import ARCSealer, SealOutcome
from mailapp.store import messagefile
from mailapp.tracefields import return_path_length

__all__ = ["MAX_SEALED_SIZE", "ForwardSealer", "SealedCopy"]

_log = Logger()

#: The largest message sealed (wire bytes). dkimpy holds a message several
#: times over and canonicalises it in Python: 25 MiB (the default
#: max_message_size) took 3 s and 190 MiB on one thread. A bigger forwarded
#: message leaves unsealed, its own DKIM signature (we change nothing) to
#: speak for it.
MAX_SEALED_SIZE = 10 * 1024 * 1024


@dataclass(frozen=True)
class SealedCopy:
    """
    A forwarded copy with its ARC set, for L{mailapp.relay.queue.Queue.prepare}:
    C{pending} is the whole message in wire form, C{size} its length.
    """

    pending: bytes
    size: int


class ForwardSealer:
    """Seals forwarded copies with C{sealer} (an L{ARCSealer}), on its thread pool."""

    def __init__(self, sealer: ARCSealer, max_size: int = MAX_SEALED_SIZE) -> None:
        self.sealer = sealer
        self.max_size = max_size

    def copy_for(self, message: Any, domain: str, queue_id: str) -> Deferred[Any]:
        """
        What the relay queue should take for C{message} forwarded by
        C{domain}: a L{SealedCopy}, or C{message} itself. Never fails.
        """
        sealer = self.sealer
        if int(message.size) > self.max_size:
            _unsealed(queue_id, domain, f"{message.size} bytes: larger than the {self.max_size} sealed")
            return succeed(message)
        d = deferToThreadPool(sealer.reactor, sealer.pool(), messagefile.wire_bytes, message)
        d.addCallback(lambda wire: sealer.seal(_below_return_path(wire)[1], domain).addCallback(lambda outcome: (wire, outcome)))

        def sealed(result: tuple[bytes, SealOutcome]) -> Any:
            wire, outcome = result
            if not outcome.sealed:
                _unsealed(queue_id, domain, outcome.reason)
                return message
            return_path, rest = _below_return_path(wire)
            copy = return_path + b"".join(outcome.headers) + rest
            _log.info(
                "{log_event} {queue_id} d={domain} cv={cv}",
                log_event=logevents.ARC_SEALED,
                queue_id=queue_id,
                domain=domain,
                cv=outcome.cv,
            )
            return SealedCopy(copy, len(copy))

        def failed(failure: Any) -> Any:
            _log.failure(
                "{log_event} {queue_id} d={domain}: sealing failed",
                failure,
                log_event=logevents.ARC_UNSEALED,
                queue_id=queue_id,
                domain=domain,
                reason="error",
            )
            return message

        return d.addCallbacks(sealed, failed)


def _unsealed(queue_id: str, domain: str, reason: str) -> None:
    _log.info("{log_event} {queue_id} d={domain}: {reason}", log_event=logevents.ARC_UNSEALED, queue_id=queue_id, domain=domain, reason=reason)


def _below_return_path(wire: bytes) -> tuple[bytes, bytes]:
    """(our ``Return-Path:`` field, the rest): the seal goes below the trace field the relay strips."""
    end = return_path_length(wire)
    return wire[:end], wire[end:]
