"""
MTA-STS (RFC 8461): a domain publishes ``_mta-sts.DOMAIN TXT "v=STSv1;
id=..."`` and a policy at ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``
saying which MX hosts are its own (``mx:`` patterns) and whether senders
must refuse the others and unverified TLS (``mode: enforce``) or only report
(``mode: testing``).

How the relay gets a domain's policy (RFC 8461 3.3 and 5.1), in
L{MTASTS.policy}:

  - the TXT record is looked up through the relay's resolver; its ``id``
    says whether the cached policy is current;
  - a policy is fetched when none is cached, when the cached one has
    expired (``max_age``), or when the id changed: over HTTPS with a
    verified certificate for ``mta-sts.DOMAIN`` (the same trust store as the
    relay's verified TLS), redirects not followed, only a 200, at most
    L{MAX_POLICY_BYTES}, within L{FETCH_TIMEOUT} seconds, the host's address
    looked up through the relay's resolver (never the system's blocking one);
  - a fetch that fails keeps an unexpired cached policy (an attacker who
    blocks the fetch must not be able to turn the policy off); with none,
    the domain has no policy, and the failure is reported (TLS-RPT);
  - no TXT record: an unexpired cached policy still applies (3.2: removing
    the record is not how a policy ends; ``mode: none`` is);
  - the cache is one JSON file per domain in ``state_dir/mta-sts/``, so a
    restart keeps every policy; it is read and written on a worker thread.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.names import error as dns_error
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from mailapp import logevents

__all__ = ["FETCH_TIMEOUT", "MAX_POLICY_BYTES", "MTASTS", "Policy", "PolicyError", "mx_matches", "parse_policy", "parse_txt"]

_log = Logger(namespace="mailapp.relay.manager")

FETCH_TIMEOUT = 60
MAX_POLICY_BYTES = 64 * 1024
MAX_AGE_LIMIT = 31557600
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class PolicyError(Exception):
    """No usable policy: C{result_type} is the RFC 8460 result type (``sts-policy-fetch-error``, ``sts-policy-invalid``, ``sts-webpki-invalid``)."""

    def __init__(self, result_type: str, reason: str) -> None:
        super().__init__(reason)
        self.result_type = result_type
        self.reason = reason


@dataclass(frozen=True)
class Policy:
    """One domain's policy, as fetched: C{fetched} is when (Unix seconds); C{text} the policy as served, for TLS-RPT."""

    domain: str
    id: str
    mode: str
    mx: tuple[str, ...]
    max_age: int
    fetched: float
    text: str = ""

    def expired(self, now: float) -> bool:
        return now >= self.fetched + self.max_age

    def allows(self, host: str) -> bool:
        """Whether C{host} is one of the domain's MX hosts by this policy."""
        return any(mx_matches(pattern, host) for pattern in self.mx)

    @property
    def lines(self) -> tuple[str, ...]:
        """The policy as RFC 8460's ``policy-string``: one item per line."""
        return tuple(line.strip() for line in self.text.splitlines() if line.strip())

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Policy:
        raw = json.loads(data.decode("utf-8"))
        return cls(
            domain=str(raw["domain"]),
            id=str(raw["id"]),
            mode=str(raw["mode"]),
            mx=tuple(str(p) for p in raw["mx"]),
            max_age=int(raw["max_age"]),
            fetched=float(raw["fetched"]),
            text=str(raw.get("text", "")),
        )


def parse_txt(strings: list[bytes]) -> str | None:
    """The ``id`` of an ``_mta-sts`` TXT record (its strings joined), or None if it is not a valid STSv1 record."""
    text = b"".join(strings).decode("utf-8", "replace")
    fields = [item.strip() for item in text.split(";") if item.strip()]
    if not fields or fields[0] != "v=STSv1":
        return None
    for item in fields[1:]:
        key, _, value = item.partition("=")
        if key.strip() == "id" and _ID.match(value.strip()):
            return value.strip()
    return None


