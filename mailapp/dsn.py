"""
Delivery status notifications: what a client asks for with the DSN
extension (RFC 3461: C{RET} and C{ENVID} on MAIL, C{NOTIFY} and C{ORCPT} on
RCPT), and the DSN messages themselves (RFC 3464): ``multipart/report;
report-type=delivery-status`` with a human part, the machine-readable
``message/delivery-status`` part, and the original message: its headers
(``text/rfc822-headers``), or the whole of it (``message/rfc822``) in a
failure DSN for a client that asked with C{RET=FULL}.

Which DSNs are sent (RFC 3461 5.2): C{failed} and C{delayed} unless the
recipient's NOTIFY leaves them out (no NOTIFY means FAILURE and DELAY);
C{delivered} when a message with NOTIFY=SUCCESS reaches a local mailbox;
C{relayed} when one is handed to a peer that does not offer DSN (a peer that
does gets the parameters and answers for itself).

A DSN is sent with the null reverse path ``<>`` so that it can never cause
another DSN; the manager drops (and logs) failures for a message whose
sender is ``<>`` instead of bouncing them (no double bounces).

This module is the one home of these rules: the SMTP server parses the
parameters with it, the Router and the relay queue keep them
(L{RecipientRequest}), and the relay and the Router build DSNs with it.
"""

from __future__ import annotations

import email.utils
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DELAYED",
    "DELIVERED",
    "FAILED",
    "RELAYED",
    "MAX_RETURNED",
    "DsnParameters",
    "RecipientRequest",
    "RecipientStatus",
    "build_dsn",
    "decode_xtext",
    "encode_xtext",
    "parse_envid",
    "parse_notify",
    "parse_orcpt",
    "parse_ret",
    "read_headers",
]

FAILED: Final = "failed"
DELAYED: Final = "delayed"
DELIVERED: Final = "delivered"
RELAYED: Final = "relayed"
MAX_HEADERS: Final = 64 * 1024
#: A RET=FULL failure DSN carries the whole message up to this size, else only its headers (RFC 3461 4.3 lets us).
MAX_RETURNED: Final = 1024 * 1024

#: NOTIFY's keywords (RFC 3461 4.1); NEVER stands alone.
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
DELAY: Final = "DELAY"
NEVER: Final = "NEVER"

#: xtext (RFC 3461 4): printable ASCII but "+" and "=", or "+" and two upper-case hex digits.
_XTEXT: Final = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
_ADDR_TYPE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


@dataclass(frozen=True)
class RecipientRequest:
    """
    One recipient's DSN parameters: C{notify} as given (empty when the
    client gave none), C{orcpt} the ORCPT value as given (``rfc822;`` and
    the address in xtext), empty when none.
    """

    notify: tuple[str, ...] = ()
    orcpt: str = ""

    def wants(self, action: str) -> bool:
        """Whether a DSN with C{action} is owed for this recipient (RFC 3461 4.1, 5.2)."""
        event = {FAILED: FAILURE, DELAYED: DELAY, DELIVERED: SUCCESS, RELAYED: SUCCESS}[action]
        if not self.notify:
            return event in (FAILURE, DELAY)
        return event in self.notify

    @property
    def notify_text(self) -> str:
        return ",".join(self.notify)

    def original_recipient(self) -> str:
        """The Original-Recipient field's value (RFC 3464 2.3.1): the ORCPT type and its address decoded."""
        kind, _, value = self.orcpt.partition(";")
        return f"{kind}; {decode_xtext(value)}" if self.orcpt else ""


@dataclass
class DsnParameters:
    """
    A transaction's DSN parameters: RET and ENVID from MAIL, and each
    recipient's L{RecipientRequest} by address (lower case).
    """

    ret: str = ""
    envid: str = ""
    recipients: dict[str, RecipientRequest] = field(default_factory=dict)

    def request_for(self, address: str) -> RecipientRequest:
        return self.recipients.get(address.lower(), RecipientRequest())

    def add(self, address: str, request: RecipientRequest) -> None:
        if request != RecipientRequest():
            self.recipients[address.lower()] = request

    def forwarded(self, address: str, target: str) -> RecipientRequest:
        """
        What a target an alias of ours forwards to inherits from the alias's
        own request (RFC 3461 5.2.7: an alias to one target passes NOTIFY
        and ORCPT on; ORCPT names the address the client gave).
        """
        request = self.request_for(address)
        if not request.notify and not request.orcpt:
            return request
        return RecipientRequest(request.notify, request.orcpt or "rfc822;" + encode_xtext(address))

    def only(self, targets: dict[str, str]) -> "DsnParameters":
        """The parameters for one queue entry: C{targets} maps each of its recipients to the address the client gave."""
        chosen = DsnParameters(self.ret, self.envid)
        for target, address in targets.items():
            chosen.add(target, self.request_for(address) if target.lower() == address.lower() else self.forwarded(address, target))
        return chosen


def valid_xtext(value: str) -> bool:
    return _XTEXT.fullmatch(value) is not None


def decode_xtext(value: str) -> str:
    return re.sub(r"\+([0-9A-F]{2})", lambda match: chr(int(match.group(1), 16)), value)


def encode_xtext(value: str) -> str:
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in value)


