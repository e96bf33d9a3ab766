"""
The webmail's HTTP layer under the routes: its requests, connections and
site.

A request keeps no body past the listener's limit (L{WebRequest}), every
response, the error page included, carries the same security headers
(L{security_headers}), and each connection is admitted, counted and bounded
in time like every other protocol's session (L{WebmailConnections},
L{WebmailChannel}), so that the routes above deal only with pages.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import IRequest

from mailapp import logevents
from mailapp.sessions import Overrun, SessionFactory, SessionLimits
from mailapp.web import pages

__all__ = ["WebRequest", "WebmailChannel", "WebmailConnections", "WebmailSite", "security_headers"]

log = Logger()


class WebRequest(server.Request):
    """
    A request whose body stops being kept past the site's limit: the handler
    sees C{body_too_big} and answers 413 instead of parsing it. Forms are
    parsed by the webmail itself (multipart on a worker thread).
    """

    body_too_big = False
    _received = 0
    #: Always a webmail connection: the site's L{WebmailSite.protocol}.
    channel: WebmailChannel
    #: The body's file, made by gotLength before any chunk arrives.
    content: BinaryIO

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length is not None and length > self.channel.site.max_body:
            self.body_too_big = True

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.channel.site.max_body:
            self.body_too_big = True
        if not self.body_too_big:
            self.content.write(data)

    def processingFailed(self, reason: Failure) -> None:
        """
        An unexpected error: log it once, and answer 500 with a page of our
        own under the same security headers as every other page (Twisted's
        default "Processing Failed" page had none of them).
        """
        log.failure(
            "webmail request failed: {method} {path}",
            reason,
            log_event=logevents.WEBMAIL_REQUEST_FAILED,
            method=self.method.decode("ascii", "replace"),
            path=self.path.decode("utf-8", "replace")[:200],
        )
        body = _SERVER_ERROR_PAGE
        if self.finished or self._disconnected:
            return None
        self.setResponseCode(500)
        security_headers(self, pages.PAGE_POLICY, frame=False, secure=self.channel.site.secure)
        self.setHeader(b"content-type", b"text/html; charset=utf-8")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()
        return None


_SERVER_ERROR_PAGE = (
    b"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Server error</title></head>"
    b"<body><h1>Something went wrong</h1><p>The server could not answer this request; the error is logged.</p>"
    b"<p><a href=\"/\">Back to your mail</a></p></body></html>"
)


def security_headers(request: IRequest, policy: str, frame: bool, secure: bool) -> None:
    """The headers every webmail response carries: CSP, no sniffing, no framing, no caching."""
    request.setHeader(b"content-security-policy", policy.encode())
    request.setHeader(b"x-content-type-options", b"nosniff")
    # same-origin, not no-referrer: with no-referrer a browser sends ``Origin: null`` on
    # our own form posts, and the origin check could not tell them from a forged one.
    request.setHeader(b"referrer-policy", b"no-referrer" if frame else b"same-origin")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-frame-options", b"SAMEORIGIN" if frame else b"DENY")
    request.setHeader(b"cross-origin-opener-policy", b"same-origin")
    request.setHeader(b"cross-origin-resource-policy", b"same-origin")
    if secure:
        request.setHeader(b"strict-transport-security", b"max-age=31536000")


_REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 60\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
_TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"


class WebmailConnections(SessionFactory):
    """
    The webmail listener's connections, counted like every other listener's
    (its own C{max_connections}, the server's ceiling, the limit per client
    address, the refusal log): 1,500 trickling connections from one address
    were once all accepted. The service shares the server's counts with it
    as with the other factories (L{WebmailSite.connections}).
    """

    def __init__(self, policy: SessionLimits, reactor: Any) -> None:
        super().__init__(policy=policy, reactor=reactor)


class WebmailChannel(http.HTTPChannel):
    """
    One webmail connection: admitted by the listener's L{WebmailConnections}
    (or answered 503 and closed), and bounded like the other protocols'
    sessions (L{mailapp.sessions.SessionDeadlines}): a request's headers
    must all come within C{line_seconds} of its first byte, and its body at
    the minimum data rate after the grace. HTTPChannel's own C{timeOut}
    restarts at every byte, so alone it let a client trickle headers for ever.
    """

    #: Set by the site that built this connection (twisted.web's Site.buildProtocol).
    site: WebmailSite
    #: A connected stream; never None once connectionMade has run.
    transport: ITransport

    _refused = False
    #: "idle" (between requests), "headers", "body", or "handling" (answering; later bytes are pipelined).
    _phase = "idle"

    def __init__(self) -> None:
        super().__init__()
        self._peerIP = ""
        self.deadlines: Any = None

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self._peerIP = getattr(peer, "host", "") or str(peer)
        connections: WebmailConnections = self.site.connections
        refusal = connections.admit(self._peerIP)
        if refusal is not None:
            self._refused = True
            self.transport.write(_REFUSED % (len(refusal), refusal))
            connections.close(self)
            return
        self.deadlines = connections.deadlinesFor(self)
        super().connectionMade()
        connections.connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._phase == "idle" and data:
            self._phase = "headers"
            self.deadlines.lineStarted()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        self.deadlines.lineEnded()
        if self.length != 0:
            self._phase = "body"
            self.deadlines.dataStarted()

    def rawDataReceived(self, data: bytes) -> None:
        if self._phase == "body":
            self.deadlines.dataReceived(len(data))
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self.deadlines.dataEnded()
        self._phase = "handling"
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        # Before the parent replays pipelined bytes, which start the next request's clock.
        self._phase = "idle"
        super().requestDone(request)

    def deadlineExpired(self, overrun: Overrun) -> None:
        """Headers or a body too slow: 408 (unless a response has begun) and close."""
        if self._phase in ("headers", "body") and not self._handlingRequest:
            self.transport.write(_TOO_SLOW % (len(overrun.value), overrun.value))
        self.site.connections.close(self)

    def shutdown(self) -> None:
        """The server is stopping: close the connection unless a response is being written."""
        if not self._handlingRequest:
            self.site.connections.close(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._refused:
            self.site.connections.disconnected(self)
            return
        super().connectionLost(reason)
        self.site.connections.disconnected(self)


class WebmailSite(server.Site):
    """
    The webmail listener's site: L{WebRequest}s over L{WebmailChannel}s, no
    tracebacks on error pages, and the connection count it shares with the
    service.
    """

    # twisted.web types Site.protocol as its own generic channel's factory.
    protocol = WebmailChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, max_body: int, secure: bool = False, connections: WebmailConnections | None = None, reactor: Any = None) -> None:
        super().__init__(resource, requestFactory=WebRequest, parsePOSTFormSubmission=False, reactor=reactor)
        self.max_body = max_body
        #: Under TLS: error pages carry Strict-Transport-Security like the others.
        self.secure = secure
        self.displayTracebacks = False
        self.timeOut = 120
        #: Counts and admits the connections (the service shares its counts with the other listeners).
        self.connections = connections if connections is not None else WebmailConnections(SessionLimits(), self.reactor)

    def stopFactory(self) -> None:
        self.connections.stopFactory()
        super().stopFactory()
