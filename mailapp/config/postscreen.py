"""
The MX's checks before DATA (L{mailapp.postscreen}), in two sections:

  - ``[dnsbl]``: DNS blocklists, each a ``[dnsbl.lists."zone"]`` table
    (``kind = "ip"`` for a zen-style list of client addresses, ``"domain"``
    for a DBL-style list of the HELO name, the MAIL FROM domain and the
    domains of the body's URLs), with a weight; a client whose listings
    weigh ``threshold`` or more is refused ``554 5.7.1`` before DATA (or at
    its end, for the URLs).
  - ``[greylisting]``: the first attempt of a new (client network, sender,
    recipient) triplet is answered ``451 4.7.1`` at RCPT until ``delay``
    has passed; off by default.
  - ``[postscreen]``: the early-talker checks (Postfix postscreen-style): a
    greeting delay for unknown clients, during which a client that talks is
    refused, and the refusal of a client that pipelines without our having
    offered PIPELINING.

Three sections, not one: each is a check of its own, with its own switch and
exemptions, and an operator turns one on without reading about the other.
Both are carried by the SMTP listeners' policies, so ``SIGHUP`` applies them
to new sessions. The defaults check nothing: no list is configured, the
greeting is not delayed, pipelining is not judged and nothing is
greylisted, so that upgrading
never starts refusing mail nobody asked to refuse.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from mailapp.config.checks import Network, domain, network
from mailapp.config.schema import (
    INVALID,
    STRING,
    TABLE,
    At,
    Entries,
    Items,
    Section,
    array,
    boolean,
    integer,
    one_of,
    positive,
    string,
    table,
    zero_or_positive,
)

__all__ = [
    "DEFAULT_DNSBL",
    "DEFAULT_GREYLISTING",
    "DEFAULT_POSTSCREEN",
    "DNSBL",
    "GREYLISTING",
    "POSTSCREEN",
    "Blocklist",
    "DNSBLConfig",
    "GreylistingConfig",
    "PostscreenConfig",
]

#: Loopback is local software (a script, a content filter handing mail back), never judged.
_LOOPBACK: Final = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_LISTED: Final = ipaddress.ip_network("127.0.0.0/8")


def _return_code(at: At, text: str) -> Any:
    """A blocklist answer: an IPv4 address in 127.0.0.0/8 (what the lists answer with)."""
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        at.problem(f"bad return code {text!r}: must be an IPv4 address in 127.0.0.0/8")
        return INVALID
    if address not in _LISTED:
        at.problem(f"bad return code {text!r}: blocklists answer in 127.0.0.0/8")
        return INVALID
    return str(address)


@dataclass(frozen=True)
class Blocklist:
    """One list: what it is asked about, what a listing weighs, which answers count."""

    #: "ip": the client's address (reversed IPv4 octets, or IPv6 nibbles, under the zone);
    #: "domain": the HELO name, the MAIL FROM domain and the body's URL domains under the zone.
    kind: str = field(default="ip", metadata=string(one_of("ip", "domain")))
    #: What a listing adds to the client's score (refused at ``threshold``).
    weight: int = field(default=1, metadata=integer(positive))
    #: The answers that count as a listing (``["127.0.0.2", "127.0.0.3"]``);
    #: empty: any answer in 127.0.0.0/8 but 127.255.255.x (the lists' errors).
    codes: tuple[str, ...] = field(default=(), metadata=array(Items(STRING, (_return_code,)), build=tuple))


@dataclass(frozen=True)
class DNSBLConfig:
    """
    DNS blocklists on the MX. Clients in ``exempt_networks`` (and in
    ``[relay] trusted_networks``, and authenticated sessions) are not looked up.
    """

    #: The lists, by zone: ``[dnsbl.lists."zen.spamhaus.org"]`` with ``kind``, ``weight``, ``codes``.
    lists: Mapping[str, Blocklist] = field(
        default_factory=lambda: MappingProxyType({}),
        metadata=table(
            Entries(TABLE.named("a table { kind, weight, codes }"), (Section(Blocklist).check,), names=(domain,)),
            build=MappingProxyType,
        ),
    )
    #: The total weight of a client's listings at which it is refused ``554 5.7.1``.
    threshold: int = field(default=1, metadata=integer(positive))
    #: Seconds one lookup may take; a list that does not answer in time counts 0 (and is logged).
    timeout_seconds: int = field(default=5, metadata=integer(positive))
    #: Clients never looked up, besides [relay] trusted_networks.
    exempt_networks: tuple[Network, ...] = field(default=_LOOPBACK, metadata=array(Items(STRING, (network,)), build=tuple))
    #: At the end of DATA, look up the domains of the body's URLs in the domain
    #: lists (and IP-literal URLs in the IP lists). On by default: it asks
    #: nothing until a list is configured, and a DBL-style list is made for URLs.
    check_urls: bool = field(default=True, metadata=boolean())
    #: MIME parts of a message read for URLs (the rest is not).
    url_max_parts: int = field(default=20, metadata=integer(positive))
    #: KiB of decoded text read for URLs, over all its parts.
    url_max_text_kib: int = field(default=512, metadata=integer(positive))
    #: Distinct URL hosts (registrable domains and addresses) looked up per message.
    url_max_domains: int = field(default=20, metadata=integer(positive))


@dataclass(frozen=True)
class PostscreenConfig:
    """
    The early-talker checks on the MX (Postfix postscreen's pregreet and
    pipelining tests). A client that passes is remembered for
    ``pass_seconds`` and not delayed again.
    """

    #: Seconds an unknown client waits for the 220 greeting; one that talks
    #: meanwhile is refused ``554 5.5.1``. 0: greet at once (off).
    greeting_delay: int = field(default=0, metadata=integer(zero_or_positive("off")))
    #: Refuse (``554 5.5.1``) a client that sends several commands at once
    #: before we offered PIPELINING (after HELO, or before EHLO's reply).
    reject_unauth_pipelining: bool = field(default=False, metadata=boolean())
    #: Seconds a client that passed is remembered (by address) and greeted at once.
    pass_seconds: int = field(default=86400, metadata=integer(positive))
    #: Clients never delayed nor judged, besides [relay] trusted_networks.
    exempt_networks: tuple[Network, ...] = field(default=_LOOPBACK, metadata=array(Items(STRING, (network,)), build=tuple))


def _after_delay(at: At) -> None:
    """A retry window that ends before the delay does would greylist every new triplet for ever."""
    if at.values.get("retry_window", 0) <= at.values.get("delay", 0):
        at.problem_on("retry_window", "must be longer than greylisting.delay")


@dataclass(frozen=True)
class GreylistingConfig:
    """
    Greylisting on the MX (off by default): a new triplet (client /24 or
    /64, envelope sender, recipient) gets ``451 4.7.1`` at RCPT until
    ``delay`` seconds after its first attempt; a retry after that and before
    ``retry_window`` ends passes and whitelists the client's network for
    ``whitelist_days``. Kept in ``state_dir/greylist.sqlite3``. Not
    greylisted: authenticated sessions, ``[relay] trusted_networks`` and
    ``exempt_networks``.
    """

    #: Greylist at all.
    enabled: bool = field(default=False, metadata=boolean())
    #: Seconds from a triplet's first attempt before a retry is accepted.
    delay: int = field(default=300, metadata=integer(positive))
    #: Seconds after the first attempt within which the retry must come (else it starts again).
    retry_window: int = field(default=86400, metadata=integer(positive, then=(_after_delay,)))
    #: Days a client network that passed is not greylisted again (renewed by each message).
    whitelist_days: int = field(default=36, metadata=integer(positive))
    #: Clients never greylisted, besides [relay] trusted_networks.
    exempt_networks: tuple[Network, ...] = field(default=_LOOPBACK, metadata=array(Items(STRING, (network,)), build=tuple))


DNSBL: Final = Section(DNSBLConfig)
GREYLISTING: Final = Section(GreylistingConfig)
POSTSCREEN: Final = Section(PostscreenConfig)

#: The defaults, for the code that runs without a config file (the SMTP policy's own default).
DEFAULT_DNSBL: Final = DNSBLConfig()
DEFAULT_GREYLISTING: Final = GreylistingConfig()
DEFAULT_POSTSCREEN: Final = PostscreenConfig()
