"""
dkimpy's DNS function over the server's asynchronous resolver.

dkimpy looks keys up with a blocking ``dnsfunc(name, timeout=...)``; it
runs on a worker thread, so each lookup is handed to the reactor's
twisted.names resolver (C{blockingCallFromThread}) and waited for, with a
per-query timeout, and the reactor never blocks. This is the small one ARC
sealing needs; the server binds one DNS function for all of DKIM, ARC and
DMARC when the inbound checks land, and this one can then go.
"""

from __future__ import annotations

from typing import Any

import dkim
from twisted.internet import defer
from twisted.internet.threads import blockingCallFromThread
from twisted.names import dns, error as dns_error

__all__ = ["ResolverTXT"]


class ResolverTXT:
    """A dkimpy C{dnsfunc} for a worker thread: TXT lookups through C{resolver} on C{reactor}."""

    def __init__(self, reactor: Any, resolver: Any, query_timeout: float = 5.0) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.query_timeout = query_timeout

    def __call__(self, name: bytes, timeout: float | None = None) -> bytes | None:
        """
        The first TXT record at C{name}, its strings joined (as dkimpy's own
        lookup answers), or None when there is none; a DNS failure or a
        timeout raises C{dkim.DnsTimeoutError}, which dkimpy treats as a
        temporary failure of that signature.
        """
        seconds = max(0.5, min(self.query_timeout, timeout or self.query_timeout))
        text = name.decode("ascii", "replace").rstrip(".")
        try:
            answers: list[Any] = blockingCallFromThread(self.reactor, self._query, text, seconds)
        except (dns_error.DNSNameError, dns_error.AuthoritativeDomainError):
            return None
        except (defer.TimeoutError, dns_error.DomainError) as e:
            raise dkim.DnsTimeoutError(f"TXT {text}: {type(e).__name__}") from e
        for record in answers:
            if record.type == dns.TXT:
                return b"".join(record.payload.data)
        return None

    def _query(self, name: str, seconds: float) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.maybeDeferred(self.resolver.lookupText, name, timeout=(int(max(1, seconds)),))
        d.addTimeout(seconds, self.reactor)
        return d.addCallback(lambda result: result[0])
