"""
Sender authentication on the MX: SPF (L{mailapp.spf}), DKIM verification
(L{mailapp.authentication.dkim}), DMARC (L{mailapp.authentication.dmarc}),
and the Authentication-Results field (L{mailapp.authentication.results}),
put together per message by L{mailapp.authentication.checks.InboundChecks},
which the SMTP listener calls at MAIL FROM and at the end of DATA.

Every library here blocks; each runs on a worker thread with its DNS through
the server's own resolver (L{mailapp.dnsthread}).
"""

from mailapp.authentication.checks import InboundChecks, MessageCheck, Verdict

__all__ = ["InboundChecks", "MessageCheck", "Verdict"]
