"""
The relay manager: takes entries from the durable queue and carries them to
the next hop of each recipient's domain, with retries, bounces and delay
warnings.

One *round* of an entry (its lifecycle, logged with ``relay.*`` events)::

    queued --due--> claimed (fence+1, attempts+1)
        -> per domain: resolving -> connecting -> sending
        -> per recipient: delivered (2xx) | failed (5xx, NXDOMAIN, null MX) | pending (4xx, no answer)
    -> round end: DSN for new failures; removed when nothing is pending,
       else expired (max_lifetime: failed, DSN) or deferred to the next retry time

Work for one domain is a *work item*: the entry's recipients in that domain,
sent in one transaction. Workers (at most C{max_connections} in all and
C{max_connections_per_domain} per domain) resolve the domain, connect to the
first next hop that answers, and run every work item waiting for that domain
on the one connection, and keep it open a moment for the next
(C{connection_cache_time}) before saying QUIT (L{mailapp.relay.workers}, a
mixin of the manager). DSNs go out through the Router (L{mailapp.relay.notify}).
The defaults are the config's (C{[relay]}, L{mailapp.config.DEFAULT_RELAY}).

One destination address (IP and port) gets at most
C{max_connections_per_address} connections, whichever domains they are for:
many domains can share one MX, and a slow one (a tarpit) would otherwise
hold every connection there is while mail to everybody else waits. A hop at
its share is skipped like one that does not answer; when every hop of a
domain is at its share, the domain's work waits, with no attempt counted,
until a connection to one of them ends. The smarthost is exempt: it is the
only destination there is.

Restart safety: a recipient the remote took with 250 is recorded durably
(the envelope saved with the recipient delivered, or the entry removed when
nothing is left to do: atomic rename or unlink, then fsync) before anything
else happens: before the outcome is logged, before any DSN, and before the
worker starts the next transaction on that connection. A restart never sends
to a recipient so recorded. What remains is the window SMTP itself leaves
(RFC 1047): between the remote's 250 after DATA and our fsync of it, at most
one transaction per connection; a process that dies there sends that
message again at the next start.

Everything that waits is injected: C{clock} (C{callLater}/C{seconds}), the
routes (DNS resolver inside) and C{connect} (a hop -> a greeted-able client),
so that days of retries run in milliseconds under L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import logevents
from mailapp.config import DEFAULT_RELAY, default_per_address
from mailapp import dsn as bounce
from mailapp.relay import control
from mailapp.relay.client import Reply
from mailapp.relay.notify import notify_sender
from mailapp.relay.queue import DELIVERED, FAILED, PENDING, Envelope, Queue, Recipient
from mailapp.relay.routing import Hop, Routes
from mailapp.relay.tlspolicy import TLSPolicies
from mailapp.relay.tlsrpt import TLSReports
from mailapp.relay.workers import Work, Workers, tcp_connector

__all__ = ["RelayManager", "RetryPolicy", "tcp_connector"]

_log = Logger()

#: How long a stopping manager lets transactions in flight finish before aborting them.
STOP_GRACE = 5.0


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again and when to give up; see ``[relay]`` in the config."""

    schedule: tuple[int, ...] = DEFAULT_RELAY.retry_schedule
    max_lifetime: float = DEFAULT_RELAY.max_lifetime
    delay_warning: float = DEFAULT_RELAY.delay_warning

    def delay(self, attempts: int) -> int:
        """Seconds to wait after the C{attempts}-th attempt (1-based); the last interval repeats."""
        return self.schedule[min(max(attempts, 1), len(self.schedule)) - 1]


@dataclass
class _Entry:
    envelope: Envelope
    inflight: int = 0
    timer: Any = None
    finishing: bool = False


