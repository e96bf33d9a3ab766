"""
The webmail: read and send mail in a browser, over the same Portal, store
and Router as SMTP, POP3 and IMAP.

L{mailapp.web.app} has the routes, L{mailapp.web.pages} the HTML,
L{mailapp.web.messages} the MIME reading and building (on worker threads),
L{mailapp.web.sanitize} the HTML sanitiser, L{mailapp.web.sessions} the
sessions; failed sign-ins go to the server's L{mailapp.abuse.AbuseGuard}.
"""

from mailapp.web.app import Webmail, WebmailPolicy, WebmailSite, buildFactory

__all__ = ["Webmail", "WebmailPolicy", "WebmailSite", "buildFactory"]
