"""
The mail transaction of an SMTP session (RFC 5321 3.3): MAIL, RCPT and
DATA on top of L{SMTPSession}, with the checks each step makes (sender
ownership on submission, local senders on the MX, the MX rate per client,
free disk, the size limit) and the hand-over to the L{mailapp.delivery.Router}:
the 250 after DATA is sent only when the Router says every copy is durable.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import dsn, logevents
from mailapp.authentication.checks import HeldMessage, MessageCheck
from mailapp.delivery import Transaction
from mailapp.errors import (
    HeaderSenderNotOwned,
    MailError,
    MessageHasNul,
    MessageTooBig,
    NoSuchUser,
    RelayDenied,
    SenderBlocked,
    TooMuchMail,
)
from mailapp.headercheck import header_addresses
from mailapp.networks import in_networks
from mailapp.postscreen.blocklists import Refusal
from mailapp.postscreen.greylist import GREYLISTED, Verdict
from mailapp.smtp.data import _DataReceiver, _MessageStream, missing_headers, received_header
from mailapp.accounts.addresses import ascii_domain
from mailapp.errors import AccountError
from mailapp.smtp.policy import ADDRESS, PATH
from mailapp.records import INBOX
from mailapp.smtp.session import SMTPSession
from mailapp.spam.decisions import SpamVerdict, mark
from mailapp.spam.scanner import ScanRequest

__all__ = ["ESMTPServer"]

_log = Logger()

_Stream = TypeVar("_Stream", bound=_MessageStream)


#: Sender domains whose answer (ours or not) one MX connection remembers: a
#: client on a persistent connection sends from one or a few; past these, each
#: MAIL asks the accounts again. A domain added or removed while a connection
#: is open applies to that connection's next MAIL only when it was not asked yet,
#: and to every new connection.
_SENDER_DOMAINS_KEPT = 8


class ESMTPServer(SMTPSession):
    """One SMTP session, mail transactions included; see the module docstrings."""

    def __init__(self, factory: Any) -> None:
        super().__init__(factory)
        #: On submission: the From: header addresses of the message being received.
        self._headerFrom: list[str] = []
        #: On the MX: this transaction's sender authentication (see L{_startChecks}), and our Received: field,
        #: which goes below the Authentication-Results field once that is known.
        self._inbound: MessageCheck | None = None
        self._received = b""
        #: On the MX: whether each sender domain seen on this connection is one of ours
        #: (L{_SENDER_DOMAINS_KEPT} at most), asked once per connection, not once per MAIL.
        self._senderDomains: dict[str, bool] = {}

    # -- DATA: the byte stream -------------------------------------------------------

    def consumeRaw(self) -> bool | None:
        receiver = self._data
        if receiver is None:
            return None
        before = len(self._buffer)
        self._buffer = receiver.feed(self._buffer)
        self.deadlines.dataReceived(before - len(self._buffer))
        if receiver.done:
            self.deadlines.dataEnded()
            # The end of the data, timed as "EOM": the commit and its 250.
            self._command("EOM", self._endData)
            return True
        self._pauseReadingUntil(receiver.lastWrite)
        return False

    # -- MAIL, RCPT, DATA ----------------------------------------------------------

    def _parsePath(self, argument: bytes, keyword: bytes) -> tuple[str, dict[str, str]] | None:
        """
        The address and parameters of MAIL FROM or RCPT TO. A non-ASCII
        address (RFC 6531: a UTF-8 local part, an internationalised domain
        in U-labels) is taken only in a transaction whose MAIL FROM said
        SMTPUTF8, and must be UTF-8.
        """
        match = PATH.match(argument.strip())
        if not match or match.group(1).upper() != keyword:
            self._error(501, b"5.5.4 Syntax: " + (b"MAIL FROM:<address>" if keyword == b"FROM" else b"RCPT TO:<address>"))
            return None
        params: dict[str, str] = {}
        for item in (match.group(3) or b"").split():
            key, _, value = item.decode("ascii", "replace").partition("=")
            params[key.upper()] = value
        raw = match.group(2)
        if raw.isascii():
            address = raw.decode("ascii")
        else:
            utf8 = "SMTPUTF8" in params if keyword == b"FROM" else self._txn is not None and self._txn.smtputf8
            if not utf8:
                self._error(553, b"5.6.7 Non-ASCII address without SMTPUTF8 on MAIL FROM (RFC 6531)")
                return None
            try:
                address = raw.decode("utf-8")
            except UnicodeDecodeError:
                self._error(501, b"5.1.3 Bad address syntax: not UTF-8")
                return None
        if ":" in address and address.startswith("@"):
            address = address.split(":", 1)[1]  # source route (RFC 5321 4.1.2): ignore it
        if keyword == b"TO" and address.lower() == "postmaster" and self.policy.postmaster:
            # RFC 5321 4.5.1: <Postmaster> without a domain must be accepted.
            address = self.policy.postmaster
        if address and not _valid_address(address):
            self._error(501, b"5.1.3 Bad address syntax")
            return None
        return address, params

    def _storageLow(self, declared: int) -> bool:
        """
        Refuse the transaction before its data when the disk is (nearly)
        full, as Postfix does (RFC 3463 4.3.1): the client keeps the message
        and tries again later, instead of sending it all for a 452 after DATA.
        """
        free = self.factory.freeSpace.available() if self.factory.freeSpace is not None else None
        if free is None or free - declared >= self.policy.min_free_disk:
            return False
        _log.warn(
            "insufficient storage free={free} client={client}",
            log_event=logevents.SMTP_INSUFFICIENT_STORAGE,
            free=free,
            client=self._peerIP,
        )
        self.sendCode(452, b"4.3.1 Insufficient system storage")
        return True

    def _rateLimited(self, relay: bool) -> bool:
        """
        Whether this session's mail counts against the MX rate per client
        address: the MX only, and not from C{relay.trusted_networks}
        (submission has its own limit per authenticated sender).
        """
        return not self.policy.submission and not self.authenticated and not relay

    def _mxMessageAllowed(self, declared: int) -> bool:
        """Count this MAIL FROM against the client's rate, or refuse it with 451 4.7.1."""
        over = self.factory.guard.mx.messageStarted(self._peerIP, declared)
        if over is None:
            return True
        self._mxRefused(over)
        return False

    def _mxRefused(self, over: str) -> None:
        _log.info(
            "mx rate limited client={client} over={over}",
            log_event=logevents.SMTP_MX_RATE_LIMITED,
            client=self._peerIP,
            over=over,
        )
        refusal = TooMuchMail()
        self.sendCode(refusal.code, f"{refusal.enhanced} {refusal.text}".encode("ascii"))

    def smtp_MAIL(self, argument: bytes) -> None:
        if self._ehlo is None:
            self._error(503, b"5.5.1 Error: send HELO/EHLO first")
            return
        if self._txn is not None:
            self._error(503, b"5.5.1 Error: nested MAIL command")
            return
        if self.policy.submission and not self.authenticated:
            self._error(530, b"5.7.0 Authentication required")
            return
        if self.authenticated and not self.factory.guard.mayAcceptMessage(self.authenticated):
            _log.info(
                "sending rate limited account={account} client={client}",
                log_event=logevents.SEND_RATE_LIMITED,
                account=self.authenticated,
                client=self._peerIP,
            )
            self.sendCode(
                450,
                b"4.7.1 Too many messages: the limit is %d per hour; try again later" % self.factory.guard.max_messages_per_hour,
            )
            return
        parsed = self._parsePath(argument, b"FROM")
        if parsed is None:
            return
        sender, params = parsed
        for key, value in params.items():
            if key == "SIZE":
                if not value.isdigit():
                    self._error(501, b"5.5.4 Bad SIZE parameter")
                    return
                if int(value) > self.policy.max_message_size:
                    self.sendCode(552, b"5.3.4 Message size exceeds fixed maximum message size")
                    return
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME", "BINARYMIME"):
                    self._error(501, b"5.5.4 Bad BODY parameter")
                    return
            elif key == "AUTH":
                pass  # RFC 4954 5: accepted and not trusted
            elif key == "RET":
                if dsn.parse_ret(value) is None:
                    self._error(501, b"5.5.4 Bad RET parameter: FULL or HDRS")
                    return
            elif key == "ENVID":
                if dsn.parse_envid(value) is None:
                    self._error(501, b"5.5.4 Bad ENVID parameter: xtext of at most 100 characters")
                    return
            elif key == "SMTPUTF8" and not value:
                pass  # RFC 6531 3.4: UTF-8 addresses and header fields in this transaction
            elif key == "REQUIRETLS" and not value and self._offersRequireTLS():
                pass  # RFC 8689 4.1: only where advertised (submission, inside TLS)
            else:
                self._error(555, b"5.5.4 Unsupported MAIL parameter")
                return
        if self._listed("mail", self._screen.settled() if self._screen is not None else None):
            return
        declared = int(params.get("SIZE", "0"))
        if self._storageLow(declared):
            return
        relay = bool(self.authenticated) or self.factory.trusted(self._peerIP)
        if self._rateLimited(relay) and not self._mxMessageAllowed(declared):
            return

        def accept() -> None:
            self._txn = self.router.start(sender, relay, self.authenticated, declared)
            self._inbound = self._startChecks(sender, relay)
            self._txn.requiretls = "REQUIRETLS" in params
            self._txn.smtputf8 = "SMTPUTF8" in params
            self._txn.dsn.ret = params.get("RET", "").upper()
            self._txn.dsn.envid = params.get("ENVID", "")
            self._txn.binarymime = params.get("BODY", "").upper() == "BINARYMIME"
            if self._screen is not None:
                self._screen.sender(sender)
            self.sendCode(250, b"2.1.0 Ok")

        if self.policy.submission:
            assert self.authenticated is not None  # submission refuses MAIL before AUTH
            d = self.router.accounts.ownsAddress(self.authenticated, sender) if sender else defer.succeed(False)

            def owned(yes: bool) -> None:
                if not yes:
                    self.sendCode(553, b"5.7.1 Sender address not owned by you")
                    return
                accept()

            self._wait(d.addCallback(owned))
            return
        if sender and not relay and self.policy.refuse_local_senders:
            domain = sender.rpartition("@")[2]
            key = domain.lower()
            known = self._senderDomains.get(key)
            d = defer.succeed(known) if known is not None else self.router.accounts.isLocalDomain(domain)

            def foreign(local: bool) -> None:
                if len(self._senderDomains) < _SENDER_DOMAINS_KEPT:
                    self._senderDomains[key] = local
                if local:
                    _log.info(
                        "local sender refused on the mx from=<{sender}> client={client}",
                        log_event=logevents.SMTP_LOCAL_SENDER_REFUSED,
                        sender=sender,
                        client=self._peerIP,
                    )
                    self._error(553, b"5.7.1 Sender address in a local domain: log in on the submission port to send as it")
                    return
                accept()

            self._wait(d.addCallback(foreign))
            return
        accept()

    def smtp_RCPT(self, argument: bytes) -> None:
        if self._txn is None:
            self._error(503, b"5.5.1 Error: need MAIL command")
            return
        parsed = self._parsePath(argument, b"TO")
        if parsed is None:
            return
        recipient, params = parsed
        if not recipient:
            self._error(501, b"5.1.3 Bad recipient address syntax")
            return
        request = self._dsnRequest(params)
        if request is None:
            return
        txn = self._txn
        txn.dsn.add(recipient, request)
        # The blocklists' lookups started at connect, HELO and MAIL: waited for here, each bounded by its timeout.
        listed = self._screen.verdict() if self._screen is not None else defer.succeed(None)

        def screened(refusal: Refusal | None) -> defer.Deferred[None] | None:
            if self._listed("rcpt", refusal) or self._txn is not txn:
                return None
            # The recipient's sender lists first (a block is its 550; an allowed
            # sender is exempt from greylisting), then greylisting, then the
            # recipient's own checks.
            allowed: list[str] = []

            def refused(reason: Failure) -> defer.Deferred[None] | None:
                return self._recipientRefused(reason, txn, recipient)

            checked: defer.Deferred[Any] = self._senderLists(txn, recipient, allowed)
            checked.addCallback(lambda _: self._greylistThenAdd(txn, recipient, allowed))
            checked.addErrback(refused)
            return checked

        self._wait(listed.addCallback(screened))

    def _dsnRequest(self, params: dict[str, str]) -> dsn.RecipientRequest | None:
        """RCPT's DSN parameters (RFC 3461 4.1, 4.2), or None once a bad or unknown one is answered."""
        notify: tuple[str, ...] = ()
        orcpt = ""
        for key, value in params.items():
            if key == "NOTIFY":
                parsed = dsn.parse_notify(value)
                if parsed is None:
                    self._error(501, b"5.5.4 Bad NOTIFY parameter: NEVER, or SUCCESS, FAILURE and DELAY")
                    return None
                notify = parsed
            elif key == "ORCPT":
                checked = dsn.parse_orcpt(value)
                if checked is None:
                    self._error(501, b"5.5.4 Bad ORCPT parameter: addr-type;xtext")
                    return None
                orcpt = checked
            else:
                self._error(555, b"5.5.4 Unsupported RCPT parameter")
                return None
        return dsn.RecipientRequest(notify, orcpt)

    def _greylistThenAdd(self, txn: Transaction, recipient: str, allowed: list[str]) -> defer.Deferred[None] | None:
        """Greylisting (L{mailapp.postscreen.greylist}): a new triplet's 451, else the recipient's own checks."""
        greylist, settings = self.factory.greylist, self.policy.greylisting
        # Exempt: authenticated and trusted clients (relay_allowed), a sender the
        # recipient allows (its sender list), the configured networks.
        if (
            greylist is None
            or not settings.enabled
            or txn.relay_allowed
            or recipient in txn.allowed_by_recipient
            or in_networks(self._peerIP, settings.exempt_networks)
        ):
            return self._addRecipient(txn, recipient, allowed)

        def decided(verdict: Verdict) -> defer.Deferred[None] | None:
            if self._txn is not txn:
                return None
            if verdict is Verdict.GREYLISTED:
                self.sendCode(451, GREYLISTED)
                return None
            return self._addRecipient(txn, recipient, allowed)

        return greylist.check(settings, self._peerIP, txn.sender, recipient).addCallback(decided)

    def _listed(self, stage: str, refusal: Refusal | None) -> bool:
        """A client the blocklists refuse (L{mailapp.postscreen}): 554 5.7.1, counted as an error."""
        if refusal is None or self._screen is None:
            return False
        self._error(554, self._screen.listed(refusal, stage))
        return True

    def _addRecipient(self, txn: Transaction, recipient: str, allowed: list[str]) -> defer.Deferred[None]:
        d = txn.addRecipient(recipient)

        def ok(_: object) -> None:
            txn.allowed_accounts.update(allowed)
            self.sendCode(250, b"2.1.5 Ok")

        def refused(reason: Failure) -> defer.Deferred[None] | None:
            return self._recipientRefused(reason, txn, recipient)

        return d.addCallbacks(ok, refused)

    def _recipientRefused(self, reason: Failure, txn: Transaction, recipient: str) -> defer.Deferred[None] | None:
        """A recipient refused (its sender list, or the Router's checks): its reply, counted where probing is."""
        reason.trap(MailError)
        txn.allowed_by_recipient.discard(recipient)
        error = cast(MailError, reason.value)
        _log.info(
            "rcpt rejected {recipient} {code} from {client}",
            log_event=logevents.SMTP_RCPT_REJECTED,
            recipient=recipient,
            code=error.code,
            client=self._peerIP,
        )
        reply = f"{error.enhanced} {error.text}".encode("ascii", "replace")
        if isinstance(error, NoSuchUser):
            # Slower after a few, across connections: nobody lists our users by reconnecting.
            delay = self.factory.guard.unknownRecipient(self._peerIP)
            if delay > 0:
                answered: defer.Deferred[None] = defer.Deferred()
                self.callLater(delay, answered.callback, None)
                return answered.addCallback(lambda _: self._error(error.code, reply))
        if isinstance(error, (NoSuchUser, RelayDenied)):
            # Counted like any other error: probing for users or relays ends with 421.
            self._error(error.code, reply)
        else:
            self.sendCode(error.code, reply)
        return None

    def _senderLists(self, txn: Transaction, recipient: str, allowed: list[str]) -> defer.Deferred[None]:
        """
        On the MX, per recipient: its allow and block lists (the user's,
        then its domain's; L{mailapp.accounts.senderlists}). A blocked
        sender fails with L{SenderBlocked} for this recipient only (refused
        during SMTP: no backscatter); an allowed one is marked in
        L{Transaction.allowed_by_recipient} for the spam checks after this one,
        and the accounts it reaches put in C{allowed} (for L{Transaction.allowed_accounts}
        once the recipient is accepted).
        Submission, trusted and authenticated clients are not checked: their
        mail is ours.
        """
        if self.policy.submission or txn.relay_allowed or not txn.sender:
            return defer.succeed(None)

        def apply(verdict: Any) -> None:
            if verdict is None:
                return
            fields = dict(sender=txn.sender, recipient=recipient, owner=verdict.owner, pattern=verdict.pattern, client=self._peerIP)
            if verdict.action == "block":
                _log.info(
                    "sender blocked by the recipient from=<{sender}> to=<{recipient}> list={owner} entry={pattern} client={client}",
                    log_event=logevents.SMTP_SENDER_BLOCKED,
                    action="reject",
                    reason="sender_blocklist",
                    **fields,
                )
                raise SenderBlocked()
            _log.info(
                "sender allowed by the recipient from=<{sender}> to=<{recipient}> list={owner} entry={pattern} client={client}",
                log_event=logevents.SMTP_SENDER_ALLOWED,
                action="allow",
                reason="sender_allowlist",
                **fields,
            )
            txn.allowed_by_recipient.add(recipient)
            allowed.extend(verdict.accounts)

        return self.router.accounts.senderVerdict(recipient, txn.sender).addCallback(apply)

    def smtp_DATA(self, argument: bytes) -> None:
        if self._txn is None:
            self._error(503, b"5.5.1 Error: need MAIL command")
            return
        if not self._txn.recipients:
            self._error(554, b"5.5.1 Error: no valid recipients")
            return
        if argument:
            self._error(501, b"5.5.4 Syntax: DATA")
            return
        self._data = self._openMessage(self._txn, _DataReceiver)
        self.sendCode(354, b"End data with <CR><LF>.<CR><LF>")
        self.deadlines.dataStarted()

    def _openMessage(self, txn: Transaction, kind: type[_Stream]) -> _Stream:
        """The stream that takes C{txn}'s message to the spool (DATA's, or BDAT's chunks)."""
        message = txn.open()
        self._headerFrom = []
        received = self._receivedHeader(txn)
        # A checked or scanned message is held until its Authentication-Results field,
        # its URLs' listings and its scan are known (the end of data); memory bounded by max_message_size.
        held = self._inbound is not None or self._scanned() or (self._screen is not None and self._screen.checksUrls())
        self._received = received if held else b""
        return kind(
            HeldMessage() if held else message,
            self.policy.max_message_size,
            prefix=b"" if held else received,
            addMissing=self._missingHeaders if self.policy.submission else None,
        )

    def _receivedHeader(self, txn: Transaction) -> bytes:
        # RFC 6531 3.7.3: a SMTPUTF8 transaction is "with UTF8SMTP" (+S, +A).
        protocol = "UTF8SMTP" if txn.smtputf8 else "ESMTP" if self._esmtp else "SMTP"
        if self.secure:
            protocol += "S"
        if self.authenticated:
            protocol += "A"
        return received_header(
            self._ehlo, self._peerIP, self.policy.hostname, protocol, txn.queue_id, txn.recipients, self.factory.reactor.seconds()
        )

    def _missingHeaders(self, headers: bytes) -> bytes:
        """
        On submission, add ``Message-ID:`` and ``Date:`` when the client left
        them out, and note the ``From:`` addresses (checked at the end of data).
        """
        self._headerFrom = header_addresses(headers, b"from")
        return missing_headers(headers, self.policy.hostname, self.factory.reactor.seconds())

    # -- the hook of sender authentication (mailapp.authentication) ----------------

    def _startChecks(self, sender: str, relay: bool) -> MessageCheck | None:
        """
        At MAIL FROM on the MX: start SPF, DKIM and DMARC for this message,
        unless the client is trusted, authenticated or exempt, or nothing is to be checked.
        """
        inbound = self.factory.inbound
        settings = self.policy.authentication
        if inbound is None or self.policy.submission or relay or inbound.exempt(settings, self._peerIP):
            return None
        if not (settings.spf or settings.dkim or settings.dmarc):
            return None
        return inbound.start(settings, self._peerIP, self._ehlo or "", sender)

    def _authenticate(self, refusal: MailError | None, inbound: MessageCheck, held: HeldMessage, txn: Transaction) -> Any:
        """
        At the end of DATA: the checks' verdict. A refusal (DMARC p=reject, a
        DNS failure) is answered instead of storing; otherwise the message
        goes to the store with our Authentication-Results field on top.
        """
        if refusal is not None:
            return refusal

        def verdict(outcome: Any) -> Any:
            if outcome.refusal is not None:
                return cast(MailError, outcome.refusal)
            txn.sender_verified = outcome.sender_verified
            return self._scan(txn, outcome.header, outcome.message, outcome.folder)

        return inbound.finish(held.data(), txn.queue_id).addCallback(verdict)

    # -- the hook of the URL blocklists (mailapp.postscreen) ----------------------------

    def _urlsListed(self, refusal: MailError | None, held: HeldMessage) -> Any:
        """At the end of DATA, before the other checks: the body's URLs in the lists (554 5.7.1), else C{refusal}."""
        screen = self._screen
        if refusal is not None or screen is None:
            return refusal

        def judged(listed: Refusal | None) -> MailError | None:
            return screen.urlListed(listed) if listed is not None else None

        return screen.urls(held.data()).addCallback(judged)

    # -- the hook of the content scanner (mailapp.spam) -------------------------------

    def _scanned(self) -> bool:
        """Whether this listener's messages go through the content scanner (rspamd)."""
        scanner = self.factory.scanner
        return scanner is not None and scanner.applies(self.policy.spam, self.policy.submission)

    def _senderAllowed(self, txn: Transaction) -> bool:
        """
        Whether the recipients allow this sender (their sender lists, checked
        at RCPT, L{Transaction.allowed_accounts}): then spam-scored mail
        from it is not filed as Junk. The message has one folder for all its
        local copies, so this holds only when every local recipient allows
        the sender; with some that do not, the scan's Junk stands for all.
        """
        return bool(txn.local) and all(account in txn.allowed_accounts for account in txn.local)

    def _scan(self, txn: Transaction, header: bytes, message: bytes, folder: str) -> Any:
        """
        At the end of DATA, after the checks: the scan's verdict. A refusal
        (554 for reject, 451 for a soft reject or rspamd down when failing
        closed) is answered instead of storing; otherwise the message is
        stored with our fields on top, in Junk when rspamd says spam.
        """
        assert txn.message is not None
        top = header + self._received
        if not self._scanned():
            txn.message.write(top + message)
            txn.folder = folder
            return None
        scanner = self.factory.scanner
        assert scanner is not None
        request = ScanRequest(
            client_ip=self._peerIP,
            helo=self._ehlo or "",
            sender=txn.sender,
            recipients=tuple(txn.recipients),
            user=txn.authenticated,
            queue_id=txn.queue_id,
            outbound=self.policy.submission,
            allowed_sender=self._senderAllowed(txn),
        )

        def decided(verdict: SpamVerdict) -> MailError | None:
            if verdict.refusal is not None:
                return verdict.refusal
            assert txn.message is not None
            txn.message.write(top + (mark(message, verdict) if verdict.fields or verdict.subject is not None else message))
            txn.folder = verdict.folder or folder
            return None

        return scanner.scan(self.policy.spam, request, top + message).addCallback(decided)

    def _endData(self) -> None:
        receiver, self._data = self._data, None
        txn, self._txn = self._txn, None
        inbound, self._inbound = self._inbound, None
        assert receiver is not None and txn is not None
        refusal = MessageTooBig() if receiver.tooBig else MessageHasNul() if receiver.hasNul else receiver.headers.verdict()
        if self._rateLimited(txn.relay_allowed) and not self.factory.guard.mx.dataReceived(self._peerIP, receiver.size):
            # Counted whether stored or not: the bytes were sent; nothing of this one is stored.
            refusal = TooMuchMail()
        checked: defer.Deferred[MailError | None] = defer.succeed(refusal)
        if refusal is None and self.policy.submission and txn.authenticated and self._headerFrom:
            # The From: a reader sees must be the user's too, not only the envelope sender.
            owners = [self.router.accounts.ownsAddress(txn.authenticated, address) for address in self._headerFrom]
            checked = defer.gatherResults(owners, consumeErrors=True).addCallback(
                lambda answers: None if all(answers) else HeaderSenderNotOwned()
            )
        if isinstance(receiver.message, HeldMessage) and self._screen is not None and self._screen.checksUrls():
            # The URL lists first: cheaper than the authentication checks and the scan they spare.
            checked.addCallback(self._urlsListed, receiver.message)
        if inbound is not None:
            checked.addCallback(self._authenticate, inbound, receiver.message, txn)
        elif isinstance(receiver.message, HeldMessage):
            held = receiver.message
            checked.addCallback(lambda refusal: refusal if refusal is not None else self._scan(txn, b"", held.data(), INBOX))

        def decide(refusal: MailError | None) -> Any:
            if refusal is None:
                return self._commit(txn, receiver.size)
            txn.abort()
            _log.info(
                "refused at end of data from=<{sender}> client={client}: {reply}",
                log_event=logevents.SMTP_DATA_REFUSED,
                sender=txn.sender,
                client=self._peerIP,
                reply=refusal.reply().decode("ascii"),
            )
            self._answerMessage(txn, refusal)
            return None

        def failed(reason: Failure) -> None:
            self._commitFailed(txn, reason)

        self._wait(checked.addCallbacks(decide, failed))

    def _answerMessage(self, txn: Transaction, error: MailError) -> None:
        """The reply to the end of a message that is not stored (LMTP: one per recipient)."""
        self.sendCode(error.code, f"{error.enhanced} {error.text}".encode("ascii", "replace"))

    def _commitFailed(self, txn: Transaction, reason: Failure) -> None:
        txn.abort()
        error = reason.value if isinstance(reason.value, MailError) else MailError()
        if not isinstance(reason.value, MailError):
            _log.failure("smtp.commit_failed", reason)
        self._answerMessage(txn, error)

    def _commit(self, txn: Transaction, size: int) -> Any:
        """Make the message durable, then answer: 250 once every copy is (L{Transaction.commit})."""

        def stored(queue_id: str) -> None:
            if txn.authenticated:
                self.factory.guard.messageAccepted(txn.authenticated)
            _log.info(
                "accepted {queue_id} from=<{sender}> rcpts={count} size={size} client={client}",
                log_event=logevents.SMTP_ACCEPTED,
                queue_id=queue_id,
                sender=txn.sender,
                count=len(txn.recipients),
                size=size,
                client=self._peerIP,
            )
            self.sendCode(250, f"2.0.0 Ok: queued as {queue_id}".encode())

        def failed(reason: Failure) -> None:
            self._commitFailed(txn, reason)

        return self.factory.inflight(txn.commit()).addCallbacks(stored, failed)


def _valid_address(address: str) -> bool:
    """RFC 5321's address syntax; a non-ASCII one judged with its domain in A-labels (RFC 6531 3.3)."""
    if address.isascii():
        return ADDRESS.match(address) is not None
    local, _, domain = address.rpartition("@")
    try:
        domain = ascii_domain(domain)
    except AccountError:
        return False
    return ADDRESS.match(f"{local}@{domain}") is not None
