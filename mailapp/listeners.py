"""
The listening side of the server: one L{ListenerService} per configured
listener, what it says when it binds, and why it could not.

A listener's factory comes from its protocol's builder (L{mailapp.context});
L{listen} adds what every listener shares whatever its protocol: the
server-wide connection counts and refusal log, implicit TLS around the
factory, and the endpoint. A failure to bind goes to the root service,
which refuses to run half-started.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from mailapp import logevents
from mailapp.config import ListenerConfig
from mailapp.context import ProtocolBuilder, ServiceContext
from mailapp.sessions import ConnectionCounts, RefusalLog, SessionFactory

__all__ = ["ListenerService", "describe_listen_failure", "format_address", "listen"]

log = Logger()


class ListenerService(StreamServerEndpointService):
    """
    A :class:`StreamServerEndpointService` that says where it listens (the
    real address, which matters with port 0), and hands a failure to listen to
    ``on_failure`` instead of only logging it, so that the server can refuse
    to run half-started.
    """

    def __init__(
        self,
        listener: ListenerConfig,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        on_failure: Callable[[ListenerConfig, Failure], None],
        accepting: bool = True,
    ) -> None:
        super().__init__(endpoint, factory)  # type: ignore[no-untyped-call]  # Twisted's services are untyped
        self.listener = listener
        #: False in the supervising parent of worker processes: it binds the
        #: socket (before privileges drop) and hands it over, but never
        #: accepts on it itself (L{mailapp.workers}).
        self.accepting = accepting
        self.setName(f"listener:{listener.name}")  # type: ignore[no-untyped-call]
        self._on_failure = on_failure
        #: The address actually bound, once listening.
        self.address: IAddress | None = None

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self._waitingForPort = self.endpoint.listen(self.factory)
        self._waitingForPort.addCallbacks(self._listening, self._failed)

    def whenListening(self) -> Deferred[IListeningPort | None]:
        """
        Fire with the listening port once bound (``None`` if listening
        failed). Call after start. The service's own Deferred is left
        untouched: it must keep the port for ``stopService``.
        """
        if self._waitingForPort is None:
            raise RuntimeError(f"{self.name} has not started")
        result: Deferred[IListeningPort | None] = Deferred()

        def relay(port: IListeningPort | None) -> IListeningPort | None:
            result.callback(port)
            return port

        self._waitingForPort.addCallback(relay)
        return result

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.address = port.getHost()
        if not self.accepting:
            # Bound and listening, so the kernel queues connections, but off
            # the reactor: the workers holding the same socket accept them.
            # Fired synchronously by listen(), before any accept could run.
            port.stopReading()  # type: ignore[attr-defined]  # every stream port is a FileDescriptor
            # And when it stops, close our descriptor only: a shutdown(2)
            # would close the socket the workers still accept on.
            port._shouldShutdown = False  # type: ignore[attr-defined]  # Twisted's own flag for shared sockets
        log.info(
            "listener {listener} ({protocol}, tls={tls}) listening on {address}",
            log_event=logevents.LISTENING,
            listener=self.listener.name,
            protocol=self.listener.protocol,
            tls=self.listener.tls,
            address=format_address(self.address),
        )
        return port

    def _failed(self, reason: Failure) -> None:
        if reason.check(defer.CancelledError):
            return None
        where, why = describe_listen_failure(self.listener, reason)
        log.error(
            "cannot listen on {address}: {reason} (listener {listener})",
            log_event=logevents.LISTEN_FAILED,
            listener=self.listener.name,
            endpoint=self.listener.endpoint,
            address=where,
            reason=why,
        )
        self._on_failure(self.listener, reason)
        return None


def listen(
    context: ServiceContext,
    listener: ListenerConfig,
    builder: ProtocolBuilder,
    counts: ConnectionCounts,
    refusals: RefusalLog,
    on_failure: Callable[[ListenerConfig, Failure], None],
    endpoint: IStreamServerEndpoint | None = None,
    accepting: bool = True,
) -> ListenerService:
    """
    The service of one listener: its protocol's factory from C{builder},
    counted in the server's C{counts} and C{refusals}, wrapped in TLS for
    C{tls = "implicit"}, on the listener's endpoint (or C{endpoint}: a
    worker process's adopted socket). Nothing listens until the service
    starts; with C{accepting} false it binds but never accepts.
    """
    factory = builder(context, listener)
    # Our "listener ... listening on" line says it all; Twisted's own
    # "Starting factory <... at 0x...>" and "Stopping factory" would
    # repeat it for every listener.
    factory.noisy = False  # type: ignore[attr-defined]
    # The webmail's twisted.web Site keeps its SessionFactory beside it.
    sessions = factory if isinstance(factory, SessionFactory) else getattr(factory, "connections", None)
    if isinstance(sessions, SessionFactory):
        sessions.protocol_name, sessions.listener_name = listener.protocol, listener.name
        sessions.telemetry = context.telemetry
        # One count for the whole server: limits.max_connections (the
        # ceiling) and max_connections_per_ip hold across every listener;
        # each listener's own budget is counted by its factory.
        sessions.counts = counts
        # One log of refused connections: one line per client a minute, whichever listener.
        sessions.refusals = refusals
    if listener.tls == "implicit":
        if context.tls is None:  # never: config.needs_tls made the service load a certificate
            raise ValueError(f"listener {listener.name} has implicit TLS, and the server no certificate")
        factory = TLSMemoryBIOFactory(context.tls, False, factory)
    if endpoint is None:
        endpoint = serverFromString(context.reactor, listener.endpoint)
    return ListenerService(listener, endpoint, factory, on_failure, accepting)


_LISTEN_ERRNO_TEXT = {
    errno.EADDRINUSE: "address in use (another server, or another mailapp, already listens there)",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address",
}


def describe_listen_failure(listener: ListenerConfig, reason: Failure) -> tuple[str, str]:
    """
    ``("127.0.0.1:10143", "address in use ...")``: where a listener could not
    bind and why, as an operator would write and read it, rather than
    Twisted's ``Couldn't listen on ...: [Errno 98]`` text.
    """
    error = reason.value
    if isinstance(error, CannotListenError):
        host = error.interface or ("*" if isinstance(error.port, int) else "")
        where = f"[{host}]:{error.port}" if ":" in host else (f"{host}:{error.port}" if host else str(error.port))
        cause = error.socketError
        number = getattr(cause, "errno", None)
        if number in _LISTEN_ERRNO_TEXT:
            return where, _LISTEN_ERRNO_TEXT[number]
        text = getattr(cause, "strerror", None) or str(cause)
        return where, text[:1].lower() + text[1:]
    return listener.endpoint, reason.getErrorMessage()


def format_address(address: IAddress | None) -> str:
    """``127.0.0.1:10025``, ``[::1]:10025`` or a socket path: how an operator writes it."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    if name is not None:
        return str(name)
    return str(address)
