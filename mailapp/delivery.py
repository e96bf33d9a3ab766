"""
The Router: the one place every accepted message goes through.

SMTP (both roles) and the webmail start a L{Transaction}, add recipients,
write the message, and commit. The Router decides who is local (users,
aliases, catch-alls, ``+tag``), applies the relay policy and the recipient
limit, and hands local copies to the store (written once, hard-linked) and
remote ones to the relay queue, durably, before C{commit} fires. Policy
answers are L{mailapp.errors.MailError} values: only the SMTP layer turns
them into reply codes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import dsn, logevents
from mailapp.accounts.addresses import split_address
from mailapp.accounts.resolution import DomainDirectory, OutsideDirectory, resolve_address
from mailapp.errors import (
    BinaryNotRelayed,
    ForwardingRateExceeded,
    MailError,
    NoSuchUser,
    RelayDenied,
    RemoteDeliveryUnavailable,
    SieveRejected,
    TooManyRecipients,
)
from mailapp.forwarding import MAX_UNWIND
from mailapp.interfaces import IAccounts, IMessageSigner, IMessageStore, IMessageWriter
from mailapp.records import INBOX, FolderPlacement
from mailapp.store import messagefile
from mailapp.store.names import normalize_folder

if TYPE_CHECKING:
    # Named in annotations only: the Router is handed these by the composition
    # root, and the core imports no part of the relay.
    from mailapp.forwarding import Forwarding
    from mailapp.quota import Quota, Quotas
    from mailapp.relay.queue import Queue
    from mailapp.sieve.filter import SieveFilter

_log = Logger()


def new_queue_id() -> str:
    """A short id that names one accepted message in replies and logs."""
    return secrets.token_hex(6).upper()


@dataclass
class Transaction:
    """
    One message on its way in: sender, recipients, body, then commit or abort.

    C{relay_allowed} says whether this client may send to remote domains
    (an authenticated submission user, or a trusted network).
    """

    router: "Router"
    sender: str
    relay_allowed: bool
    authenticated: str | None = None
    #: The size the client declared (SMTP C{SIZE=}); 0 when unknown. Checked against quotas at each recipient.
    declared_size: int = 0
    queue_id: str = field(default_factory=new_queue_id)
    recipients: list[str] = field(default_factory=list)
    local: list[str] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)
    #: Remote targets reached through one of our aliases (or an SRS bounce
    #: address), with the local address that forwards to each.
    forwarded: dict[str, str] = field(default_factory=dict)
    #: The stored copy being written, from L{open} on.
    message: IMessageWriter | None = None
    #: Whether its remote copies are signed (L{Router.signer}): mail from one
    #: of ours, which is what may relay (submission, the webmail, trusted
    #: networks, the relay's DSNs). Local copies are never signed.
    sign: bool = False
    #: The folder of the local copies: INBOX, or Junk for a message the MX's checks quarantine.
    folder: str = INBOX
    #: MAIL FROM said REQUIRETLS (RFC 8689): the relay must send it only over verified TLS.
    requiretls: bool = False
    #: MAIL FROM said SMTPUTF8 (RFC 6531): UTF-8 addresses or header fields; the relay
    #: sends it only to a next hop that offers SMTPUTF8.
    smtputf8: bool = False
    #: The RCPT addresses (as in L{recipients}) whose allow list (the user's
    #: own, or its domain's) names this sender, marked by the MX at RCPT
    #: before any later RCPT check runs. The spam checks must honour it:
    #: greylisting never defers a recipient in this set, and a content
    #: scanner's verdict never puts these recipients' copies in Junk
    #: (L{allowed_accounts}); a refusal for the whole message (a virus, a
    #: DMARC reject) still applies. Empty on submission and for trusted clients.
    allowed_by_recipient: set[str] = field(default_factory=set)
    #: The local accounts (as in L{local}) that an allowed recipient reached:
    #: the copies a Junk placement must leave in INBOX.
    allowed_accounts: set[str] = field(default_factory=set)
    #: The client's DSN parameters (RFC 3461: RET, ENVID, each RCPT's NOTIFY
    #: and ORCPT), kept with the remote copies in the relay queue and
    #: honoured for the local ones (a "delivered" DSN for NOTIFY=SUCCESS).
    dsn: dsn.DsnParameters = field(default_factory=dsn.DsnParameters)
    #: The RCPT addresses (as in L{recipients}) that reached a local mailbox.
    reached_locally: list[str] = field(default_factory=list)
    #: The MX's SPF check passed for the envelope sender (L{mailapp.authentication}).
    sender_verified: bool = False
    #: What each RCPT address (as in L{recipients}) reached: its local
    #: accounts and its remote targets, for L{commitEach}.
    reached: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    #: MAIL FROM said BODY=BINARYMIME (RFC 3030): the message may hold any
    #: octet, which the relay's DATA could not carry, so it reaches local mailboxes only.
    binarymime: bool = False
    #: The RCPT address (as in L{recipients}) that first reached each local
    #: account (lower-cased): a Sieve script's envelope "to", with its +detail.
    rcpt_for: dict[str, str] = field(default_factory=dict)
    #: What this transaction learned of each recipient domain (L{_resolve}),
    #: for its life only: domain -> its whole directory, or None when it is
    #: too big to hold (its addresses are then looked up one by one); and
    #: the domains one recipient has been looked up in so far.
    directories: dict[str, DomainDirectory | None] = field(default_factory=dict)
    domains_seen: set[str] = field(default_factory=set)
    #: The quotas read so far, by account, for this transaction's life
    #: (L{mailapp.quota.Quotas.check}'s C{known}): RCPT's read serves the
    #: check at the end of the data too.
    quotas_read: dict[str, Quota] = field(default_factory=dict)

    @inlineCallbacks
    def _resolve(self, address: str) -> Any:
        """
        Where C{address} goes (L{IAccounts.resolve}), with two accounts
        lookups per recipient domain per transaction at most, not one per
        RCPT: the first recipient in a domain is looked up alone (a message
        to one recipient costs what it always did: reading a domain's
        directory costs more than one address's lookup), the second fetches
        the domain's directory (L{IAccounts.domainDirectory}), and every
        recipient in it from then on is resolved in memory by the same
        rules. An alias that leads into another domain, or a domain too big
        to hold, is resolved by the accounts as before.
        """
        parts = split_address(address)
        domain = parts[1] if parts is not None else None
        if domain is None or (domain not in self.domains_seen and domain not in self.directories):
            if domain is not None:
                self.domains_seen.add(domain)
            return (yield self.router.accounts.resolve(address))
        if domain not in self.directories:
            self.directories[domain] = yield self.router.accounts.domainDirectory(domain)
        directory = self.directories[domain]
        if directory is not None:
            try:
                return resolve_address(address, directory)
            except OutsideDirectory:
                pass
        return (yield self.router.accounts.resolve(address))

    @inlineCallbacks
    def addRecipient(self, address: str) -> Any:
        """
        Accept C{address} or fail with a L{MailError}: L{NoSuchUser} for an
        unknown local user, L{RelayDenied} for a remote domain without relay
        rights, L{TooManyRecipients} past the limit, L{OverQuota} when
        every mailbox it reaches is full (or has no room for the declared
        size) and it reaches nobody else.
        """
        if len(self.recipients) >= self.router.max_recipients:
            raise TooManyRecipients()
        forwarding = self.router.forwarding
        forwarder = address
        resolution = yield self._resolve(address)
        for _ in range(MAX_UNWIND):
            in_local_domain = resolution is None or resolution.local_domain
            if forwarding is None or not in_local_domain or not forwarding.claims_srs(address):
                break
            # A bounce to an SRS address of ours: on to where it leads, if we made it.
            original = forwarding.reverse(address)
            if original is None:
                raise NoSuchUser()
            address = original
            resolution = yield self._resolve(address)
        if resolution is None:
            raise NoSuchUser()
        if not resolution.local_domain and not self.relay_allowed and address == forwarder:
            raise RelayDenied()
        if resolution.remote and self.binarymime:
            raise BinaryNotRelayed()
        if resolution.remote and self.router.queue is None:
            # This server was built without a relay queue: say so honestly, the client retries later.
            raise RemoteDeliveryUnavailable()
        if resolution.local and not resolution.remote:
            refused = yield self.router.overQuota(resolution.local, self.declared_size, self.quotas_read)
            if refused is not None:
                raise refused
        forwards = address != forwarder or (resolution.local_domain and bool(resolution.remote))
        if forwards and forwarding is not None and resolution.remote:
            if not forwarding.rate.admit(forwarder.lower()):
                raise ForwardingRateExceeded()
        self.recipients.append(forwarder)
        if resolution.local:
            self.reached_locally.append(forwarder)
        self.reached[forwarder] = (tuple(resolution.local), tuple(resolution.remote))
        for account in resolution.local:
            self.rcpt_for.setdefault(account.lower(), forwarder)
            if account.lower() not in (a.lower() for a in self.local):
                self.local.append(account)
        for target in resolution.remote:
            if target.lower() not in (r.lower() for r in self.remote):
                self.remote.append(target)
                if forwards:
                    self.forwarded[target] = forwarder
        return None

    def traceHeaders(self) -> bytes:
        """
        ``Return-Path:`` always; ``Delivered-To:`` only when the message goes
        to exactly one local mailbox. One shared file serves every recipient,
        and listing each recipient in it would show Bcc recipients to the
        others, so a fan-out copy carries no per-recipient header.
        """
        lines = [b"Return-Path: <" + self.sender.encode("utf-8") + b">\r\n"]
        if len(self.local) == 1 and not self.remote:
            lines.append(b"Delivered-To: " + self.local[0].encode("utf-8") + b"\r\n")
        return b"".join(lines)

    def open(self) -> IMessageWriter:
        """Start the stored copy: an L{IMessageWriter} that already holds the trace headers."""
        message = self.message = self.router.store.newMessage()
        message.write(self.traceHeaders())
        return message

    def _opened(self) -> IMessageWriter:
        if self.message is None:
            raise RuntimeError("commit() before open()")
        return self.message

    @inlineCallbacks
    def commit(self) -> Any:
        """
        Make every copy durable; fires with the queue id once every local
        copy is in its Maildir and every remote copy is in the relay queue.

        The order, and what a failure at each step leaves behind:

          1. the message is on disk (the writer's C{finish}); the local
             accounts' Sieve scripts run (L{mailapp.sieve.filter}): a reject
             of every local copy fails here with L{SieveRejected} (550),
             redirects are committed as transactions of their own, and each
             account's copies get their folders and flags;
          2. remote copies: the queue writes and syncs the message file and
             the envelope under names the relay manager never reads
             (L{mailapp.relay.queue.Queue.prepare}). A failure here: nothing
             was delivered, the client gets 451 and tries again;
          3. local copies: the store delivers them, all or none (one batch,
             with the scripts' placements). A failure
             here: the prepared queue files are removed; nothing was
             delivered; 451;
          4. the queue entry is published (an atomic rename, then a directory
             sync): from now on the manager sends it. A failure here, after
             the local copies became visible, is the one partial outcome:
             the client gets 451 and sends again, so local recipients may
             get the message twice but no remote recipient loses it (mail
             may be duplicated, never lost). It is logged as
             C{relay.publish_failed}.

        A crash between 2 and 4 leaves prepared files that nobody reads and
        the queue removes when stale; the client never had its 250. A
        redirect already committed in 1 is not undone by a later failure:
        the client sends again, and the target may get it twice (again
        duplicated, never lost). Vacation replies and reject DSNs go out
        after the commit.
        """
        message = self._opened()
        yield message.finish()
        if self.local and not self.remote:
            # Now that the size is known; RCPT could only check what SIZE= declared.
            refused = yield self.router.overQuota(self.local, message.size, self.quotas_read)
            if refused is not None:
                raise refused
        return (yield self._deliver(message))

    @inlineCallbacks
    def commitEach(self) -> Any:
        """
        LMTP's commit (RFC 2033 4.2): fires with each recipient's outcome,
        in the order of L{recipients}: C{None} once its copy is durable, or
        the L{MailError} it is refused with. A recipient is refused for its
        quota alone when every mailbox it reaches lacks room for the
        message (the Router's rule, applied per recipient, so a full
        mailbox no longer takes a message meant for others too); the rest
        are made durable together, as L{commit} does, and its failure (a
        L{MailError}) is every one of theirs.
        """
        message = self._opened()
        yield message.finish()
        outcomes: list[MailError | None] = []
        for recipient in self.recipients:
            local, remote = self.reached[recipient]
            refused = (yield self.router.overQuota(local, message.size, self.quotas_read)) if local and not remote else None
            outcomes.append(refused)
        accepted = [recipient for recipient, outcome in zip(self.recipients, outcomes) if outcome is None]
        if not accepted:
            self.message = None
            yield message.discard()
            return outcomes
        kept_local = {account.lower() for recipient in accepted for account in self.reached[recipient][0]}
        kept_remote = {target.lower() for recipient in accepted for target in self.reached[recipient][1]}
        self.local = [account for account in self.local if account.lower() in kept_local]
        self.remote = [target for target in self.remote if target.lower() in kept_remote]
        self.forwarded = {target: alias for target, alias in self.forwarded.items() if target in self.remote}
        self.reached_locally = [recipient for recipient in self.reached_locally if recipient in accepted]
        yield self._deliver(message)
        return outcomes

    @inlineCallbacks
    def _deliver(self, message: IMessageWriter) -> Any:
        """L{commit}'s steps 2 to 4 for the finished C{message}, then the "delivered" DSNs asked for; fires with the queue id."""
        delivered_dsn = self._deliveredRecipients()
        # Read while the message is still ours: a large one is only in its spool file.
        returned_headers = (yield self._headers(message)) if delivered_dsn else b""
        # A user's Sieve script, after the MX's checks (self.folder is their
        # choice) and before anything is durable: None when nobody filters.
        filtered = (yield self._filter(message)) if self.local and self.router.sieve is not None else None
        placements: list[FolderPlacement] | None = None
        if filtered is not None:
            self._rejectInProtocol(filtered)
            placements = yield self._carryOut(filtered)
        prepared: list[Any] = []
        queue = self.router.queue
        try:
            # Our mail is signed by the relay as it leaves (Envelope.sign),
            # not here: the 250 never waits for a signature.
            sign = self.sign and self.router.signer is not None
            for entry_id, sender, recipients, alias_domain in self._queueEntries():
                # Never without a queue: addRecipient refuses remote recipients then.
                assert queue is not None
                copy = message
                if alias_domain is not None and self.router.forwarding is not None:
                    # A forwarded copy: ARC-sealed by the alias's domain when it has a key (never fails).
                    copy = yield self.router.forwarding.copy_for(message, alias_domain, entry_id)
                parameters = self.dsn.only({target: self.forwarded.get(target, target) for target in recipients})
                prepared.append(
                    (
                        yield queue.prepare(
                            copy, sender, recipients, entry_id, sign=sign, requiretls=self.requiretls, dsn=parameters,
                            smtputf8=self.smtputf8 or not (sender + "".join(recipients)).isascii(),
                        )
                    )
                )
            if placements is not None:
                if placements:
                    yield self.router.store.deliverPlacements(message, placements)
            elif self.local:
                yield self.router.store.deliver(message, self.local, self.folder)
        except Exception as e:
            for entry in prepared:
                assert queue is not None
                yield queue.discard(entry).addErrback(lambda _: None)
            if isinstance(e, MailError):
                raise
            _log.failure("delivery failed {queue_id}", log_event=logevents.DELIVERY_FAILED, queue_id=self.queue_id)
            raise MailError() from e
        finally:
            if not self.local or placements == []:
                yield message.discard()
        if prepared:
            assert queue is not None
            try:
                for entry in prepared:
                    yield queue.publish(entry)
            except Exception as e:
                _log.failure(
                    "queueing remote copies of {queue_id} failed after {local} local deliveries",
                    log_event=logevents.RELAY_PUBLISH_FAILED,
                    queue_id=self.queue_id,
                    local=len(self.local),
                )
                raise MailError() from e
        # debug: the protocol that accepted the message logs the one info line per message.
        _log.debug(
            "{log_event} {queue_id} from=<{sender}> local={local} remote={remote} size={size}",
            log_event=logevents.DELIVERY_STORED,
            queue_id=self.queue_id,
            sender=self.sender,
            local=len(self.local),
            remote=len(self.remote),
            size=message.size,
        )
        if delivered_dsn:
            self.router.notify_delivered(self, delivered_dsn, returned_headers)
        if filtered is not None:
            self._afterFiltering(filtered)
        return self.queue_id

    # -- Sieve (mailapp.sieve) -----------------------------------------------

    def _defaultFolder(self, account: str) -> str:
        """
        Where a copy goes unless its script says otherwise (the implicit
        keep): the MX's one choice for the message, INBOX or Junk. The
        sender lists already weighed in it (L{allowed_accounts}: the scan
        files nothing in Junk when every recipient allows the sender); a
        Junk from DMARC's quarantine is indistinguishable here, so an
        allowance is not applied per account a second time.
        """
        return self.folder

    def _filter(self, message: IMessageWriter) -> Deferred[Any]:
        from mailapp.sieve import Envelope

        sieve = self.router.sieve
        assert sieve is not None
        envelopes = {
            account: Envelope(self.sender, self.rcpt_for.get(account.lower(), account), self.authenticated) for account in self.local
        }
        filtered: Deferred[Any] = sieve.filter(
            list(self.local), envelopes, message, {account: self._defaultFolder(account) for account in self.local}
        )

        def unfiltered(failure: Failure) -> None:
            # Our fault (an unreadable script directory, a bug), never the sender's: deliver as if
            # nobody filtered (RFC 5228 2.10.6's implicit keep), rather than 451 every message.
            _log.failure(
                "sieve failed for {queue_id}; delivered unfiltered", failure, log_event=logevents.SIEVE_FAILED, queue_id=self.queue_id
            )
            return None

        return filtered.addErrback(unfiltered)

    def _rejectInProtocol(self, filtered: Any) -> None:
        """
        RFC 5429 2.1.1: refuse in protocol when every local copy is
        rejected and nothing else goes anywhere (one SMTP reply can then
        say it); the reason is the script's. Even for <>: a refused bounce
        makes no new bounce. The SMTP server answers it at the end of DATA;
        the webmail shows it; a DSN of ours (L{send_notification}) logs it.
        """
        outcomes = filtered.outcomes
        if self.remote:
            return
        if set(outcomes) != set(self.local) or any(outcome.reject is None for outcome in outcomes.values()):
            return
        reason = outcomes[self.local[0]].reject
        for account in self.local:
            _log.info(
                "sieve rejected {queue_id} for {account} from=<{sender}> in protocol",
                log_event=logevents.SIEVE_REJECTED,
                queue_id=self.queue_id,
                account=account,
                sender=self.sender,
                dsn_id="",
            )
        raise SieveRejected(reason)

    @inlineCallbacks
    def _carryOut(self, filtered: Any) -> Any:
        """
        The placements of every local copy (filtered or not), after the
        redirects have been made durable as transactions of their own: a
        redirect that fails is kept instead (RFC 5228 2.10.6), and a folder
        missing for a fileinto without :create is the default folder.
        """
        from mailapp.sieve.filter import redirect_copy

        placements: list[FolderPlacement] = []
        for account in self.local:
            outcome = filtered.outcomes.get(account)
            default = self._defaultFolder(account)
            if outcome is None:
                placements.append(FolderPlacement(account, default))
                continue
            _log.info(
                "sieve filtered {queue_id} for {account}: {actions}",
                log_event=logevents.SIEVE_FILTERED,
                queue_id=self.queue_id,
                account=account,
                actions=_actions(outcome),
                errors="; ".join(outcome.errors),
                steps=outcome.steps,
            )
            chosen = list(outcome.placements)
            for target in outcome.redirects:
                copy = redirect_copy(filtered.view, account)
                error = "redirected too often (a loop?)" if copy is None else ""
                if copy is not None:
                    try:
                        yield self.router.redirect(self, account, target, copy)
                    except Exception as e:
                        error = e.text if isinstance(e, MailError) else "local error"
                if error:
                    _log.warn(
                        "sieve redirect of {queue_id} by {account} to <{target}> failed, kept: {error}",
                        log_event=logevents.SIEVE_REDIRECT_FAILED,
                        queue_id=self.queue_id,
                        account=account,
                        target=target,
                        error=error,
                    )
                    if not any(p.folder.upper() == default.upper() for p in chosen):
                        from mailapp.sieve import Placement

                        chosen.append(Placement(default))
            mailbox = self.router.store.mailbox(account)
            # The folders are read only for a fileinto elsewhere: INBOX and the MX's folder always exist.
            elsewhere = any(p.folder not in (INBOX, default) for p in chosen)
            existing = {info.name for info in (yield mailbox.listFolders())} if elsewhere else {default}
            for placement in chosen:
                try:
                    folder = normalize_folder(placement.folder)
                except MailError:
                    folder = default
                if folder not in existing and folder != INBOX:
                    if placement.create:
                        # RFC 5490 3.2: create it; should that fail, the message is kept.
                        try:
                            yield mailbox.createFolder(folder)
                            existing.add(folder)
                        except MailError:
                            folder = default
                    else:
                        # RFC 5228 4.1: filing into a folder that does not exist is an error: the implicit keep.
                        folder = default
                placements.append(FolderPlacement(account, folder, placement.flags))
        return _merged(placements)

    def _afterFiltering(self, filtered: Any) -> None:
        """After the 250 is earned: vacation replies, reject DSNs, duplicate ids remembered; each failure logged, never the message's."""
        sieve = self.router.sieve
        assert sieve is not None
        for account, outcome in filtered.outcomes.items():
            sieve.remember_duplicates(account, outcome).addErrback(lambda f: _log.failure("sieve.duplicate_memory", f))
            if outcome.reject is not None:
                self.router.reject_by_dsn(self, account, outcome.reject, outcome.ereject, filtered.view)
            if outcome.vacation is not None:
                self.router.vacation(self, account, outcome.vacation, filtered.view, filtered.envelopes[account])

    def _deliveredRecipients(self) -> list[str]:
        """
        The RCPT addresses that reached a local mailbox and asked for a
        "delivered" DSN: for a client that may relay (our own users, trusted
        networks), or on the MX for a sender whose SPF passed; never for
        other mail the MX takes, whose sender may be forged (a DSN would be
        backscatter), and never for a DSN's own sender <>.
        """
        if not self.sender or not (self.relay_allowed or self.sender_verified):
            return []
        return [address for address in self.reached_locally if self.dsn.request_for(address).wants(dsn.DELIVERED)]

    def _headers(self, message: IMessageWriter) -> Deferred[bytes]:
        """The message's header block, for a DSN: from memory, or read from its spool file off the reactor."""
        held = messagefile.held_bytes(message)
        if held is not None:
            return succeed(dsn.header_block(held))
        from twisted.internet.threads import deferToThread

        path = message.path  # type: ignore[attr-defined]  # a spooled writer has one (messagefile.wire_bytes)
        run = self.router.queue.run if self.router.queue is not None else deferToThread
        read: Deferred[bytes] = run(dsn.read_headers, path)
        return read

    def _queueEntries(self) -> list[tuple[str, str, list[str], str | None]]:
        """
        (entry id, envelope sender, recipients, forwarding domain) per relay
        queue entry: the remote recipients the client named go out from its
        sender (forwarding domain None); each forwarded target from the SRS
        address of the alias that forwards to it, in a copy of the alias's
        domain (sealed by it: one entry per distinct rewritten sender and
        domain, ids C{queue_id} + F, F1, …).
        """
        forwarding = self.router.forwarding
        direct = [r for r in self.remote if r not in self.forwarded or forwarding is None]
        entries: list[tuple[str, str, list[str], str | None]] = [(self.queue_id, self.sender, direct, None)] if direct else []
        by_sender: dict[tuple[str, str], list[str]] = {}
        if forwarding is not None:
            for target in self.remote:
                if target in self.forwarded:
                    alias = self.forwarded[target]
                    key = (forwarding.sender_for(self.sender, alias), alias.rpartition("@")[2].lower())
                    by_sender.setdefault(key, []).append(target)
        for number, ((sender, domain), targets) in enumerate(by_sender.items()):
            entries.append((f"{self.queue_id}F{number or ''}", sender, targets, domain))
        return entries

    def abort(self) -> Deferred[None] | None:
        if self.message is not None:
            message, self.message = self.message, None
            return message.discard()
        return None


class Router:
    """
    Local versus remote, and the policy that goes with it; see the module docstring.

    With C{quotas} (a L{mailapp.quota.Quotas}), a message is refused for
    its local mailboxes' quotas only when I{every} one of them lacks room:
    SMTP has one reply after the data for all recipients, so a message for
    one full mailbox and one with room goes to both (the full one ends
    over its quota by this message, and refuses the next at RCPT), rather
    than be refused for all, silently lost for one, or bounced from the MX
    to a sender who may be forged.
    """

    def __init__(
        self,
        accounts: IAccounts,
        store: IMessageStore,
        max_recipients: int = 100,
        queue: Queue | None = None,
        quotas: Quotas | None = None,
        forwarding: Forwarding | None = None,
        signer: IMessageSigner | None = None,
    ) -> None:
        self.accounts = accounts
        self.store = store
        self.max_recipients = max_recipients
        self.queue = queue
        self.quotas = quotas
        #: A L{mailapp.forwarding.Forwarding} (SRS, the rate per alias), or None: forwarded mail keeps its sender.
        self.forwarding = forwarding
        #: Signs the remote copies of mail from one of ours (DKIM), or None: sent unsigned.
        self.signer = signer
        #: The name DSNs come from (Reporting-MTA, MAILER-DAEMON@); the service sets the server's hostname.
        self.hostname = "localhost"
        #: Runs users' Sieve scripts at local delivery (L{mailapp.sieve.filter.SieveFilter}), or None: no filtering.
        self.sieve: SieveFilter | None = None

    @inlineCallbacks
    def redirect(self, original: Transaction, account: str, target: str, data: bytes) -> Any:
        """
        Sieve's redirect (RFC 5228 4.2) of C{original} by C{account}: a new
        transaction to C{target} (through the relay, or local), committed
        before the original's 250. Its envelope sender is the original's,
        rewritten by SRS where forwarding does that (so SPF still passes);
        C{data} carries our loop mark (L{mailapp.sieve.filter.redirect_copy}).
        """
        sender = original.sender
        if sender and self.forwarding is not None:
            sender = self.forwarding.sender_for(sender, account)
        transaction = self.start(sender, relay_allowed=True)
        transaction.sign = False
        queue_id = yield _send_one(transaction, target, data)
        return queue_id

    def reject_by_dsn(self, transaction: Transaction, account: str, reason: str, ereject: bool, view: Any) -> None:
        """
        A Sieve reject that could not be said in protocol (other recipients
        took the message): RFC 5429 2.1.2 asks for a DSN (or MDN) to the
        sender. Sent only where a DSN cannot be backscatter (our own
        users, trusted networks, an SPF-verified sender), never to <>.
        """
        fields = dict(queue_id=transaction.queue_id, account=account, sender=transaction.sender)
        if not transaction.sender or not (transaction.relay_allowed or transaction.sender_verified):
            _log.info("sieve rejected {queue_id} for {account}: no DSN to <{sender}> (not verified)", log_event=logevents.SIEVE_REJECTED, dsn_id="", **fields)
            return
        import time

        now = time.time()
        address = transaction.rcpt_for.get(account.lower(), account)
        data = dsn.build_dsn(
            reporting_mta=self.hostname,
            queue_id=transaction.queue_id,
            sender=transaction.sender,
            arrival=now,
            now=now,
            action=dsn.FAILED,
            recipients=[dsn.RecipientStatus(address, "5.7.1", "550 5.7.1 " + SieveRejected(reason).text)],
            original_headers=dsn.header_block(view.raw),
            envid=transaction.dsn.envid,
        )

        def sent(dsn_id: str) -> None:
            _log.info("sieve rejected {queue_id} for {account}: DSN {dsn_id} to <{sender}>", log_event=logevents.SIEVE_REJECTED, dsn_id=dsn_id, **fields)

        def failed(reason: Failure) -> None:
            _log.warn("sieve reject DSN for {queue_id} to <{sender}> not sent: {error}", log_event=logevents.SIEVE_REJECTED, dsn_id="", error=reason.getErrorMessage(), **fields)

        self.send_notification(transaction.sender, data).addCallbacks(sent, failed)

    def vacation(self, transaction: Transaction, account: str, vacation: Any, view: Any, envelope: Any) -> Deferred[None]:
        """A Sieve vacation reply (RFC 5230), from <> through the relay like a DSN (so DKIM-signed), when its rules allow one."""
        sieve = self.sieve
        assert sieve is not None
        fields = dict(queue_id=transaction.queue_id, account=account, sender=transaction.sender)

        def decided(answer: tuple[bytes | None, str]) -> Any:
            data, why = answer
            if data is None:
                _log.info("sieve vacation for {account} not sent to <{sender}>: {reason}", log_event=logevents.SIEVE_VACATION_SKIPPED, reason=why, **fields)
                return None
            return self.send_notification(transaction.sender, data).addCallback(
                lambda reply_id: _log.info(
                    "sieve vacation reply {reply_id} from {account} to <{sender}>", log_event=logevents.SIEVE_VACATION_SENT, reply_id=reply_id, **fields
                )
            )

        def failed(reason: Failure) -> None:
            _log.warn("sieve vacation from {account} to <{sender}> failed: {error}", log_event=logevents.SIEVE_VACATION_FAILED, error=reason.getErrorMessage(), **fields)

        done: Deferred[None] = sieve.vacation_reply(account, vacation, view, envelope, self.hostname).addCallback(decided).addErrback(failed)
        return done

    @inlineCallbacks
    def send_notification(self, recipient: str, data: bytes, requiretls: bool = False) -> Any:
        """
        Send C{data} (a whole DSN, CRLF) from the null sender <> to
        C{recipient}, as any other message goes: fires with its queue id, or
        fails with the L{MailError} that refused it.
        """
        transaction = self.start("", relay_allowed=True)
        # RFC 8689 5: a DSN about a REQUIRETLS message carries its headers, so it requires TLS too.
        transaction.requiretls = requiretls
        queue_id = yield _send_one(transaction, recipient, data)
        return queue_id

    def notify_delivered(self, transaction: Transaction, recipients: list[str], headers: bytes) -> Deferred[None]:
        """
        The "delivered" DSN (RFC 3461 5.2.2) for C{recipients} of
        C{transaction}, whose local copies are durable; its failure is
        logged, never the transaction's.
        """
        import time

        statuses = [
            dsn.RecipientStatus(
                address, "2.0.0", "250 2.0.0 delivered to the mailbox", original=transaction.dsn.request_for(address).original_recipient()
            )
            for address in recipients
        ]
        now = time.time()
        data = dsn.build_dsn(
            reporting_mta=self.hostname,
            queue_id=transaction.queue_id,
            sender=transaction.sender,
            arrival=now,
            now=now,
            action=dsn.DELIVERED,
            recipients=statuses,
            original_headers=headers,
            envid=transaction.dsn.envid,
        )
        sent: Deferred[None] = self.send_notification(transaction.sender, data, transaction.requiretls)

        def done(dsn_id: str) -> None:
            _log.info(
                "delivered DSN {dsn_id} for {queue_id} sent to <{sender}> ({count} recipients)",
                log_event=logevents.DSN_DELIVERED_SENT,
                dsn_id=dsn_id,
                queue_id=transaction.queue_id,
                sender=transaction.sender,
                count=len(recipients),
            )

        def failed(reason: Failure) -> None:
            _log.warn(
                "delivered DSN for {queue_id} to <{sender}> not sent: {error}",
                log_event=logevents.DSN_DELIVERED_FAILED,
                queue_id=transaction.queue_id,
                sender=transaction.sender,
                error=reason.getErrorMessage(),
            )

        return sent.addCallbacks(done, failed)

    def start(self, sender: str, relay_allowed: bool, authenticated: str | None = None, declared_size: int = 0) -> Transaction:
        return Transaction(self, sender, relay_allowed, authenticated, declared_size, sign=relay_allowed)

    @inlineCallbacks
    def overQuota(self, accounts: Iterable[str], size: int, known: dict[str, Quota] | None = None) -> Any:
        """
        Fire with the refusal when no mailbox of C{accounts} has room for
        C{size} more bytes (a permanent one only when every refusal is
        permanent), else with C{None}. C{known}: the transaction's quotas
        read so far (L{Transaction.quotas_read}).
        """
        if self.quotas is None:
            return None
        refusals = []
        for account in accounts:
            refused = yield self.quotas.check(account, size, known=known)
            if refused is None:
                return None
            refusals.append(refused)
        temporary = [refused for refused in refusals if refused.temporary]
        return (temporary or refusals)[0] if refusals else None


def _actions(outcome: Any) -> str:
    """What a script did, for the log: folders, redirects, reject, vacation."""
    parts = [f"fileinto {p.folder}" + (f" flags {' '.join(sorted(p.flags))}" if p.flags else "") for p in outcome.placements]
    parts += [f"redirect {target}" for target in outcome.redirects]
    if outcome.reject is not None:
        parts.append("reject")
    if outcome.vacation is not None:
        parts.append("vacation")
    return ", ".join(parts) or "discard"


def _merged(placements: list[FolderPlacement]) -> list[FolderPlacement]:
    """One copy per account and folder (a fileinto that fell back to the default folder meets the keep there); flags add up."""
    merged: dict[tuple[str, str], FolderPlacement] = {}
    for placement in placements:
        key = (placement.account.lower(), placement.folder)
        if key in merged:
            placement = FolderPlacement(placement.account, merged[key].folder, merged[key].flags | placement.flags)
        merged[key] = placement
    return list(merged.values())


@inlineCallbacks
def _send_one(transaction: Transaction, recipient: str, data: bytes) -> Any:
    """C{data} to C{recipient} through C{transaction} (a message the server writes itself): its queue id, or its refusal, aborted."""
    try:
        yield transaction.addRecipient(recipient)
        message = transaction.open()
        message.write(data)
        queue_id = yield transaction.commit()
    except BaseException:
        transaction.abort()
        raise
    return queue_id
