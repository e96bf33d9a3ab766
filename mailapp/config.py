"""
The static configuration: one TOML file, read once at start.

:func:`parse` is a pure function from the file's text to a frozen
:class:`Config`; :func:`load` reads the file and also checks what only the
file system can tell (do the TLS certificate files exist?). Both read the
text against a whitelist and collect *every* problem before raising one
:class:`ConfigError`, so that an operator fixes a file in one pass instead of
one restart per typo. Each problem names the file and the dotted key, e.g.::

    etc/mailapp.toml: listeners.smtp.endpoint: bad endpoint string 'tcp:x': ...

Mutable data (users, aliases, the queue) never lives here; it is in
``state_dir`` and is changed with the ``mailapp`` command.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar

from twisted.internet.endpoints import _parse as _parse_endpoint_words
from twisted.internet.endpoints import _parseServer as _parse_server_endpoint

__all__ = [
    "PROTOCOLS",
    "TLS_MODES",
    "Config",
    "ConfigError",
    "HostPort",
    "Limits",
    "ListenerBudget",
    "ListenerConfig",
    "RelayConfig",
    "SNICertificate",
    "SecurityConfig",
    "TLSConfig",
    "default_per_address",
    "listener_budget",
    "load",
    "parse",
]

#: Every protocol a listener may speak. A protocol listed here but not built
#: yet is accepted by the config and skipped (with a warning) by the service.
PROTOCOLS: Final = frozenset({"smtp", "submission", "pop3", "imap", "webmail", "metrics"})

#: ``none``: cleartext only; ``starttls``: cleartext that can upgrade;
#: ``implicit``: TLS from the first byte (465, 993, 995, 443).
TLS_MODES: Final = frozenset({"none", "starttls", "implicit"})

#: Protocols whose sessions log in: their connections that have not logged in
#: yet get a budget of their own (``max_unauthenticated``).
LOGIN_PROTOCOLS: Final = frozenset({"submission", "pop3", "imap"})
#: Protocols whose connections mailapp counts (``max_connections`` per listener).
_COUNTED_PROTOCOLS: Final = LOGIN_PROTOCOLS | {"smtp", "webmail"}

#: HTTP-based protocols have no STARTTLS.
_NO_STARTTLS: Final = frozenset({"webmail", "metrics"})

_ENDPOINT_KINDS: Final = frozenset({"tcp", "unix"})

_DEFAULT_LIMITS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "max_message_size": 26_214_400,
        "max_recipients": 100,
        "max_connections": 1000,
        "max_connections_per_ip": 20,
        "smtp_timeout_seconds": 300,
        # Commands a session may send before it authenticates (submission, POP3, IMAP).
        "max_commands_before_auth": 20,
        # Idle seconds after login (RFC 1939 3 and RFC 3501 5.4 ask for 10 and 30 minutes).
        "pop3_timeout_seconds": 600,
        "imap_timeout_seconds": 1800,
        # Messages one authenticated sender may send per sliding hour (submission, webmail).
        "max_messages_per_hour": 1000,
        # IMAP after login: one literal (APPEND's message excepted) and one command line, in bytes.
        "imap_max_literal": 262_144,
        "imap_max_line": 524_288,
        # Idle seconds before login on submission, POP3 and IMAP.
        "login_timeout_seconds": 60,
        # SMTP answers MAIL FROM with 452 4.3.1 while the state directory's
        # filesystem has fewer free bytes than this (plus the SIZE= declared).
        "min_free_disk": 52_428_800,
        # Whole-session deadlines (idle timeouts restart at every byte; these do not).
        "smtp_session_seconds": 3600,
        "pop3_session_seconds": 3600,
        # Seconds from connect to a login on submission, POP3 and IMAP (IMAP has no deadline after it: IDLE).
        "login_deadline_seconds": 300,
        # Seconds a command line (or an HTTP request's headers) may take from its first byte.
        "command_line_seconds": 60,
        # Message data (SMTP DATA, IMAP literals, webmail bodies) must average this many bytes/s after the grace.
        "min_data_rate": 500,
        "data_grace_seconds": 30,
        # Per mailbox, as the sum of the index's (wire) sizes; 0 = unlimited.
        # 5 GiB: far above what a person's mail reaches in years, while one
        # mailbox (or one hostile sender) can no longer fill a small server's disk.
        "mailbox_quota_bytes": 5 * 1024**3,
        # Messages per mailbox; 0 = unlimited (the byte quota already bounds the disk).
        "mailbox_quota_messages": 0,
        # The MX, per client address (an IPv6 /64), outside relay.trusted_networks;
        # 0 = unlimited. Generous: a busy list server sends about one a second.
        "mx_messages_per_minute": 60,
        "mx_bytes_per_minute": 200 * 1024**2,
    }
)

#: The C{[limits]} keys where 0 means "no limit".
UNLIMITED_WHEN_ZERO: Final = frozenset(
    {"mailbox_quota_bytes", "mailbox_quota_messages", "mx_messages_per_minute", "mx_bytes_per_minute"}
)

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class ConfigError(Exception):
    """
    The configuration cannot be used. ``problems`` lists every mistake found,
    each a complete line naming the file and the dotted key.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        count = len(self.problems)
        header = f"{count} configuration problem{'s' if count != 1 else ''}:"
        return "\n".join([header, *(f"  {problem}" for problem in self.problems)])


