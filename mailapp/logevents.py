"""
Stable names for log events, declared once.

Convention: every log call that matters to an operator passes one of these
constants as the ``log_event`` field::

    from mailapp import logevents
    log.info("listening {listener} on {address}",
             log_event=logevents.LISTENING, listener=name, address=address)

The name is ``<area>.<what happened>``, lower case with underscores. It is
what dashboards, alerts and tests match on, so a name never changes meaning
once released: a new meaning gets a new name. The human format string may
change freely. With JSON log output (``twistd --logger``) every field,
``log_event`` included, is kept.
"""

from __future__ import annotations

from typing import Final

# --- service lifecycle (mailapp.service) ---
STARTING: Final = "service.starting"
LISTENING: Final = "service.listening"
LISTEN_FAILED: Final = "service.listen_failed"
LISTENER_SKIPPED: Final = "service.listener_skipped"
NO_USERS: Final = "service.no_users"
STOPPING: Final = "service.stopping"
DRAIN_TIMEOUT: Final = "service.drain_timeout"
STOPPED: Final = "service.stopped"

# --- TLS material (mailapp.tls) ---
CERTIFICATE_GENERATED: Final = "tls.certificate_generated"

# --- names the design already promises to the protocol layers ---
SMTP_ACCEPTED: Final = "smtp.accepted"
SMTP_RCPT_REJECTED: Final = "smtp.rcpt_rejected"
AUTH_FAILED: Final = "auth.failed"
RELAY_DEFERRED: Final = "relay.deferred"

# --- accounts and authentication (mailapp.accounts) ---
ALIAS_BROKEN: Final = "accounts.alias_broken"
PASSWORD_REHASHED: Final = "auth.password_rehashed"
REHASH_FAILED: Final = "auth.rehash_failed"

# --- delivery and the store ---
DELIVERY_STORED: Final = "delivery.stored"
DELIVERY_FAILED: Final = "delivery.failed"
SMTP_AUTH_OK: Final = "smtp.auth_ok"
SMTP_INTERNAL_ERROR: Final = "smtp.internal_error"

# --- POP3 (mailapp.pop3); failed logins use AUTH_FAILED with protocol="pop3" ---
POP3_LOGIN: Final = "pop3.login"
POP3_IN_USE: Final = "pop3.in_use"
POP3_UPDATE: Final = "pop3.update"
POP3_UPDATE_FAILED: Final = "pop3.update_failed"
POP3_TIMEOUT: Final = "pop3.timeout"
POP3_AUTH_FAILURES_EXCEEDED: Final = "pop3.auth_failures_exceeded"
POP3_INTERNAL_ERROR: Final = "pop3.internal_error"


def all_events() -> frozenset[str]:
    """Every declared name, so that a test can prove they are unique and well formed."""
    return frozenset(
        value for key, value in globals().items() if key.isupper() and isinstance(value, str)
    )
