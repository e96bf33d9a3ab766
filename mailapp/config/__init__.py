"""
The static configuration: one TOML file, read once at start.

:func:`parse` is a pure function from the file's text to a frozen
:class:`Config`; :func:`load` reads the file and also checks what only the
file system can tell (do the TLS certificate files exist?). Both read the
text against a whitelist and collect *every* problem before raising one
:class:`ConfigError`, so that an operator fixes a file in one pass instead of
one restart per typo. Each problem names the file and the dotted key, e.g.::

    etc/mailapp.toml: listeners.smtp.endpoint: bad endpoint string 'tcp:x': ...

Every key is declared once, on a field of its section's dataclass, with its
type, default and checks (:mod:`mailapp.config.schema`, the mechanism;
:mod:`~mailapp.config.sections`, :mod:`~mailapp.config.listeners` and
:mod:`~mailapp.config.relay`, the sections; :mod:`~mailapp.config.load`, the
reading). The defaults are the running code's too: ``DEFAULT_LIMITS``,
``DEFAULT_SECURITY`` and ``DEFAULT_RELAY`` are what the session policies and
the relay manager take when nobody passes a value.

Mutable data (users, aliases, the queue) never lives here; it is in
``state_dir`` and is changed with the ``mailapp`` command.
"""

from mailapp.config.authentication import DEFAULT_AUTHENTICATION, AuthenticationConfig
from mailapp.config.checks import HostPort
from mailapp.config.listeners import (
    LOGIN_PROTOCOLS,
    PROTOCOLS,
    TLS_MODES,
    ListenerBudget,
    ListenerConfig,
    listener_budget,
)
from mailapp.config.load import load, parse
from mailapp.config.postscreen import (
    DEFAULT_DNSBL,
    DEFAULT_GREYLISTING,
    DEFAULT_POSTSCREEN,
    Blocklist,
    DNSBLConfig,
    GreylistingConfig,
    PostscreenConfig,
)
from mailapp.config.relay import DEFAULT_RELAY, RelayConfig, default_per_address
from mailapp.config.schema import ConfigError
from mailapp.config.spam import DEFAULT_SPAM, SpamConfig
from mailapp.config.sections import (
    DEFAULT_LIMITS,
    DEFAULT_SECURITY,
    UNLIMITED_WHEN_ZERO,
    Config,
    Limits,
    SecurityConfig,
    SNICertificate,
    TLSConfig,
)

__all__ = [
    "DEFAULT_AUTHENTICATION",
    "DEFAULT_DNSBL",
    "DEFAULT_GREYLISTING",
    "DEFAULT_POSTSCREEN",
    "DEFAULT_LIMITS",
    "DEFAULT_RELAY",
    "DEFAULT_SECURITY",
    "DEFAULT_SPAM",
    "LOGIN_PROTOCOLS",
    "PROTOCOLS",
    "TLS_MODES",
    "UNLIMITED_WHEN_ZERO",
    "AuthenticationConfig",
    "Blocklist",
    "DNSBLConfig",
    "GreylistingConfig",
    "PostscreenConfig",
    "Config",
    "ConfigError",
    "HostPort",
    "Limits",
    "ListenerBudget",
    "ListenerConfig",
    "RelayConfig",
    "SNICertificate",
    "SecurityConfig",
    "SpamConfig",
    "TLSConfig",
    "default_per_address",
    "listener_budget",
    "load",
    "parse",
]
