"""
The sections of the config file, each a frozen dataclass whose fields are
its keys (see L{mailapp.config.schema}): ``[server]``, ``[domains]``,
``[tls]``, ``[limits]``, ``[security]``, and L{Config}, the whole file.
``[listeners.NAME]`` and ``[relay]`` have modules of their own.

To add a key, add a field: its type, default and checks in one line, with a
C{#:} comment that says what it means (HACKING.md, "Adding a config key").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from mailapp.config.authentication import AuthenticationConfig
from mailapp.config.postscreen import DNSBLConfig, GreylistingConfig, PostscreenConfig
from mailapp.config.spam import SpamConfig
from mailapp.config.checks import Network, domain, network, path
from mailapp.config.listeners import ListenerConfig
from mailapp.config.relay import RelayConfig
from mailapp.config.schema import (
    INVALID,
    STRING,
    TABLE,
    At,
    Entries,
    Items,
    Section,
    at_least,
    at_most,
    boolean,
    describe,
    anything,
    array,
    integer,
    one_of,
    positive,
    string,
    table,
    zero_or_positive,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_SECURITY",
    "UNLIMITED_WHEN_ZERO",
    "Config",
    "DkimConfig",
    "DomainsSection",
    "Limits",
    "SNICertificate",
    "SecurityConfig",
    "ServerSection",
    "TLSConfig",
]


@dataclass(frozen=True)
class ServerSection:
    """``[server]``; its values are L{Config}'s own fields."""

    #: The server's own name (SMTP greeting, Received:, HELO, the generated certificate).
    hostname: str = field(metadata=string(domain, required=True))
    #: Mailboxes, accounts, queue; relative to the base directory.
    state_dir: Path = field(metadata=string(path, default_from=lambda at: at.env["base"] / "var"))
    #: How a batch of deliveries is made durable: "filesystem" (one syncfs(2)
    #: per step of a batch, Linux) or "file" (fsync of every file and directory).
    sync: str = field(default="filesystem", metadata=string(one_of("filesystem", "file")))
    #: Log output when run by twist/twistd: "text" (human) or "json" (one JSON object a line).
    log_format: str = field(default="text", metadata=string(one_of("text", "json")))
    #: The log file twistd writes (``--logfile``, or twistd.log when it
    #: daemonises) is rotated at this size ...
    log_file_max_bytes: int = field(default=10 * 1024 * 1024, metadata=integer(positive))
    #: ... and this many rotated files are kept (the oldest deleted), so that
    #: logs never fill the disk; 0 keeps none.
    log_file_keep: int = field(default=10, metadata=integer(zero_or_positive("keep no rotated file")))
    #: Processes that accept connections: 1 is one process doing everything;
    #: N > 1 is a supervising parent (binding, the relay queue) and N worker
    #: processes sharing every listener (L{mailapp.workers}).
    workers: int = field(default=1, metadata=integer(positive))


def _unique(domains: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(domains))


@dataclass(frozen=True)
class DomainsSection:
    """``[domains]``: the domains delivered here (L{Config.local_domains})."""

    local: tuple[str, ...] = field(default=(), metadata=array(Items(STRING, (domain,)), build=_unique))


@dataclass(frozen=True)
class SNICertificate:
    """A certificate (PEM, with its chain) and key served to clients that ask for one name by SNI."""

    cert: Path = field(metadata=string(path, required=True))
    key: Path = field(metadata=string(path, required=True))


def _sni_name(at: At, name: str) -> Any:
    """A host name, or ``*.domain`` for one label."""
    wildcard = name.startswith("*.")
    checked = domain(at, name[2:] if wildcard else name)
    return INVALID if checked is INVALID else ("*." if wildcard else "") + checked


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

    cert: Path = field(metadata=string(path, default_from=lambda at: at.env["state_dir"] / "tls" / "cert.pem"))
    key: Path = field(metadata=string(path, default_from=lambda at: at.env["state_dir"] / "tls" / "key.pem"))
    generate_self_signed: bool = field(metadata=boolean(default=False))
    sni: Mapping[str, SNICertificate] = field(
        default_factory=lambda: MappingProxyType({}),
        metadata=table(
            Entries(TABLE.named("a table { cert = PATH, key = PATH }"), (Section(SNICertificate).check,), names=(_sni_name,)),
            build=MappingProxyType,
        ),
    )
    min_version: str = field(default="1.2", metadata=string(one_of("1.2", "1.3")))


#: 0 means "no limit" for the [limits] keys with this check.
_UNLIMITED: Final = zero_or_positive("unlimited")


