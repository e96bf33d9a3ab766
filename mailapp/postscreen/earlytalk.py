"""
The early-talker checks (Postfix postscreen's pregreet and pipelining
tests): spam software is in a hurry. It writes its commands without waiting
for the 220 greeting, or all of them in one packet, where a real MTA waits
for each reply until PIPELINING (RFC 2920) is offered after EHLO.

  - B{Greeting delay} (``[postscreen] greeting_delay``): an unknown client
    waits that many seconds for the 220; one that talks meanwhile is
    refused ``554 5.5.1`` and the connection closed.
  - B{Unauthorised pipelining} (``reject_unauth_pipelining``): a client
    whose command arrives with more bytes behind it before PIPELINING was
    offered (it said HELO, or it did not wait for EHLO's reply) is refused
    the same way.

A client that gets as far as MAIL FROM without either has passed: its
address is remembered (L{PassMemory}) for ``pass_seconds``, and it is
greeted at once and not judged again meanwhile, so that a real MTA pays the
delay once a day, not once a message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from mailapp.config import PostscreenConfig
from mailapp.networks import in_networks

__all__ = ["EARLY_TALKER", "UNAUTH_PIPELINING", "PassMemory", "judged"]

#: The replies (after ``554``), then the session closes.
EARLY_TALKER: Final = b"5.5.1 Protocol error: talked before the greeting"
UNAUTH_PIPELINING: Final = b"5.5.1 Protocol error: commands pipelined before PIPELINING was offered"

#: Addresses remembered at most; past it, the expired go first, then the oldest.
MAX_REMEMBERED: Final = 100_000


class PassMemory:
    """
    The addresses that passed, each until when (the reactor's seconds), on
    the MX listener's factory: kept across SIGHUP (the factory stays; only
    its policy is replaced) and bounded, so a scan of many addresses cannot
    grow it without end.
    """

    def __init__(self, clock: Callable[[], float], limit: int = MAX_REMEMBERED) -> None:
        self._clock = clock
        self._limit = limit
        self._until: dict[str, float] = {}
        #: With worker processes: told of each pass here (C{ip}, C{seconds}),
        #: so that a client greeted at once on one worker is on every other
        #: (L{mailapp.workers.channel}); None in a single process.
        self.share: Callable[[str, float], None] | None = None

    def passed(self, ip: str, seconds: float) -> None:
        """C{ip} passed: remember it for C{seconds}."""
        self.learn(ip, seconds)
        if self.share is not None:
            self.share(ip, seconds)

    def learn(self, ip: str, seconds: float) -> None:
        """C{ip} passed here or in another process: remember it for C{seconds}."""
        self._until.pop(ip, None)
        if len(self._until) >= self._limit:
            self._forget()
        self._until[ip] = self._clock() + seconds

    def known(self, ip: str) -> bool:
        """Whether C{ip} passed less than its time ago."""
        until = self._until.get(ip)
        if until is None:
            return False
        if until <= self._clock():
            del self._until[ip]
            return False
        return True

    def _forget(self) -> None:
        now = self._clock()
        for ip in [ip for ip, until in self._until.items() if until <= now]:
            del self._until[ip]
        while len(self._until) >= self._limit:
            # Insertion order is pass order (a re-pass is re-inserted): the oldest first.
            del self._until[next(iter(self._until))]


def judged(config: PostscreenConfig, ip: str, trusted: bool, memory: PassMemory) -> bool:
    """Whether this client is put through the checks: not trusted, not exempt, not passed lately, and a check is on."""
    if not (config.greeting_delay or config.reject_unauth_pipelining):
        return False
    return not trusted and not in_networks(ip, config.exempt_networks) and not memory.known(ip)
