"""
L{ContentScanner}: the content scan the SMTP factory carries, asked at the
end of DATA after the sender authentication checks (whose
Authentication-Results field, and our Received: field, are on top of the
message rspamd is given, so its rules can use them).

One log event per decision (C{spam.scanned}: what rspamd said, what we
did, why), from which the metrics count C{mailapp_spam_decisions_total};
an outbound reject is also C{spam.outbound_rejected}, naming the account.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailapp import logevents
from mailapp.config.spam import SpamConfig
from mailapp.spam.client import RspamdClient, RspamdError
from mailapp.spam.decisions import SpamVerdict, decide, unavailable

__all__ = ["ContentScanner", "ScanRequest"]

_log = Logger()


@dataclass(frozen=True)
class ScanRequest:
    """The envelope of one message, as rspamd's request headers carry it."""

    client_ip: str
    helo: str
    sender: str
    recipients: tuple[str, ...]
    user: str | None
    queue_id: str
    outbound: bool = False
    #: The sender is on the recipients' allow list (the sender-lists part marks the transaction).
    allowed_sender: bool = False


class ContentScanner:
    """Scans messages with rspamd (C{client}, an L{RspamdClient} or a fake with its C{check})."""

    def __init__(self, client: RspamdClient | Any) -> None:
        self.client = client

    @staticmethod
    def applies(settings: SpamConfig, submission: bool) -> bool:
        """Whether a listener's messages are scanned: rspamd configured, and for submission scan_outbound."""
        return settings.rspamd_url is not None and (settings.scan_outbound or not submission)

    def scan(self, settings: SpamConfig, request: ScanRequest, message: bytes) -> defer.Deferred[SpamVerdict]:
        """
        Fire with the L{SpamVerdict} for C{message} (wire form, our fields on
        top); never fails: rspamd not answering is the configured fail mode.
        """
        if settings.rspamd_url is None or len(message) > settings.max_scan_size:
            verdict = SpamVerdict("accept", "too_big" if settings.rspamd_url is not None else "off")
            self._logged(verdict, request, "", 0.0, len(message))
            return defer.succeed(verdict)
        started = time.monotonic()
        d = self.client.check(settings.rspamd_url, _headers(request), message, float(settings.timeout))

        def answered(answer: dict[str, Any]) -> SpamVerdict:
            verdict = decide(answer, outbound=request.outbound, allowed_sender=request.allowed_sender)
            self._logged(verdict, request, str(answer.get("action", "")), time.monotonic() - started, len(message))
            return verdict

        def failed(reason: Any) -> SpamVerdict:
            reason.trap(RspamdError)
            verdict = unavailable(settings.fail)
            _log.warn(
                "rspamd did not answer for {queue_id}: {error}; fail {fail}",
                log_event=logevents.SPAM_SCAN_FAILED,
                queue_id=request.queue_id,
                error=str(reason.value),
                fail=settings.fail,
            )
            self._logged(verdict, request, "", time.monotonic() - started, len(message))
            return verdict

        return d.addCallbacks(answered, failed)

    def _logged(self, verdict: SpamVerdict, request: ScanRequest, rspamd: str, seconds: float, size: int) -> None:
        _log.info(
            "spam {queue_id} rspamd={rspamd} score={score} action={action} reason={reason} client={client}",
            log_event=logevents.SPAM_SCANNED,
            queue_id=request.queue_id,
            rspamd=rspamd or "none",
            score=verdict.score,
            action=verdict.action,
            reason=verdict.reason,
            direction="outbound" if request.outbound else "inbound",
            client=request.client_ip,
            user=request.user or "",
            size=size,
            scan_seconds=round(seconds, 6),
        )
        if request.outbound and verdict.action == "reject":
            _log.warn(
                "outbound spam refused from account {account} ({queue_id}) client={client}",
                log_event=logevents.SPAM_OUTBOUND_REJECTED,
                account=request.user or "",
                queue_id=request.queue_id,
                client=request.client_ip,
                sender=request.sender,
            )


def _headers(request: ScanRequest) -> list[tuple[str, str]]:
    headers = [("IP", request.client_ip), ("Queue-Id", request.queue_id), ("From", request.sender or "<>")]
    if request.helo:
        headers.append(("Helo", request.helo))
    if request.user:
        headers.append(("User", request.user))
    headers.extend(("Rcpt", recipient) for recipient in request.recipients)
    return headers
