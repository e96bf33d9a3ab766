"""
Delivery status notifications (RFC 3464) for a queue entry, sent to its
envelope sender through the Router, like any other message: a local sender
gets it in their INBOX, a remote one through the relay queue. The message
itself is built by L{mailapp.relay.bounce}.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mailapp import logevents
from mailapp.errors import MailError
from mailapp import dsn as bounce
from mailapp.relay.client import Reply, local_reply
from mailapp.relay.queue import Envelope, Queue, Recipient

__all__ = ["notify_sender"]

#: The relay's log lines keep the one namespace they have always had.
_log = Logger(namespace="mailapp.relay.manager")


_SENT_EVENTS = {
    bounce.FAILED: logevents.RELAY_DSN_SENT,
    bounce.DELAYED: logevents.RELAY_DELAY_WARNING,
    bounce.RELAYED: logevents.RELAY_RELAYED_DSN_SENT,
}


def _read_whole(path: Any) -> bytes | None:
    """The queued message, for a RET=FULL failure DSN; None past L{bounce.MAX_RETURNED} (then only its headers go back)."""
    with open(path, "rb") as file:
        data = file.read(bounce.MAX_RETURNED + 1)
    return data if len(data) <= bounce.MAX_RETURNED else None


@defer.inlineCallbacks
def notify_sender(
    router: Any,
    queue: Queue,
    envelope: Envelope,
    recipients: Sequence[Recipient],
    action: str,
    *,
    hostname: str,
    clock: Any,
    max_lifetime: float,
) -> Generator[Deferred[Any], Any, bool]:
    """
    Send a DSN for C{recipients} of C{envelope} (C{action}: L{bounce.FAILED},
    L{bounce.DELAYED} or L{bounce.RELAYED}) through C{router}, as C{hostname} at C{clock}'s
    time; retries end C{max_lifetime} seconds after the message arrived.
    Fires with C{True} when it is sent or must never be (null sender,
    a sender nobody can receive for), C{False} to try again later.
    """
    if not envelope.sender:
        for recipient in recipients:
            _log.warn(
                "double bounce dropped: {queue_id} from=<> to=<{recipient}>: {reply}",
                log_event=logevents.RELAY_DOUBLE_BOUNCE,
                queue_id=envelope.id,
                recipient=recipient.address,
                reply=recipient.last_reply,
            )
        return True
    if router is None:
        _log.error("no router to send a DSN for {queue_id}", queue_id=envelope.id, log_event=logevents.RELAY_DSN_FAILED)
        return True
    statuses = []
    for recipient in recipients:
        reply = Reply.parse(recipient.last_reply) if recipient.last_reply else local_reply(451, "4.4.7 no answer")
        status = reply.enhanced
        if action == bounce.FAILED and not reply.permanent:
            status = "4.4.7"  # delivery time expired (RFC 3463)
        diagnostic = recipient.last_reply or "no answer from the destination"
        if action == bounce.FAILED and not reply.permanent:
            diagnostic = f"delivery time expired; last reply: {diagnostic}"
        statuses.append(
            bounce.RecipientStatus(
                recipient.address, status, diagnostic, recipient.remote, original=recipient.request.original_recipient()
            )
        )
    path = queue.message_path(envelope.id)
    full = action == bounce.FAILED and envelope.ret == "FULL"
    try:
        headers = yield queue.run(bounce.read_headers, path)
        whole = (yield queue.run(_read_whole, path)) if full else None
    except OSError:
        headers, whole = b"", None
    data = bounce.build_dsn(
        reporting_mta=hostname,
        queue_id=envelope.id,
        sender=envelope.sender,
        arrival=envelope.created,
        now=clock.seconds(),
        action=action,
        recipients=statuses,
        original_headers=headers,
        will_retry_until=envelope.created + max_lifetime,
        envid=envelope.envid,
        original_message=whole,
    )
    try:
        dsn_id = yield router.send_notification(envelope.sender, data, envelope.requiretls)
    except MailError as error:
        # A temporary refusal is tried again at the next round; a permanent one never.
        _log.warn(
            "DSN for {queue_id} to <{sender}> " + ("not sent yet" if error.temporary else "dropped") + ": {error}",
            log_event=logevents.RELAY_DSN_FAILED,
            queue_id=envelope.id,
            sender=envelope.sender,
            error=str(error),
        )
        return not error.temporary
    except Exception:
        _log.failure("DSN for {queue_id} failed", queue_id=envelope.id, log_event=logevents.RELAY_DSN_FAILED)
        return False
    _log.info(
        "{action} DSN {dsn_id} for {queue_id} sent to <{sender}> ({count} recipients)",
        log_event=_SENT_EVENTS[action],
        action=action,
        dsn_id=dsn_id,
        queue_id=envelope.id,
        sender=envelope.sender,
        count=len(recipients),
    )
    return True
