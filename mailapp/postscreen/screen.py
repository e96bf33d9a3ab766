"""
What one MX listener keeps for its checks before DATA (L{Postscreen}: the
blocklist lookups' resolver, the addresses that passed the early-talker
checks) and what one session asks of them (L{SessionScreen}). The SMTP
session calls this at connect, HELO/EHLO, MAIL and RCPT, and turns the
answers into replies; the rules live here and in the modules beside it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import logevents
from mailapp.config import DNSBLConfig, PostscreenConfig
from mailapp.errors import MailError
from mailapp.networks import in_networks
from mailapp.pools import WorkerPools
from mailapp.postscreen.blocklists import BlocklistChecker, Refusal, ScreenedClient
from mailapp.postscreen.earlytalk import EARLY_TALKER, UNAUTH_PIPELINING, PassMemory, judged
from mailapp.postscreen.urls import UrlBounds, UrlHosts, url_hosts

__all__ = ["Postscreen", "SessionScreen"]

_log = Logger()


class Postscreen:
    """
    One MX listener's screening state, on its factory (kept across SIGHUP,
    which replaces only the policy that carries the config). C{resolver}
    None: no DNS, so no blocklist is asked. C{pools}: where a message's
    URLs are read (the filtering pool: a sender controls the cost); None
    reads them in the caller's thread (for tests of this class alone).
    """

    def __init__(self, reactor: Any, resolver: Any, pools: WorkerPools | None = None) -> None:
        self.reactor = reactor
        self.pools = pools
        self.blocklists = BlocklistChecker(reactor, resolver) if resolver is not None else None
        self.passes = PassMemory(reactor.seconds)

    def session(self, dnsbl: DNSBLConfig, config: PostscreenConfig, ip: str, trusted: bool) -> SessionScreen:
        """A new session's screen (at connect): its IP lookups start now."""
        return SessionScreen(self, dnsbl, config, ip, trusted)


class SessionScreen:
    """
    One MX session's checks. C{greetingDelay}: seconds to hold the 220 (0:
    greet at once); C{judgePipelining}: whether unasked pipelining is
    refused. The refusal methods log and return the reply text after ``554``.
    """

    def __init__(self, postscreen: Postscreen, dnsbl: DNSBLConfig, config: PostscreenConfig, ip: str, trusted: bool) -> None:
        self._postscreen = postscreen
        self._dnsbl = dnsbl
        self._config = config
        self._ip = ip
        self._judged = judged(config, ip, trusted, postscreen.passes)
        self.greetingDelay: float = config.greeting_delay if self._judged else 0
        self.judgePipelining = config.reject_unauth_pipelining and self._judged
        checker = postscreen.blocklists
        listed = checker is not None and dnsbl.lists and not trusted and not in_networks(ip, dnsbl.exempt_networks)
        self._lists: ScreenedClient | None = checker.client(dnsbl, ip) if checker is not None and listed else None

    # -- the blocklists --------------------------------------------------------------

    def helo(self, name: str) -> None:
        """HELO/EHLO: the domain lists are asked about the name."""
        if self._lists is not None:
            self._lists.helo(name)

    def sender(self, address: str) -> None:
        """MAIL FROM accepted: the domain lists are asked about the sender's domain; the client has passed the early-talker checks."""
        if self._lists is not None:
            self._lists.sender(address)
        if self._judged:
            self._judged = False
            self.judgePipelining = False
            self._postscreen.passes.passed(self._ip, self._config.pass_seconds)

    def settled(self) -> Refusal | None:
        """The refusal the lookups answered so far call for (at MAIL FROM: no waiting)."""
        return self._lists.settled() if self._lists is not None else None

    def verdict(self) -> defer.Deferred[Refusal | None]:
        """At RCPT: once every lookup started has answered (each bounded), the refusal or None."""
        return self._lists.verdict() if self._lists is not None else defer.succeed(None)

    def listed(self, refusal: Refusal, stage: str) -> bytes:
        """Log the refusal of a listed client at C{stage} (``mail``, ``rcpt``) and return its reply."""
        _log.info(
            "client {client} refused at {stage}: listed by {zone} (score {score})",
            log_event=logevents.POSTSCREEN_DNSBL_REFUSED,
            action="reject",
            reason="dnsbl",
            client=self._ip,
            zone=refusal.heaviest.zone,
            score=refusal.score,
            listings=", ".join(f"{listing.zone}={listing.code}" for listing in refusal.listings),
            stage=stage,
        )
        return refusal.reply()

    def checksUrls(self) -> bool:
        """Whether the end of DATA reads the message's URLs for the lists (so the message is held until then)."""
        return self._lists is not None and self._dnsbl.check_urls

    def urls(self, message: bytes) -> defer.Deferred[Refusal | None]:
        """
        At the end of DATA: the refusal the message's URL hosts call for, with
        this transaction's other listings, or None. The URLs are read on the
        filtering pool within C{[dnsbl]}'s bounds; a message that cannot be read
        counts 0 (logged). Never fails.
        """
        lists = self._lists
        if lists is None or not self._dnsbl.check_urls:
            return defer.succeed(None)
        dnsbl = self._dnsbl
        bounds = UrlBounds(dnsbl.url_max_parts, dnsbl.url_max_text_kib * 1024, dnsbl.url_max_domains)
        pools = self._postscreen.pools
        read = pools.run(pools.filtering, url_hosts, message, bounds) if pools is not None else defer.maybeDeferred(url_hosts, message, bounds)

        def unreadable(reason: Failure) -> UrlHosts:
            _log.failure("the URLs of a message from {client} could not be read", reason, log_event=logevents.POSTSCREEN_DNSBL_URL_FAILED, client=self._ip)
            return UrlHosts()

        return read.addErrback(unreadable).addCallback(lists.urls)

    def urlListed(self, refusal: Refusal) -> MailError:
        """Log the refusal of a message for its URLs (at the end of DATA) and return its error (554 5.7.1)."""
        _log.info(
            "message from {client} refused at end of data: {what} listed by {zone} (score {score})",
            log_event=logevents.POSTSCREEN_DNSBL_URL_REFUSED,
            action="reject",
            reason="dnsbl_url",
            client=self._ip,
            what=refusal.heaviest.what,
            zone=refusal.heaviest.zone,
            score=refusal.score,
            listings=", ".join(f"{listing.zone}={listing.code}" for listing in refusal.listings),
        )
        return MailError(refusal.reply().decode("ascii").partition(" ")[2], code=554, enhanced="5.7.1")

    # -- the early talker ------------------------------------------------------------------

    def talkedEarly(self, waited: float) -> bytes:
        """The client talked before the (delayed) greeting: log, and the reply."""
        _log.info(
            "client {client} talked {waited:.1f}s into the greeting delay",
            log_event=logevents.POSTSCREEN_EARLY_TALKER,
            action="reject",
            reason="early_talker",
            client=self._ip,
            waited=waited,
        )
        return EARLY_TALKER

    def pipelined(self, command: str) -> bytes:
        """The client pipelined C{command} before PIPELINING was offered: log, and the reply."""
        _log.info(
            "client {client} pipelined {command} before PIPELINING was offered",
            log_event=logevents.POSTSCREEN_UNAUTH_PIPELINING,
            action="reject",
            reason="unauth_pipelining",
            client=self._ip,
            command=command,
        )
        return UNAUTH_PIPELINING