@dataclass(frozen=True)
class HostPort:
    """A next hop for relaying: a host name or IP address, and a TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class SNICertificate:
    """A certificate (PEM, with its chain) and key served to clients that ask for one name by SNI."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TLSConfig:
    """
    Where the server certificate and key are (PEM). ``cert`` may hold a chain:
    the server certificate first, then intermediates. With
    ``generate_self_signed`` the service creates a self-signed pair when the
    files are missing (development only). ``sni`` maps a lower-case host name
    (or ``*.domain`` for one label) to another pair, served to clients that
    ask for that name; ``min_version`` is ``"1.2"`` or ``"1.3"``.
    """

    cert: Path
    key: Path
    generate_self_signed: bool
    sni: Mapping[str, SNICertificate] = field(default_factory=lambda: MappingProxyType({}))
    min_version: str = "1.2"


@dataclass(frozen=True)
class ListenerConfig:
    """One listening socket: what it speaks, where, and how TLS is offered."""

    name: str
    protocol: str
    endpoint: str
    tls: str
    allow_plaintext_auth: bool
    #: This listener's own connection budget and, on a listener with logins,
    #: the part of it for connections not logged in yet; None where the file
    #: does not say (see L{listener_budget} for the defaults).
    max_connections: int | None = None
    max_unauthenticated: int | None = None

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


@dataclass(frozen=True)
class ListenerBudget:
    """How many connections one listener admits (see L{listener_budget})."""

    max_connections: int
    #: None: the listener has no login (the MX), every connection may use the whole budget.
    max_unauthenticated: int | None


@dataclass(frozen=True)
class Limits:
    """Resource limits; every value is a positive integer, but those in L{UNLIMITED_WHEN_ZERO} may be 0 (no limit)."""

    max_message_size: int = _DEFAULT_LIMITS["max_message_size"]
    max_recipients: int = _DEFAULT_LIMITS["max_recipients"]
    max_connections: int = _DEFAULT_LIMITS["max_connections"]
    max_connections_per_ip: int = _DEFAULT_LIMITS["max_connections_per_ip"]
    smtp_timeout_seconds: int = _DEFAULT_LIMITS["smtp_timeout_seconds"]
    max_commands_before_auth: int = _DEFAULT_LIMITS["max_commands_before_auth"]
    pop3_timeout_seconds: int = _DEFAULT_LIMITS["pop3_timeout_seconds"]
    imap_timeout_seconds: int = _DEFAULT_LIMITS["imap_timeout_seconds"]
    max_messages_per_hour: int = _DEFAULT_LIMITS["max_messages_per_hour"]
    imap_max_literal: int = _DEFAULT_LIMITS["imap_max_literal"]
    imap_max_line: int = _DEFAULT_LIMITS["imap_max_line"]
    login_timeout_seconds: int = _DEFAULT_LIMITS["login_timeout_seconds"]
    min_free_disk: int = _DEFAULT_LIMITS["min_free_disk"]
    smtp_session_seconds: int = _DEFAULT_LIMITS["smtp_session_seconds"]
    pop3_session_seconds: int = _DEFAULT_LIMITS["pop3_session_seconds"]
    login_deadline_seconds: int = _DEFAULT_LIMITS["login_deadline_seconds"]
    command_line_seconds: int = _DEFAULT_LIMITS["command_line_seconds"]
    min_data_rate: int = _DEFAULT_LIMITS["min_data_rate"]
    data_grace_seconds: int = _DEFAULT_LIMITS["data_grace_seconds"]
    mailbox_quota_bytes: int = _DEFAULT_LIMITS["mailbox_quota_bytes"]
    mailbox_quota_messages: int = _DEFAULT_LIMITS["mailbox_quota_messages"]
    mx_messages_per_minute: int = _DEFAULT_LIMITS["mx_messages_per_minute"]
    mx_bytes_per_minute: int = _DEFAULT_LIMITS["mx_bytes_per_minute"]


