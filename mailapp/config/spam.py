"""
``[spam]``: the content scanner (rspamd, spoken to over its HTTP protocol;
L{mailapp.spam}) and the Junk folder that teaches it. Applied live on
``SIGHUP`` (each SMTP listener's policy carries it, and the learner reads
the current one).

Off by default: rspamd is a separate service, and a server that is not
told where it is must not refuse or delay mail waiting for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from mailapp.config.schema import INVALID, At, Section, boolean, integer, one_of, positive, string

__all__ = ["DEFAULT_SPAM", "SPAM", "SpamConfig"]


def http_url(at: At, text: str) -> Any:
    """An ``http://`` or ``https://`` URL with a host (a path after it is kept)."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        at.problem(f"must be an http:// or https:// URL with a host, not {text!r}")
        return INVALID
    try:
        _ = parts.port  # raises for a port out of range or not a number
    except ValueError:
        at.problem(f"has a bad port: {text!r}")
        return INVALID
    return text.rstrip("/")


@dataclass(frozen=True)
class SpamConfig:
    """Where rspamd is, and what its answers do (README, "Spam filtering")."""

    #: rspamd's normal worker (``http://127.0.0.1:11333``); unset: no message is scanned.
    rspamd_url: str | None = field(default=None, metadata=string(http_url))
    #: rspamd's controller worker (``http://127.0.0.1:11334``), taught by the Junk folder; unset: nothing is learned.
    controller_url: str | None = field(default=None, metadata=string(http_url))
    #: The controller's password (its ``password``/``enable_password``), sent as the ``Password`` header.
    controller_password: str | None = field(default=None, metadata=string())
    #: Seconds a scan or a learn may take before it counts as rspamd not answering.
    timeout: int = field(default=10, metadata=integer(positive))
    #: What a message gets when rspamd does not answer: "open" (stored unscanned) or "closed" (451 4.7.1).
    fail: str = field(default="open", metadata=string(one_of("open", "closed")))
    #: Scan authenticated submission too, refusing with 554 what rspamd would reject (a compromised account).
    scan_outbound: bool = field(default=True, metadata=boolean())
    #: Messages larger than this many bytes are not scanned (nor learned): stored as if rspamd said no action.
    max_scan_size: int = field(default=10 * 1024 * 1024, metadata=integer(positive))


SPAM: Final = Section(SpamConfig)

#: The defaults (scanning off), for the code that runs without a config file.
DEFAULT_SPAM: Final = SpamConfig()
