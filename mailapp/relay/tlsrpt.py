"""
SMTP TLS Reporting (RFC 8460): what the relay saw of each policy domain's
TLS, and the daily JSON report made from it.

Each session with a next hop under a published policy (MTA-STS or DANE)
is one line of ``state_dir/tls-rpt/YYYY-MM-DD.jsonl`` (UTC days), appended
on a worker thread (L{TLSReports.record}): the policy domain, its policy
(type and strings), the MX host and address, and either success or the
RFC 8460 4.3 result type with its reason. A lost line costs a line in a
report, never a message, so the lines are not fsync'd.

L{build_report} turns one day's lines into the RFC 8460 section 4.4 JSON,
one report per policy domain, and L{write_reports} writes them as files
named as RFC 8460 5.3 asks. The relay does that once a day for the day
before (L{TLSReports.start}: an hourly check, into
``state_dir/tls-rpt/reports/``, a ``DAY.done`` marker so a restart does not
write them twice); ``mailapp tls-report`` does it on demand.

Once written, each report is sent to the ``rua=`` of its domain's
``_smtp._tls`` TXT record by L{mailapp.relay.tlsrptsend} (L{TLSReports.sender},
at the same hourly check, so a report that could not be sent yet is tried
again).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import logevents

if TYPE_CHECKING:
    from mailapp.relay.tlsrptsend import ReportSender

__all__ = ["RESULT_TYPES", "TLSReports", "build_report", "day_of", "read_day", "write_reports"]

_log = Logger(namespace="mailapp.relay.manager")

#: RFC 8460 4.3's result types.
RESULT_TYPES = (
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
)


#: How often the relay looks whether yesterday's reports are written.
CHECK_INTERVAL = 3600


def day_of(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d")


def write_reports(directory: Path, day: str, output: Path, organization: str, contact: str = "") -> list[Path]:
    """
    Write C{day}'s reports (from the lines under C{directory}) into
    C{output}, one file per policy domain, ``receiver!domain!begin!end.json``
    (RFC 8460 5.3), C{contact} their ``contact-info`` (postmaster of
    C{organization} by default). Blocking: a worker thread or the admin command.
    """
    reports = build_report(read_day(directory, day), day, organization, contact or f"mailto:postmaster@{organization}")
    output.mkdir(mode=0o700, parents=True, exist_ok=True)
    begin = int(datetime.datetime.fromisoformat(f"{day}T00:00:00+00:00").timestamp())
    written = []
    for report in reports:
        domain = report["policies"][0]["policy"]["policy-domain"]
        path = output / f"{organization}!{domain}!{begin}!{begin + 86400}.json"
        temporary = path.with_name("." + path.name + ".tmp")
        temporary.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        temporary.replace(path)
        written.append(path)
    return written


class TLSReports:
    """
    Appends the relay's TLS outcomes to the day's file (see the module
    docstring). C{clock} gives the time, C{run} a worker thread.
    """

    def __init__(self, directory: Path, clock: Any, run: Callable[..., Deferred[Any]]) -> None:
        self.directory = directory
        self._clock = clock
        self._run = run
        self._daily: LoopingCall | None = None
        #: Sends the written reports (None: they stay files).
        self.sender: ReportSender | None = None

    def start(self, organization: str) -> None:
        """Write each past day's reports once (checked now, then hourly), as C{organization} (our hostname)."""
        self._daily = LoopingCall(self._writeYesterday, organization)
        self._daily.clock = self._clock
        self._daily.start(CHECK_INTERVAL, now=True).addErrback(lambda reason: _log.failure("TLS-RPT reports stopped", reason))

    def stop(self) -> None:
        if self._daily is not None and self._daily.running:
            self._daily.stop()
        self._daily = None

    def _writeYesterday(self, organization: str) -> Deferred[None]:
        sender = self.sender
        contact = ""
        if sender is not None:
            organization, contact = sender.submitter or organization, f"mailto:{sender.sender}"
        day = day_of(self._clock.seconds() - 86400)
        directory = self.directory
        marker = directory / "reports" / f"{day}.done"

        def write() -> list[Path]:
            if marker.exists() or not (directory / f"{day}.jsonl").exists():
                return []
            written = write_reports(directory, day, directory / "reports", organization, contact)
            marker.write_text("", encoding="utf-8")
            return written

        def done(written: list[Path]) -> None:
            if written:
                _log.info(
                    "TLS-RPT reports of {day} written: {count} in {directory}",
                    log_event=logevents.RELAY_TLS_REPORT,
                    day=day,
                    count=len(written),
                    directory=str(directory / "reports"),
                )

        def failed(reason: Failure) -> None:
            _log.failure("could not write the TLS-RPT reports of {day}", reason, day=day)

        def send(_: None) -> Deferred[None] | None:
            return sender.send_pending() if sender is not None else None

        return self._run(write).addCallbacks(done, failed).addCallback(send)

    def record(
        self,
        policy_domain: str,
        policy_type: str,
        policy_strings: Iterable[str],
        mx_patterns: Iterable[str],
        mx_host: str,
        address: str,
        result_type: str | None,
        reason: str = "",
    ) -> Deferred[None]:
        """One session's outcome (C{result_type} None: success); never fails."""
        now = self._clock.seconds()
        line = {
            "time": now,
            "policy_domain": policy_domain,
            "policy_type": policy_type,
            "policy_strings": list(policy_strings),
            "mx_patterns": list(mx_patterns),
            "mx_host": mx_host,
            "address": address,
            "result_type": result_type,
            "reason": reason,
        }
        path = self.directory / f"{day_of(now)}.jsonl"
        directory = self.directory

        def append() -> None:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as file:
                file.write(json.dumps(line, sort_keys=True) + "\n")

        def failed(reason: Failure) -> None:
            _log.failure("could not record a TLS-RPT outcome", reason)

        return self._run(append).addErrback(failed)


