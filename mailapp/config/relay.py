"""
``[relay]``: the outbound policy, read by the relay manager
(L{mailapp.relay.manager}) and its routes: next hops, retries, connection
budgets, TLS and AUTH towards the smarthost. Its defaults are the relay
manager's too (L{DEFAULT_RELAY}).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from mailapp.config.checks import HostPort, Network, domain, host_port, name_server, network, path
from mailapp.config.schema import (
    ANY,
    INVALID,
    STRING,
    At,
    Entries,
    Items,
    Section,
    at_most,
    boolean,
    describe,
    array,
    integer,
    one_of,
    positive,
    string,
    table,
    zero_or_positive,
)

#: The TLS policy levels (L{mailapp.relay.tlspolicy.LEVELS}: the config may not import the relay).
TLS_LEVELS: Final = ("none", "opportunistic", "verify", "dane", "mta-sts")
#: The values of ``dnssec_ad_trust`` (L{mailapp.relay.dane.AD_TRUST}).
AD_TRUST: Final = ("loopback", "any", "never")

__all__ = ["AD_TRUST", "DEFAULT_RELAY", "TLS_LEVELS", "RELAY", "RelayConfig", "default_per_address"]


def default_per_address(max_connections: int) -> int:
    """
    What one destination address may hold of C{max_connections} when the
    config does not say: a fifth, at least one, so that four slow peers
    still leave a fifth of the connections for everybody else.
    """
    return max(1, max_connections // 5)


def _positive_seconds(at: At, value: Any) -> Any:
    """An item of the retry schedule: one message for a wrong type and a wrong value alike."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        at.problem(f"must be a positive integer (seconds), not {describe(value)}")
        return INVALID
    return value


def _at_least_one(at: At, schedule: list[int]) -> Any:
    if not schedule:
        at.problem("must list at least one interval")
        return INVALID
    return schedule


def _smarthost_credentials(at: At) -> None:
    """The username and password go together, and only with a smarthost (checked once the password is read)."""
    username, password = at.values["smarthost_username"], at.values["smarthost_password"]
    if (username is None) != (password is None):
        at.problem_on(
            "smarthost_username" if username is None else "smarthost_password",
            "smarthost_username and smarthost_password go together",
        )
    if username is not None and at.values["smarthost"] is None and not isinstance(at.table.get("smarthost"), str):
        at.problem_on("smarthost_username", "is only used with relay.smarthost")


def _mail_address(at: At, text: str) -> Any:
    """C{text} if it is a plain ``local@domain`` address (the From: of a mailed TLS-RPT report)."""
    local, at_sign, host = text.rpartition("@")
    if not at_sign or not local or any(c in local for c in ' <>,;"\\\r\n'):
        at.problem(f"{text!r} is not a mail address (local@domain)")
        return INVALID
    checked = domain(at, host)
    return INVALID if checked is INVALID else f"{local}@{checked}"


def _per_address_default(at: At) -> int:
    return default_per_address(at.values["max_connections"])


def _strings(*checks: Any, name: str = "a string") -> Items:
    return Items(STRING.named(name), tuple(checks))


