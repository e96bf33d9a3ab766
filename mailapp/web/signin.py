"""
Signing in and out of the webmail, and the two pages a visitor sees before
that (the home redirect, the stylesheet).

A sign-in goes through the server's Portal like an IMAP LOGIN, and its
failures through the server's L{mailapp.abuse.AbuseGuard} with those of
every protocol: counted when they start, delayed, and banned by address.
The sign-in form carries a token of its own (a cookie set with the form),
since there is no session yet whose CSRF token it could carry.
"""

from __future__ import annotations

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import task
from twisted.web.iweb import IRequest

from mailapp import logevents
from mailapp.errors import AddressLoginsBusy, LoginsBusy
from mailapp.interfaces import IMailbox
from mailapp.web import pages
from mailapp.web.base import Forbidden, WebmailBase, app, log
from mailapp.web.forms import form_field, query_arg
from mailapp.web.sessions import new_token, same_token

__all__ = ["SignInRoutes"]


class SignInRoutes(WebmailBase):
    """C{/}, C{/static/style.css}, C{/login} (the form and its POST) and C{/logout}."""

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
        return self._page(request, pages.login_page(token, notice=query_arg(request, "notice") or None))

    @app.route("/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        form = self._form(request)
        username = form_field(form, "username").strip()
        password = form_field(form, "password")
        cookie = request.getCookie(self._login_cookie.encode())
        fresh = new_token()
        if not self._same_origin(request) or not same_token(form_field(form, "login_token"), cookie.decode("ascii", "replace") if cookie else ""):
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
                raise AddressLoginsBusy()
            try:
                # twisted.cred types the username as bytes; mailapp's checker takes str (see mailapp.auth).
                credentials = UsernamePassword(username, password.encode("utf-8"))  # type: ignore[arg-type]
                _, avatar, logout = await self.portal.login(credentials, None, IMailbox)
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
        log.info("webmail login {account} from {client}", log_event=logevents.WEBMAIL_LOGIN, account=session.account, client=client)
        return self._redirect(request, "/list?f=INBOX")

    def _banned(self, request: IRequest, client: str, username: str = "") -> bytes:
        """The address is banned after failed sign-ins (on any protocol): 429, no password check."""
        log.info(
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
        except Forbidden:
            return self._forbidden(request, session)
        self.sessions.end(session.token)
        self._set_cookie(request, self._cookie, "", expire=True)
        return self._redirect(request, "/login?notice=loggedout")