class RelayManager(Workers, Service):
    """See the module docstring. A child of the root service, named ``relay``."""

    name = "relay"

    def __init__(
        self,
        queue: Queue,
        routes: Routes,
        connect: Callable[[Hop], Deferred[Any]],
        *,
        hostname: str,
        clock: Any,
        router: Any = None,
        policy: RetryPolicy = RetryPolicy(),
        tls_policies: TLSPolicies | None = None,
        tls_reports: TLSReports | None = None,
        require_tls: frozenset[str] = frozenset(),
        smarthost_auth: tuple[str, str] | None = None,
        smarthost_require_tls: bool = True,
        max_connections: int = DEFAULT_RELAY.max_connections,
        max_connections_per_domain: int = DEFAULT_RELAY.max_connections_per_domain,
        max_connections_per_address: int | None = None,
        connection_cache_time: float = DEFAULT_RELAY.connection_cache_time,
        connection_reuse_time: float = DEFAULT_RELAY.connection_reuse_time,
        poll_interval: float = control.POLL_INTERVAL,
    ) -> None:
        self.queue = queue
        self.routes = routes
        self.connect = connect
        self.hostname = hostname
        self.clock = clock
        #: The delivery Router that DSNs go through (set by the composition root).
        self.router = router
        self.policy = policy
        #: The TLS policies (opportunistic, publishing nothing looked up, when not given) and the TLS-RPT recorder.
        self.tls_policies = tls_policies if tls_policies is not None else TLSPolicies()
        self.tls_reports = tls_reports
        self.require_tls = require_tls
        self.smarthost_auth = smarthost_auth
        self.smarthost_require_tls = smarthost_require_tls
        self.max_connections = max_connections
        self.max_connections_per_domain = max_connections_per_domain
        self.max_connections_per_address = (
            max_connections_per_address if max_connections_per_address is not None else default_per_address(max_connections)
        )
        self.connection_cache_time = connection_cache_time
        self.connection_reuse_time = connection_reuse_time
        self.poll_interval = poll_interval
        self.entries: dict[str, _Entry] = {}
        self._initWorkers()
        self._lock_fd: int | None = None
        self._lock_timer: Any = None
        self._loaded = False
        self._stopping = False
        self._poller: LoopingCall | None = None
        self._polling = False
        self._warned_locked = False
        self.whenLoaded: Deferred[None] = Deferred()
        queue.subscribe(self._published)

    # -- lifecycle ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # twisted.application.service is untyped
        self._stopping = False
        if self.tls_reports is not None:
            self.tls_reports.start(self.hostname)
        self._takeLock()

    def _takeLock(self) -> None:
        self._lock_timer = None
        if not self.running:
            return
        try:
            fd = control.try_lock(self.queue.layout)
        except OSError as error:
            fd = None
            _log.error("cannot open the queue lock: {error}", error=error, log_event=logevents.RELAY_QUEUE_LOCKED)
        if fd is None:
            if not self._warned_locked:
                self._warned_locked = True
                _log.warn(
                    "the queue in {path} is locked by another process; relaying waits for it",
                    log_event=logevents.RELAY_QUEUE_LOCKED,
                    path=str(self.queue.layout.root),
                )
            self._lock_timer = self.clock.callLater(0.5, self._takeLock)
            return
        self._lock_fd = fd
        self.queue.load().addCallbacks(self._loadedEntries, self._loadFailed)

    def _loadFailed(self, reason: Failure) -> None:
        _log.failure("could not read the queue", reason, log_event=logevents.RELAY_CORRUPT_ENTRY)
        self._loadedEntries([])

    def _loadedEntries(self, envelopes: list[Envelope]) -> None:
        for envelope in envelopes:
            if envelope.id not in self.entries:
                self.entries[envelope.id] = _Entry(envelope)
        self._loaded = True
        _log.info(
            "relay queue loaded: {count} messages waiting",
            log_event=logevents.RELAY_QUEUE_LOADED,
            count=len(self.entries),
        )
        for entry in list(self.entries.values()):
            envelope = entry.envelope
            if not envelope.pending() or any(r.state == FAILED and not r.notified for r in envelope.recipients):
                self._finishRound(entry)
            else:
                self._schedule(entry)
        self._poller = LoopingCall(self._pollControl)
        self._poller.clock = self.clock
        self._poller.start(self.poll_interval, now=True).addErrback(
            lambda reason: _log.failure("control polling stopped", reason)
        )
        if not self.whenLoaded.called:
            self.whenLoaded.callback(None)

    def stopService(self) -> Deferred[None]:
        """Take no new work; let transactions in flight end (bounded), then release the lock."""
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        self.closeIdleConnections()
        if self.tls_reports is not None:
            self.tls_reports.stop()
        if self._lock_timer is not None and self._lock_timer.active():
            self._lock_timer.cancel()
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        for entry in self.entries.values():
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
            entry.timer = None
        for queue in self._ready.values():
            queue.clear()
        done: Deferred[None] = Deferred()
        active = list(self._active)

        timer = self.clock.callLater(STOP_GRACE, self._abortConnections)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()
            if self._lock_fd is not None:
                control.release(self._lock_fd)
                self._lock_fd = None
            done.callback(None)

        defer.DeferredList(active, consumeErrors=True).addBoth(finished)
        return done

    # -- entries in, rounds out -----------------------------------------------------------

    def _published(self, envelope: Envelope) -> None:
        """A new entry is durable: try it now."""
        if envelope.id in self.entries:
            return
        entry = _Entry(envelope)
        self.entries[envelope.id] = entry
        if self._loaded and not self._stopping:
            self._claim(entry)

    def _schedule(self, entry: _Entry) -> None:
        if self._stopping or not self._loaded:
            return
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        delay = max(0.0, entry.envelope.next_attempt - self.clock.seconds())
        entry.timer = self.clock.callLater(delay, self._due, entry.envelope.id)

    def _due(self, entry_id: str) -> None:
        entry = self.entries.get(entry_id)
        if entry is None:
            return
        entry.timer = None
        self._claim(entry)

    def _claim(self, entry: _Entry) -> None:
        """Start a round: one work item per domain with pending recipients."""
        if entry.inflight or entry.finishing or self._stopping:
            return
        envelope = entry.envelope
        pending = envelope.pending()
        if not pending:
            self._finishRound(entry)
            return
        envelope.fence += 1
        envelope.attempts += 1
        by_domain: dict[str, Work] = {}
        for recipient in pending:
            work = by_domain.setdefault(recipient.domain, Work(envelope.id, envelope.fence, recipient.domain))
            work.recipients.append(recipient.address)
        entry.inflight = len(by_domain)
        for domain, work in by_domain.items():
            self._ready.setdefault(domain, deque()).append(work)
        for domain in by_domain:
            self._dispatch(domain)

    def _current(self, work: Work) -> bool:
        entry = self.entries.get(work.entry_id)
        return entry is not None and entry.envelope.fence == work.fence

    def _record(self, work: Work, results: dict[str, Reply], remote: str) -> Deferred[None]:
        """
        Take in a work item's outcome; save it, or end the round when it was
        the last. Fires once every 250 in C{results} is durable (at once when
        there is none): the envelope saved, or the entry removed when that
        was all that was left to do. Logging, DSNs and the rest of the round
        come after.
        """
        if not self._current(work):
            return defer.succeed(None)
        entry = self.entries[work.entry_id]
        envelope = entry.envelope
        outcomes: list[tuple[str, str, str]] = []
        for recipient in envelope.recipients:
            reply = results.get(recipient.address)
            if reply is None or recipient.state != PENDING:
                continue
            recipient.attempts += 1
            recipient.last_reply = str(reply)
            recipient.remote = remote
            if 200 <= reply.code < 300:
                recipient.state = DELIVERED
                # RFC 3461 5.2.2: a peer without DSN ends the notifications; NOTIFY=SUCCESS then gets "relayed".
                recipient.relayed_owed = not work.peer_dsn and recipient.request.wants(bounce.RELAYED)
                event, text = logevents.RELAY_DELIVERED, "delivered"
            elif reply.permanent:
                recipient.state = FAILED
                recipient.notified = False
                event, text = logevents.RELAY_BOUNCED, "bounced"
            else:
                event, text = logevents.RELAY_DEFERRED, "deferred"
            outcomes.append((recipient.address, event, text))
        entry.inflight -= 1
        last = entry.inflight <= 0
        if last:
            entry.inflight = 0
        delivered = any(event == logevents.RELAY_DELIVERED for _, event, _ in outcomes)
        removed = delivered and last and self._onlyRemovalLeft(envelope)
        if removed:
            recorded = self._removeEntry(entry)
        elif delivered:
            recorded = self._save(envelope)
        else:
            recorded = defer.succeed(None)

        def carry_on(_: None) -> None:
            for address, event, text in outcomes:
                recipient = next(r for r in envelope.recipients if r.address == address)
                _log.info(
                    "relay " + text + " {queue_id} to=<{recipient}> via {remote}: {reply}",
                    log_event=event,
                    queue_id=envelope.id,
                    recipient=address,
                    remote=remote or "-",
                    reply=recipient.last_reply,
                )
            if removed:
                return
            if last:
                self._finishRound(entry)
            elif not delivered:
                self._save(envelope)

        return recorded.addCallback(carry_on)

    @staticmethod
    def _onlyRemovalLeft(envelope: Envelope) -> bool:
        """Whether ending the round would only remove the entry: nothing pending, no DSN owed."""
        return not envelope.pending() and not any(
            (r.state == FAILED and not r.notified) or r.relayed_owed for r in envelope.recipients
        )

    def _removeEntry(self, entry: _Entry) -> Deferred[None]:
        """Forget a finished entry and remove its files (durably); never fails."""
        envelope = entry.envelope
        if self.entries.get(envelope.id) is entry:
            del self.entries[envelope.id]

        def failed(reason: Failure) -> None:
            _log.failure(
                "could not remove queue entry {queue_id}",
                reason,
                queue_id=envelope.id,
                log_event=logevents.RELAY_QUEUE_WRITE_FAILED,
            )

        return self.queue.remove(envelope.id).addErrback(failed)

    def _save(self, envelope: Envelope) -> Deferred[None]:
        def failed(reason: Failure) -> None:
            _log.failure(
                "could not save queue entry {queue_id}",
                reason,
                log_event=logevents.RELAY_QUEUE_WRITE_FAILED,
                queue_id=envelope.id,
            )

        return self.queue.save(envelope).addErrback(failed)

    @defer.inlineCallbacks
    def _finishRound(self, entry: _Entry) -> Any:
        """DSNs for new failures and expiry, then remove the entry or schedule its next round."""
        if entry.finishing:
            return None
        entry.finishing = True
        envelope = entry.envelope
        try:
            now = self.clock.seconds()
            pending = envelope.pending()
            if pending and now - envelope.created >= self.policy.max_lifetime:
                for recipient in pending:
                    recipient.state = FAILED
                    recipient.notified = False
                    _log.info(
                        "relay expired {queue_id} to=<{recipient}> after {attempts} attempts: {reply}",
                        log_event=logevents.RELAY_EXPIRED,
                        queue_id=envelope.id,
                        recipient=recipient.address,
                        attempts=envelope.attempts,
                        reply=recipient.last_reply,
                    )
                pending = []
            unnotified = [r for r in envelope.recipients if r.state == FAILED and not r.notified]
            for recipient in unnotified:
                if not recipient.request.wants(bounce.FAILED):
                    recipient.notified = True  # NOTIFY=NEVER, or a list without FAILURE (RFC 3461 4.1)
            failures_told = yield self._notifyOwed(envelope, [r for r in unnotified if not r.notified], bounce.FAILED)
            relayed_told = yield self._notifyOwed(envelope, [r for r in envelope.recipients if r.relayed_owed], bounce.RELAYED)
            dsn_failed = not (failures_told and relayed_told)
            if not pending and not dsn_failed:
                yield self._removeEntry(entry)
                return None
            if (
                pending
                and self.policy.delay_warning
                and not envelope.warned
                and now - envelope.created >= self.policy.delay_warning
            ):
                warned = [r for r in pending if r.request.wants(bounce.DELAYED)]
                sent = (yield self._notify(envelope, warned, bounce.DELAYED)) if warned else True
                if sent:
                    envelope.warned = True
            delay = self.policy.delay(envelope.attempts)
            envelope.next_attempt = min(now + delay, envelope.created + self.policy.max_lifetime)
            if self.entries.get(envelope.id) is not entry:
                return None  # deleted by the admin meanwhile
            yield self._save(envelope)
            self._schedule(entry)
            return None
        finally:
            entry.finishing = False

    @defer.inlineCallbacks
    def _notifyOwed(self, envelope: Envelope, recipients: list[Recipient], action: str) -> Any:
        """
        The DSN owed to C{recipients} (a failure, or a "relayed" notice),
        marked as told once sent; fires with C{False} when it must be tried
        again at the next round.
        """
        if not recipients:
            return True
        sent = yield self._notify(envelope, recipients, action)
        if sent:
            for recipient in recipients:
                if action == bounce.RELAYED:
                    recipient.relayed_owed = False
                else:
                    recipient.notified = True
        return bool(sent)

    def _notify(self, envelope: Envelope, recipients: list[Recipient], action: str) -> Deferred[bool]:
        """A DSN to the envelope's sender (L{notify_sender}): fires with C{False} to try again later."""
        return notify_sender(
            self.router,
            self.queue,
            envelope,
            recipients,
            action,
            hostname=self.hostname,
            clock=self.clock,
            max_lifetime=self.policy.max_lifetime,
        )

    # -- admin requests ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def _pollControl(self) -> Any:
        if self._polling:
            return None
        self._polling = True
        try:
            requests = yield self.queue.run(control.read_requests, self.queue.layout)
            for name, request in requests:
                result = self.apply(request["verb"], request.get("id"))
                yield self.queue.run(control.write_result, self.queue.layout, name, result)
        except Exception:
            _log.failure("handling queue requests")
        finally:
            self._polling = False
        return None

    def apply(self, verb: str, entry_id: str | None) -> dict[str, Any]:
        """Carry out an admin request on the running queue; the answer for the command."""
        now = self.clock.seconds()
        if entry_id is None:
            if verb != "retry":
                return {"ok": False, "error": f"{verb} needs a queue id"}
            targets = list(self.entries.values())
        else:
            found = self.entries.get(entry_id)
            if found is None:
                return {"ok": False, "error": f"no queue entry {entry_id}"}
            targets = [found]
        done = []
        for entry in targets:
            envelope = entry.envelope
            _log.info(
                "queue {verb} {queue_id} by the administrator",
                log_event=logevents.RELAY_ADMIN,
                verb=verb,
                queue_id=envelope.id,
            )
            if verb == "delete":
                self.entries.pop(envelope.id, None)
                if entry.timer is not None and entry.timer.active():
                    entry.timer.cancel()
                self.queue.remove(envelope.id).addErrback(
                    lambda reason: _log.failure("could not delete a queue entry", reason)
                )
            elif verb == "retry":
                if not entry.inflight and not entry.finishing:
                    control.apply_to_envelope(envelope, "retry", now)
                    self._schedule(entry)
            elif verb == "bounce":
                if entry.timer is not None and entry.timer.active():
                    entry.timer.cancel()
                control.apply_to_envelope(envelope, "bounce", now)
                entry.inflight = 0
                self._finishRound(entry)
            done.append(envelope.id)
        return {"ok": True, "verb": verb, "ids": done}
