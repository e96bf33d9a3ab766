"""
The content scanner and the Junk folder that teaches it: rspamd, spoken to
over its HTTP protocol.

  - L{client}: the HTTP requests (``/checkv2`` on the normal worker,
    ``/learnspam`` and ``/learnham`` on the controller), on the reactor
    through twisted.web's C{Agent}, each bounded by a timeout;
  - L{decisions}: what rspamd's answer means for a message (a pure
    function: INBOX, Junk with ``X-Spam-*`` fields, 554, 451);
  - L{scanner}: L{ContentScanner}, which the SMTP factory carries and asks
    at the end of DATA;
  - L{learning}: L{JunkLearner}, a subscriber to the store's events that
    teaches rspamd when a user files a message into Junk or out of it.
"""

from mailapp.spam.decisions import SpamVerdict, decide
from mailapp.spam.learning import JunkLearner
from mailapp.spam.scanner import ContentScanner, ScanRequest

__all__ = ["ContentScanner", "JunkLearner", "ScanRequest", "SpamVerdict", "decide"]
