"""
LMTP (RFC 2033): the last hop from an MTA (Postfix's ``lmtp`` transport, a
filter) into our mailboxes, through the same Router as SMTP.

It is the SMTP session with these differences, and no others:

  - ``LHLO`` instead of HELO and EHLO; the greeting says LMTP;
  - no AUTH: who may use it is where it listens. A unix socket and
    loopback clients always may; other clients only from the listener's
    C{allowed_clients} (the config refuses an LMTP listener on a public TCP
    address that names none), and the others are refused at the greeting;
  - only local recipients: a remote one gets 550, never relayed, whoever
    the client (the MX's trusted networks do not apply);
  - after the message (DATA, or BDAT's last chunk), one reply per accepted
    RCPT, in their order (RFC 2033 4.2): 250 once that recipient's copy is
    durable, or its own refusal, such as a full mailbox's 452/552 while the
    others get their 250 (L{mailapp.delivery.Transaction.commitEach}). A
    refusal of the whole message (too big, a NUL) is repeated for each;
  - none of the MX's checks of strangers: no postscreen, greylisting, SPF,
    DKIM, DMARC or content scan, no MX rate limit, no delay or error count
    for unknown recipients (the MTA in front made those decisions; a
    recipient's own sender lists still apply).
"""

from __future__ import annotations

import ipaddress
from typing import Any, cast

from twisted.internet.address import UNIXAddress
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import logevents
from mailapp.config import ListenerConfig
from mailapp.context import ServiceContext
from mailapp.delivery import Transaction
from mailapp.errors import MailError, RelayDenied
from mailapp.networks import in_networks
from mailapp.sessions import session_limits
from mailapp.smtp.chunking import ChunkingServer
from mailapp.smtp.data import received_header
from mailapp.smtp.factory import SMTPFactory
from mailapp.smtp.policy import GREETING_TIMEOUT, SMTPPolicy

__all__ = ["LMTPFactory", "LMTPServer", "buildLMTPFactory"]

_log = Logger()


class NotLocal(MailError):
    """A remote recipient over LMTP, which delivers to local mailboxes only."""

    code, enhanced, text = 550, "5.1.2", "Not a local recipient: this LMTP server delivers to local mailboxes only"


