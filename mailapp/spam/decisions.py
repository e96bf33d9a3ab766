"""
What rspamd's answer means for one message: a pure function from the
answer to a L{SpamVerdict}, which only the SMTP layer turns into a reply.

On the MX: ``reject`` is ``554 5.7.1`` at the end of DATA (never a
bounce: the envelope sender of spam is rarely who sent it), ``soft
reject`` and ``greylist`` are ``451 4.7.1``, ``add header`` and ``rewrite
subject`` go to the recipient's Junk folder with ``X-Spam-*`` fields (and
rspamd's subject, for a rewrite), ``no action`` to the folder the other
checks chose. Outbound (authenticated submission) only a ``reject`` is
refused: a compromised account is stopped, a user's odd-looking mail is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from mailapp.errors import MailError

__all__ = ["JUNK", "SPAM_FIELDS", "SpamRejected", "SpamTempfail", "SpamVerdict", "ScannerUnavailable", "decide", "mark", "unavailable"]

#: The folder spam goes to (one of L{mailapp.records.SPECIAL_FOLDERS}).
JUNK: Final = "Junk"

#: The fields we add; copies of them in a received message are removed first (a sender's "X-Spam-Status: No" means nothing).
SPAM_FIELDS: Final = (b"x-spam-status", b"x-spam-score", b"x-spam-action", b"x-spam")


class SpamRejected(MailError):
    """rspamd says reject: the message is refused at the end of DATA."""

    code, enhanced, text = 554, "5.7.1", "Message rejected as spam"


class SpamTempfail(MailError):
    """rspamd says soft reject or greylist: the sender should try again later."""

    code, enhanced, text = 451, "4.7.1", "Message deferred by the content filter; try again later"


class ScannerUnavailable(MailError):
    """rspamd did not answer and the fail mode is closed."""

    code, enhanced, text = 451, "4.7.1", "Cannot scan the message now; try again later"


@dataclass(frozen=True)
class SpamVerdict:
    """
    What to do with a scanned message: C{action} is ours (``accept``,
    ``junk``, ``reject``, ``tempfail``), C{reason} why (``rspamd_<action>``,
    ``unavailable``, ``too_big``, ``allowed_sender``); C{folder} None keeps
    the folder the other checks chose; C{fields} go above the message;
    C{subject} replaces its Subject: when not None.
    """

    action: str
    reason: str
    folder: str | None = None
    refusal: MailError | None = None
    fields: bytes = b""
    subject: str | None = None
    score: float | None = None


def _slug(action: str) -> str:
    return "rspamd_" + re.sub(r"[^a-z]+", "_", action.lower()).strip("_")


def decide(answer: dict[str, Any], outbound: bool = False, allowed_sender: bool = False) -> SpamVerdict:
    """
    The verdict for rspamd's C{/checkv2} C{answer}. C{allowed_sender}: the
    recipient allows this sender (per-user allow lists mark the
    transaction), so spam-scored mail is not filed as Junk (a reject still
    stands: it is rspamd's certainty, GTUBE or a virus).
    """
    action = str(answer.get("action", "no action")).lower()
    reason = _slug(action)
    score = _number(answer.get("score"))
    required = _number(answer.get("required_score"))
    if action == "reject":
        return SpamVerdict("reject", reason, refusal=SpamRejected(), score=score)
    if outbound:
        return SpamVerdict("accept", reason, score=score)
    if action in ("soft reject", "greylist"):
        return SpamVerdict("tempfail", reason, refusal=SpamTempfail(), score=score)
    spam = action in ("add header", "rewrite subject")
    fields = _fields(spam, score, required, action)
    if spam and allowed_sender:
        return SpamVerdict("accept", "allowed_sender", fields=fields, score=score)
    if spam:
        subject = answer.get("subject") if action == "rewrite subject" else None
        return SpamVerdict("junk", reason, folder=JUNK, fields=fields, subject=subject if isinstance(subject, str) else None, score=score)
    return SpamVerdict("accept", reason, fields=fields, score=score)


def unavailable(fail: str) -> SpamVerdict:
    """rspamd did not answer: C{fail} is ``open`` (stored unscanned) or ``closed`` (451 4.7.1)."""
    if fail == "closed":
        return SpamVerdict("tempfail", "unavailable", refusal=ScannerUnavailable())
    return SpamVerdict("accept", "unavailable")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fields(spam: bool, score: float | None, required: float | None, action: str) -> bytes:
    """SpamAssassin's field names, which every mail client's filters know."""
    shown = f"{score:.2f}" if score is not None else "0.00"
    status = f"{'Yes' if spam else 'No'}, score={shown}" + (f" required={required:.2f}" if required is not None else "")
    return (
        f"X-Spam-Status: {status}\r\nX-Spam-Score: {shown}\r\nX-Spam-Action: {action}\r\n"
    ).encode("ascii")


def mark(message: bytes, verdict: SpamVerdict) -> bytes:
    """
    C{message} (wire form) with any received copy of our fields removed,
    C{verdict}'s fields on top and, for a rewrite, its subject. Only the
    header block is parsed.
    """
    end = message.find(b"\r\n\r\n")
    if end < 0:
        head, body = message, b""
    else:
        head, body = message[: end + 2], message[end + 2 :]
    kept: list[bytes] = []
    dropping = False
    subject_done = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        dropping = name in SPAM_FIELDS
        if name == b"subject" and verdict.subject is not None:
            dropping = True
            if not subject_done:
                kept.append(b"Subject: " + _header_value(verdict.subject) + b"\r\n")
                subject_done = True
        if not dropping:
            kept.append(line)
    if verdict.subject is not None and not subject_done:
        kept.append(b"Subject: " + _header_value(verdict.subject) + b"\r\n")
    return verdict.fields + b"".join(kept) + body


def _header_value(text: str) -> bytes:
    """rspamd's subject as one header line: no CR or LF; non-ASCII as RFC 2047 UTF-8 (rspamd decodes the original)."""
    text = text.replace("\r", " ").replace("\n", " ")
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        from email.header import Header

        return Header(text, "utf-8").encode().encode("ascii")
