"""
``[authentication]``: what the MX checks on the mail it receives (SPF,
DKIM, DMARC; see L{mailapp.authentication}) and what it does with the
results. Applied live on ``SIGHUP`` (each SMTP listener's policy carries it).

The defaults check everything and honour the sender domain's policy:
``p=reject`` is answered ``550 5.7.1`` at the end of DATA, ``p=quarantine``
goes to the Junk folder, and a DNS failure that leaves DMARC undecided is a
``451``, so that the sender tries again rather than have its mail judged on
half the evidence.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Final

from mailapp.config.checks import Network, network
from mailapp.config.schema import STRING, Items, Section, array, boolean, integer, one_of, positive, string

__all__ = ["AUTHENTICATION", "DEFAULT_AUTHENTICATION", "AuthenticationConfig"]

#: Loopback is local software (a script, a content filter handing mail back), not a sending domain's server.
_LOOPBACK: Final = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class AuthenticationConfig:
    """
    The MX's sender authentication. Mail from ``exempt_networks`` (and from
    ``[relay] trusted_networks``, and authenticated submission) is not
    checked and gets no Authentication-Results header.
    """

    #: Check SPF (RFC 7208) for the HELO name and the MAIL FROM address.
    spf: bool = field(default=True, metadata=boolean())
    #: Verify every DKIM signature (RFC 6376, RFC 8463), up to max_dkim_signatures.
    dkim: bool = field(default=True, metadata=boolean())
    #: Evaluate the From: domain's DMARC policy (RFC 7489); needs spf or dkim to ever pass.
    dmarc: bool = field(default=True, metadata=boolean())
    #: What a DMARC failure under p=reject gets: "reject" (550 5.7.1 at the
    #: end of DATA, never a bounce), "junk" (the Junk folder) or "deliver".
    dmarc_reject: str = field(default="reject", metadata=string(one_of("reject", "junk", "deliver")))
    #: What a DMARC failure under p=quarantine gets: "junk" or "deliver".
    dmarc_quarantine: str = field(default="junk", metadata=string(one_of("junk", "deliver")))
    #: When DMARC cannot be decided for a DNS failure (dmarc=temperror):
    #: "tempfail" (451 4.7.5, the sender retries) or "accept" (delivered, the header says temperror).
    temperror: str = field(default="tempfail", metadata=string(one_of("tempfail", "accept")))
    #: Clients whose mail is not checked, besides [relay] trusted_networks.
    exempt_networks: tuple[Network, ...] = field(
        default=_LOOPBACK, metadata=array(Items(STRING, (network,)), build=tuple)
    )
    #: Seconds one message's checks may spend on DNS: SPF from MAIL FROM on,
    #: DKIM and DMARC from the end of DATA on (RFC 7208 4.6.4 asks for at least 20).
    dns_budget_seconds: int = field(default=20, metadata=integer(positive))
    #: Seconds one DNS query may take.
    dns_query_timeout: int = field(default=5, metadata=integer(positive))
    #: DKIM signatures verified per message (the rest are ignored, and said so).
    max_dkim_signatures: int = field(default=10, metadata=integer(positive))


AUTHENTICATION: Final = Section(AuthenticationConfig)

#: The defaults, for the code that runs without a config file (the SMTP policy's own default).
DEFAULT_AUTHENTICATION: Final = AuthenticationConfig()
