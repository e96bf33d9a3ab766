"""
What every protocol's factory does with its sessions: count them (in total
and per client address) so a flood gets a polite refusal instead of our
memory, and close them on shutdown without cutting off work in flight.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import ServerFactory


class SessionFactory(ServerFactory):
    """
    A listener's factory. Subclasses set C{policy} (with C{max_connections}
    and C{max_connections_per_ip}) and build sessions that call L{admit} and
    L{connected} when they start, L{disconnected} when they end, keep their
    client's address in C{_peerIP}, and offer C{shutdown()}, which returns a
    Deferred that fires when the session has closed (or None).
    """

    policy: Any

    def __init__(self, inflight: Any = None) -> None:
        self._inflight = inflight
        self.sessions: set[Any] = set()
        self._perIP: dict[str, int] = {}

    def inflight(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """Count C{d} as work a shutdown waits for (bounded by the service)."""
        return self._inflight.track(d) if self._inflight is not None else d

    def admit(self, ip: str) -> bytes | None:
        """None to let a client in, or why not (for the protocol's refusal)."""
        if len(self.sessions) >= self.policy.max_connections:
            return b"Too many connections; try again later"
        if self._perIP.get(ip, 0) >= self.policy.max_connections_per_ip:
            return b"Too many connections from your address; try again later"
        return None

    def connected(self, session: Any) -> None:
        self.sessions.add(session)
        self._perIP[session._peerIP] = self._perIP.get(session._peerIP, 0) + 1

    def disconnected(self, session: Any) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            count = self._perIP.get(session._peerIP, 1) - 1
            if count:
                self._perIP[session._peerIP] = count
            else:
                self._perIP.pop(session._peerIP, None)

    def stopFactory(self) -> None:
        """
        Tell every session the server is stopping. A goodbye is only buffered
        when this returns: the service's stop waits (bounded) for each
        session to close, so the reactor does not end before it is written.
        """
        for session in list(self.sessions):
            closed = session.shutdown()
            if closed is not None:
                self.inflight(closed)