def parse_policy(domain: str, policy_id: str, text: str, fetched: float) -> Policy:
    """Parse a policy file (RFC 8461 3.2); L{PolicyError} ``sts-policy-invalid`` if it is not a valid one."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError("sts-policy-invalid", f"bad policy line {line[:80]!r}")
        values.setdefault(key.strip(), []).append(value.strip())
    if values.get("version") != ["STSv1"]:
        raise PolicyError("sts-policy-invalid", "policy version is not STSv1")
    mode = values.get("mode", [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError("sts-policy-invalid", f"bad policy mode {mode!r}")
    age = values.get("max_age", [""])[0]
    if not age.isdigit():
        raise PolicyError("sts-policy-invalid", "policy max_age is missing or not a number")
    mx = tuple(p.lower().rstrip(".") for p in values.get("mx", []) if p)
    if mode != "none" and not mx:
        raise PolicyError("sts-policy-invalid", "policy names no mx")
    return Policy(domain, policy_id, mode, mx, min(int(age), MAX_AGE_LIMIT), fetched, text)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: an exact name, or ``*.`` and one more label at the left."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """The policy host's connection: its address from the relay's resolver, then TLS verified for its name."""

    def __init__(self, reactor: Any, addresses: Callable[[str], Deferred[list[str]]], trust: Any) -> None:
        self._reactor = reactor
        self._addresses = addresses
        self._trust = trust

    def endpointForURI(self, uri: Any) -> Any:
        return _ResolvingEndpoint(self, uri.host.decode("ascii"), uri.port)


class _ResolvingEndpoint:
    def __init__(self, endpoints: _Endpoints, host: str, port: int) -> None:
        self._endpoints = endpoints
        self._host = host
        self._port = port

    @defer.inlineCallbacks
    def connect(self, factory: Any) -> Any:
        from twisted.internet.ssl import optionsForClientTLS

        endpoints = self._endpoints
        addresses = yield endpoints._addresses(self._host)
        if not addresses:
            raise PolicyError("sts-policy-fetch-error", f"{self._host} has no address")
        address = addresses[0]
        kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        tcp = kind(endpoints._reactor, address, self._port, timeout=FETCH_TIMEOUT)
        tls = wrapClientTLS(optionsForClientTLS(self._host, trustRoot=endpoints._trust), tcp)
        protocol = yield tls.connect(factory)
        return protocol


class _Body(Protocol):
    """Collects a response body of at most L{MAX_POLICY_BYTES}; more aborts the connection."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self._done = done
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_POLICY_BYTES:
            if not self._done.called:
                self._done.errback(PolicyError("sts-policy-invalid", f"policy larger than {MAX_POLICY_BYTES} bytes"))
            transport: Any = self.transport
            if transport is not None:
                transport.stopProducing()
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._done.called:
            return
        if reason is None or reason.check(ResponseDone):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(PolicyError("sts-policy-fetch-error", f"policy fetch cut short: {reason.getErrorMessage()}"))


def _tls_problem(failure: Failure) -> bool:
    text = repr(failure.value)
    return "certificate" in text.lower() or "SSL" in text


