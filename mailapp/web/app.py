"""
The webmail: Klein routes over the same Portal, store and Router as every
other protocol.

Reading: the store's index answers the list (UIDs, flags, sizes); a page of
rows reads only the header blocks of its messages, and a summary cache keeps
them, so the first page of a large folder opens as many files as it shows.
Message files are read and parsed on worker threads.

Sending goes through the Router exactly like authenticated submission: the
envelope sender is the signed-in account, local recipients are delivered
locally, remote ones go to the relay queue, and the copy handed to the Router
never carries a Bcc header (the copy stored in Sent does).
"""

from __future__ import annotations

import email.policy
import email.utils
import html as html_module
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from email.parser import BytesParser
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import nh3
from klein import Klein
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import IRequest

from mailapp import logevents
from mailapp.abuse import AbuseGuard
from mailapp.config import SecurityConfig
from mailapp.errors import BadFolderName, FolderError, FolderExists, LoginsBusy, MailError, NoSuchFolder, NoSuchMessage
from mailapp.sessions import Overrun, SessionFactory, SessionLimits, session_limits
from mailapp.interfaces import IMailbox
from mailapp.store import INBOX, SPECIAL_FOLDERS
from mailapp.web import messages, pages
from mailapp.web.sanitize import clean_html, frame_policy
from mailapp.web.sessions import (
    COOKIE,
    LOGIN_COOKIE,
    SECURE_COOKIE,
    SECURE_LOGIN_COOKIE,
    Session,
    Sessions,
    new_token,
    same_token,
)

__all__ = ["Webmail", "WebmailPolicy", "WebmailSite", "buildFactory"]

_log = Logger()

TRASH = "Trash"
SENT = "Sent"
DRAFTS = "Drafts"
#: Messages a search reads per round of worker-thread jobs.
_SEARCH_BATCH = 200


@dataclass(frozen=True)
class WebmailPolicy:
    """What one webmail listener allows; times in seconds."""

    hostname: str
    secure: bool = False
    max_message_size: int = 25 * 1024 * 1024
    idle_timeout: float = 30 * 60
    absolute_timeout: float = 12 * 3600
    #: The delay and ban of the Webmail's own guard when none is given (tests, a Webmail used alone).
    login_failure_delay: float = 1.0
    login_failure_limit: int = 5
    login_failure_window: float = 15 * 60
    page_size: int = 50