@dataclass(frozen=True)
class SecurityConfig:
    """
    Failed-login delays and address bans (``[security]``, see
    :mod:`mailapp.abuse`): each failure is answered after
    ``auth_failure_delay`` seconds, doubled per recent failure of the address
    or the account, up to ``auth_failure_delay_max``; ``ban_after_failures``
    failures from one address within ``ban_window`` seconds ban it for
    ``ban_seconds``, unless it is in ``ban_exempt_networks``.
    """

    auth_failure_delay: float = 1.0
    auth_failure_delay_max: float = 15.0
    ban_after_failures: int = 10
    ban_window: int = 600
    ban_seconds: int = 3600
    ban_exempt_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: How long a verified password is remembered (as a keyed MAC, never in
    #: clear), so that a client logging in again skips the KDF; 0 turns it off.
    auth_cache_seconds: int = 300
    #: Refuse MAIL FROM a local domain on the MX unless the client is in
    #: [relay] trusted_networks: our own users send through submission, so
    #: anyone else using our domains there is forging them.
    mx_refuse_local_senders: bool = True


@dataclass(frozen=True)
class RelayConfig:
    """
    Outbound policy. ``transports`` maps a (lower-case) domain to the next hop
    that replaces its MX lookup; ``smarthost`` if set takes every other remote
    message; clients in ``trusted_networks`` may relay without authenticating.
    """

    transports: Mapping[str, HostPort] = field(default_factory=lambda: MappingProxyType({}))
    smarthost: HostPort | None = None
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: Seconds after which an undelivered message is bounced (default 5 days).
    max_lifetime: int = 5 * 24 * 3600
    #: Seconds to wait before each retry; the last value repeats.
    retry_schedule: tuple[int, ...] = (300, 600, 1200, 2400, 3600)
    #: Seconds after which the sender is told once that delivery is delayed; 0: never.
    delay_warning: int = 0
    #: Domains whose servers must offer STARTTLS, or the message waits.
    require_tls: frozenset[str] = frozenset()
    #: AUTH PLAIN credentials for the smarthost (sent only inside TLS).
    smarthost_username: str | None = None
    smarthost_password: str | None = None
    #: Refuse to send to the smarthost without STARTTLS.
    smarthost_require_tls: bool = True
    #: Outbound connections, in total and to one destination domain (Postfix's
    #: default destination concurrency is 20 too).
    max_connections: int = 50
    max_connections_per_domain: int = 20
    #: Outbound connections to one destination address (IP and port), for
    #: every domain it serves together: a slow MX (a tarpit) can hold no more.
    #: By default a fifth of C{max_connections}, at least one (L{default_per_address}).
    max_connections_per_address: int = 10
    #: Messages one alias may forward to other domains at once, and an hour after that.
    forward_burst: int = 30
    forward_per_hour: int = 300
    #: Seconds: to connect; to wait for one reply; for a whole connection.
    connect_timeout: int = 30
    command_timeout: int = 300
    session_timeout: int = 1800
    #: DNS servers for MX lookups (``host:port``); the system's resolv.conf when empty.
    nameservers: tuple[HostPort, ...] = ()


def default_per_address(max_connections: int) -> int:
    """
    What one destination address may hold of C{max_connections} when the
    config does not say: a fifth, at least one, so that four slow peers
    still leave a fifth of the connections for everybody else.
    """
    return max(1, max_connections // 5)


@dataclass(frozen=True)
class Config:
    """The whole static configuration, validated. Paths are absolute."""

    path: Path
    hostname: str
    state_dir: Path
    local_domains: tuple[str, ...]
    tls: TLSConfig
    listeners: tuple[ListenerConfig, ...]
    limits: Limits
    relay: RelayConfig
    #: How a batch of deliveries is made durable: "filesystem" (one syncfs(2)
    #: per step of a batch, Linux) or "file" (fsync of every file and directory).
    sync: str = "filesystem"
    #: Log output when run by twist/twistd: "text" (human) or "json" (one JSON object a line).
    log_format: str = "text"
    security: SecurityConfig = field(default_factory=SecurityConfig)

    @property
    def needs_tls(self) -> bool:
        """Whether any listener offers TLS, so the certificate is needed."""
        return any(listener.needs_tls for listener in self.listeners)


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


def parse(text: str, path: Path, *, base_dir: Path | None = None) -> Config:
    """
    Turn the text of a config file into a :class:`Config`, touching no file.

    @param path: the file the text came from, used in problem messages and
        kept as ``Config.path``.
    @param base_dir: what relative paths (``state_dir``, TLS files) resolve
        against; the current working directory when ``None``.
    @raise ConfigError: listing every problem found.
    """
    return _interpret(text, Path(path), base_dir, check_files=False)


def load(path: Path | str, *, base_dir: Path | None = None) -> Config:
    """
    Read and parse the config file at ``path``, and check the files it names
    (the TLS certificate and key, unless they are to be generated).

    @raise ConfigError: if the file cannot be read, or listing every problem
        in it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError([f"{path}: cannot read config file: {reason}"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError([f"{path}: config file is not UTF-8: {error.reason}"]) from None
    return _interpret(text, path, base_dir, check_files=True)


# ---------------------------------------------------------------------------
# Interpretation. One _Reader walks the document; every check appends to its
# problem list and returns a usable default so that checking can go on.

_T = TypeVar("_T")

_SECTIONS: Final = frozenset({"server", "domains", "tls", "listeners", "limits", "relay", "security"})
_SERVER_KEYS: Final = frozenset({"hostname", "state_dir", "sync", "log_format"})
_LOG_FORMATS: Final = ("text", "json")
_SYNC_MODES: Final = ("filesystem", "file")
_DOMAINS_KEYS: Final = frozenset({"local"})
_TLS_KEYS: Final = frozenset({"cert", "key", "generate_self_signed", "sni", "min_version"})
_TLS_MIN_VERSIONS: Final = ("1.2", "1.3")
_LISTENER_KEYS: Final = frozenset(
    {"protocol", "endpoint", "tls", "allow_plaintext_auth", "max_connections", "max_unauthenticated"}
)
_RELAY_KEYS: Final = frozenset(
    {
        "transports",
        "smarthost",
        "trusted_networks",
        "max_lifetime",
        "retry_schedule",
        "delay_warning",
        "require_tls",
        "smarthost_username",
        "smarthost_password",
        "smarthost_require_tls",
        "max_connections",
        "max_connections_per_domain",
        "max_connections_per_address",
        "forward_burst",
        "forward_per_hour",
        "connect_timeout",
        "command_timeout",
        "session_timeout",
        "nameservers",
    }
)
#: [relay] keys that are positive integers, with their defaults.
_RELAY_POSITIVE: Final[Mapping[str, int]] = MappingProxyType(
    {
        "max_lifetime": 5 * 24 * 3600,
        "max_connections": 50,
        "max_connections_per_domain": 20,
        "connect_timeout": 30,
        "command_timeout": 300,
        "session_timeout": 1800,
        "forward_burst": 30,
        "forward_per_hour": 300,
    }
)

_TYPE_NAMES: Final = {str: "a string", bool: "a boolean", int: "an integer", list: "an array", dict: "a table"}


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path}: {key}: {message}" if key else f"{self.path}: {message}")

    def table(self, parent: Mapping[str, Any], name: str, key: str) -> dict[str, Any]:
        value = parent.get(name, {})
        if not isinstance(value, dict):
            self.problem(key, f"must be a table, not {_describe(value)}")
            return {}
        return value

    def only(self, table: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
        for name in table:
            if name not in allowed:
                choices = ", ".join(sorted(allowed))
                self.problem(_join(prefix, name), f"unknown key (expected one of: {choices})")

    def typed(
        self, table: Mapping[str, Any], name: str, kind: type[_T], key: str, default: _T | None = None
    ) -> _T | None:
        """The value if present and of ``kind`` (a bool is never an int), else ``default``."""
        if name not in table:
            return default
        value = table[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem(key, f"must be {_TYPE_NAMES.get(kind, kind.__name__)}, not {_describe(value)}")
            return default
        return value

    def required(self, table: Mapping[str, Any], name: str, kind: type[_T], key: str) -> _T | None:
        if name not in table:
            self.problem(key, "is required")
            return None
        return self.typed(table, name, kind, key)


def _interpret(text: str, path: Path, base_dir: Path | None, *, check_files: bool) -> Config:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: {_describe_syntax_error(error)}"]) from None
    base = base_dir if base_dir is not None else Path.cwd()
    reader = _Reader(path)
    reader.only(document, _SECTIONS, "")

    server = reader.table(document, "server", "server")
    reader.only(server, _SERVER_KEYS, "server")
    hostname = reader.required(server, "hostname", str, "server.hostname")
    if hostname is not None:
        hostname = _domain(reader, hostname, "server.hostname")
    state_dir_text = reader.typed(server, "state_dir", str, "server.state_dir", "var")
    state_dir = _resolve(reader, "var" if state_dir_text is None else state_dir_text, base, "server.state_dir")

    sync = reader.typed(server, "sync", str, "server.sync", "filesystem") or "filesystem"
    if sync not in _SYNC_MODES:
        reader.problem("server.sync", f"must be one of {', '.join(_SYNC_MODES)}, not {sync!r}")
        sync = "filesystem"
    log_format = reader.typed(server, "log_format", str, "server.log_format", "text") or "text"
    if log_format not in _LOG_FORMATS:
        reader.problem("server.log_format", f"must be one of {', '.join(_LOG_FORMATS)}, not {log_format!r}")
        log_format = "text"

    domains = reader.table(document, "domains", "domains")
    reader.only(domains, _DOMAINS_KEYS, "domains")
    local_domains = _local_domains(reader, domains)

    tls_table = reader.table(document, "tls", "tls")
    reader.only(tls_table, _TLS_KEYS, "tls")
    cert_text = reader.typed(tls_table, "cert", str, "tls.cert")
    key_text = reader.typed(tls_table, "key", str, "tls.key")
    tls = TLSConfig(
        cert=_resolve(reader, cert_text, base, "tls.cert") if cert_text is not None else state_dir / "tls" / "cert.pem",
        key=_resolve(reader, key_text, base, "tls.key") if key_text is not None else state_dir / "tls" / "key.pem",
        generate_self_signed=bool(
            reader.typed(tls_table, "generate_self_signed", bool, "tls.generate_self_signed", False)
        ),
        sni=_sni(reader, tls_table, base),
        min_version=_tls_min_version(reader, tls_table),
    )

    listeners = _listeners(reader, reader.table(document, "listeners", "listeners"))

    limits_table = reader.table(document, "limits", "limits")
    reader.only(limits_table, frozenset(_DEFAULT_LIMITS), "limits")
    limit_values: dict[str, int] = {}
    for name, default in _DEFAULT_LIMITS.items():
        value = reader.typed(limits_table, name, int, f"limits.{name}", default)
        if value is not None and name in UNLIMITED_WHEN_ZERO and value < 0:
            reader.problem(f"limits.{name}", f"must be 0 (unlimited) or a positive integer, not {value}")
            value = default
        elif value is not None and value <= 0 and name not in UNLIMITED_WHEN_ZERO:
            reader.problem(f"limits.{name}", f"must be a positive integer, not {value}")
            value = default
        limit_values[name] = value if value is not None else default
    limits = Limits(**limit_values)
    if limits.max_connections_per_ip > limits.max_connections:
        reader.problem(
            "limits.max_connections_per_ip",
            f"{limits.max_connections_per_ip} is more than limits.max_connections ({limits.max_connections})",
        )

    relay = _relay(reader, reader.table(document, "relay", "relay"))
    security = _security(reader, reader.table(document, "security", "security"))

    config = Config(
        path=path,
        hostname=hostname or "",
        state_dir=state_dir,
        local_domains=local_domains,
        tls=tls,
        listeners=listeners,
        limits=limits,
        sync=sync,
        log_format=log_format,
        relay=relay,
        security=security,
    )
    _check_budgets(reader, config)
    if check_files:
        _check_tls_files(reader, config)
    if reader.problems:
        raise ConfigError(reader.problems)
    return config


def _check_budgets(reader: _Reader, config: Config) -> None:
    """A listener's budgets fit inside the server's ceiling, and its unauthenticated share inside its budget."""
    for listener in config.listeners:
        prefix = f"listeners.{_quote_key(listener.name)}"
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


def _check_tls_files(reader: _Reader, config: Config) -> None:
    """The certificate and key must exist when a listener needs them and nothing will generate them."""
    if not config.needs_tls:
        return
    for name, pair in config.tls.sni.items():
        for key, file in ((f"tls.sni.{_quote_key(name)}.cert", pair.cert), (f"tls.sni.{_quote_key(name)}.key", pair.key)):
            if not file.is_file():
                reader.problem(key, f"file {str(file)!r} does not exist")
    if config.tls.generate_self_signed:
        return
    for key, file in (("tls.cert", config.tls.cert), ("tls.key", config.tls.key)):
        if not file.is_file():
            reader.problem(
                key,
                f"file {str(file)!r} does not exist (a listener uses TLS and "
                "tls.generate_self_signed is false)",
            )


def _sni(reader: _Reader, tls_table: Mapping[str, Any], base: Path) -> Mapping[str, SNICertificate]:
    """``[tls.sni]``: host name (or ``*.domain``) = { cert = PATH, key = PATH }; both required."""
    result: dict[str, SNICertificate] = {}
    for name, body in reader.table(tls_table, "sni", "tls.sni").items():
        key = f"tls.sni.{_quote_key(name)}"
        wildcard = name.startswith("*.")
        domain = _domain(reader, name[2:] if wildcard else name, key)
        if not isinstance(body, dict):
            reader.problem(key, f"must be a table {{ cert = PATH, key = PATH }}, not {_describe(body)}")
            continue
        reader.only(body, frozenset({"cert", "key"}), key)
        cert_text = reader.required(body, "cert", str, f"{key}.cert")
        key_text = reader.required(body, "key", str, f"{key}.key")
        if domain is None or cert_text is None or key_text is None:
            continue
        result[("*." if wildcard else "") + domain] = SNICertificate(
            cert=_resolve(reader, cert_text, base, f"{key}.cert"), key=_resolve(reader, key_text, base, f"{key}.key")
        )
    return MappingProxyType(result)


def _tls_min_version(reader: _Reader, tls_table: Mapping[str, Any]) -> str:
    version = reader.typed(tls_table, "min_version", str, "tls.min_version", "1.2") or "1.2"
    if version not in _TLS_MIN_VERSIONS:
        reader.problem("tls.min_version", f"must be one of {', '.join(_TLS_MIN_VERSIONS)}, not {version!r}")
        return "1.2"
    return version


def _local_domains(reader: _Reader, domains: Mapping[str, Any]) -> tuple[str, ...]:
    values = reader.typed(domains, "local", list, "domains.local", [])
    result: list[str] = []
    for index, value in enumerate(values or []):
        key = f"domains.local[{index}]"
        if not isinstance(value, str):
            reader.problem(key, f"must be a string, not {_describe(value)}")
            continue
        domain = _domain(reader, value, key)
        if domain and domain not in result:
            result.append(domain)
    return tuple(result)


def _listeners(reader: _Reader, table: Mapping[str, Any]) -> tuple[ListenerConfig, ...]:
    result: list[ListenerConfig] = []
    # (kind, port or socket path, interface) -> listener name, for duplicates
    claimed: dict[tuple[str, str, str], str] = {}
    for name, body in table.items():
        prefix = f"listeners.{name}"
        if not isinstance(body, dict):
            reader.problem(prefix, f"must be a table, not {_describe(body)}")
            continue
        reader.only(body, _LISTENER_KEYS, prefix)
        protocol = reader.required(body, "protocol", str, f"{prefix}.protocol")
        if protocol is not None and protocol not in PROTOCOLS:
            reader.problem(
                f"{prefix}.protocol",
                f"unknown protocol {protocol!r} (expected one of: {', '.join(sorted(PROTOCOLS))})",
            )
            protocol = None
        tls = reader.required(body, "tls", str, f"{prefix}.tls")
        if tls is not None and tls not in TLS_MODES:
            reader.problem(
                f"{prefix}.tls", f"unknown TLS mode {tls!r} (expected one of: {', '.join(sorted(TLS_MODES))})"
            )
            tls = None
        if tls == "starttls" and protocol in _NO_STARTTLS:
            reader.problem(f"{prefix}.tls", f"{protocol} has no STARTTLS: use 'implicit' or 'none'")
        plaintext = reader.typed(body, "allow_plaintext_auth", bool, f"{prefix}.allow_plaintext_auth", False)
        budgets: dict[str, int | None] = {}
        for key in ("max_connections", "max_unauthenticated"):
            value = reader.typed(body, key, int, f"{prefix}.{key}")
            if value is not None and value <= 0:
                reader.problem(f"{prefix}.{key}", f"must be a positive integer, not {value}")
                value = None
            if value is not None and protocol is not None and protocol not in _COUNTED_PROTOCOLS:
                reader.problem(f"{prefix}.{key}", f"{protocol} connections are not counted: the key applies to smtp, submission, pop3, imap and webmail")
                value = None
            if key == "max_unauthenticated" and value is not None and protocol == "smtp":
                reader.problem(
                    f"{prefix}.{key}", "the MX has no login, so every connection is unauthenticated: use max_connections"
                )
                value = None
            if key == "max_unauthenticated" and value is not None and protocol == "webmail":
                reader.problem(f"{prefix}.{key}", "webmail logins are per request, not per connection: use max_connections")
                value = None
            budgets[key] = value
        endpoint = reader.required(body, "endpoint", str, f"{prefix}.endpoint")
        bind = _endpoint(reader, endpoint, f"{prefix}.endpoint") if endpoint is not None else None
        if bind is not None:
            kind, where, interface = bind
            if plaintext and kind == "tcp" and not _is_loopback(interface):
                reader.problem(
                    f"{prefix}.allow_plaintext_auth",
                    f"plaintext passwords are only allowed on a loopback interface, and {endpoint!r} "
                    f"listens on {interface or 'every interface'}",
                )
            duplicate = _find_clash(claimed, bind)
            if duplicate is not None:
                reader.problem(
                    f"{prefix}.endpoint",
                    f"{endpoint!r} clashes with listeners.{duplicate}.endpoint (both would bind the same address)",
                )
            elif not (kind == "tcp" and where == "0"):  # port 0: every listen gets its own port
                claimed[bind] = name
        if protocol is not None and tls is not None and endpoint is not None and bind is not None:
            result.append(
                ListenerConfig(
                    name=name,
                    protocol=protocol,
                    endpoint=endpoint,
                    tls=tls,
                    allow_plaintext_auth=bool(plaintext),
                    max_connections=budgets["max_connections"],
                    max_unauthenticated=budgets["max_unauthenticated"],
                )
            )
    return tuple(result)


def _endpoint(reader: _Reader, description: str, key: str) -> tuple[str, str, str] | None:
    """
    Check a Twisted server endpoint string by parsing it (no socket is made).
    Returns ``(kind, port-or-path, interface)``, or ``None`` after a problem.
    """

    def bad(reason: str) -> None:
        reader.problem(key, f"bad endpoint string {description!r}: {reason}")

    try:
        words, _ = _parse_endpoint_words(description)
    except (ValueError, StopIteration) as error:
        bad(str(error) or "cannot parse")
        return None
    kind = words[0] if words else ""
    if kind == "ssl":
        bad("use a 'tcp:' endpoint and set tls = \"implicit\" instead of an 'ssl:' endpoint")
        return None
    if kind not in _ENDPOINT_KINDS:
        bad(f"unsupported kind {kind!r} (expected 'tcp:PORT[:interface=ADDRESS]' or 'unix:PATH')")
        return None
    if kind == "tcp" and (len(words) < 2 or not words[1].isdigit()):
        bad(f"port {words[1]!r} is not a number" if len(words) >= 2 else "missing port")
        return None
    try:
        _, args, kwargs = _parse_server_endpoint(description, None)
    except TypeError as error:
        # The parser's signature is the schema: name the option, not the function.
        unknown = re.search(r"unexpected keyword argument '([^']+)'", str(error))
        bad(f"unknown option {unknown.group(1)!r}" if unknown else "wrong number of ':'-separated fields")
        return None
    except (ValueError, IndexError) as error:
        bad(str(error))
        return None
    if kind == "unix":
        if not args[0]:
            bad("a unix endpoint needs a socket path")
            return None
        return ("unix", str(args[0]), "")
    port = args[0]
    if not 0 <= port <= 65535:
        bad(f"port {port} is out of range 0-65535")
        return None
    interface = kwargs.get("interface", "")
    if interface:
        try:
            interface = str(ipaddress.ip_address(interface))
        except ValueError:
            bad(f"interface {interface!r} is not an IP address")
            return None
    return ("tcp", str(port), interface)


def _find_clash(claimed: Mapping[tuple[str, str, str], str], bind: tuple[str, str, str]) -> str | None:
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


def _relay(reader: _Reader, table: Mapping[str, Any]) -> RelayConfig:
    reader.only(table, _RELAY_KEYS, "relay")
    transports: dict[str, HostPort] = {}
    transport_table = reader.table(table, "transports", "relay.transports")
    for domain_text, hop_text in transport_table.items():
        key = f"relay.transports.{_quote_key(domain_text)}"
        domain = _domain(reader, domain_text, key)
        if not isinstance(hop_text, str):
            reader.problem(key, f"must be a string 'host:port', not {_describe(hop_text)}")
            continue
        hop = _host_port(reader, hop_text, key)
        if domain and hop:
            transports[domain] = hop
    smarthost_text = reader.typed(table, "smarthost", str, "relay.smarthost")
    smarthost = _host_port(reader, smarthost_text, "relay.smarthost") if smarthost_text is not None else None
    networks = _networks(reader, table, "trusted_networks", "relay")
    numbers: dict[str, int] = {}
    for name, default in _RELAY_POSITIVE.items():
        value = reader.typed(table, name, int, f"relay.{name}", default)
        if value is not None and value <= 0:
            reader.problem(f"relay.{name}", f"must be a positive integer, not {value}")
            value = default
        numbers[name] = default if value is None else value
    if numbers["max_connections_per_domain"] > numbers["max_connections"]:
        reader.problem(
            "relay.max_connections_per_domain",
            f"{numbers['max_connections_per_domain']} is more than relay.max_connections ({numbers['max_connections']})",
        )
    per_address = reader.typed(table, "max_connections_per_address", int, "relay.max_connections_per_address")
    if per_address is not None and per_address <= 0:
        reader.problem("relay.max_connections_per_address", f"must be a positive integer, not {per_address}")
        per_address = None
    elif per_address is not None and per_address > numbers["max_connections"]:
        reader.problem(
            "relay.max_connections_per_address",
            f"{per_address} is more than relay.max_connections ({numbers['max_connections']})",
        )
    delay_warning = reader.typed(table, "delay_warning", int, "relay.delay_warning", 0) or 0
    if delay_warning < 0:
        reader.problem("relay.delay_warning", f"must be 0 (off) or a positive integer, not {delay_warning}")
        delay_warning = 0
    schedule: list[int] = []
    schedule_value = reader.typed(table, "retry_schedule", list, "relay.retry_schedule", None)
    for index, value in enumerate(schedule_value or []):
        key = f"relay.retry_schedule[{index}]"
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            reader.problem(key, f"must be a positive integer (seconds), not {_describe(value)}")
            continue
        schedule.append(value)
    if schedule_value is not None and not schedule_value:
        reader.problem("relay.retry_schedule", "must list at least one interval")
    require_tls: set[str] = set()
    for index, value in enumerate(reader.typed(table, "require_tls", list, "relay.require_tls", []) or []):
        key = f"relay.require_tls[{index}]"
        if not isinstance(value, str):
            reader.problem(key, f"must be a string, not {_describe(value)}")
            continue
        domain = _domain(reader, value, key)
        if domain:
            require_tls.add(domain)
    username = reader.typed(table, "smarthost_username", str, "relay.smarthost_username")
    password = reader.typed(table, "smarthost_password", str, "relay.smarthost_password")
    if (username is None) != (password is None):
        reader.problem(
            "relay.smarthost_username" if username is None else "relay.smarthost_password",
            "smarthost_username and smarthost_password go together",
        )
    if username is not None and smarthost is None and smarthost_text is None:
        reader.problem("relay.smarthost_username", "is only used with relay.smarthost")
    smarthost_require_tls = reader.typed(table, "smarthost_require_tls", bool, "relay.smarthost_require_tls", True)
    nameservers: list[HostPort] = []
    for index, value in enumerate(reader.typed(table, "nameservers", list, "relay.nameservers", []) or []):
        key = f"relay.nameservers[{index}]"
        if not isinstance(value, str):
            reader.problem(key, f"must be a string 'address:port', not {_describe(value)}")
            continue
        hop = _host_port(reader, value, key)
        if hop is not None:
            try:
                ipaddress.ip_address(hop.host)
            except ValueError:
                reader.problem(key, f"{value!r}: a name server is given by its IP address")
                continue
            nameservers.append(hop)
    return RelayConfig(
        transports=MappingProxyType(transports),
        smarthost=smarthost,
        trusted_networks=tuple(networks),
        max_lifetime=numbers["max_lifetime"],
        retry_schedule=tuple(schedule) if schedule else RelayConfig.retry_schedule,
        delay_warning=delay_warning,
        require_tls=frozenset(require_tls),
        smarthost_username=username,
        smarthost_password=password,
        smarthost_require_tls=True if smarthost_require_tls is None else smarthost_require_tls,
        max_connections=numbers["max_connections"],
        max_connections_per_domain=numbers["max_connections_per_domain"],
        forward_burst=numbers["forward_burst"],
        forward_per_hour=numbers["forward_per_hour"],
        max_connections_per_address=default_per_address(numbers["max_connections"]) if per_address is None else per_address,
        connect_timeout=numbers["connect_timeout"],
        command_timeout=numbers["command_timeout"],
        session_timeout=numbers["session_timeout"],
        nameservers=tuple(nameservers),
    )


_SECURITY_KEYS: Final = frozenset(
    {
        "auth_failure_delay",
        "auth_failure_delay_max",
        "ban_after_failures",
        "ban_window",
        "ban_seconds",
        "ban_exempt_networks",
        "auth_cache_seconds",
        "mx_refuse_local_senders",
    }
)
#: The longest delay [security] accepts: a failed login holds its session that long.
_MAX_AUTH_DELAY: Final = 300


def _security(reader: _Reader, table: Mapping[str, Any]) -> SecurityConfig:
    reader.only(table, _SECURITY_KEYS, "security")
    defaults = SecurityConfig()
    delays: dict[str, float] = {}
    for name in ("auth_failure_delay", "auth_failure_delay_max"):
        default = getattr(defaults, name)
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= _MAX_AUTH_DELAY:
            shown = repr(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _describe(value)
            reader.problem(f"security.{name}", f"must be a number of seconds above 0 and at most {_MAX_AUTH_DELAY}, not {shown}")
            value = default
        delays[name] = float(value)
    if delays["auth_failure_delay_max"] < delays["auth_failure_delay"]:
        reader.problem(
            "security.auth_failure_delay_max",
            f"{delays['auth_failure_delay_max']:g} is less than security.auth_failure_delay ({delays['auth_failure_delay']:g})",
        )
    counts: dict[str, int] = {}
    for name in ("ban_after_failures", "ban_window", "ban_seconds"):
        default = getattr(defaults, name)
        value = reader.typed(table, name, int, f"security.{name}", default)
        if value is not None and value <= 0:
            reader.problem(f"security.{name}", f"must be a positive integer, not {value}")
            value = default
        counts[name] = default if value is None else value
    cache_seconds = reader.typed(table, "auth_cache_seconds", int, "security.auth_cache_seconds", defaults.auth_cache_seconds)
    if cache_seconds is None or cache_seconds < 0:
        if cache_seconds is not None:
            reader.problem("security.auth_cache_seconds", f"must be 0 (off) or a positive integer, not {cache_seconds}")
        cache_seconds = defaults.auth_cache_seconds
    networks = _networks(reader, table, "ban_exempt_networks", "security")
    refuse_local = reader.typed(
        table, "mx_refuse_local_senders", bool, "security.mx_refuse_local_senders", defaults.mx_refuse_local_senders
    )
    return SecurityConfig(
        auth_failure_delay=delays["auth_failure_delay"],
        auth_failure_delay_max=max(delays["auth_failure_delay_max"], delays["auth_failure_delay"]),
        ban_after_failures=counts["ban_after_failures"],
        ban_window=counts["ban_window"],
        ban_seconds=counts["ban_seconds"],
        ban_exempt_networks=tuple(networks),
        auth_cache_seconds=cache_seconds,
        mx_refuse_local_senders=defaults.mx_refuse_local_senders if refuse_local is None else refuse_local,
    )


def _networks(
    reader: _Reader, table: Mapping[str, Any], name: str, section: str
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """An array of CIDR strings; a network with host bits set gets a "did you mean" hint."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for index, value in enumerate(reader.typed(table, name, list, f"{section}.{name}", []) or []):
        key = f"{section}.{name}[{index}]"
        if not isinstance(value, str):
            reader.problem(key, f"must be a string, not {_describe(value)}")
            continue
        try:
            networks.append(ipaddress.ip_network(value, strict=True))
        except ValueError as error:
            hint = ""
            try:
                hint = f"; did you mean {ipaddress.ip_network(value, strict=False)}?"
            except ValueError:
                pass
            reader.problem(key, f"bad network {value!r}: {error}{hint}")
    return networks


def _host_port(reader: _Reader, text: str, key: str) -> HostPort | None:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text)
    if match is None:
        reader.problem(key, f"bad next hop {text!r}: expected 'host:port' (an IPv6 address goes in brackets)")
        return None
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        reader.problem(key, f"bad next hop {text!r}: port {port} is out of range 1-65535")
        return None
    try:
        return HostPort(str(ipaddress.ip_address(host)), port)
    except ValueError:
        pass
    domain = _domain(reader, host, key)
    return HostPort(domain, port) if domain else None


def _domain(reader: _Reader, text: str, key: str) -> str | None:
    """``text`` lower-cased if it is a valid DNS name (LDH labels, xn-- for IDNs), else a problem."""
    domain = text.lower()
    labels = domain.split(".")
    if (
        not domain
        or len(domain) > 253
        or not domain.isascii()
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        reader.problem(
            key,
            f"{text!r} is not a valid domain name (letters, digits and hyphens in dot-separated "
            "labels; write an international name in its xn-- form)",
        )
        return None
    return domain


def _resolve(reader: _Reader, text: str, base: Path, key: str) -> Path:
    if not text:
        reader.problem(key, "must not be empty")
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _join(prefix: str, name: str) -> str:
    quoted = _quote_key(name)
    return f"{prefix}.{quoted}" if prefix else quoted


def _quote_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def _describe(value: object) -> str:
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind):
            return f"{name} ({value!r})" if kind in (str, bool, int) else name
    return type(value).__name__


_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _describe_syntax_error(error: tomllib.TOMLDecodeError) -> str:
    message = str(error)
    match = _AT_LINE.search(message)
    if match is None:
        return f"TOML syntax error: {message}"
    return f"line {match.group(1)}, column {match.group(2)}: TOML syntax error: {message[: match.start()]}"