class MTASTS:
    """
    The relay's view of MTA-STS; see the module docstring.

    @param resolver: a twisted.names resolver (C{lookupText}).
    @param addresses: host name -> its addresses (the relay's resolver).
    @param trust: the TLS trust root for the policy hosts (a Twisted
        C{IOpenSSLTrustRoot}).
    @param directory: the cache directory (``state_dir/mta-sts``).
    @param run: runs a blocking function on a worker thread (a Deferred).
    @param agent: an HTTP agent (tests); by default one over C{addresses} and C{trust}.
    """

    def __init__(
        self,
        reactor: Any,
        resolver: Any,
        addresses: Callable[[str], Deferred[list[str]]],
        trust: Any,
        directory: Path,
        run: Callable[..., Deferred[Any]],
        agent: Any = None,
    ) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._directory = directory
        self._run = run
        self._agent = agent if agent is not None else Agent.usingEndpointFactory(reactor, _Endpoints(reactor, addresses, trust))
        #: Per domain, its cached policy, or None once the disk had none (only this process writes there).
        self._cache: dict[str, Policy | None] = {}

    @defer.inlineCallbacks
    def policy(self, domain: str) -> Any:
        """
        Fire with C{(policy, failure)}: the domain's current L{Policy} (None:
        no policy, or ``mode: none``) and the L{PolicyError} met on the way
        (None if none), which TLS-RPT reports.
        """
        domain = domain.lower().rstrip(".")
        now = self._reactor.seconds()
        cached = yield self._cached(domain)
        try:
            policy_id = yield self._txt(domain)
        except PolicyError as error:
            usable = cached if cached is not None and not cached.expired(now) else None
            return self._active(usable), error
        if policy_id is None:
            usable = cached if cached is not None and not cached.expired(now) else None
            return self._active(usable), None
        if cached is not None and cached.id == policy_id and not cached.expired(now):
            return self._active(cached), None
        try:
            fetched = yield self._fetch(domain, policy_id)
        except PolicyError as error:
            _log.info(
                "MTA-STS policy of {domain} not fetched: {reason}",
                log_event=logevents.RELAY_MTA_STS,
                domain=domain,
                reason=error.reason,
            )
            usable = cached if cached is not None and not cached.expired(now) else None
            return self._active(usable), error
        self._cache[domain] = fetched
        yield self._store(fetched)
        _log.info(
            "MTA-STS policy of {domain}: id {policy_id}, mode {mode}, mx {mx}, max_age {max_age}",
            log_event=logevents.RELAY_MTA_STS,
            domain=domain,
            policy_id=policy_id,
            mode=fetched.mode,
            mx=" ".join(fetched.mx),
            max_age=fetched.max_age,
        )
        return self._active(fetched), None

    @staticmethod
    def _active(policy: Policy | None) -> Policy | None:
        return policy if policy is not None and policy.mode != "none" else None

    @defer.inlineCallbacks
    def _txt(self, domain: str) -> Any:
        try:
            answers, _, _ = yield self._resolver.lookupText(f"_mta-sts.{domain}")
        except dns_error.DNSNameError:
            return None
        except Exception as error:
            raise PolicyError("sts-policy-fetch-error", f"TXT lookup of _mta-sts.{domain} failed: {type(error).__name__}") from error
        ids = [parse_txt(list(a.payload.data)) for a in answers if getattr(a.payload, "data", None) is not None]
        found = [i for i in ids if i is not None]
        # RFC 8461 3.1: more than one STSv1 record is as if there were none.
        return found[0] if len(found) == 1 else None

    @defer.inlineCallbacks
    def _fetch(self, domain: str, policy_id: str) -> Any:
        url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt".encode("ascii")
        request = self._agent.request(b"GET", url)
        timer = self._reactor.callLater(FETCH_TIMEOUT, request.cancel)
        try:
            try:
                response = yield request
            except PolicyError:
                raise
            except Exception as error:
                failure = Failure(error)
                kind = "sts-webpki-invalid" if _tls_problem(failure) else "sts-policy-fetch-error"
                raise PolicyError(kind, f"fetching {url.decode()}: {failure.getErrorMessage()[:200]}") from error
            if response.code != 200:
                raise PolicyError("sts-policy-fetch-error", f"{url.decode()} answered HTTP {response.code}")
            done: Deferred[bytes] = Deferred()
            response.deliverBody(_Body(done))
            body = yield done
        finally:
            if timer.active():
                timer.cancel()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise PolicyError("sts-policy-invalid", "policy is not UTF-8") from error
        return parse_policy(domain, policy_id, text, self._reactor.seconds())

    @defer.inlineCallbacks
    def _cached(self, domain: str) -> Any:
        if domain in self._cache:
            return self._cache[domain]
        path = self._directory / f"{domain}.json"

        def read() -> Policy | None:
            try:
                return Policy.from_json(path.read_bytes())
            except (OSError, ValueError, KeyError, TypeError):
                return None

        policy = yield self._run(read)
        self._cache[domain] = policy
        return policy

    def _store(self, policy: Policy) -> Deferred[None]:
        directory = self._directory

        def write() -> None:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary = directory / f".{policy.domain}.json.tmp"
            temporary.write_bytes(policy.to_json())
            os.replace(temporary, directory / f"{policy.domain}.json")

        def failed(reason: Failure) -> None:
            _log.failure("could not cache the MTA-STS policy of {domain}", reason, domain=policy.domain)

        return self._run(write).addErrback(failed)