class LMTPServer(ChunkingServer):
    """One LMTP session; see the module docstring."""

    protocolName = "lmtp"
    offersDSN = False
    factory: LMTPFactory

    def greet(self) -> None:
        assert self.transport is not None
        peer = self.transport.getPeer()
        if not self.factory.mayUse(peer):
            _log.info(
                "lmtp client refused {client}: not loopback, nor in allowed_clients",
                log_event=logevents.LMTP_CLIENT_REFUSED,
                client=self._peerIP,
            )
            self.sendCode(554, b"5.7.1 " + self.host + b" LMTP is not open to your address")
            self._close()
            return
        self.sendCode(220, self.host + b" LMTP mailapp")
        self.setTimeout(GREETING_TIMEOUT)

    def smtp_LHLO(self, argument: bytes) -> None:
        super().smtp_EHLO(argument)

    def smtp_HELO(self, argument: bytes) -> None:
        self._error(500, b"5.5.1 Error: this is LMTP: use LHLO")

    def smtp_EHLO(self, argument: bytes) -> None:
        self._error(500, b"5.5.1 Error: this is LMTP: use LHLO")

    def smtp_HELP(self, argument: bytes) -> None:
        self.sendCode(214, b"2.0.0 Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT")

    def smtp_DATA(self, argument: bytes) -> None:
        if self._txn is not None and not self._txn.recipients and self._chunks is None:
            self._error(503, b"5.5.1 Error: no valid recipients")  # RFC 2033 4.2: 503, not SMTP's 554
            return
        super().smtp_DATA(argument)

    def _rateLimited(self, relay: bool) -> bool:
        return False

    def _receivedHeader(self, txn: Transaction) -> bytes:
        assert self.transport is not None
        unix = isinstance(self.transport.getPeer(), UNIXAddress)
        return received_header(
            self._ehlo,
            "" if unix else self._peerIP,
            self.policy.hostname,
            ("UTF8LMTP" if txn.smtputf8 else "LMTP") + ("S" if self.secure else ""),  # RFC 3848, RFC 6531 3.7.3
            txn.queue_id,
            txn.recipients,
            self.factory.reactor.seconds(),
        )

    def _recipientRefused(self, reason: Failure, txn: Transaction, recipient: str) -> None:
        """A refused recipient: its reply at once, no delay and no error counted (the MTA asks for what it was given)."""
        reason.trap(MailError)
        txn.allowed_by_recipient.discard(recipient)
        error = cast(MailError, reason.value)
        if isinstance(error, RelayDenied):
            error = NotLocal()
        _log.info(
            "rcpt rejected {recipient} {code} from {client}",
            log_event=logevents.SMTP_RCPT_REJECTED,
            recipient=recipient,
            code=error.code,
            client=self._peerIP,
        )
        self.sendCode(error.code, f"{error.enhanced} {error.text}".encode("ascii", "replace"))

    def _answerMessage(self, txn: Transaction, error: MailError) -> None:
        """The whole message refused: the same reply for each accepted recipient (RFC 2033 4.2)."""
        for _ in txn.recipients:
            super()._answerMessage(txn, error)

    def _commit(self, txn: Transaction, size: int) -> Any:
        """Each recipient's reply, in RCPT order, once its copy is durable (L{Transaction.commitEach})."""

        def answered(outcomes: list[MailError | None]) -> None:
            delivered = sum(1 for outcome in outcomes if outcome is None)
            _log.info(
                "delivered {queue_id} from=<{sender}> rcpts={delivered} refused={refused} size={size} client={client}",
                log_event=logevents.LMTP_DELIVERED,
                queue_id=txn.queue_id,
                sender=txn.sender,
                delivered=delivered,
                refused=len(outcomes) - delivered,
                size=size,
                client=self._peerIP,
            )
            for recipient, outcome in zip(txn.recipients, outcomes):
                if outcome is None:
                    self.sendCode(250, f"2.1.5 <{recipient}> Ok: delivered as {txn.queue_id}".encode("ascii", "replace"))
                else:
                    self.sendCode(outcome.code, f"{outcome.enhanced} <{recipient}> {outcome.text}".encode("ascii", "replace"))

        def failed(reason: Failure) -> None:
            self._commitFailed(txn, reason)

        return self.factory.inflight(txn.commitEach()).addCallbacks(answered, failed)


class LMTPFactory(SMTPFactory):
    """An LMTP listener's sessions: no relaying for anyone, and who may connect (L{mayUse})."""

    def buildProtocol(self, addr: Any) -> LMTPServer:  # type: ignore[override]
        return LMTPServer(self)

    def trusted(self, ip: str) -> bool:
        # Nobody relays through LMTP: every transaction is relay_allowed=False.
        return False

    def banned(self, ip: str, protocol: str) -> bool:
        # The MTA in front is ours: a ban its address earned elsewhere (failed
        # IMAP logins from loopback) must not stop local delivery. mayUse decides.
        return False

    def mayUse(self, peer: Any) -> bool:
        """A unix socket's peer, a loopback address, or one in the listener's C{allowed_clients}."""
        if isinstance(peer, UNIXAddress):
            return True
        host = getattr(peer, "host", "")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback or in_networks(host, self.policy.allowed_clients)


def buildLMTPFactory(context: ServiceContext, listener: ListenerConfig) -> LMTPFactory:
    """The builder the service registers for the ``lmtp`` protocol."""
    config = context.config
    limits = config.limits
    policy = SMTPPolicy(
        hostname=config.hostname,
        submission=False,
        max_message_size=limits.max_message_size,
        timeout=limits.smtp_timeout_seconds,
        **session_limits(config, listener),
        postmaster=f"postmaster@{config.local_domains[0]}" if config.local_domains else "",
        refuse_local_senders=False,
        min_free_disk=limits.min_free_disk,
        allowed_clients=listener.allowed_clients,
    )
    return LMTPFactory(
        context.router,
        context.portal,
        policy,
        context.reactor,
        tls=context.tls if listener.tls == "starttls" else None,
        inflight=context.inflight,
        guard=context.guard,
        freeSpace=context.store.freeSpace,
    )
