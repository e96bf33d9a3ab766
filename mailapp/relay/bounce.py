"""
Delivery status notifications (RFC 3464): ``multipart/report;
report-type=delivery-status`` with a human part, the machine-readable
``message/delivery-status`` part, and the original message's headers
(``text/rfc822-headers``; never its body, which the sender already has).

A DSN is sent with the null reverse path ``<>`` so that it can never cause
another DSN; the manager drops (and logs) failures for a message whose
sender is ``<>`` instead of bouncing them (no double bounces).
"""

from __future__ import annotations

import email.utils
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FAILED", "DELAYED", "RecipientStatus", "build_dsn", "read_headers"]

FAILED = "failed"
DELAYED = "delayed"
MAX_HEADERS = 64 * 1024


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient's line in a DSN: what happened and why."""

    address: str
    status: str  # enhanced status code, "5.1.1"
    diagnostic: str  # the remote reply or our reason, one safe line
    remote: str = ""  # the host that answered, if any


def read_headers(path: str | os.PathLike[str]) -> bytes:
    """The header block of a stored message (bounded), for the DSN's third part."""
    with open(path, "rb") as file:
        data = file.read(MAX_HEADERS)
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[: end + 2]
    end = data.find(b"\n\n")
    return data[: end + 1] if end >= 0 else data


def _clean(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def build_dsn(
    *,
    reporting_mta: str,
    queue_id: str,
    sender: str,
    arrival: float,
    now: float,
    action: str,
    recipients: Sequence[RecipientStatus],
    original_headers: bytes,
    will_retry_until: float | None = None,
) -> bytes:
    """
    The whole DSN message (CRLF line ends), addressed to C{sender}, from
    ``MAILER-DAEMON@reporting_mta``. C{action} is L{FAILED} or L{DELAYED}.
    """
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{reporting_mta}"
    date = email.utils.formatdate(now, localtime=False)
    failed = action == FAILED
    subject = "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{queue_id}.{secrets.token_hex(6)}.dsn@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
        f"This is the mail system at host {reporting_mta}.",
        "",
    ]
    if failed:
        lines += [
            "Your message could not be delivered to one or more recipients.",
            "It is attached below (headers only). The mail system said:",
        ]
    else:
        until = email.utils.formatdate(will_retry_until, localtime=False) if will_retry_until else "later"
        lines += [
            "Your message has not been delivered yet to the recipients below.",
            f"This is only a warning: the mail system keeps trying until {until}.",
            "You do not need to send the message again. The last reply was:",
        ]
    lines.append("")
    for item in recipients:
        lines.append(f"<{_clean(item.address)}>: {_clean(item.diagnostic)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Mailapp-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival, localtime=False)}",
    ]
    for item in recipients:
        lines += [
            "",
            f"Final-Recipient: rfc822; {_clean(item.address)}",
            f"Action: {action}",
            f"Status: {item.status}",
        ]
        if item.remote:
            lines.append(f"Remote-MTA: dns; {_clean(item.remote)}")
        lines.append(f"Diagnostic-Code: smtp; {_clean(item.diagnostic)}")
        lines.append(f"Last-Attempt-Date: {date}")
        if not failed and will_retry_until:
            lines.append(f"Will-Retry-Until: {email.utils.formatdate(will_retry_until, localtime=False)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "Content-Description: Undelivered message headers" if failed else "Content-Description: Delayed message headers",
        "",
    ]
    head = "\r\n".join(lines).encode("ascii") + b"\r\n"
    headers = original_headers.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if headers and not headers.endswith(b"\r\n"):
        headers += b"\r\n"
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    return head + headers + tail
