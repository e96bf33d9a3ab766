"""
``[listeners.NAME]``: one listening socket each, what it speaks, where, how
TLS is offered, and its connection budgets (L{listener_budget}).

The endpoint string is checked by parsing it with Twisted's own parser (no
socket is made), and two listeners may not bind the same address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from twisted.internet.endpoints import _parse as _parse_endpoint_words
from twisted.internet.endpoints import _parseServer as _parse_server_endpoint

from mailapp.config.checks import network
from mailapp.config.schema import (
    INVALID,
    STRING,
    At,
    Items,
    Reader,
    Section,
    array,
    boolean,
    describe,
    integer,
    positive,
    quote_key,
    string,
)

if TYPE_CHECKING:
    from mailapp.config.sections import Config

__all__ = [
    "LOGIN_PROTOCOLS",
    "PROTOCOLS",
    "TLS_MODES",
    "ListenerBudget",
    "ListenerConfig",
    "check_budgets",
    "listener_budget",
    "read_listeners",
]

#: Every protocol a listener may speak. A protocol listed here but not built
#: yet is accepted by the config and skipped (with a warning) by the service.
PROTOCOLS: Final = frozenset({"smtp", "submission", "lmtp", "pop3", "imap", "managesieve", "webmail", "metrics"})

#: ``none``: cleartext only; ``starttls``: cleartext that can upgrade;
#: ``implicit``: TLS from the first byte (465, 993, 995, 443).
TLS_MODES: Final = frozenset({"none", "starttls", "implicit"})

#: Protocols whose sessions log in: their connections that have not logged in
#: yet get a budget of their own (``max_unauthenticated``).
LOGIN_PROTOCOLS: Final = frozenset({"submission", "pop3", "imap", "managesieve"})
#: Protocols whose connections mailapp counts (``max_connections`` per listener).
_COUNTED_PROTOCOLS: Final = LOGIN_PROTOCOLS | {"smtp", "lmtp", "webmail"}

#: HTTP-based protocols have no STARTTLS.
_NO_STARTTLS: Final = frozenset({"webmail", "metrics"})

_ENDPOINT_KINDS: Final = frozenset({"tcp", "unix"})

#: Where an endpoint binds: (kind, port or socket path, interface).
Bind = tuple[str, str, str]


# --- the checks of a listener's keys -----------------------------------------------------------


def _known_protocol(at: At, protocol: str) -> Any:
    if protocol not in PROTOCOLS:
        at.problem(f"unknown protocol {protocol!r} (expected one of: {', '.join(sorted(PROTOCOLS))})")
        return INVALID
    return protocol


def _known_tls_mode(at: At, tls: str) -> Any:
    if tls not in TLS_MODES:
        at.problem(f"unknown TLS mode {tls!r} (expected one of: {', '.join(sorted(TLS_MODES))})")
        return INVALID
    return tls


def _starttls_where_there_is_one(at: At, tls: str) -> str:
    protocol = at.values["protocol"]
    if tls == "starttls" and protocol in _NO_STARTTLS:
        at.problem(f"{protocol} has no STARTTLS: use 'implicit' or 'none'")
    return tls


def _counted(at: At, value: int) -> Any:
    protocol = at.values["protocol"]
    if protocol is not None and protocol not in _COUNTED_PROTOCOLS:
        at.problem(f"{protocol} connections are not counted: the key applies to smtp, submission, pop3, imap, managesieve and webmail")
        return INVALID
    return value


def _has_logins(at: At, value: int) -> Any:
    protocol = at.values["protocol"]
    if protocol in ("smtp", "lmtp"):
        at.problem(f"{'the MX' if protocol == 'smtp' else 'LMTP'} has no login, so every connection is unauthenticated: use max_connections")
        return INVALID
    if protocol == "webmail":
        at.problem("webmail logins are per request, not per connection: use max_connections")
        return INVALID
    return value


def _endpoint(at: At, description: str) -> Any:
    """A Twisted server endpoint string that parses (no socket is made)."""
    bind = _bind(description)
    if isinstance(bind, str):
        at.problem(f"bad endpoint string {description!r}: {bind}")
        return INVALID
    return description


def _plaintext_only_on_loopback(at: At, endpoint: str) -> str:
    kind, _, interface = _bind_of(endpoint)
    if at.values["allow_plaintext_auth"] and kind == "tcp" and not _is_loopback(interface):
        at.problem_on(
            "allow_plaintext_auth",
            f"plaintext passwords are only allowed on a loopback interface, and {endpoint!r} "
            f"listens on {interface or 'every interface'}",
        )
    return endpoint


def _lmtp_only(at: At, networks: tuple[Any, ...]) -> Any:
    if networks and at.values["protocol"] not in (None, "lmtp"):
        at.problem("only an lmtp listener takes allowed_clients (the MX and submission decide by [relay] trusted_networks and AUTH)")
        return INVALID
    return networks


def _lmtp_open_only_to_its_clients(at: At, endpoint: str) -> str:
    """
    LMTP delivers to any local mailbox with no login, so a listener that
    others can reach must name who may use it: an admin who writes
    ``tcp:24`` means "my MTA", not "the internet".
    """
    if at.values["protocol"] != "lmtp":
        return endpoint
    kind, _, interface = _bind_of(endpoint)
    if kind == "tcp" and not _is_loopback(interface) and not at.values["allowed_clients"]:
        at.problem(
            f"LMTP delivers without a login, and {endpoint!r} listens on {interface or 'every interface'}: "
            "listen on a unix socket or 127.0.0.1, or name the MTAs that may use it in "
            'allowed_clients = ["192.0.2.25/32"]'
        )
    return endpoint


@dataclass(frozen=True)
class ListenerConfig:
    """One listening socket: what it speaks, where, and how TLS is offered."""

    name: str
    protocol: str = field(metadata=string(_known_protocol, required=True))
    endpoint: str = field(metadata=string(_endpoint, _plaintext_only_on_loopback, _lmtp_open_only_to_its_clients, required=True))
    tls: str = field(metadata=string(_known_tls_mode, _starttls_where_there_is_one, required=True))
    allow_plaintext_auth: bool = field(metadata=boolean(default=False))
    #: This listener's own connection budget and, on a listener with logins,
    #: the part of it for connections not logged in yet; None where the file
    #: does not say (see L{listener_budget} for the defaults).
    max_connections: int | None = field(default=None, metadata=integer(positive, _counted))
    max_unauthenticated: int | None = field(default=None, metadata=integer(positive, _counted, _has_logins))
    #: On an lmtp listener: the networks whose clients may use it, besides
    #: loopback and a unix socket (always allowed). Applied live on SIGHUP.
    allowed_clients: tuple[Any, ...] = field(default=(), metadata=array(Items(STRING.named("a network"), (network,)), _lmtp_only, build=tuple))

    @property
    def needs_tls(self) -> bool:
        """Whether this listener needs the certificate (STARTTLS or implicit)."""
        return self.tls != "none"

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """``(interface, port)`` of a TCP listener (``""`` for every interface), else ``None``."""
        if not self.endpoint.startswith("tcp:"):
            return None
        _, args, kwargs = _parse_server_endpoint(self.endpoint, None)
        interface = kwargs.get("interface", "")
        return (str(ipaddress.ip_address(interface)) if interface else "", int(args[0]))

    def same_socket(self, other: "ListenerConfig") -> bool:
        """Whether C{other} is this listener with at most its budgets changed (which a reload applies live)."""
        return (self.name, self.protocol, self.endpoint, self.tls, self.allow_plaintext_auth) == (
            other.name,
            other.protocol,
            other.endpoint,
            other.tls,
            other.allow_plaintext_auth,
        )


#: The endpoint is read last: its checks need the protocol, allow_plaintext_auth and allowed_clients.
_LISTENER: Final = Section(
    ListenerConfig,
    order=("protocol", "tls", "allow_plaintext_auth", "max_connections", "max_unauthenticated", "allowed_clients", "endpoint"),
)


def read_listeners(reader: Reader, table: Mapping[str, Any], env: Mapping[str, Any]) -> tuple[ListenerConfig, ...]:
    """Every ``[listeners.NAME]`` that can be built; two listeners binding the same address are a problem."""
    result: list[ListenerConfig] = []
    claimed: dict[Bind, str] = {}
    for name, body in table.items():
        prefix = f"listeners.{name}"
        if not isinstance(body, dict):
            reader.problem(prefix, f"must be a table, not {describe(body)}")
            continue
        listener = _LISTENER.build(reader, body, prefix, env, name=name)
        endpoint = body.get("endpoint")
        if isinstance(endpoint, str) and not isinstance(bind := _bind(endpoint), str):
            _claim(reader, claimed, bind, name, endpoint, f"{prefix}.endpoint")
        if listener is not None:
            result.append(listener)
    return tuple(result)


def _claim(reader: Reader, claimed: dict[Bind, str], bind: Bind, name: str, endpoint: str, key: str) -> None:
    """Note that listener C{name} binds C{bind}, unless another listener already does."""
    duplicate = _find_clash(claimed, bind)
    if duplicate is not None:
        reader.problem(key, f"{endpoint!r} clashes with listeners.{duplicate}.endpoint (both would bind the same address)")
    elif not (bind[0] == "tcp" and bind[1] == "0"):  # port 0: every listen gets its own port
        claimed[bind] = name


@dataclass(frozen=True)
class ListenerBudget:
    """How many connections one listener admits (see L{listener_budget})."""

    max_connections: int
    #: None: the listener has no login (the MX), every connection may use the whole budget.
    max_unauthenticated: int | None


def listener_budget(config: Config, listener: ListenerConfig) -> ListenerBudget:
    """
    C{listener}'s connection budget under C{config}, with the defaults filled
    in: C{max_connections} defaults to C{[limits] max_connections}, which
    stays the ceiling for the whole server, and to a quarter of it on the
    MX (which has no login to tell its clients apart). On a listener with logins
    (submission, POP3, IMAP), C{max_unauthenticated} defaults to an even
    share of half the server's ceiling among those listeners, so that
    connections that never log in can take at most half of the server,
    whatever the number of such listeners, and never the MX's places.
    """
    limits = config.limits
    own = getattr(listener, "max_connections", None)
    if own is not None:
        max_connections = own
    elif listener.protocol == "smtp":
        # The MX: a quarter of the ceiling (250 of 1,000; Postfix runs 100
        # smtpd at most by default), so that 1,000 idle or trickling MX
        # connections cannot take the places readers need to log in.
        max_connections = max(1, limits.max_connections // 4)
    else:
        max_connections = limits.max_connections
    if listener.protocol not in LOGIN_PROTOCOLS:
        return ListenerBudget(max_connections, None)
    unauthenticated = getattr(listener, "max_unauthenticated", None)
    if unauthenticated is None:
        sharing = max(1, sum(1 for other in config.listeners if other.protocol in LOGIN_PROTOCOLS))
        unauthenticated = min(max_connections, max(1, limits.max_connections // (2 * sharing)))
    return ListenerBudget(max_connections, unauthenticated)


def check_budgets(reader: Reader, config: Config) -> None:
    """A listener's budgets fit inside the server's ceiling, and its unauthenticated share inside its budget."""
    for listener in config.listeners:
        prefix = f"listeners.{quote_key(listener.name)}"
        if listener.max_connections is not None and listener.max_connections > config.limits.max_connections:
            reader.problem(
                f"{prefix}.max_connections",
                f"{listener.max_connections} is more than limits.max_connections ({config.limits.max_connections}), "
                "the ceiling for all listeners together",
            )
        budget = listener_budget(config, listener)
        if (
            listener.max_unauthenticated is not None
            and budget.max_unauthenticated is not None
            and budget.max_unauthenticated > budget.max_connections
        ):
            reader.problem(
                f"{prefix}.max_unauthenticated",
                f"{listener.max_unauthenticated} is more than this listener's max_connections ({budget.max_connections})",
            )


# --- endpoints -------------------------------------------------------------------------------


def _bind_of(description: str) -> Bind:
    """Where a checked endpoint binds."""
    bind = _bind(description)
    assert not isinstance(bind, str), bind
    return bind


@functools.lru_cache(maxsize=256)
def _bind(description: str) -> Bind | str:
    """
    Parse a Twisted server endpoint string (no socket is made): where it
    binds, ``(kind, port-or-path, interface)``, or why it is bad.
    """
    try:
        words, _ = _parse_endpoint_words(description)
    except (ValueError, StopIteration) as error:
        return str(error) or "cannot parse"
    kind = words[0] if words else ""
    if kind == "ssl":
        return "use a 'tcp:' endpoint and set tls = \"implicit\" instead of an 'ssl:' endpoint"
    if kind not in _ENDPOINT_KINDS:
        return f"unsupported kind {kind!r} (expected 'tcp:PORT[:interface=ADDRESS]' or 'unix:PATH')"
    if kind == "tcp" and (len(words) < 2 or not words[1].isdigit()):
        return f"port {words[1]!r} is not a number" if len(words) >= 2 else "missing port"
    try:
        _, args, kwargs = _parse_server_endpoint(description, None)
    except TypeError as error:
        # The parser's signature is the schema: name the option, not the function.
        unknown = re.search(r"unexpected keyword argument '([^']+)'", str(error))
        return f"unknown option {unknown.group(1)!r}" if unknown else "wrong number of ':'-separated fields"
    except (ValueError, IndexError) as error:
        return str(error)
    if kind == "unix":
        if not args[0]:
            return "a unix endpoint needs a socket path"
        return ("unix", str(args[0]), "")
    port = args[0]
    if not 0 <= port <= 65535:
        return f"port {port} is out of range 0-65535"
    interface = kwargs.get("interface", "")
    if interface:
        try:
            interface = str(ipaddress.ip_address(interface))
        except ValueError:
            return f"interface {interface!r} is not an IP address"
    return ("tcp", str(port), interface)


def _find_clash(claimed: Mapping[Bind, str], bind: Bind) -> str | None:
    """The listener already bound where ``bind`` would; a wildcard interface clashes with any on its port."""
    kind, where, interface = bind
    if kind == "tcp" and where == "0":
        return None
    for (other_kind, other_where, other_interface), name in claimed.items():
        if (other_kind, other_where) != (kind, where):
            continue
        if kind == "unix" or interface == other_interface or _is_wildcard(interface) or _is_wildcard(other_interface):
            return name
    return None


def _is_wildcard(interface: str) -> bool:
    return interface in ("", "0.0.0.0", "::")


def _is_loopback(interface: str) -> bool:
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False