def parse_notify(value: str) -> tuple[str, ...] | None:
    """NOTIFY's value as a tuple of its keywords (upper case), or None when it is not valid."""
    words = [word.strip().upper() for word in value.split(",")]
    if words == [NEVER]:
        return (NEVER,)
    if not words or any(word not in (SUCCESS, FAILURE, DELAY) for word in words) or len(set(words)) != len(words):
        return None
    return tuple(words)


def parse_orcpt(value: str) -> str | None:
    """ORCPT's value (``addr-type;xtext``) as given, or None when it is not valid."""
    kind, semicolon, address = value.partition(";")
    if not semicolon or not _ADDR_TYPE.fullmatch(kind) or not address or not valid_xtext(address) or len(value) > 500:
        return None
    return value


def parse_ret(value: str) -> str | None:
    upper = value.upper()
    return upper if upper in ("FULL", "HDRS") else None


def parse_envid(value: str) -> str | None:
    """ENVID's value (xtext, at most 100 characters: RFC 3461 4.4), or None when it is not valid."""
    return value if value and len(value) <= 100 and valid_xtext(value) else None


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient's line in a DSN: what happened and why."""

    address: str
    status: str  # enhanced status code, "5.1.1"
    diagnostic: str  # the remote reply or our reason, one safe line
    remote: str = ""  # the host that answered, if any
    #: The Original-Recipient field's value (L{RecipientRequest.original_recipient}), if any.
    original: str = ""


def read_headers(path: str | os.PathLike[str]) -> bytes:
    """The header block of a stored message (bounded), for the DSN's third part."""
    with open(path, "rb") as file:
        data = file.read(MAX_HEADERS)
    return header_block(data)


def header_block(data: bytes) -> bytes:
    """The header block at the start of C{data} (CRLF or LF line ends), bounded by L{MAX_HEADERS}."""
    data = data[:MAX_HEADERS]
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[: end + 2]
    end = data.find(b"\n\n")
    return data[: end + 1] if end >= 0 else data


def _clean(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)


_SUBJECTS: Final = {
    FAILED: "Undelivered Mail Returned to Sender",
    DELAYED: "Delayed Mail (still being retried)",
    DELIVERED: "Successful Mail Delivery Report",
    RELAYED: "Successful Mail Delivery Report",
}


def _explanation(action: str, will_retry_until: float | None) -> list[str]:
    if action == FAILED:
        return ["Your message could not be delivered to one or more recipients.", "It is attached below. The mail system said:"]
    if action == DELAYED:
        until = email.utils.formatdate(will_retry_until, localtime=False) if will_retry_until else "later"
        return [
            "Your message has not been delivered yet to the recipients below.",
            f"This is only a warning: the mail system keeps trying until {until}.",
            "You do not need to send the message again. The last reply was:",
        ]
    if action == DELIVERED:
        return ["Your message was delivered to the mailboxes of the recipients below, as you asked to be told:"]
    return [
        "Your message was handed on to the recipients' mail system, as you asked to be told.",
        "That system does not send delivery notifications, so this is the last one you will get:",
    ]


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
    envid: str = "",
    original_message: bytes | None = None,
) -> bytes:
    """
    The whole DSN message (CRLF line ends), addressed to C{sender}, from
    ``MAILER-DAEMON@reporting_mta``. C{action} is L{FAILED}, L{DELAYED},
    L{DELIVERED} or L{RELAYED}; C{envid} the client's ENVID (xtext, as
    given); C{original_message} the whole message to return instead of its
    headers (RET=FULL, failures only).
    """
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{reporting_mta}"
    date = email.utils.formatdate(now, localtime=False)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{sender}>",
        f"Subject: {_SUBJECTS[action]}",
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
        *_explanation(action, will_retry_until),
        "",
    ]
    for item in recipients:
        lines.append(f"<{_clean(item.address)}>: {_clean(item.diagnostic)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
    ]
    if envid:
        lines.append(f"Original-Envelope-Id: {_clean(decode_xtext(envid))}")
    lines += [
        f"X-Mailapp-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival, localtime=False)}",
    ]
    for item in recipients:
        lines.append("")
        if item.original:
            lines.append(f"Original-Recipient: {_clean(item.original)}")
        lines += [
            f"Final-Recipient: rfc822; {_clean(item.address)}",
            f"Action: {action}",
            f"Status: {item.status}",
        ]
        if item.remote:
            lines.append(f"Remote-MTA: dns; {_clean(item.remote)}")
        lines.append(f"Diagnostic-Code: smtp; {_clean(item.diagnostic)}")
        lines.append(f"Last-Attempt-Date: {date}")
        if action == DELAYED and will_retry_until:
            lines.append(f"Will-Retry-Until: {email.utils.formatdate(will_retry_until, localtime=False)}")
    full = original_message is not None and action == FAILED and len(original_message) <= MAX_RETURNED
    lines += ["", f"--{boundary}"]
    if full:
        lines += ["Content-Type: message/rfc822", "Content-Description: Undelivered message", ""]
    else:
        description = {FAILED: "Undelivered", DELAYED: "Delayed"}.get(action, "Delivered")
        lines += ["Content-Type: text/rfc822-headers", f"Content-Description: {description} message headers", ""]
    head = "\r\n".join(lines).encode("ascii") + b"\r\n"
    returned = original_message if full and original_message is not None else original_headers
    returned = returned.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if returned and not returned.endswith(b"\r\n"):
        returned += b"\r\n"
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    return head + returned + tail
