"""
The relay's connection scheduling: work items wait per destination domain,
and workers carry them within the connection budgets (in total, per domain,
per destination address), each on one connection to the first next hop that
answers, one transaction per work item, then QUIT.

A worker whose domain has nothing more waiting keeps its connection open for
C{connection_cache_time} seconds (Postfix's connection cache "on demand",
C{smtp_connection_cache_time_limit}, 2 s by default) and takes the next work
item for that domain on it, so that mail trickling out to one destination
does not pay a TCP connect, EHLO and STARTTLS per message. An idle
connection gives way at once to whoever needs its place: another domain
waiting for a connection slot or for that destination address, and a stop.
A connection older than C{connection_reuse_time} carries no new transaction
(Postfix's C{smtp_connection_reuse_time_limit}), so that a steady stream
never runs into the session's own time limit in the middle of a message.

L{Workers} is a mixin of L{mailapp.relay.manager.RelayManager}, which owns
the entries and their rounds: a worker asks it whether a work item is still
current (L{Workers._current}) and hands it each outcome (L{Workers._record}).
See the manager's module docstring for the budgets and restart safety.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import logevents
from mailapp.dsn import RecipientRequest, read_headers
from mailapp.relay import downgrade
from mailapp.relay.client import BytesSource, FileSource, Reply, SessionError, SMTPClient, local_reply
from mailapp.relay.queue import Queue
from mailapp.relay.routing import Hop, RouteError, Routes
from mailapp.relay.signing import SignedSource, signature_for
from mailapp.relay.tlspolicy import NONE, OPPORTUNISTIC, DomainPolicy, HopCheck, TLSPolicies
from mailapp.relay.tlsrpt import TLSReports

__all__ = ["Work", "Workers", "tcp_connector"]

#: The relay's log lines keep the one namespace they have always had.
_log = Logger(namespace="mailapp.relay.manager")


@dataclass
class Work:
    """One entry's recipients in one domain, sent in one transaction; C{fence} is the entry's round."""

    entry_id: str
    fence: int
    domain: str
    recipients: list[str] = field(default_factory=list)
    #: After sending: whether the peer offered DSN (RFC 3461), which then owns the notifications.
    peer_dsn: bool = True


def tcp_connector(reactor: Any, hostname: str, command_timeout: float, session_timeout: float, connect_timeout: float) -> Callable[[Hop], Deferred[SMTPClient]]:
    """The production C{connect}: a TCP connection to the hop's address, speaking L{SMTPClient}."""

    def connect(hop: Hop) -> Deferred[SMTPClient]:
        kind = TCP6ClientEndpoint if ":" in hop.address else TCP4ClientEndpoint
        endpoint = kind(reactor, hop.address, hop.port, timeout=connect_timeout)
        client = SMTPClient(reactor, command_timeout=command_timeout, session_timeout=session_timeout)
        connecting: Deferred[SMTPClient] = connectProtocol(endpoint, client)
        return connecting

    return connect


@dataclass
class _Idle:
    """A worker waiting on its open connection for more work for its domain."""

    domain: str
    #: The destination address it holds (None for the smarthost, which holds none).
    address: tuple[str, int] | None
    #: Fires True when work for the domain is ready, False when the worker should say QUIT.
    wake: Deferred[bool]
    timer: Any = None

    def end(self, more: bool) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if not self.wake.called:
            self.wake.callback(more)