@dataclass(frozen=True)
class Limits:
    """Resource limits; every value is a positive integer, but those in L{UNLIMITED_WHEN_ZERO} may be 0 (no limit)."""

    max_message_size: int = field(default=26_214_400, metadata=integer(positive))
    max_recipients: int = field(default=100, metadata=integer(positive))
    #: Every listener's connections together, and one client address's (an IPv6 /64).
    max_connections: int = field(default=1000, metadata=integer(positive))
    max_connections_per_ip: int = field(default=20, metadata=integer(positive, then=(at_most("max_connections"),)))
    smtp_timeout_seconds: int = field(default=300, metadata=integer(positive))
    #: Commands a session may send before it authenticates (submission, POP3, IMAP).
    max_commands_before_auth: int = field(default=20, metadata=integer(positive))
    #: Idle seconds after login (RFC 1939 3 and RFC 3501 5.4 ask for 10 and 30 minutes).
    pop3_timeout_seconds: int = field(default=600, metadata=integer(positive))
    imap_timeout_seconds: int = field(default=1800, metadata=integer(positive))
    #: Messages one authenticated sender may send per sliding hour (submission, webmail).
    max_messages_per_hour: int = field(default=1000, metadata=integer(positive))
    #: IMAP after login: one literal (APPEND's message excepted) and one command line, in bytes.
    imap_max_literal: int = field(default=262_144, metadata=integer(positive))
    imap_max_line: int = field(default=524_288, metadata=integer(positive))
    #: Idle seconds before login on submission, POP3 and IMAP.
    login_timeout_seconds: int = field(default=60, metadata=integer(positive))
    #: SMTP answers MAIL FROM with 452 4.3.1 while the state directory's
    #: filesystem has fewer free bytes than this (plus the SIZE= declared).
    min_free_disk: int = field(default=52_428_800, metadata=integer(positive))
    #: Whole-session deadlines (idle timeouts restart at every byte; these do not).
    smtp_session_seconds: int = field(default=3600, metadata=integer(positive))
    pop3_session_seconds: int = field(default=3600, metadata=integer(positive))
    #: Seconds from connect to a login on submission, POP3 and IMAP (IMAP has no deadline after it: IDLE).
    login_deadline_seconds: int = field(default=300, metadata=integer(positive))
    #: Seconds a command line (or an HTTP request's headers) may take from its first byte.
    command_line_seconds: int = field(default=60, metadata=integer(positive))
    #: Message data (SMTP DATA, IMAP literals, webmail bodies) must average this many bytes/s after the grace.
    min_data_rate: int = field(default=500, metadata=integer(positive))
    data_grace_seconds: int = field(default=30, metadata=integer(positive))
    #: Per mailbox, as the sum of the index's (wire) sizes; 0 = unlimited.
    #: 5 GiB: far above what a person's mail reaches in years, while one
    #: mailbox (or one hostile sender) can no longer fill a small server's disk.
    mailbox_quota_bytes: int = field(default=5 * 1024**3, metadata=integer(_UNLIMITED))
    #: Messages per mailbox; 0 = unlimited (the byte quota already bounds the disk).
    mailbox_quota_messages: int = field(default=0, metadata=integer(_UNLIMITED))
    #: The MX, per client address (an IPv6 /64), outside relay.trusted_networks;
    #: 0 = unlimited. Generous: a busy list server sends about one a second.
    mx_messages_per_minute: int = field(default=60, metadata=integer(_UNLIMITED))
    mx_bytes_per_minute: int = field(default=200 * 1024**2, metadata=integer(_UNLIMITED))
    #: Sieve (mailapp.sieve): commands and tests one delivery's scripts may run, and redirects per message and recipient.
    sieve_max_steps: int = field(default=10_000, metadata=integer(positive))
    sieve_max_redirects: int = field(default=4, metadata=integer(positive))
    #: Vacation replies one account may send in 24 hours, whatever its scripts say.
    sieve_max_vacation_replies_per_day: int = field(default=100, metadata=integer(positive))
    #: Scripts per account, and the bytes of one (ManageSieve's HAVESPACE and PUTSCRIPT, the CLI).
    sieve_max_scripts: int = field(default=20, metadata=integer(positive))
    sieve_max_script_size: int = field(default=65_536, metadata=integer(positive))


#: The longest delay [security] accepts: a failed login holds its session that long.
_MAX_AUTH_DELAY: Final = 300


