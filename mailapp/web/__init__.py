"""
The webmail: read and send mail in a browser, over the same Portal, store
and Router as SMTP, POP3 and IMAP.

L{mailapp.web.app} joins the routes into the L{Webmail}: one module per
group (L{mailapp.web.signin}, L{mailapp.web.listing},
L{mailapp.web.folders}, L{mailapp.web.reading}, L{mailapp.web.compose},
L{mailapp.web.settings})
over the plumbing they share (L{mailapp.web.base}) and the request and form
parsing (L{mailapp.web.forms}), on the HTTP layer of L{mailapp.web.site}.
L{mailapp.web.pages} has the HTML, L{mailapp.web.messages} the MIME reading
and building (on worker threads), L{mailapp.web.sanitize} the HTML
sanitiser, L{mailapp.web.sessions} the sessions; failed sign-ins go to the
server's L{mailapp.abuse.AbuseGuard}.
"""

from mailapp.web.app import Webmail, WebmailPolicy, WebmailSite, buildFactory

__all__ = ["Webmail", "WebmailPolicy", "WebmailSite", "buildFactory"]
