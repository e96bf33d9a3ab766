"""
What a protocol builder is given: the shared parts of the server.

L{mailapp.service.makeService} builds the shared parts once (store,
accounts, Router, abuse guard, quotas, pools, relay) and hands them to each
listener's builder as one L{ServiceContext}; a builder turns that and its
L{ListenerConfig} into a protocol factory. A protocol module names these
types from here, never from L{mailapp.service}, which imports every
protocol.

Every field is typed with the interface or class of its part and every part
a server always has is required, so that a builder reads C{context.guard}
rather than guessing with C{getattr} (tests build a complete context of
fakes with L{mailapp.testing.service_context}).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IProtocolFactory, IReactorCore, IReactorFromThreads, IReactorTime
from twisted.logger import LogPublisher

from mailapp import tls
from mailapp.config import Config, ListenerConfig
from mailapp.inflight import InFlight
from mailapp.interfaces import IAccounts, IMessageStore

if TYPE_CHECKING:
    # Named in annotations only: this module must stay importable from the
    # parts it describes (a protocol, the relay) without a cycle.
    from mailapp.abuse import AbuseGuard
    from mailapp.delivery import Router
    from mailapp.dnsthread import ServiceDNS
    from mailapp.pools import WorkerPools
    from mailapp.pop3.maildrop import MaildropLocks
    from mailapp.quota import Quotas
    from mailapp.postscreen.greylist import Greylist
    from mailapp.relay.manager import RelayManager
    from mailapp.spam.scanner import ContentScanner

__all__ = ["IServiceReactor", "ProtocolBuilder", "ServiceContext"]


class IServiceReactor(IReactorCore, IReactorTime, IReactorFromThreads):
    """
    The reactor as the server's parts use it: timers (C{callLater},
    C{seconds}), start and stop (C{callWhenRunning}, system event triggers),
    and C{callFromThread} from the worker pools and the C{SIGHUP} handler.
    The endpoints of the listeners need its network interfaces besides
    (C{IReactorTCP}, C{IReactorUNIX}), which L{serverFromString} checks.

    For annotations: Twisted's reactors provide each of these interfaces,
    not this union of them by name.
    """


@dataclass(frozen=True)
class ServiceContext:
    """
    What a protocol builder may use to build its factory: the shared parts
    that :func:`mailapp.service.makeService` made once for every listener.

    ``tls`` is the server context factory (``None`` when no listener needs
    TLS), for ``transport.startTLS`` on STARTTLS listeners; implicit-TLS
    listeners are wrapped by the service, so their builders need not care.
    """

    config: Config
    reactor: IServiceReactor
    store: IMessageStore
    accounts: IAccounts
    portal: Portal
    tls: tls.ServerTLS | None
    inflight: InFlight
    #: The one Router every protocol that accepts mail hands it to.
    router: Router
    #: The one L{mailapp.abuse.AbuseGuard}: failed-login delays and bans across every protocol.
    guard: AbuseGuard
    #: The one L{mailapp.quota.Quotas}: the Router and IMAP ask it whether a message fits.
    quotas: Quotas
    #: Where sessions publish per-command timings (see L{mailapp.metrics}); not the log.
    telemetry: LogPublisher
    #: The server's L{mailapp.pools.WorkerPools}: one bounded thread pool per kind of blocking work.
    pools: WorkerPools
    #: The one L{mailapp.pop3.maildrop.MaildropLocks}: the accounts with a POP3
    #: session past login, shared by every POP3 listener (110 and 995) and by
    #: no other server, so that a second login anywhere gets C{[IN-USE]}.
    maildrops: MaildropLocks
    #: DNS for blocking libraries (L{mailapp.dnsthread.ServiceDNS}: C{dns.dnsfunc()}
    #: is dkimpy's DNS function over the server's resolver). None only in a
    #: context of fakes without DNS, whose MX then checks no sender authentication.
    dns: ServiceDNS | None
    #: The MX's greylist (``[greylisting]``, L{mailapp.postscreen.greylist}); the
    #: service always builds one (it opens no file until used), so that a reload
    #: can turn greylisting on. None only in a context of fakes: nothing is greylisted.
    greylist: Greylist | None
    #: The content scanner (rspamd) the SMTP listeners carry, always built by the
    #: service (each listener's policy says whether it scans). None only in a
    #: context of fakes: nothing is scanned.
    scanner: ContentScanner | None
    #: The relay manager (its queue), or None: a server built without a relay.
    relay: RelayManager | None = None


#: Makes the protocol factory for one listener (registered with
#: L{mailapp.service.register_protocol}, which keeps the registry: only the
#: composition root knows every protocol).
ProtocolBuilder = Callable[[ServiceContext, ListenerConfig], IProtocolFactory]