class WebRequest(server.Request):
    """
    A request whose body stops being kept past the site's limit: the handler
    sees C{body_too_big} and answers 413 instead of parsing it. Forms are
    parsed by the webmail itself (multipart on a worker thread).
    """

    body_too_big = False
    _received = 0

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
        _log.failure(
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
        super().__init__()
        self.policy = policy
        self.reactor = reactor


class WebmailChannel(http.HTTPChannel):
    """
    One webmail connection: admitted by the listener's L{WebmailConnections}
    (or answered 503 and closed), and bounded like the other protocols'
    sessions (L{mailapp.sessions.SessionDeadlines}): a request's headers
    must all come within C{line_seconds} of its first byte, and its body at
    the minimum data rate after the grace. HTTPChannel's own C{timeOut}
    restarts at every byte, so alone it let a client trickle headers for ever.
    """

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

    def connectionLost(self, reason: Failure) -> None:
        if self._refused:
            self.site.connections.disconnected(self)
            return
        super().connectionLost(reason)
        self.site.connections.disconnected(self)


class WebmailSite(server.Site):
    protocol = WebmailChannel

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


class _SummaryCache:
    """List rows by (account, folder, uidvalidity, uid), without flags (they come from the index)."""

    def __init__(self, size: int = 50_000) -> None:
        self._size = size
        self._rows: OrderedDict[tuple[str, str, int, int], messages.Summary] = OrderedDict()

    def get(self, key: tuple[str, str, int, int]) -> messages.Summary | None:
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
        return row

    def put(self, key: tuple[str, str, int, int], row: messages.Summary) -> None:
        self._rows[key] = row
        self._rows.move_to_end(key)
        while len(self._rows) > self._size:
            self._rows.popitem(last=False)


class _Forbidden(Exception):
    """A state-changing request without a valid CSRF token or from another origin."""


def _first(form: dict[str, list[str]], name: str, default: str = "") -> str:
    values = form.get(name)
    return values[0] if values else default


def _arg(request: IRequest, name: str, default: str = "") -> str:
    values = request.args.get(name.encode())
    if not values:
        return default
    return values[0].decode("utf-8", "replace")


def _int_arg(request: IRequest, name: str, default: int = 0) -> int:
    try:
        return int(_arg(request, name, str(default)))
    except ValueError:
        return default


def _safe_back(value: str, default: str) -> str:
    """Only a path on this site: never another origin (``//host``, ``\\``, a scheme)."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value or any(ord(ch) < 32 for ch in value):
        return default
    return value


def _with_notice(location: str, notice: str) -> str:
    parts = urlsplit(location)
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("notice="))
    query = (query + "&" if query else "") + "notice=" + notice
    return parts.path + "?" + query


def _content_disposition(filename: str) -> str:
    ascii_name = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\;%' else "_" for ch in filename) or "attachment"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _parse_multipart(content_type: bytes, content: Any) -> tuple[dict[str, list[str]], list[tuple[str, str, bytes]]]:
    """Worker thread: the fields and uploaded files of a multipart/form-data body."""
    content.seek(0)
    data = content.read()
    message = BytesParser(policy=email.policy.HTTP).parsebytes(b"Content-Type: " + content_type + b"\r\n\r\n" + data)
    fields: dict[str, list[str]] = {}
    files: list[tuple[str, str, bytes]] = []
    if not message.is_multipart():
        return fields, files
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            if name == "attachment" and (filename or payload):
                kind = part.get_content_type()
                files.append((messages.attachment_name(part, len(files) + 1), kind, payload))
            continue
        fields.setdefault(str(name), []).append(payload.decode("utf-8", "replace"))
    return fields, files


def _html_to_text(html: str) -> str:
    return html_module.unescape(nh3.clean(html, tags=set(), clean_content_tags={"script", "style", "head", "title"}))


class Webmail:
    """
    The routes; C{clock} (seconds) drives session times (and the guard's, when
    the Webmail makes its own), C{reactor} the delays. C{guard} is the
    server's L{AbuseGuard}: failed sign-ins are delayed and counted there,
    with those of every other protocol.
    """

    app = Klein()

    def __init__(
        self,
        router: Any,
        portal: Any,
        policy: WebmailPolicy,
        reactor: Any,
        clock: Any = None,
        guard: AbuseGuard | None = None,
        threadpool: Any = None,
    ) -> None:
        self.router = router
        #: Where messages are parsed for display: the server's "parsing" pool, so
        #: a hostile message can slow only other reads, never deliveries or logins.
        self.threadpool = threadpool if threadpool is not None else reactor.getThreadPool()
        self.portal = portal
        self.store = router.store
        self.policy = policy
        self.reactor = reactor
        now = clock if clock is not None else reactor.seconds
        self.sessions = Sessions(now, policy.idle_timeout, policy.absolute_timeout)
        if guard is None:
            window = max(1, int(policy.login_failure_window))
            delay = policy.login_failure_delay
            security = SecurityConfig(
                auth_failure_delay=delay,
                auth_failure_delay_max=delay * 16,
                ban_after_failures=policy.login_failure_limit,
                ban_window=window,
                ban_seconds=window,
            )
            guard = AbuseGuard(now, security)
        self.guard = guard
        self.summaries = _SummaryCache()
        self._stylesheet = resources.files("mailapp.web").joinpath("static/style.css").read_bytes()

    def site(self, limits: SessionLimits | None = None) -> WebmailSite:
        """The listener's site; C{limits}: its connection budget and bounds (the defaults when None)."""
        # Uploads may be a little larger than the message they become (form fields, boundaries).
        connections = WebmailConnections(limits or SessionLimits(), self.reactor)
        return WebmailSite(
            self.app.resource(), self.policy.max_message_size + 1024 * 1024, secure=self.policy.secure, connections=connections, reactor=self.reactor
        )

    def _thread(self, function: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.threadpool, function, *args)

    # -- plumbing ---------------------------------------------------------------------

    @property
    def _cookie(self) -> str:
        return SECURE_COOKIE if self.policy.secure else COOKIE

    @property
    def _login_cookie(self) -> str:
        return SECURE_LOGIN_COOKIE if self.policy.secure else LOGIN_COOKIE

    def _set_cookie(self, request: IRequest, name: str, value: str, expire: bool = False) -> None:
        request.addCookie(
            name.encode(),
            value.encode(),
            path=b"/",
            httpOnly=True,
            secure=self.policy.secure or None,
            sameSite="strict",
            max_age=b"0" if expire else None,
        )

    def _headers(self, request: IRequest, policy: str = pages.PAGE_POLICY, frame: bool = False) -> None:
        security_headers(request, policy, frame, self.policy.secure)

    def _page(self, request: IRequest, body: bytes, status: int = 200) -> bytes:
        request.setResponseCode(status)
        self._headers(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return body

    def _redirect(self, request: IRequest, location: str) -> bytes:
        self._headers(request)
        request.setResponseCode(303)
        request.setHeader(b"location", location.encode("utf-8"))
        return b""

    def _session(self, request: IRequest) -> Session | None:
        token = request.getCookie(self._cookie.encode())
        return self.sessions.get(token.decode("ascii", "replace") if token else None)

    def _signed_out(self, request: IRequest) -> bytes:
        """No live session: GETs go to the sign-in page, anything else is refused."""
        if request.method in (b"GET", b"HEAD"):
            had = request.getCookie(self._cookie.encode()) is not None
            return self._redirect(request, "/login" + ("?notice=expired" if had else ""))
        return self._page(
            request,
            pages.message_page("Signed out", "Your session has ended; nothing was changed. Sign in again.", link=("/login", "Sign in")),
            403,
        )

    def _same_origin(self, request: IRequest) -> bool:
        """A browser's cross-site POST names another origin (Origin) or site (Sec-Fetch-Site)."""
        fetch_site = request.getHeader(b"sec-fetch-site")
        if fetch_site is not None and fetch_site not in (b"same-origin", b"none"):
            return False
        origin = request.getHeader(b"origin")
        if origin is None or origin == b"null":
            return origin is None
        host = request.getHeader(b"host") or b""
        scheme = b"https" if self.policy.secure else b"http"
        return origin == scheme + b"://" + host

    def _check(self, request: IRequest, session: Session, form: dict[str, list[str]]) -> None:
        if not self._same_origin(request) or not same_token(_first(form, "csrf"), session.csrf):
            _log.info(
                "csrf rejected {account} {path}",
                log_event=logevents.WEBMAIL_CSRF_REJECTED,
                account=session.account,
                path=request.path.decode("utf-8", "replace"),
            )
            raise _Forbidden()

    def _forbidden(self, request: IRequest, session: Session | None) -> bytes:
        return self._page(
            request,
            pages.message_page(
                "Request refused",
                "This form was not sent from this webmail page (or it is out of date). Nothing was changed.",
                session.account if session else None,
                session.csrf if session else "",
                ("/", "Back to your mail"),
            ),
            403,
        )

    def _form(self, request: IRequest) -> dict[str, list[str]]:
        """An urlencoded body as text fields."""
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != b"application/x-www-form-urlencoded":
            return {}
        request.content.seek(0)
        # Parsed as text: given bytes, parse_qs re-encodes each percent-decoded
        # value as ASCII and raised on any non-ASCII field (a folder "Entwürfe").
        body = request.content.read().decode("latin-1")
        return parse_qs(body, keep_blank_values=True, encoding="utf-8", errors="replace")

    def _too_big(self, request: IRequest, session: Session | None) -> bytes:
        return self._page(
            request,
            pages.message_page(
                "Too large",
                f"The upload is larger than the limit of {pages.human_size(self.policy.max_message_size)}. Nothing was sent.",
                session.account if session else None,
                session.csrf if session else "",
                ("/compose", "Compose again"),
            ),
            413,
        )

    async def _folders(self, session: Session) -> list[tuple[str, int, int]]:
        infos = await session.mailbox.listFolders()
        folders = await gatherResults([session.mailbox.folder(info.name) for info in infos], consumeErrors=True)
        statuses = await gatherResults([folder.status() for folder in folders], consumeErrors=True)
        return [(info.name, status.unseen, status.messages) for info, status in zip(infos, statuses)]

    async def _nav(self, session: Session, current: str | None) -> tuple[Any, list[tuple[str, int, int]]]:
        folders = await self._folders(session)
        return pages.folder_nav(folders, current), folders

    async def _folder(self, session: Session, name: str) -> Any:
        try:
            return await session.mailbox.folder(name)
        except (NoSuchFolder, BadFolderName):
            return None

    def _not_found(self, request: IRequest, session: Session, what: str) -> bytes:
        return self._page(
            request,
            pages.message_page("Not found", f"There is no such {what}.", session.account, session.csrf, ("/", "Back to your mail")),
            404,
        )

    # -- summaries and search ---------------------------------------------------------

    async def _summaries(self, folder: Any, uidvalidity: int, infos: list[Any]) -> list[messages.Summary]:
        account = folder.account.lower()
        found: dict[int, messages.Summary] = {}
        missing = []
        for info in infos:
            cached = self.summaries.get((account, folder.name, uidvalidity, info.uid))
            if cached is None:
                missing.append(info)
            else:
                found[info.uid] = cached
        for start in range(0, len(missing), _SEARCH_BATCH):
            batch = missing[start : start + _SEARCH_BATCH]
            handles = await gatherResults([self._open(folder, info.uid) for info in batch], consumeErrors=True)

            def read(pairs: list[tuple[Any, Any]] = list(zip(batch, handles))) -> list[messages.Summary]:
                rows = []
                for info, handle in pairs:
                    if handle is None:
                        continue
                    try:
                        rows.append(messages.read_summary(handle, info.uid, frozenset(), info.size, info.internaldate))
                    except Exception:
                        rows.append(messages.Summary(info.uid, "(unreadable)", "", info.internaldate, info.size, frozenset(), False))
                return rows

            for row in await self._thread(read):
                self.summaries.put((account, folder.name, uidvalidity, row.uid), row)
                found[row.uid] = row
        return [replace(found[info.uid], flags=info.flags) for info in infos if info.uid in found]

    def _open(self, folder: Any, uid: int) -> Deferred[Any]:
        """The open message, or C{None} when it vanished (expunged by another client) meanwhile."""
        return folder.openMessage(uid).addErrback(lambda failure: failure.trap(NoSuchMessage) and None)

    async def _search(self, session: Session, folder: Any, uidvalidity: int, infos: list[Any], query: str, field: str) -> list[Any]:
        needle = query.casefold()
        result = []
        if field in ("from", "subject"):
            for row, info in zip(await self._summaries(folder, uidvalidity, infos), infos):
                text = row.sender if field == "from" else row.subject
                if needle in text.casefold():
                    result.append(info)
            return result
        for start in range(0, len(infos), _SEARCH_BATCH):
            batch = infos[start : start + _SEARCH_BATCH]
            handles = await gatherResults([self._open(folder, info.uid) for info in batch], consumeErrors=True)

            def scan(pairs: list[tuple[Any, Any]] = list(zip(batch, handles))) -> list[Any]:
                hits = []
                for info, handle in pairs:
                    if handle is not None and _matches(handle, needle, field):
                        hits.append(info)
                return hits

            result.extend(await self._thread(scan))
        return result

    # -- sign-in ----------------------------------------------------------------------

    @app.route("/static/style.css", methods=["GET", "HEAD"])
    def stylesheet(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/css; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"max-age=3600")
        return self._stylesheet

    @app.route("/", methods=["GET", "HEAD"])
    def home(self, request: IRequest) -> bytes:
        if self._session(request) is None:
            return self._redirect(request, "/login")
        return self._redirect(request, "/list?f=INBOX")

    @app.route("/login", methods=["GET", "HEAD"])
    def login_form(self, request: IRequest) -> bytes:
        if self._session(request) is not None:
            return self._redirect(request, "/list?f=INBOX")
        client = getattr(request.getClientAddress(), "host", "?")
        if self.guard.banned(client):
            return self._banned(request, client)
        token = new_token()
        self._set_cookie(request, self._login_cookie, token)
        return self._page(request, pages.login_page(token, notice=_arg(request, "notice") or None))

    @app.route("/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        form = self._form(request)
        username = _first(form, "username").strip()
        password = _first(form, "password")
        cookie = request.getCookie(self._login_cookie.encode())
        fresh = new_token()
        if not self._same_origin(request) or not same_token(_first(form, "login_token"), cookie.decode("ascii", "replace") if cookie else ""):
            self._set_cookie(request, self._login_cookie, fresh)
            return self._page(request, pages.login_page(fresh, "The sign-in form expired. Please try again.", username=username), 403)
        client = request.getClientAddress().host if hasattr(request.getClientAddress(), "host") else "?"
        if self.guard.banned(client):
            return self._banned(request, client, username)
        try:
            if len(username) > 320 or len(password) > 1024 or not username or not password:
                raise UnauthorizedLogin()
            # Counted when it starts (see AbuseGuard.attemptStarted): parallel guesses stay under the ban limit.
            if not self.guard.attemptStarted(client):
                raise UnauthorizedLogin()
            try:
                _, avatar, logout = await self.portal.login(UsernamePassword(username, password.encode("utf-8")), None, IMailbox)
            finally:
                self.guard.attemptEnded(client)
        except LoginsBusy:
            self._set_cookie(request, self._login_cookie, fresh)
            return self._page(request, pages.login_page(fresh, "Too many sign-ins at once. Please try again in a moment.", username=username), 503)
        except UnauthorizedLogin:
            verdict = self.guard.failed("webmail", client, username)
            await task.deferLater(self.reactor, verdict.delay, lambda: None)
            self._set_cookie(request, self._login_cookie, fresh)
            return self._page(request, pages.login_page(fresh, "Wrong email address or password.", username=username), 401)
        self.guard.succeeded(client, avatar.account)
        logout()
        session = self.sessions.create(avatar.account, avatar)
        self._set_cookie(request, self._cookie, session.token)
        self._set_cookie(request, self._login_cookie, "", expire=True)
        _log.info("webmail login {account} from {client}", log_event=logevents.WEBMAIL_LOGIN, account=session.account, client=client)
        return self._redirect(request, "/list?f=INBOX")

    def _banned(self, request: IRequest, client: str, username: str = "") -> bytes:
        """The address is banned after failed sign-ins (on any protocol): 429, no password check."""
        _log.info(
            "refused banned client={client} protocol={protocol} remaining={remaining:.0f}",
            log_event=logevents.AUTH_BANNED_REFUSED,
            client=client,
            protocol="webmail",
            remaining=self.guard.banRemaining(client),
        )
        fresh = new_token()
        self._set_cookie(request, self._login_cookie, fresh)
        request.setHeader(b"retry-after", b"%d" % max(1, int(self.guard.banRemaining(client)) + 1))
        text = "Too many failed sign-ins from your address. Wait a while and try again."
        return self._page(request, pages.login_page(fresh, text, username=username), 429)

    @app.route("/logout", methods=["POST"])
    def logout(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._redirect(request, "/login")
        try:
            self._check(request, session, self._form(request))
        except _Forbidden:
            return self._forbidden(request, session)
        self.sessions.end(session.token)
        self._set_cookie(request, self._cookie, "", expire=True)
        return self._redirect(request, "/login?notice=loggedout")

    # -- folders and lists ------------------------------------------------------------

    @app.route("/list", methods=["GET", "HEAD"])
    async def message_list(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        name = _arg(request, "f", INBOX)
        folder = await self._folder(session, name)
        if folder is None:
            return self._not_found(request, session, "folder")
        status = await folder.status()
        infos = list(reversed(await folder.messages()))
        query = _arg(request, "q").strip()[:200]
        field = _arg(request, "field", "all")
        if field not in ("all", "from", "subject", "body"):
            field = "all"
        if query:
            infos = await self._search(session, folder, status.uidvalidity, infos, query, field)
        size = self.policy.page_size
        pages_count = max(1, -(-len(infos) // size))
        page = min(max(1, _int_arg(request, "page", 1)), pages_count)
        shown = infos[(page - 1) * size : page * size]
        rows = await self._summaries(folder, status.uidvalidity, shown)
        nav, folders = await self._nav(session, folder.name)
        names = [entry[0] for entry in folders]
        body = pages.list_page(
            session.account, session.csrf, nav, folder.name, names, rows, page, pages_count, len(infos), query, field, _arg(request, "notice") or None
        )
        return self._page(request, body)

    @app.route("/folders", methods=["GET", "HEAD"])
    async def folders(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        nav, folders = await self._nav(session, None)
        return self._page(request, pages.folders_page(session.account, session.csrf, nav, folders, _arg(request, "notice") or None))

    @app.route("/folders/<string:change>", methods=["POST"])
    async def change_folder(self, request: IRequest, change: str) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        form = self._form(request)
        try:
            self._check(request, session, form)
        except _Forbidden:
            return self._forbidden(request, session)
        name = _first(form, "name").strip()
        new = _first(form, "new").strip()
        fixed = {INBOX.lower(), *(special.lower() for special in SPECIAL_FOLDERS)}
        error = None
        try:
            if change == "create":
                if not name:
                    raise BadFolderName("A folder needs a name.")
                await session.mailbox.createFolder(name)
                notice = "created"
            elif change in ("rename", "delete"):
                if name.lower() in fixed or name.split("/")[0].lower() == INBOX.lower():
                    raise BadFolderName(f"{name} is a standard folder and cannot be renamed or deleted.")
                if change == "rename":
                    if not new:
                        raise BadFolderName("The new name is empty.")
                    if new.lower() in fixed:
                        raise FolderExists(f"folder exists: {new}")
                    await session.mailbox.renameFolder(name, new)
                    notice = "renamed"
                else:
                    await session.mailbox.deleteFolder(name)
                    notice = "removed"
            else:
                return self._not_found(request, session, "page")
        except (FolderError, BadFolderName) as e:
            error = str(e) or "That folder name cannot be used."
        if error is not None:
            nav, folders = await self._nav(session, None)
            body = pages.folders_page(session.account, session.csrf, nav, folders, None, [_folder_error_text(error)])
            return self._page(request, body, 400)
        return self._redirect(request, "/folders?notice=" + notice)

    @app.route("/action", methods=["POST"])
    async def action(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        form = self._form(request)
        try:
            self._check(request, session, form)
        except _Forbidden:
            return self._forbidden(request, session)
        name = _first(form, "f", INBOX)
        folder = await self._folder(session, name)
        if folder is None:
            return self._not_found(request, session, "folder")
        back = _safe_back(_first(form, "back"), pages.url("/list", f=folder.name))
        try:
            uids = sorted({int(value) for value in form.get("uid", [])})
        except ValueError:
            uids = []
        what = _first(form, "do")
        if not uids:
            return self._redirect(request, _with_notice(back, "none"))
        notice = "updated"
        if what in ("read", "unread", "flag", "unflag"):
            flag = "\\Seen" if what in ("read", "unread") else "\\Flagged"
            await folder.setFlags(uids, [flag], "add" if what in ("read", "flag") else "remove")
        elif what == "delete" and folder.name == TRASH:
            await folder.expunge(uids)
            notice = "expunged"
            back = pages.url("/list", f=folder.name)
        elif what in ("delete", "move"):
            target_name = TRASH if what == "delete" else _first(form, "target")
            target = await self._folder(session, target_name)
            if target is None:
                return self._not_found(request, session, "folder")
            if target.name != folder.name:
                await folder.moveTo(uids, target)
            notice = "deleted" if what == "delete" else "moved"
            if back.startswith("/read"):
                back = pages.url("/list", f=folder.name)
        else:
            return self._forbidden(request, session)
        return self._redirect(request, _with_notice(back, notice))

    @app.route("/empty-trash", methods=["POST"])
    async def empty_trash(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        try:
            self._check(request, session, self._form(request))
        except _Forbidden:
            return self._forbidden(request, session)
        trash = await self._folder(session, TRASH)
        if trash is not None:
            await trash.expunge([info.uid for info in await trash.messages()])
        return self._redirect(request, "/list?f=Trash&notice=emptied")

    # -- reading ------------------------------------------------------------------------

    async def _message(self, folder: Any, uid: int) -> Any:
        handle = await self._open(folder, uid)
        if handle is None:
            return None
        return await self._thread(messages.parse, handle)

    async def _requested(self, request: IRequest, session: Session) -> tuple[Any, int, Any]:
        """
        The message the request names (``f`` folder, ``uid``) in the user's own
        mailbox: (folder, uid, parsed message), folder or message None when
        there is no such folder or message.
        """
        folder = await self._folder(session, _arg(request, "f", INBOX))
        uid = _int_arg(request, "uid")
        parsed = await self._message(folder, uid) if folder is not None else None
        return folder, uid, parsed

    @app.route("/read", methods=["GET", "HEAD"])
    async def read(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        folder, uid, parsed = await self._requested(request, session)
        if parsed is None:
            return self._not_found(request, session, "message")
        remote = _arg(request, "remote") == "1"
        view = await self._thread(messages.view, parsed)
        show_html = view.html is not None and _arg(request, "view") != "text"
        remote_found = False
        if show_html:
            images = await self._thread(messages.inline_images, parsed, view.inline)
            _, remote_found = await self._thread(clean_html, view.html, images, False)
        flags = await folder.setFlags([uid], ["\\Seen"], "add")
        nav, folders = await self._nav(session, folder.name)
        body = pages.read_page(
            session.account,
            session.csrf,
            nav,
            folder.name,
            [entry[0] for entry in folders],
            uid,
            view,
            flags.get(uid, frozenset()),
            show_html,
            remote_found,
            remote,
            _arg(request, "notice") or None,
        )
        return self._page(request, body)

    @app.route("/frame", methods=["GET", "HEAD"])
    async def frame(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        folder, uid, parsed = await self._requested(request, session)
        if parsed is None:
            return self._not_found(request, session, "message")
        remote = _arg(request, "remote") == "1"
        view = await self._thread(messages.view, parsed)
        images = await self._thread(messages.inline_images, parsed, view.inline)
        cleaned, _ = await self._thread(clean_html, view.html or "", images, remote)
        request.setResponseCode(200)
        self._headers(request, frame_policy(remote), frame=True)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        document = (
            '<!DOCTYPE html><html><head><meta charset="utf-8"><base target="_blank">'
            "<style>body{font-family:system-ui,sans-serif;margin:.6em;overflow-wrap:anywhere}img{max-width:100%;height:auto}</style>"
            f"</head><body>{cleaned}</body></html>"
        )
        return document.encode("utf-8")

    @app.route("/part", methods=["GET", "HEAD"])
    async def part(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        folder, uid, parsed = await self._requested(request, session)
        found = messages.find_part(parsed, _int_arg(request, "n", -1)) if parsed is not None else None
        if found is None:
            return self._not_found(request, session, "attachment")
        data = await self._thread(messages._bytes_of, found)
        content_type = messages.safe_content_type(found)
        charset = found.get_content_charset()
        if content_type.startswith("text/") and charset and messages._TOKEN.match("x/" + charset):
            content_type += f"; charset={charset}"
        self._headers(request, "default-src 'none'; sandbox")
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"content-disposition", _content_disposition(messages.attachment_name(found, _int_arg(request, "n"))).encode("ascii"))
        request.setHeader(b"content-length", str(len(data)).encode())
        return data

    # -- composing ----------------------------------------------------------------------

    @app.route("/compose", methods=["GET", "HEAD"])
    async def compose_form(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        values: dict[str, str] = {}
        forwarded: list[str] = []
        mode = _arg(request, "mode")
        draft_uid = _int_arg(request, "draft")
        if draft_uid:
            folder = await self._folder(session, DRAFTS)
            parsed = await self._message(folder, draft_uid) if folder is not None else None
            if parsed is None:
                return self._not_found(request, session, "draft")
            view = await self._thread(messages.view, parsed)
            values = {
                "to": view.to,
                "cc": view.cc,
                "bcc": view.bcc,
                "subject": view.subject,
                "body": view.text or "",
                "in_reply_to": _header_text(parsed, "In-Reply-To"),
                "references": view.references,
                "draft_uid": str(draft_uid),
            }
            if view.attachments:
                values.update(forward_f=DRAFTS, forward_uid=str(draft_uid))
                forwarded = [a.filename for a in view.attachments]
        elif mode in ("reply", "replyall", "forward"):
            folder, uid, parsed = await self._requested(request, session)
            if parsed is None:
                return self._not_found(request, session, "message")
            view = await self._thread(messages.view, parsed)
            values, forwarded = _prefill(mode, view, session.account, folder.name, uid)
        nav, _ = await self._nav(session, None)
        return self._page(
            request, pages.compose_page(session.account, session.csrf, nav, values, forwarded=forwarded, max_size=self.policy.max_message_size)
        )

    @app.route("/compose", methods=["POST"])
    async def compose(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        if getattr(request, "body_too_big", False):
            return self._too_big(request, session)
        content_type = request.getHeader(b"content-type") or b""
        if content_type.split(b";")[0].strip().lower() == b"multipart/form-data":
            form, files = await self._thread(_parse_multipart, content_type, request.content)
        else:
            form, files = self._form(request), []
        try:
            self._check(request, session, form)
        except _Forbidden:
            return self._forbidden(request, session)
        values = {name: _first(form, name) for name in ("to", "cc", "bcc", "subject", "body", "in_reply_to", "references", "forward_f", "forward_uid", "draft_uid")}
        values["body"] = values["body"].replace("\r\n", "\n")
        errors: list[str] = []
        draft = None
        try:
            draft = messages.Draft(
                to=messages.parse_addresses("To", values["to"]),
                cc=messages.parse_addresses("Cc", values["cc"]),
                bcc=messages.parse_addresses("Bcc", values["bcc"]),
                subject=values["subject"],
                body=values["body"],
                attachments=list(files),
                in_reply_to=values["in_reply_to"],
                references=values["references"],
            )
            if messages.has_line_break(values["subject"]):
                raise messages.ComposeError("Subject: line breaks are not allowed")
        except messages.ComposeError as error:
            errors.append(str(error))
        sending = _first(form, "action", "send") != "draft"
        if draft is not None and sending and not draft.recipients():
            errors.append("Add at least one recipient in To, Cc or Bcc.")
        if draft is not None and not errors and values["forward_uid"]:
            source = await self._folder(session, values["forward_f"])
            parsed = await self._message(source, int(values["forward_uid"])) if source is not None and values["forward_uid"].isdigit() else None
            if parsed is not None:
                draft.attachments = (await self._thread(messages.attachments_of, parsed)) + draft.attachments
        if draft is not None and not errors:
            size = sum(len(data) for _, _, data in draft.attachments) * 4 // 3 + len(draft.body)
            if size > self.policy.max_message_size:
                errors.append(f"The message is larger than the limit of {pages.human_size(self.policy.max_message_size)}.")
        if errors or draft is None:
            return await self._compose_again(request, session, values, errors)
        if not sending:
            data = await self._thread(messages.build, draft, session.account, self.policy.hostname, True)
            drafts = await self._folder(session, DRAFTS)
            if drafts is None:
                return self._not_found(request, session, "folder")
            await drafts.append(data, ["\\Draft", "\\Seen"])
            await self._drop_draft(session, values["draft_uid"])
            return self._redirect(request, "/list?f=Drafts&notice=draft")
        problems = await self._send(request, session, draft)
        if problems:
            return await self._compose_again(request, session, values, problems)
        await self._drop_draft(session, values["draft_uid"])
        return self._redirect(request, "/list?f=INBOX&notice=sent")

    async def _compose_again(self, request: IRequest, session: Session, values: dict[str, str], errors: list[str]) -> bytes:
        nav, _ = await self._nav(session, None)
        errors = errors + ["Nothing was sent. Files you attached must be attached again."] if errors else errors
        body = pages.compose_page(session.account, session.csrf, nav, values, errors, max_size=self.policy.max_message_size)
        return self._page(request, body, 400)

    async def _drop_draft(self, session: Session, draft_uid: str) -> None:
        if draft_uid.isdigit():
            drafts = await self._folder(session, DRAFTS)
            if drafts is not None:
                await drafts.expunge([int(draft_uid)])

    async def _send(self, request: IRequest, session: Session, draft: messages.Draft) -> list[str]:
        """Hand the message to the Router like authenticated submission; the problems to show, if any."""
        outgoing = await self._thread(messages.build, draft, session.account, self.policy.hostname, False)
        if len(outgoing) > self.policy.max_message_size:
            return [f"The message is larger than the limit of {pages.human_size(self.policy.max_message_size)}."]
        if not self.guard.mayAcceptMessage(session.account):
            _log.info(
                "sending rate limited account={account} client={client}",
                log_event=logevents.SEND_RATE_LIMITED,
                account=session.account,
                client=getattr(request.getClientAddress(), "host", "unknown"),
            )
            limit = self.guard.max_messages_per_hour
            return [f"You have sent {limit} messages in the last hour, the most allowed. Try again later."]
        transaction = self.router.start(session.account, True, session.account)
        problems = []
        for address in draft.recipients():
            try:
                await transaction.addRecipient(address)
            except MailError as error:
                problems.append(f"{address}: {error.text} ({error.code} {error.enhanced})")
        if problems:
            transaction.abort()
            return problems
        client = getattr(request.getClientAddress(), "host", "unknown")
        received = (
            f"Received: from [{client}]\r\n"
            f"\tby {self.policy.hostname} (mailapp webmail) with {'HTTPS' if self.policy.secure else 'HTTP'} id {transaction.queue_id};\r\n"
            f"\t{email.utils.formatdate(time.time(), localtime=False)}\r\n"
        ).encode("utf-8")
        writer = transaction.open()
        await writer.write(received + outgoing)
        try:
            queue_id = await transaction.commit()
        except MailError as error:
            transaction.abort()
            return [f"The message could not be sent: {error.text} ({error.code} {error.enhanced})"]
        except Exception:
            _log.failure("webmail send failed", log_event=logevents.WEBMAIL_SEND_FAILED)
            transaction.abort()
            return ["The message could not be sent because of a server error. Try again later."]
        self.guard.messageAccepted(session.account)
        _log.info(
            "webmail sent {queue_id} from=<{sender}> rcpts={count} size={size}",
            log_event=logevents.WEBMAIL_SENT,
            queue_id=queue_id,
            sender=session.account,
            count=len(transaction.recipients),
            size=len(outgoing),
        )
        copy = await self._thread(messages.build, draft, session.account, self.policy.hostname, True)
        sent = await self._folder(session, SENT)
        if sent is not None:
            try:
                await sent.append(copy, ["\\Seen"])
            except Exception:
                _log.failure("webmail could not store the Sent copy", log_event=logevents.WEBMAIL_SEND_FAILED)
        return []


def _folder_error_text(error: str) -> str:
    if error.startswith("folder exists: "):
        return f"A folder called {error[len('folder exists: '):]} already exists."
    if error.startswith("no such folder: "):
        return f"There is no folder called {error[len('no such folder: '):]}."
    return error


def _header_text(message: Any, name: str) -> str:
    value = message.get(name)
    return " ".join(str(value).split()) if value is not None else ""


def _prefill(mode: str, view: messages.MessageView, account: str, folder: str, uid: int) -> tuple[dict[str, str], list[str]]:
    text = view.text if view.text is not None else _html_to_text(view.html or "")
    if mode == "forward":
        lines = ["", "", "---------- Forwarded message ----------", f"From: {view.sender}", f"Date: {view.date}", f"Subject: {view.subject}", f"To: {view.to}"]
        if view.cc:
            lines.append(f"Cc: {view.cc}")
        values = {
            "subject": messages.subject_with("Fwd:", view.subject),
            "body": "\n".join(lines) + "\n\n" + text,
            "forward_f": folder if view.attachments else "",
            "forward_uid": str(uid) if view.attachments else "",
        }
        return values, [a.filename for a in view.attachments]
    target = view.reply_to or view.sender
    to = [pair for pair in email.utils.getaddresses([target]) if pair[1]]
    cc: list[tuple[str, str]] = []
    if mode == "replyall":
        taken = {account.lower(), *(address.lower() for _, address in to)}
        for name, address in email.utils.getaddresses([view.to, view.cc]):
            if address and address.lower() not in taken:
                taken.add(address.lower())
                cc.append((name, address))
    references = " ".join(part for part in (view.references, view.message_id) if part)
    body = f"\n\nOn {view.date}, {messages.display_sender(view.sender)} wrote:\n" + messages.quote(text)
    return (
        {
            "to": messages.format_addresses(to),
            "cc": messages.format_addresses(cc),
            "subject": messages.subject_with("Re:", view.subject),
            "body": body,
            "in_reply_to": view.message_id,
            "references": references,
        },
        [],
    )


def _matches(handle: Any, needle: str, field: str) -> bool:
    """Worker thread: does the message mention C{needle} in its sender, subject or text?"""
    try:
        with handle:
            data = handle.read(2 * 1024 * 1024)
        message = messages.parse_bytes(data)
        if field == "all":
            for name in ("From", "Subject"):
                if needle in messages._header(message, name).casefold():
                    return True
        for part in message.walk():
            if part.get_content_maintype() == "text" and part.get_content_disposition() != "attachment":
                text = messages._text_of(part)
                if part.get_content_subtype() == "html":
                    text = _html_to_text(text)
                if needle in text.casefold():
                    return True
    except Exception:
        return False
    return False


def buildFactory(context: Any, listener: Any) -> WebmailSite:
    """The builder the service registers for the ``webmail`` protocol."""
    from mailapp.delivery import Router

    config = context.config
    router = getattr(context, "router", None) or Router(context.accounts, context.store, config.limits.max_recipients)
    policy = WebmailPolicy(
        hostname=config.hostname,
        secure=listener.tls == "implicit",
        max_message_size=config.limits.max_message_size,
    )
    pools = getattr(context, "pools", None)
    return Webmail(
        router,
        context.portal,
        policy,
        context.reactor,
        guard=getattr(context, "guard", None),
        threadpool=pools.parsing if pools is not None else None,
    ).site(SessionLimits(**session_limits(config, listener)))
