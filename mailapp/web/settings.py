"""
The user's settings at C{/settings}, each part its own form:

- filter rules, vacation and forwarding, which make one Sieve script
  (L{mailapp.sieve.webmail}) stored and activated through the same
  L{mailapp.sieve.scripts.ScriptStore} as ManageSieve and ``mailapp sieve``;
  an active script the page did not make is replaced only when the user
  ticks the box; the script can be edited as text, checked by the same
  compiler (errors with line and column; a broken one is never stored);
- display name and signature (compose uses them), and the password (the
  current one first, failures counted by the server's abuse guard; the
  accounts' own policy; the user's other webmail sessions end);
- the allow and block lists of senders (L{mailapp.accounts.senderlists}).

Everything is the signed-in account's: no request names an owner. Every
change is a POST checked for its CSRF token and origin; a refused one comes
back with its error in its form and the values as entered (never a
password); one that worked redirects to a notice.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import task
from twisted.web.iweb import IRequest

from mailapp import logevents
from mailapp.accounts import Profile
from mailapp.errors import AccountError, LoginsBusy
from mailapp.sieve import SieveSyntaxError, compile
from mailapp.sieve import webmail
from mailapp.sieve.scripts import ScriptError, ScriptStore
from mailapp.web import pages
from mailapp.web.base import Forbidden, WebmailBase, app, log
from mailapp.web.forms import form_field, query_arg
from mailapp.web.sessions import Session

__all__ = ["SettingsRoutes"]

#: Longest password the form passes on (the sign-in form's bound).
_MAX_PASSWORD = 1024


def _int(text: str, default: int) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return default


def _rules_from(form: dict[str, list[str]]) -> list[webmail.Rule]:
    """The rule rows as entered, blank rows and removed ones left out, "Move up" applied."""
    count = min(max(_int(form_field(form, "rules"), 0), 0), webmail.MAX_RULES + 1)
    rows: list[tuple[webmail.Rule, bool]] = []
    for number in range(count):
        def value(name: str, number: int = number) -> str:
            return form_field(form, f"r{number}_{name}")

        new_folder = value("newfolder").strip()
        rule = webmail.Rule(
            field=value("field"),
            text=value("text"),
            match=value("match"),
            header=value("header"),
            action=value("action"),
            folder=new_folder or value("folder"),
            flag=value("flag"),
            address=value("address"),
            keep_copy=bool(value("copy")),
            stop=bool(value("stop")),
        )
        blank = not (rule.text or rule.header.strip() or rule.address.strip() or new_folder)
        rows.append((rule, bool(value("remove")) or blank))
    up = _int(form_field(form, "up"), 0)
    if 0 < up < len(rows):
        rows[up - 1], rows[up] = rows[up], rows[up - 1]
    return [rule for rule, dropped in rows if not dropped]


class SettingsRoutes(WebmailBase):
    """C{/settings} and its forms' POSTs under C{/settings/...}."""

    @property
    def _scripts(self) -> ScriptStore | None:
        sieve = getattr(self.router, "sieve", None)
        return sieve.scripts if sieve is not None else None

    async def _view(self, session: Session, notice: str | None = None, **changes: Any) -> pages.SettingsView:
        accounts = self.router.accounts
        rules = await accounts.senderRules(session.account)
        profile = await accounts.profile(session.account)
        view = pages.SettingsView(session.account, session.csrf, rules, notice, profile=profile)
        scripts = self._scripts
        if scripts is not None:
            state = await self._thread(webmail.load, scripts, session.account)
            folders = [info.name for info in await session.mailbox.listFolders()]
            view = replace(view, filters=state.filters, state=state, folders=folders)
        return replace(view, **changes)

    async def _refused(self, request: IRequest, session: Session, part: str, errors: list[str], **changes: Any) -> bytes:
        view = await self._view(session, errors={part: errors})
        if "filters" in changes and view.filters is None:
            changes.pop("filters")
        return self._page(request, pages.settings_page(replace(view, **changes)), 400)

    def _posted(self, request: IRequest) -> tuple[Session, dict[str, list[str]]] | bytes:
        """The session and form of a settings POST, or the page that refuses it."""
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        form = self._form(request)
        try:
            self._check(request, session, form)
        except Forbidden:
            return self._forbidden(request, session)
        return session, form

    @app.route("/settings", methods=["GET", "HEAD"])
    async def settings(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        view = await self._view(session, query_arg(request, "notice") or None)
        return self._page(request, pages.settings_page(view))

    # -- filter rules, vacation, forwarding: one generated script ---------------------

    async def _save_filters(self, request: IRequest, session: Session, form: dict[str, list[str]], part: str, filters: Any) -> bytes:
        scripts = self._scripts
        assert scripts is not None
        try:
            await self._thread(webmail.save_settings, scripts, session.account, filters, bool(form_field(form, "replace")))
        except webmail.ForeignScript:
            error = "Your active script was not made by this page: tick \u201cReplace my active script\u201d to replace it. Nothing was saved."
            return await self._refused(request, session, part, [error], filters=filters)
        except (ScriptError, SieveSyntaxError) as failure:
            return await self._refused(request, session, part, [f"Not saved: {failure}"], filters=filters)
        log.info("webmail settings {part} saved by {account}", log_event=logevents.WEBMAIL_SETTINGS_CHANGED, part=part, account=session.account)
        return self._redirect(request, f"/settings?notice={part}#{'filters' if part == 'rules' else part}")

    @app.route("/settings/filters", methods=["POST"])
    async def save_rules(self, request: IRequest) -> bytes:
        posted = self._posted(request)
        if isinstance(posted, bytes):
            return posted
        session, form = posted
        if self._scripts is None:
            return self._not_found(request, session, "page")
        entered = _rules_from(form)
        state = await self._thread(webmail.load, self._scripts, session.account)
        errors, checked = [], []
        if len(entered) > webmail.MAX_RULES:
            errors.append(f"At most {webmail.MAX_RULES} rules.")
        for number, rule in enumerate(entered, 1):
            try:
                checked.append(webmail.check_rule(rule))
            except ValueError as error:
                errors.append(f"Rule {number}: {error}.")
        if errors:
            return await self._refused(request, session, "rules", errors, filters=replace(state.filters, rules=tuple(entered)))
        return await self._save_filters(request, session, form, "rules", replace(state.filters, rules=tuple(checked)))

    @app.route("/settings/vacation", methods=["POST"])
    async def save_vacation(self, request: IRequest) -> bytes:
        posted = self._posted(request)
        if isinstance(posted, bytes):
            return posted
        session, form = posted
        if self._scripts is None:
            return self._not_found(request, session, "page")
        state = await self._thread(webmail.load, self._scripts, session.account)
        days = _int(form_field(form, "days"), 0)
        entered = webmail.VacationSettings(
            enabled=bool(form_field(form, "enabled")),
            start=form_field(form, "start").strip(),
            end=form_field(form, "end").strip(),
            subject=form_field(form, "subject").strip(),
            text=form_field(form, "text").replace("\r\n", "\n"),
            days=days,
        )
        try:
            vacation = webmail.check_vacation(entered)
        except ValueError as error:
            return await self._refused(request, session, "vacation", [f"Vacation: {error}."], filters=replace(state.filters, vacation=entered))
        return await self._save_filters(request, session, form, "vacation", replace(state.filters, vacation=vacation))

    @app.route("/settings/forwarding", methods=["POST"])
    async def save_forwarding(self, request: IRequest) -> bytes:
        posted = self._posted(request)
        if isinstance(posted, bytes):
            return posted
        session, form = posted
        if self._scripts is None:
            return self._not_found(request, session, "page")
        state = await self._thread(webmail.load, self._scripts, session.account)
        entered = webmail.Forwarding(form_field(form, "address").strip(), bool(form_field(form, "copy")))
        try:
            forwarding = webmail.check_forwarding(entered)
        except ValueError as error:
            return await self._refused(request, session, "forwarding", [f"Forwarding: {error}."], filters=replace(state.filters, forwarding=entered))
        return await self._save_filters(request, session, form, "forwarding", replace(state.filters, forwarding=forwarding))

    @app.route("/settings/script", methods=["POST"])
    async def save_script(self, request: IRequest) -> bytes:
        posted = self._posted(request)
        if isinstance(posted, bytes):
            return posted
        session, form = posted
        scripts = self._scripts
        if scripts is None:
            return self._not_found(request, session, "page")
        text = form_field(form, "script").replace("\r\n", "\n")
        try:
            if form_field(form, "do") == "check":
                await self._thread(compile, text)
                view = await self._view(session, "checked", script=text)
                return self._page(request, pages.settings_page(view))
            await self._thread(webmail.save_text, scripts, session.account, text)
        except SieveSyntaxError as error:
            return await self._refused(request, session, "script", [f"Line {error.line}, column {error.column}: {error.message}. Nothing was saved."], script=text)
        except ScriptError as error:
            return await self._refused(request, session, "script", [f"Not saved: {error}"], script=text)
        log.info("webmail settings {part} saved by {account}", log_event=logevents.WEBMAIL_SETTINGS_CHANGED, part="script", account=session.account)
        return self._redirect(request, "/settings?notice=script#script")

    # -- the account ------------------------------------------------------------------

    @app.route("/settings/profile", methods=["POST"])
    async def save_profile(self, request: IRequest) -> bytes:
        posted = self._posted(request)
        if isinstance(posted, bytes):
            return posted
        session, form = posted
        display_name, signature = form_field(form, "display_name"), form_field(form, "signature")
        try:
            await self.router.accounts.setProfile(session.account, display_name, signature)
        except AccountError as error:
            return await self._refused(request, session, "profile", [str(error)], profile=Profile(display_name, signature))
        log.info("webmail settings {part} saved by {account}", log_event=logevents.WEBMAIL_SETTINGS_CHANGED, part="profile", account=session.account)
        return self._redirect(request, "/settings?notice=profile#profile")

    @app.route("/settings/password", methods=["POST"])
    async def change_password(self, request: IRequest) -> bytes:
        posted = self._posted(request)
        if isinstance(posted, bytes):
            return posted
        session, form = posted
        current, new, again = (form_field(form, name) for name in ("current", "new", "again"))
        if new != again:
            return await self._refused(request, session, "password", ["The new password and its repetition differ; nothing was changed."])
        if len(new) > _MAX_PASSWORD:
            return await self._refused(request, session, "password", [f"The new password is longer than {_MAX_PASSWORD} characters; nothing was changed."])
        address = request.getClientAddress()
        client = address.host if hasattr(address, "host") else "?"
        # The current password is a login: a stolen session must not become a guessing oracle.
        if self.guard.banned(client) or not current or len(current) > _MAX_PASSWORD:
            return await self._refused(request, session, "password", ["Too many wrong passwords; try again later. Nothing was changed."])
        if not self.guard.attemptStarted(client):
            return await self._refused(request, session, "password", ["The server is busy; try again in a moment. Nothing was changed."])
        try:
            try:
                await self.router.accounts.authenticate(session.account, current.encode("utf-8"))
            finally:
                self.guard.attemptEnded(client)
        except LoginsBusy:
            return await self._refused(request, session, "password", ["The server is busy; try again in a moment. Nothing was changed."])
        except UnauthorizedLogin:
            verdict = self.guard.failed("webmail", client, session.account)
            await task.deferLater(self.reactor, verdict.delay, lambda: None)
            return await self._refused(request, session, "password", ["The current password is wrong; nothing was changed."])
        self.guard.succeeded(client, session.account)
        try:
            await self.router.accounts.setPassword(session.account, new)
        except AccountError as error:
            return await self._refused(request, session, "password", [str(error)])
        ended = self.sessions.end_others(session.account, session.token)
        log.info(
            "webmail settings {part} saved by {account}; {ended} other sessions ended",
            log_event=logevents.WEBMAIL_SETTINGS_CHANGED,
            part="password",
            account=session.account,
            ended=ended,
        )
        return self._redirect(request, "/settings?notice=password#password")

    # -- senders ----------------------------------------------------------------------

    @app.route("/settings/senders/<string:change>", methods=["POST"])
    async def change_senders(self, request: IRequest, change: str) -> bytes:
        posted = self._posted(request)
        if isinstance(posted, bytes):
            return posted
        session, form = posted
        entry = form_field(form, "entry").strip()
        accounts = self.router.accounts
        try:
            if change == "add":
                action = form_field(form, "do")
                if action not in ("allow", "block"):
                    return self._forbidden(request, session)
                await accounts.setSenderRule(session.account, entry, action)
                notice = "allowed" if action == "allow" else "blocked"
            elif change == "remove":
                await accounts.removeSenderRule(session.account, entry)
                notice = "unlisted"
            else:
                return self._not_found(request, session, "page")
        except AccountError as error:
            return await self._refused(request, session, "senders", [str(error)], sender_entry=entry)
        return self._redirect(request, "/settings?notice=" + notice)