def _auth_delay(at: At, value: Any) -> Any:
    """A number of seconds (an integer or a float) above 0 and at most L{_MAX_AUTH_DELAY}."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= _MAX_AUTH_DELAY:
        shown = repr(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else describe(value)
        at.problem(f"must be a number of seconds above 0 and at most {_MAX_AUTH_DELAY}, not {shown}")
        return INVALID
    return value


@dataclass(frozen=True)
class SecurityConfig:
    """
    Failed-login delays and address bans (``[security]``, see
    :mod:`mailapp.abuse`): each failure is answered after
    ``auth_failure_delay`` seconds, doubled per recent failure of the address
    or the account, up to ``auth_failure_delay_max``; ``ban_after_failures``
    failures from one address within ``ban_window`` seconds ban it for
    ``ban_seconds``, unless it is in ``ban_exempt_networks``.
    Its keys are read (and their problems reported) in field order.
    """

    auth_failure_delay: float = field(default=1.0, metadata=anything(_auth_delay, build=float))
    auth_failure_delay_max: float = field(
        default=15.0, metadata=anything(_auth_delay, build=float, then=(at_least("auth_failure_delay"),))
    )
    ban_after_failures: int = field(default=10, metadata=integer(positive))
    ban_window: int = field(default=600, metadata=integer(positive))
    ban_seconds: int = field(default=3600, metadata=integer(positive))
    #: How long a verified password is remembered (as a keyed MAC, never in
    #: clear), so that a client logging in again skips the KDF; 0 turns it off.
    auth_cache_seconds: int = field(default=300, metadata=integer(zero_or_positive("off")))
    ban_exempt_networks: tuple[Network, ...] = field(
        default=(), metadata=array(Items(STRING, (network,)), build=tuple)
    )
    #: Refuse MAIL FROM a local domain on the MX unless the client is in
    #: [relay] trusted_networks: our own users send through submission, so
    #: anyone else using our domains there is forging them.
    mx_refuse_local_senders: bool = field(default=True, metadata=boolean())


@dataclass(frozen=True)
class DkimConfig:
    """
    ``[dkim]``: outbound signing (L{mailapp.dkim}). The keys themselves are
    in ``state_dir/dkim``, made with ``mailapp dkim keygen``.
    """

    #: Sign the remote copies of mail from submission, the webmail, trusted
    #: networks and the relay's DSNs, for every From: domain with keys.
    sign: bool = field(default=True, metadata=boolean())
    #: Sign in a child process of the server (on another core), or, when
    #: false, in the server's own threads (which share its reactor's GIL).
    signing_process: bool = field(default=True, metadata=boolean())


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
    sync: str = ServerSection.sync
    log_format: str = ServerSection.log_format
    log_file_max_bytes: int = ServerSection.log_file_max_bytes
    log_file_keep: int = ServerSection.log_file_keep
    workers: int = ServerSection.workers
    security: SecurityConfig = field(default_factory=SecurityConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    #: ``[authentication]``: SPF, DKIM and DMARC on the MX.
    authentication: AuthenticationConfig = field(default_factory=AuthenticationConfig)
    #: ``[dnsbl]``: DNS blocklists on the MX, before DATA.
    dnsbl: DNSBLConfig = field(default_factory=DNSBLConfig)
    #: ``[greylisting]``: the MX's greylisting at RCPT (off by default).
    greylisting: GreylistingConfig = field(default_factory=GreylistingConfig)
    #: ``[postscreen]``: the MX's greeting delay and early-talker checks.
    postscreen: PostscreenConfig = field(default_factory=PostscreenConfig)
    #: ``[spam]``: the content scanner (rspamd) and the Junk folder that teaches it.
    spam: SpamConfig = field(default_factory=SpamConfig)

    @property
    def needs_tls(self) -> bool:
        """Whether any listener offers TLS, so the certificate is needed."""
        return any(listener.needs_tls for listener in self.listeners)


SERVER: Final = Section(ServerSection)
DOMAINS: Final = Section(DomainsSection)
TLS: Final = Section(TLSConfig)
LIMITS: Final = Section(Limits)
SECURITY: Final = Section(SecurityConfig)
DKIM: Final = Section(DkimConfig)

#: The [limits] keys where 0 means "no limit".
UNLIMITED_WHEN_ZERO: Final = frozenset(
    each for each in LIMITS.keys if _UNLIMITED in LIMITS.spec(each).checks
)

#: Each section's defaults, for the code that needs the number a config file
#: would give when there is none (the session policies, their tests).
DEFAULT_LIMITS: Final = Limits()
DEFAULT_SECURITY: Final = SecurityConfig()
