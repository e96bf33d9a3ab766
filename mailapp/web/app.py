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

This module joins the groups of routes, one module each over
L{mailapp.web.base}, into the L{Webmail}, and builds it for a listener
(L{buildFactory}); the HTTP layer under them is L{mailapp.web.site}.
"""

from __future__ import annotations

from mailapp.config import ListenerConfig
from mailapp.context import ServiceContext
from mailapp.sessions import SessionLimits, session_limits
from mailapp.web.base import DRAFTS, SENT, TRASH, WebmailPolicy
# The groups in the order their routes were declared when they were one class.
from mailapp.web.signin import SignInRoutes
from mailapp.web.listing import ListingRoutes
from mailapp.web.folders import FolderRoutes
from mailapp.web.reading import ReadingRoutes
from mailapp.web.compose import ComposeRoutes
from mailapp.web.settings import SettingsRoutes
from mailapp.web.site import WebmailChannel, WebmailConnections, WebmailSite, WebRequest, security_headers

__all__ = [
    "DRAFTS",
    "SENT",
    "TRASH",
    "WebRequest",
    "Webmail",
    "WebmailChannel",
    "WebmailConnections",
    "WebmailPolicy",
    "WebmailSite",
    "buildFactory",
    "security_headers",
]


class Webmail(SignInRoutes, ListingRoutes, FolderRoutes, ReadingRoutes, ComposeRoutes, SettingsRoutes):
    """
    The routes; C{clock} (seconds) drives session times (and the guard's, when
    the Webmail makes its own), C{reactor} the delays. C{guard} is the
    server's L{AbuseGuard}: failed sign-ins are delayed and counted there,
    with those of every other protocol.

    Each base is one group of routes (their modules say what each serves),
    all declared on the one Klein of L{mailapp.web.base.WebmailBase}.
    """


def buildFactory(context: ServiceContext, listener: ListenerConfig) -> WebmailSite:
    """The builder the service registers for the ``webmail`` protocol."""
    config = context.config
    policy = WebmailPolicy(
        hostname=config.hostname,
        secure=listener.tls == "implicit",
        max_message_size=config.limits.max_message_size,
    )
    return Webmail(
        context.router,
        context.portal,
        policy,
        context.reactor,
        guard=context.guard,
        threadpool=context.pools.parsing,
    ).site(SessionLimits(**session_limits(config, listener)))