@dataclass(frozen=True)
class RelayConfig:
    """
    Outbound policy. ``transports`` maps a (lower-case) domain to the next hop
    that replaces its MX lookup; ``smarthost`` if set takes every other remote
    message; clients in ``trusted_networks`` may relay without authenticating.
    Its keys are read (and their problems reported) in field order.
    """

    transports: Mapping[str, HostPort] = field(
        default_factory=lambda: MappingProxyType({}),
        metadata=table(Entries(STRING.named("a string 'host:port'"), (host_port,), names=(domain,)), build=MappingProxyType),
    )
    smarthost: HostPort | None = field(default=None, metadata=string(host_port))
    trusted_networks: tuple[Network, ...] = field(default=(), metadata=array(_strings(network), build=tuple))
    #: Seconds after which an undelivered message is bounced (default 5 days).
    max_lifetime: int = field(default=5 * 24 * 3600, metadata=integer(positive))
    #: Outbound connections, in total and to one destination domain (Postfix's
    #: default destination concurrency is 20 too).
    max_connections: int = field(default=50, metadata=integer(positive))
    max_connections_per_domain: int = field(default=20, metadata=integer(positive, then=(at_most("max_connections"),)))
    #: Seconds a connection with nothing more to send stays open for the next
    #: message to its domain (0: QUIT at once), and after which a connection
    #: takes no new transaction (Postfix's smtp_connection_cache_time_limit
    #: and smtp_connection_reuse_time_limit, whose defaults these are).
    connection_cache_time: int = field(default=2, metadata=integer(zero_or_positive("QUIT at once")))
    connection_reuse_time: int = field(default=300, metadata=integer(positive))
    #: Seconds: to connect; to wait for one reply; for a whole connection.
    connect_timeout: int = field(default=30, metadata=integer(positive))
    command_timeout: int = field(default=300, metadata=integer(positive))
    session_timeout: int = field(default=1800, metadata=integer(positive))
    #: Messages one alias may forward to other domains at once, and an hour after that.
    forward_burst: int = field(default=30, metadata=integer(positive))
    forward_per_hour: int = field(default=300, metadata=integer(positive))
    #: Outbound connections to one destination address (IP and port), for
    #: every domain it serves together: a slow MX (a tarpit) can hold no more.
    #: By default a fifth of C{max_connections}, at least one (L{default_per_address}).
    max_connections_per_address: int = field(
        default=10, metadata=integer(positive, at_most("max_connections"), default_from=_per_address_default)
    )
    #: Seconds after which the sender is told once that delivery is delayed; 0: never.
    delay_warning: int = field(default=0, metadata=integer(zero_or_positive("off")))
    #: Seconds to wait before each retry; the last value repeats.
    retry_schedule: tuple[int, ...] = field(
        default=(300, 600, 1200, 2400, 3600),
        metadata=array(Items(ANY, (_positive_seconds,)), _at_least_one, build=tuple),
    )
    #: Domains whose servers must offer STARTTLS, or the message waits.
    require_tls: frozenset[str] = field(default=frozenset(), metadata=array(_strings(domain), build=frozenset))
    #: AUTH PLAIN credentials for the smarthost (sent only inside TLS).
    smarthost_username: str | None = field(default=None, metadata=string())
    smarthost_password: str | None = field(default=None, metadata=string(then=(_smarthost_credentials,)))
    #: Refuse to send to the smarthost without STARTTLS.
    smarthost_require_tls: bool = field(default=True, metadata=boolean())
    #: DNS servers for MX lookups (``host:port``); the system's resolv.conf when empty.
    nameservers: tuple[HostPort, ...] = field(
        default=(), metadata=array(_strings(name_server, name="a string 'address:port'"), build=tuple)
    )
    #: The TLS policy of every destination without its own (L{mailapp.relay.tlspolicy}):
    #: ``opportunistic`` encrypts when offered and honours DANE and MTA-STS where published.
    tls_policy: str = field(default="opportunistic", metadata=string(one_of(*TLS_LEVELS)))
    #: Per destination domain, its TLS policy (one of the same levels).
    tls_policies: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}),
        metadata=table(Entries(STRING.named("a TLS policy"), (one_of(*TLS_LEVELS),), names=(domain,)), build=MappingProxyType),
    )
    #: CA certificates (PEM) that verified peers and MTA-STS policy hosts must chain to; the system's when unset.
    tls_ca_file: Path | None = field(default=None, metadata=string(path))
    #: Whose DNSSEC AD bit DANE believes: ``loopback`` (only a resolver on 127.0.0.1/::1), ``any``, ``never``.
    dnssec_ad_trust: str = field(default="loopback", metadata=string(one_of(*AD_TRUST)))
    #: Send each day's TLS-RPT reports (RFC 8460) to the ``rua`` each policy domain publishes.
    tls_report_send: bool = field(default=True, metadata=boolean())
    #: Who we are in the reports (their ``organization-name`` and ``TLS-Report-Submitter``); our hostname when unset.
    tls_report_submitter: str | None = field(default=None, metadata=string(domain))
    #: The From: of mailed reports; ``postmaster@`` our first local domain (else our hostname) when unset.
    tls_report_from: str | None = field(default=None, metadata=string(_mail_address))


RELAY: Final = Section(RelayConfig)

#: The relay's defaults, for the code that runs without a config file (the relay manager's own defaults).
DEFAULT_RELAY: Final = RelayConfig()
