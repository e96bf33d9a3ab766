"""
The MX's checks before DATA (issue 16), in the manner of Postfix's
postscreen and its DNSBL restrictions: cheap judgements of the client
made before it may send a message, so that most spam never reaches DATA
(and the content scanner).

  - L{mailapp.postscreen.blocklists}: DNS blocklists of client addresses
    and domains, weighed against a threshold (``[dnsbl]``), and at the end
    of DATA the domains of the body's URLs (L{mailapp.postscreen.urls});
  - L{mailapp.postscreen.earlytalk}: the greeting delay and the refusal of
    clients that talk early or pipeline unasked (``[postscreen]``);
  - L{mailapp.postscreen.screen}: what one MX listener keeps (L{Postscreen})
    and what one session asks (L{SessionScreen}): the SMTP session's hooks
    call only this.

Every refusal is answered during the SMTP session (never a bounce) and
logged with an ``action`` and a ``reason``, which the metric
``mailapp_spam_decisions_total`` counts.
"""

from mailapp.postscreen.screen import Postscreen, SessionScreen

__all__ = ["Postscreen", "SessionScreen"]