class Workers:
    """The workers and their connection budgets; see the module docstring."""

    # Set by the manager (and changed by a reload).
    queue: Queue
    routes: Routes
    connect: Callable[[Hop], Deferred[Any]]
    hostname: str
    tls_policies: TLSPolicies
    tls_reports: TLSReports | None
    require_tls: frozenset[str]
    smarthost_auth: tuple[str, str] | None
    smarthost_require_tls: bool
    max_connections: int
    max_connections_per_domain: int
    max_connections_per_address: int
    entries: dict[str, Any]
    #: The Router: its C{signer} signs our mail as it leaves (L{mailapp.relay.signing}).
    router: Any
    clock: Any
    #: Seconds an idle connection waits for more work for its domain (0: QUIT at once).
    connection_cache_time: float
    #: Seconds after its start past which a connection takes no new transaction.
    connection_reuse_time: float
    _stopping: bool

    def _initWorkers(self) -> None:
        self._ready: dict[str, deque[Work]] = {}
        self._workers: dict[str, int] = {}
        self._total_workers = 0
        #: Open (or opening) connections per destination address, and the
        #: domains waiting for a share of one of those addresses.
        self._address_connections: dict[tuple[str, int], int] = {}
        self._parked: dict[str, set[tuple[str, int]]] = {}
        self._clients: set[Any] = set()
        self._connecting: set[Deferred[Any]] = set()
        self._active: set[Deferred[Any]] = set()
        #: Workers keeping their connection open for more work, per domain (L{_Idle}).
        self._idle: dict[str, list[_Idle]] = {}

    def _current(self, work: Work) -> bool:
        """Whether C{work} is of its entry's current round (the manager's)."""
        raise NotImplementedError

    def _record(self, work: Work, results: dict[str, Reply], remote: str) -> Deferred[None]:
        """Take in a work item's outcome (the manager's); fires once its 250s are durable."""
        raise NotImplementedError

    def _abortConnections(self) -> None:
        """Cut every connection, open or opening (a stop whose grace ran out)."""
        for connecting in list(self._connecting):
            connecting.cancel()
        for client in list(self._clients):
            client.abort()

    def _dispatch(self, domain: str) -> None:
        ready = self._ready.get(domain)
        idle = self._idle.get(domain)
        while ready and idle:
            # An open connection first: the woken worker leaves C{idle} and
            # takes a work item before this returns.
            idle[-1].end(True)
        if (
            ready
            and not self._stopping
            and self._total_workers >= self.max_connections
            and domain not in self._parked
            and self._workers.get(domain, 0) < self.max_connections_per_domain
        ):
            # Only when the freed place is one this domain may then take.
            self._quitIdle(lambda waiting: waiting.domain != domain)
        while (
            ready
            and not self._stopping
            and domain not in self._parked
            and self._workers.get(domain, 0) < self.max_connections_per_domain
            and self._total_workers < self.max_connections
        ):
            self._workers[domain] = self._workers.get(domain, 0) + 1
            self._total_workers += 1
            d = self._worker(domain)
            self._active.add(d)
            d.addBoth(self._ended, d)

    def closeIdleConnections(self) -> None:
        """Every idle connection says QUIT now (a stop; a reload, whose routes and TLS policies apply to new ones)."""
        self._quitIdle(lambda idle: True, every=True)

    def _quitIdle(self, chosen: Callable[[_Idle], bool], every: bool = False) -> None:
        """Tell an idle worker C{chosen} picks (or every one, C{every}) to say QUIT and free its place."""
        for idle in [idle for waiting in self._idle.values() for idle in waiting]:
            if chosen(idle):
                idle.end(False)
                if not every:
                    return

    def _waitForWork(self, domain: str, hop: Hop, exempt: bool) -> Deferred[bool]:
        """Keep the connection for C{connection_cache_time}: True if work came for C{domain}, False to QUIT."""
        idle = _Idle(domain, None if exempt else (hop.address, hop.port), Deferred())
        waiting = self._idle.setdefault(domain, [])
        waiting.append(idle)
        idle.timer = self.clock.callLater(self.connection_cache_time, idle.end, False)

        def forget(more: bool) -> bool:
            # The one place an idle worker leaves the list, however it was woken.
            waiting.remove(idle)
            if not waiting and self._idle.get(domain) is waiting:
                del self._idle[domain]
            return more

        return idle.wake.addCallback(forget)

    def _neededElsewhere(self, domain: str, hop: Hop | None, exempt: bool) -> bool:
        """
        Whether this worker's place is wanted now that its domain has nothing
        waiting: another domain's work waits for a connection slot, or a
        parked domain for this connection's address. Then it says QUIT
        instead of idling (an idle worker is also told when such work comes).
        """
        if self._total_workers >= self.max_connections and any(
            waiting and other != domain and other not in self._parked for other, waiting in self._ready.items()
        ):
            return True
        if exempt or hop is None:
            return False
        key = (hop.address, hop.port)
        return any(key in keys for keys in self._parked.values())

    def _reusable(self, client: Any, opened: float) -> bool:
        """Whether C{client}, greeted at C{opened}, may carry another transaction: usable, and young enough."""
        return bool(client.usable) and self.clock.seconds() - opened < self.connection_reuse_time

    def _ended(self, _: object, worker: Deferred[Any]) -> None:
        """A worker ended (its failures are logged where they happen)."""
        self._active.discard(worker)

    def _dispatchAll(self) -> None:
        for domain in [d for d, ready in self._ready.items() if ready]:
            self._dispatch(domain)

    def _exempt(self, domain: str) -> bool:
        """Whether a domain's mail goes to the smarthost, which has no other destination to share with."""
        return self.routes.smarthost is not None and domain not in self.routes.transports

    def _takeAddress(self, hop: Hop, exempt: bool) -> bool:
        """Count a connection to C{hop}'s address, unless that address has its share already."""
        if exempt:
            return True
        key = (hop.address, hop.port)
        count = self._address_connections.get(key, 0)
        if count >= self.max_connections_per_address:
            return False
        self._address_connections[key] = count + 1
        return True

    def _releaseAddress(self, hop: Hop, exempt: bool) -> None:
        """A connection to C{hop} ended: let a domain waiting for that address go."""
        if exempt:
            return
        key = (hop.address, hop.port)
        count = self._address_connections.get(key, 0) - 1
        if count > 0:
            self._address_connections[key] = count
        else:
            self._address_connections.pop(key, None)
        waiting = [d for d, keys in self._parked.items() if key in keys]
        for parked in waiting:
            del self._parked[parked]
        for parked in waiting:
            self._dispatch(parked)

    def _park(self, domain: str, work: Work, full: set[tuple[str, int]]) -> None:
        """Every hop of C{domain} is at its share: put C{work} back and wait for one to free up."""
        self._ready.setdefault(domain, deque()).appendleft(work)
        # An idle connection to one of those addresses gives its place up now.
        self._quitIdle(lambda idle: idle.address in full, every=True)
        if all(self._address_connections.get(key, 0) >= self.max_connections_per_address for key in full):
            self._parked[domain] = full
        _log.info(
            "relay waits for a connection to {domain}: every next hop has its share ({addresses})",
            log_event=logevents.RELAY_ATTEMPT,
            domain=domain,
            addresses=", ".join(f"{address}:{port}" for address, port in sorted(full)),
        )

    @defer.inlineCallbacks
    def _worker(self, domain: str) -> Any:
        client = None
        hop: Hop | None = None
        opened = 0.0  # when client was greeted, for its reuse time
        # Decided once, so that a reload changing the smarthost cannot unbalance the counts.
        exempt = self._exempt(domain)
        try:
            ready = self._ready.get(domain)
            if not ready:
                return None
            try:
                hops = yield self.routes.resolve(domain)
            except RouteError as error:
                self._failAll(domain, Reply.parse(error.reply), "")
                return None
            except Exception as error:
                _log.failure("resolving {domain}", Failure(error), domain=domain)
                self._failAll(domain, local_reply(451, "4.4.3 error resolving the destination"), "")
                return None
            while not self._stopping:
                if not ready:
                    if (
                        client is None
                        or self.connection_cache_time <= 0
                        or not self._reusable(client, opened)
                        or self._neededElsewhere(domain, hop, exempt)
                    ):
                        break
                    assert hop is not None
                    more = yield self._waitForWork(domain, hop, exempt)
                    ready = self._ready.get(domain)
                    if not more or not ready:
                        break
                work = ready.popleft()
                if not self._current(work):
                    continue
                if client is None or not self._reusable(client, opened):
                    if client is not None:
                        self._clients.discard(client)
                        if client.usable:
                            yield client.quit()  # past its reuse time: a fresh connection carries this one
                        client = None
                        if self._stopping:
                            break  # the entry is on disk, and sent after the next start
                        if hop is not None:
                            self._releaseAddress(hop, exempt)
                            hop = None
                    client, hop, failure, full = yield self._connect(domain, hops, exempt)
                    opened = self.clock.seconds()
                    if client is None and full:
                        self._park(domain, work, full)
                        return None
                    if client is None:
                        self._record(work, {r: failure for r in work.recipients}, "")
                        self._failAll(domain, failure, "")
                        return None
                if not self._current(work):
                    continue  # deleted or bounced by the administrator while we connected
                results = yield self._send(client, work)
                # The 250s are on disk before the next MAIL FROM on this connection.
                yield self._record(work, results, hop.name if hop else "")
            return None
        finally:
            if client is not None:
                self._clients.discard(client)
                yield client.quit()
            if client is not None and hop is not None:
                self._releaseAddress(hop, exempt)
            self._workers[domain] -= 1
            self._total_workers -= 1
            self._dispatchAll()

    def _failAll(self, domain: str, reply: Reply, remote: str) -> None:
        """The destination cannot be reached now: every waiting work item for it gets C{reply}."""
        ready = self._ready.get(domain)
        while ready:
            work = ready.popleft()
            if self._current(work):
                self._record(work, {r: reply for r in work.recipients}, remote)

    def _tlsFor(self, domain: str) -> tuple[bool, tuple[str, str] | None]:
        """(TLS required?, AUTH credentials) for a domain's next hop."""
        if domain in self.routes.transports:
            return domain in self.require_tls, None
        if self.routes.smarthost is not None:
            return self.smarthost_require_tls or domain in self.require_tls, self.smarthost_auth
        return domain in self.require_tls, None

    @defer.inlineCallbacks
    def _connect(self, domain: str, hops: list[Hop], exempt: bool) -> Any:
        """
        The first hop that connects, greets and passes the domain's TLS
        policy (L{mailapp.relay.tlspolicy}): (client, hop, None, full), or
        (None, None, why not, full); C{full} is the addresses skipped for
        having their share of connections. The hop returned keeps its
        address counted until the worker releases it.
        """
        require_tls, auth = self._tlsFor(domain)
        by_mx = domain not in self.routes.transports and self.routes.smarthost is None
        try:
            policy: DomainPolicy = yield self.tls_policies.for_domain(domain, by_mx)
        except Exception as error:
            # A bug of ours must not strand the work: it waits for the next round.
            _log.failure("TLS policy of {domain}", Failure(error), domain=domain)
            return None, None, local_reply(451, "4.3.0 local error deciding the TLS policy"), set()
        if policy.sts_failure is not None:
            self._report(policy.domain, "sts", (), (), "", "", policy.sts_failure.result_type, policy.sts_failure.reason)
        if policy.refusal is not None:
            self._logAttempt(domain, "-", policy.refusal)
            return None, None, policy.refusal, set()
        failure = local_reply(451, f"4.4.1 no next hop for {domain} answered")
        full: set[tuple[str, int]] = set()
        for hop in hops:
            if self._stopping:
                break
            try:
                check = yield self.tls_policies.for_hop(policy, hop, require_tls)
            except Exception as error:
                _log.failure("TLS policy of {hop}", Failure(error), hop=str(hop))
                check = local_reply(451, "4.3.0 local error deciding the TLS policy")
            if isinstance(check, Reply):
                failure = check
                self._logAttempt(domain, str(hop), failure)
                continue
            if check.refusal is not None:
                failure = check.refusal
                self.tls_policies.log_failure(check, failure)
                self.tls_policies.log_session(check, None, failure)
                self._reportCheck(check)
                self._logAttempt(domain, str(hop), failure)
                continue
            if not self._takeAddress(hop, exempt):
                full.add((hop.address, hop.port))
                continue
            client, failure, tls_failed = yield self._tryHop(domain, hop, check, require_tls, auth, exempt)
            if client is None and tls_failed and check.mode == OPPORTUNISTIC and not require_tls and auth is None:
                # RFC 7435: unauthenticated TLS that fails is no reason to
                # keep the mail; say so, and send it as plain SMTP would.
                _log.info(
                    "TLS with {hop} failed; trying it again without STARTTLS (opportunistic)",
                    log_event=logevents.RELAY_TLS_FAILED,
                    hop=str(hop),
                    domain=domain,
                    mode=OPPORTUNISTIC,
                    outcome="plain text",
                    result_type="validation-failure",
                    reason=str(failure),
                )
                if self._takeAddress(hop, exempt):
                    plain = HopCheck(check.domain, hop, NONE)
                    client, failure, _ = yield self._tryHop(domain, hop, plain, require_tls, auth, exempt)
            if client is not None:
                return client, hop, None, full
        return None, None, failure, full

    @defer.inlineCallbacks
    def _tryHop(
        self, domain: str, hop: Hop, check: HopCheck, require_tls: bool, auth: tuple[str, str] | None, exempt: bool
    ) -> Any:
        """
        Connect to C{hop} (its address already counted) and greet it:
        (client, None, False), or (None, why not, whether its TLS
        handshake failed) with the address released and the attempt logged.
        """
        client = None
        try:
            connecting = self.connect(hop)
            self._connecting.add(connecting)
            try:
                client = yield connecting
            finally:
                self._connecting.discard(connecting)
            self._clients.add(client)
            yield self._greet(client, check, require_tls, auth)
            return client, None, False
        except SessionError as error:
            failure = error.reply
        except Exception as error:
            if client is not None:
                _log.failure("greeting {hop}", Failure(error), hop=str(hop))  # a bug of ours, not the peer's
            failure = local_reply(451, f"4.4.1 cannot connect to {hop}: {type(error).__name__}")
        tls_failed = bool(getattr(client, "tls_failed", False))
        if client is not None:
            self._clients.discard(client)
            client.abort()
        self._releaseAddress(hop, exempt)
        self._logAttempt(domain, str(hop), failure)
        return None, failure, tls_failed

    def _greet(self, client: Any, check: HopCheck, require_tls: bool, auth: tuple[str, str] | None) -> Deferred[None]:
        """EHLO, STARTTLS as the hop's check wants it, the check itself, then AUTH."""
        store = self.tls_policies.store

        def verify(session: Any) -> Reply | None:
            refused = check.check(session, store.store if store is not None else None)
            self.tls_policies.log_failure(check, refused)
            self.tls_policies.log_session(check, session, refused)
            self._reportCheck(check)
            return refused

        client.tls_check = check
        tls = check.tls if check.wants_tls else None
        greeting: Deferred[None] = client.greet(self.hostname, tls=tls, require_tls=require_tls, auth=auth, verify=verify)
        return greeting

    def _reportCheck(self, check: HopCheck) -> None:
        """TLS-RPT: a session (or a refused hop) under a published policy."""
        if check.policy_type == "no-policy-found":
            return
        failure = check.failure
        self._report(
            check.domain,
            check.policy_type,
            check.policy_strings,
            check.mx_patterns,
            check.hop.name,
            check.hop.address,
            failure.result_type if failure is not None else None,
            failure.reason if failure is not None else "",
        )

    def _report(
        self,
        domain: str,
        policy_type: str,
        strings: Any,
        patterns: Any,
        host: str,
        address: str,
        result_type: str | None,
        reason: str,
    ) -> None:
        if self.tls_reports is not None:
            self.tls_reports.record(domain, policy_type, strings, patterns, host, address, result_type, reason)

    def _logAttempt(self, domain: str, hop: str, failure: Reply) -> None:
        _log.info(
            "{log_event} {domain} via {hop}: {reply}",
            log_event=logevents.RELAY_ATTEMPT,
            domain=domain,
            hop=hop,
            reply=str(failure),
        )

    @staticmethod
    def _requireTLS(client: Any) -> Reply | None:
        """
        RFC 8689 5: a REQUIRETLS message goes only to a peer whose TLS passed
        verification (WebPKI or DANE, L{HopCheck.verified}) and which offers
        REQUIRETLS; otherwise it is bounced with 5.7.10. (The hop is the one
        the domain's policy chose; other MX hosts are not tried for it.)
        """
        check = getattr(client, "tls_check", None)
        if check is None or not check.verified:
            return local_reply(550, "5.7.10 REQUIRETLS: the next hop's TLS could not be verified")
        if "REQUIRETLS" not in getattr(client, "extensions", {}):
            return local_reply(550, "5.7.10 REQUIRETLS: the next hop does not offer REQUIRETLS")
        return None

    @defer.inlineCallbacks
    def _withoutSMTPUTF8(self, envelope: Any) -> Any:
        """
        Whether a SMTPUTF8 message can go to a next hop that does not offer
        SMTPUTF8 (RFC 6531 3.7.5, never mangled): as it is when its
        addresses and header block are ASCII after all (None), else the
        permanent refusal its recipients bounce with: 5.6.7 for a non-ASCII
        address, 5.6.9 for UTF-8 header fields.
        """
        if not (envelope.sender + "".join(r.address for r in envelope.recipients)).isascii():
            return local_reply(550, "5.6.7 a non-ASCII address cannot go to the next hop: it does not offer SMTPUTF8")
        try:
            header = yield self.queue.run(read_headers, self.queue.message_path(envelope.id))
        except OSError:
            return local_reply(451, "4.3.0 the queued message cannot be read")
        if not header.isascii():
            return local_reply(550, "5.6.9 UTF-8 header fields cannot go to the next hop: it does not offer SMTPUTF8")
        return None

    @defer.inlineCallbacks
    def _sevenBit(self, envelope: Any) -> Any:
        """
        For a next hop without 8BITMIME (RFC 6152 3): None when the queued
        message is 7-bit already, its quoted-printable conversion
        (L{mailapp.relay.downgrade}), or the permanent refusal (5.6.3) its
        recipients bounce with when it cannot be converted.
        """

        def convert(path: Any) -> bytes | None | Reply:
            with open(path, "rb") as file:
                data = file.read()
            if not downgrade.is_8bit(data):
                return None
            try:
                return downgrade.downgrade(data)
            except downgrade.CannotDowngrade as error:
                return local_reply(550, f"5.6.3 the next hop does not offer 8BITMIME, and this 8-bit message cannot be converted: {error}")

        try:
            result = yield self.queue.run(convert, self.queue.message_path(envelope.id))
        except OSError:
            return local_reply(451, "4.3.0 the queued message cannot be read")
        return result

    @defer.inlineCallbacks
    def _send(self, client: Any, work: Work) -> Any:
        entry = self.entries[work.entry_id]
        envelope = entry.envelope
        if envelope.requiretls:
            refused = self._requireTLS(client)
            if refused is not None:
                return {r: refused for r in work.recipients}
        extensions = getattr(client, "extensions", {})
        if envelope.smtputf8 and "SMTPUTF8" not in extensions:
            refused = yield self._withoutSMTPUTF8(envelope)
            if refused is not None:
                return {r: refused for r in work.recipients}
        source: Any = FileSource(self.queue.message_path(envelope.id), self.queue.run)
        size = envelope.size
        converted: Any = None
        if "8BITMIME" not in extensions and not (envelope.smtputf8 and "SMTPUTF8" in extensions):
            converted = yield self._sevenBit(envelope)
            if isinstance(converted, Reply):
                return {r: converted for r in work.recipients}
            if converted is not None:
                source, size = BytesSource(converted), len(converted)
        if envelope.sign:
            # Signed now, over the bytes that are sent (L{mailapp.relay.signing}).
            try:
                signer = getattr(self.router, "signer", None)
                fields = yield signature_for(signer, converted or self.queue.message_path(envelope.id), envelope.id)
            except Exception:
                source.close()
                return {r: local_reply(451, "4.3.0 the message could not be DKIM-signed now") for r in work.recipients}
            if fields:
                source, size = SignedSource(fields, source), size + len(fields)
        work.peer_dsn = "DSN" in extensions
        options: dict[str, Any] = {}
        if envelope.requiretls:
            options["requiretls"] = True
        mail_parameters = b" SMTPUTF8" if envelope.smtputf8 and "SMTPUTF8" in extensions else b""
        if work.peer_dsn:
            # RFC 3461 4: the parameters go on to a peer that offers DSN, which then answers for them.
            requests = {r.address: r.request for r in envelope.recipients if r.address in work.recipients}
            mail_parameters += _mail_parameters(envelope.ret, envelope.envid)
            options["rcpt_parameters"] = {address: _rcpt_parameters(request) for address, request in requests.items()}
        if mail_parameters:
            options["mail_parameters"] = mail_parameters
        try:
            results = yield client.send(envelope.sender, work.recipients, source, size, **options)
        except SessionError as error:
            results = {r: error.reply for r in work.recipients}
        except Exception as error:
            _log.failure("sending {queue_id}", Failure(error), queue_id=envelope.id)
            results = {r: local_reply(451, "4.3.0 local error while sending") for r in work.recipients}
        finally:
            source.close()
        return results


def _mail_parameters(ret: str, envid: str) -> bytes:
    """RET and ENVID for MAIL FROM, as the client gave them (RFC 3461 4.3, 4.4)."""
    parameters = b""
    if ret:
        parameters += b" RET=" + ret.encode("ascii")
    if envid:
        parameters += b" ENVID=" + envid.encode("ascii")
    return parameters


def _rcpt_parameters(request: RecipientRequest) -> bytes:
    """NOTIFY and ORCPT for RCPT TO (RFC 3461 4.1, 4.2)."""
    parameters = b""
    if request.notify:
        parameters += b" NOTIFY=" + request.notify_text.encode("ascii")
    if request.orcpt:
        parameters += b" ORCPT=" + request.orcpt.encode("ascii")
    return parameters
