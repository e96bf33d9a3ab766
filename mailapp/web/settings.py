"""
The user's settings: their own allow and block lists of senders
(L{mailapp.accounts.senderlists}), seen and edited at C{/settings}.

The list is always the signed-in account's: no request names an owner, so
nobody sees or changes another user's (or a domain's) list. Entries are
checked by the same rules as ``mailapp sender``, and a refusal is shown
with the same words. Every change is a POST checked for its CSRF token and
origin, written through L{mailapp.interfaces.IAccounts} off the reactor.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from mailapp.errors import AccountError
from mailapp.web import pages
from mailapp.web.base import Forbidden, WebmailBase, app
from mailapp.web.forms import form_field, query_arg

__all__ = ["SettingsRoutes"]


class SettingsRoutes(WebmailBase):
    """C{/settings} and its changes, C{/settings/senders/add} and C{/settings/senders/remove}."""

    @app.route("/settings", methods=["GET", "HEAD"])
    async def settings(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        rules = await self.router.accounts.senderRules(session.account)
        return self._page(request, pages.settings_page(session.account, session.csrf, rules, query_arg(request, "notice") or None))

    @app.route("/settings/senders/<string:change>", methods=["POST"])
    async def change_senders(self, request: IRequest, change: str) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        form = self._form(request)
        try:
            self._check(request, session, form)
        except Forbidden:
            return self._forbidden(request, session)
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
            rules = await accounts.senderRules(session.account)
            body = pages.settings_page(session.account, session.csrf, rules, None, [str(error)], entry)
            return self._page(request, body, 400)
        return self._redirect(request, "/settings?notice=" + notice)
