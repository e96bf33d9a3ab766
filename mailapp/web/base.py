"""
What every group of webmail routes shares: the policy, the state (sessions,
the guard, the summary cache, the parsing pool) and the plumbing (cookies,
security headers, pages and redirects, the CSRF and origin checks, opening
a folder or a message).

The routes are grouped by what they serve, one module each
(L{mailapp.web.signin}, L{mailapp.web.listing}, L{mailapp.web.folders},
L{mailapp.web.reading}, L{mailapp.web.compose}, L{mailapp.web.settings}), every group a subclass of
L{WebmailBase} declaring its routes on the one Klein L{app};
L{mailapp.web.app.Webmail} joins them into the resource.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qs

from klein import Klein
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web import http
from twisted.web.iweb import IRequest

from mailapp import logevents
from mailapp.abuse import AbuseGuard
from mailapp.config import SecurityConfig
from mailapp.errors import BadFolderName, NoSuchFolder, NoSuchMessage
from mailapp.sessions import SessionLimits
from mailapp.store import INBOX
from mailapp.web import messages, pages
from mailapp.web.forms import form_field, query_arg, query_int
from mailapp.web.sessions import (
    COOKIE,
    LOGIN_COOKIE,
    SECURE_COOKIE,
    SECURE_LOGIN_COOKIE,
    Session,
    Sessions,
    same_token,
)
from mailapp.web.site import WebmailConnections, WebmailSite, security_headers

__all__ = ["DRAFTS", "SENT", "TRASH", "Forbidden", "SummaryCache", "WebmailBase", "WebmailPolicy", "app"]

log = Logger()

TRASH = "Trash"
SENT = "Sent"
DRAFTS = "Drafts"

#: The routes of every group: one Klein, so that L{WebmailBase.app} (and so
#: the Webmail) serves all of them.
app = Klein()


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



class SummaryCache:
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


class Forbidden(Exception):
    """A state-changing request without a valid CSRF token or from another origin."""



class WebmailBase:
    """
    The state and plumbing of the webmail's routes; C{clock} (seconds)
    drives session times (and the guard's, when the Webmail makes its own),
    C{reactor} the delays. C{guard} is the server's L{AbuseGuard}: failed
    sign-ins are delayed and counted there, with those of every other
    protocol.
    """

    app = app

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
        #: Seconds: session times, and the date of the Received: and Date: a sent message gets.
        self.clock: Callable[[], float] = now
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
        self.summaries = SummaryCache()
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
        # IRequest declares fewer of addCookie's arguments than Request takes.
        cast(http.Request, request).addCookie(
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
        return bool(origin == scheme + b"://" + host)

    def _check(self, request: IRequest, session: Session, form: dict[str, list[str]]) -> None:
        if not self._same_origin(request) or not same_token(form_field(form, "csrf"), session.csrf):
            log.info(
                "csrf rejected {account} {path}",
                log_event=logevents.WEBMAIL_CSRF_REJECTED,
                account=session.account,
                path=request.path.decode("utf-8", "replace"),
            )
            raise Forbidden()

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

    def _open(self, folder: Any, uid: int) -> Deferred[Any]:
        """The open message, or C{None} when it vanished (expunged by another client) meanwhile."""
        opened: Deferred[Any] = folder.openMessage(uid).addErrback(lambda failure: failure.trap(NoSuchMessage) and None)
        return opened

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
        folder = await self._folder(session, query_arg(request, "f", INBOX))
        uid = query_int(request, "uid")
        parsed = await self._message(folder, uid) if folder is not None else None
        return folder, uid, parsed
