"""
rspamd's HTTP protocol, from the reactor without blocking (twisted.web's
C{Agent} over a persistent connection pool; each request bounded by a
timeout, after which it counts as rspamd not answering).

``POST /checkv2`` takes the envelope as request headers (``IP``, ``Helo``,
``From``, one ``Rcpt`` per recipient, ``User``, ``Queue-Id``) and the
message as the body, and answers JSON (``action``, ``score``,
``required_score``, ``subject`` for a rewrite). ``POST /learnspam`` and
``/learnham`` on the controller take the message and the ``Password``
header; 208 means "already learned", which is no failure.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, _HTTP11ClientFactory, readBody
from twisted.web.http_headers import Headers

__all__ = ["RspamdClient", "RspamdError"]


class RspamdError(Exception):
    """rspamd did not answer usably: refused, timed out, an HTTP error, or not JSON."""


class _QuietFactory(_HTTP11ClientFactory):
    """The pool's connection factory without its "Starting factory" log line per connection (rspamd closes each)."""

    noisy = False


class RspamdClient:
    """Requests to rspamd; one connection pool for every scan and learn of the server."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 8
        self._pool._factory = _QuietFactory
        self._agent = Agent(reactor, pool=self._pool, connectTimeout=10)

    def check(self, url: str, headers: Iterable[tuple[str, str]], message: bytes, timeout: float) -> defer.Deferred[dict[str, Any]]:
        """Fire with rspamd's JSON answer to C{/checkv2}, or fail with L{RspamdError}."""
        return self._post(url + "/checkv2", headers, message, timeout).addCallback(_json)

    def learn(self, url: str, password: str | None, spam: bool, message: bytes, timeout: float) -> defer.Deferred[int]:
        """Teach rspamd C{message} as spam or ham; fire with the HTTP code (200, or 208: already learned)."""
        headers = [("Password", password)] if password else []
        d = self._post(url + ("/learnspam" if spam else "/learnham"), headers, message, timeout)
        return d.addCallback(_learned)

    def _post(self, url: str, headers: Iterable[tuple[str, str]], body: bytes, timeout: float) -> defer.Deferred[Any]:
        raw: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            # A header value is one line: an envelope address or HELO never holds CR or LF, but be sure.
            raw.setdefault(name.encode("ascii"), []).append(value.replace("\r", "").replace("\n", "").encode("utf-8"))
        request = self._agent.request(b"POST", url.encode("ascii"), Headers(raw), _Body(body))

        def answered(response: Any) -> defer.Deferred[tuple[int, bytes]]:
            return readBody(response).addCallback(lambda data: (int(response.code), data))

        d = request.addCallback(answered)
        d.addTimeout(timeout, self.reactor)
        return d.addErrback(_failed)

    def close(self) -> defer.Deferred[None]:
        """Close the pool's idle connections (at shutdown, and in tests)."""
        return self._pool.closeCachedConnections()  # type: ignore[no-any-return]


def _Body(body: bytes) -> FileBodyProducer:
    # FileBodyProducer reads on a cooperator, a chunk per turn of the reactor: no thread.
    return FileBodyProducer(io.BytesIO(body))


def _json(answer: tuple[int, bytes]) -> dict[str, Any]:
    code, data = answer
    if code != 200:
        raise RspamdError(f"HTTP {code}")
    try:
        parsed = json.loads(data)
    except ValueError:
        raise RspamdError("the answer is not JSON") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("action"), str):
        raise RspamdError("the answer has no action")
    return parsed


def _learned(answer: tuple[int, bytes]) -> int:
    code, data = answer
    if code not in (200, 208):
        raise RspamdError(f"HTTP {code}: {data[:200].decode('utf-8', 'replace')}")
    return code


def _failed(reason: Any) -> Any:
    if isinstance(reason.value, RspamdError):
        return reason
    raise RspamdError(reason.getErrorMessage() or type(reason.value).__name__)