def read_day(directory: Path, day: str) -> list[dict[str, Any]]:
    """The lines recorded on C{day} (``YYYY-MM-DD``); unreadable lines are skipped."""
    path = directory / f"{day}.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        try:
            item = json.loads(raw)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("policy_domain"), str):
            lines.append(item)
    return lines


def build_report(lines: Iterable[dict[str, Any]], day: str, organization: str, contact: str) -> list[dict[str, Any]]:
    """
    RFC 8460 4.4 reports for C{day}: one per policy domain, each with one
    ``policies`` item per distinct policy seen, its success and failure
    counts, and ``failure-details`` grouped by result type, MX host and
    address.
    """
    start = f"{day}T00:00:00Z"
    end = (datetime.date.fromisoformat(day) + datetime.timedelta(days=1)).isoformat() + "T00:00:00Z"
    domains: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    for line in lines:
        domain = line["policy_domain"]
        policy_key = (line.get("policy_type", ""), tuple(line.get("policy_strings", ())), tuple(line.get("mx_patterns", ())))
        entry = domains.setdefault(domain, {}).setdefault(
            policy_key, {"success": 0, "failure": 0, "details": {}}
        )
        result = line.get("result_type")
        if result is None:
            entry["success"] += 1
            continue
        entry["failure"] += 1
        detail_key = (result, line.get("mx_host", ""), line.get("address", ""))
        detail = entry["details"].setdefault(detail_key, {"count": 0, "reason": line.get("reason", "")})
        detail["count"] += 1
    reports = []
    for domain in sorted(domains):
        policies = []
        for (policy_type, strings, patterns), entry in domains[domain].items():
            policy: dict[str, Any] = {"policy-type": policy_type or "no-policy-found", "policy-domain": domain}
            if strings:
                policy["policy-string"] = list(strings)
            if patterns:
                policy["mx-host"] = list(patterns)
            details = [
                {
                    "result-type": result,
                    "receiving-mx-hostname": host,
                    "receiving-ip": address,
                    "failed-session-count": detail["count"],
                    "failure-reason-code": detail["reason"][:200],
                }
                for (result, host, address), detail in sorted(entry["details"].items())
            ]
            item: dict[str, Any] = {
                "policy": policy,
                "summary": {
                    "total-successful-session-count": entry["success"],
                    "total-failure-session-count": entry["failure"],
                },
            }
            if details:
                item["failure-details"] = details
            policies.append(item)
        reports.append(
            {
                "organization-name": organization,
                "date-range": {"start-datetime": start, "end-datetime": end},
                "contact-info": contact,
                "report-id": f"{day}_{domain}@{organization}",
                "policies": policies,
            }
        )
    return reports
