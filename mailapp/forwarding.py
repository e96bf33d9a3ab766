"""
Forwarding: what the Router does when an alias sends mail on to another
domain, and when a bounce comes back for such mail.

- **SRS.** A forwarded copy leaves with an SRS envelope sender in the
  alias's own domain (L{mailapp.srs}): SPF at the target checks our
  address, not the original sender's, and a forged sender is not passed
  on as if we vouched for it. A bounce to ``SRS0=…@`` one of our domains is
  taken only when the hash is ours and at most 21 days old (else
  ``550 5.1.1``), and goes on to the original sender.
- **A rate per alias.** Each alias may forward C{burst} messages at once
  and C{per_hour} an hour after that (a token bucket); past it, RCPT gets
  ``451 4.7.1`` and the sending server tries later. Two servers whose
  aliases forward to each other loop until the hop limit (``554 5.4.6``,
  50 ``Received:`` fields) stops the message; the rate makes such a loop,
  or a flood through one alias, slow instead of fast.
- **ARC.** With a C{sealer} (L{mailapp.authentication.sealing}), the
  forwarded copy carries an ARC set sealed with the alias's domain's DKIM
  key, so that the target can still credit the original sender's SPF and
  DKIM (and DMARC passes there) after SRS and our relaying; with no key for
  the domain, it goes unsealed.

Backscatter: a bounce for forwarded mail goes to the SRS address, so it
comes back here, and on to the original sender only through an address we
made. mailapp checks no SPF or DMARC on arrival, so it cannot tell a forged
original sender from a real one after the fact; what it refuses on arrival
it refuses at SMTP time (the sending server bounces, not us). The bounce is
therefore forwarded, not dropped, as RFC 5321 6.3 asks for a message
refused for too many hops: one DSN, to the sender, through the SRS chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred, succeed

from mailapp.srs import SRS, InvalidSRS, is_srs

if TYPE_CHECKING:
    from mailapp.authentication.sealing import ForwardSealer

__all__ = ["MAX_UNWIND", "Forwarding", "ForwardingRate"]

#: How many of our own SRS hops one bounce address may unwind (SRS1 -> SRS0 -> the sender).
MAX_UNWIND = 3


@dataclass
class ForwardingRate:
    """
    A token bucket per alias: C{burst} at once, refilled at C{per_hour}.
    With worker processes each forward taken here is told to the others
    (C{tell}, through L{mailapp.abuse.AbuseGuard}'s facts) and theirs
    L{learn}t here, so the rate holds for the whole server.
    """

    clock: Any
    burst: int = 30
    per_hour: int = 300
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Called with the alias of each forward taken; None in a single process.
    tell: Callable[[str], None] | None = None

    def admit(self, alias: str) -> bool:
        """Take one forward for C{alias} if it has one left; C{False} when it must wait."""
        now = self.clock.seconds()
        tokens, then = self._buckets.get(alias, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.per_hour / 3600.0)
        if tokens < 1.0:
            self._buckets[alias] = (tokens, now)
            return False
        self._take(alias, tokens, now)
        if self.tell is not None:
            self.tell(alias)
        return True

    def learn(self, alias: str) -> None:
        """Another process forwarded through C{alias}: its token is gone here too (none left is none)."""
        now = self.clock.seconds()
        tokens, then = self._buckets.get(alias, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.per_hour / 3600.0)
        self._take(alias, max(tokens, 1.0), now)

    def _take(self, alias: str, tokens: float, now: float) -> None:
        self._buckets[alias] = (tokens - 1.0, now)
        if len(self._buckets) > 10_000:
            self._forgetFull(now)

    def _forgetFull(self, now: float) -> None:
        """Drop buckets that have refilled, so the table stays as small as the aliases in use."""
        for alias, (tokens, then) in list(self._buckets.items()):
            if tokens + (now - then) * self.per_hour / 3600.0 >= self.burst:
                del self._buckets[alias]


@dataclass
class Forwarding:
    """SRS, the forwarding rate and ARC sealing, for the Router; see the module docstring."""

    srs: SRS
    clock: Any
    rate: ForwardingRate
    #: Seals forwarded copies (ARC), or None: they leave as they came.
    sealer: ForwardSealer | None = None

    def copy_for(self, message: Any, alias_domain: str, queue_id: str) -> Deferred[Any]:
        """What the relay queue takes for C{message} forwarded by C{alias_domain}: a sealed copy, or C{message}."""
        if self.sealer is None:
            return succeed(message)
        return self.sealer.copy_for(message, alias_domain, queue_id)

    def sender_for(self, sender: str, alias: str) -> str:
        """The envelope sender for mail from C{sender} that alias C{alias} forwards."""
        return self.srs.forward(sender, alias.rpartition("@")[2], self.clock.seconds())

    def reverse(self, address: str) -> str | None:
        """
        Where a bounce to C{address} (an SRS address in a local domain)
        goes, one hop back: the original sender, or the first forwarder's
        SRS0 address; C{None} if it is not valid (not ours, tampered with,
        too old).
        """
        try:
            return self.srs.reverse(address, self.clock.seconds())
        except InvalidSRS:
            return None

    @staticmethod
    def claims_srs(address: str) -> bool:
        return is_srs(address.rpartition("@")[0])
