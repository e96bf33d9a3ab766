"""
Sending the daily TLS-RPT reports (RFC 8460 3, 5) to where each policy
domain asks for them.

The reports are the files L{mailapp.relay.tlsrpt} writes into
``state_dir/tls-rpt/reports/``. For each, L{ReportSender} looks up the
policy domain's ``_smtp._tls`` TXT record (``v=TLSRPTv1; rua=...``)
through the relay's resolver, then:

- ``mailto:``: one message to every mailto address (RFC 8460 5.3: a
  ``multipart/report; report-type=tlsrpt`` with the JSON gzipped as
  ``application/tlsrpt+gzip``, the ``TLS-Report-Domain`` and
  ``TLS-Report-Submitter`` fields), handed to the Router like a DSN, so that
  it is queued durably and DKIM-signed as any mail we send;
- ``https:``: a POST of the gzipped JSON (``application/tlsrpt+gzip``) with
  twisted.web's Agent, TLS verified against the relay's trust root, within
  L{POST_TIMEOUT}.

Each destination is tried once a day: what happened is written beside the
report (``NAME.sent``, JSON: destination -> ``sent``, or the day it failed),
so that a restart does not send a report twice, and a destination that
failed is tried once more the next day, then never (RFC 8460 5.4 leaves
retries to the sender; a report is worth less than the traffic of many).
A lookup that fails for a while (SERVFAIL, a timeout) is asked again at the
next hourly check, until the report is L{GIVE_UP_AFTER} seconds old.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import gzip
import io
import json
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.names import error as dns_error
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from mailapp import logevents

if TYPE_CHECKING:
    from mailapp.config import Config

__all__ = ["GIVE_UP_AFTER", "POST_TIMEOUT", "ReportSender", "https_agent", "parse_rua", "report_message", "sender_settings"]

_log = Logger(namespace="mailapp.relay.manager")

#: Seconds a POST to an ``https:`` rua may take, connection included.
POST_TIMEOUT = 60
#: Seconds after its day's end that a report is no longer sent (the day after, and the one after that).
GIVE_UP_AFTER = 2 * 86400
SENT = "sent"


def parse_rua(strings: list[bytes]) -> tuple[str, ...] | None:
    """
    The ``rua`` URIs of one TXT record's strings (joined, RFC 8460 3), or
    None when it is not a ``v=TLSRPTv1`` record or names no URI we can use.
    """
    try:
        text = b"".join(strings).decode("ascii")
    except UnicodeDecodeError:
        return None
    fields = [part.strip() for part in text.split(";")]
    if not fields or fields[0].replace(" ", "") != "v=TLSRPTv1":
        return None
    for item in fields[1:]:
        name, _, value = item.partition("=")
        if name.strip().lower() == "rua":
            uris = tuple(uri.strip() for uri in value.split(",") if uri.strip().lower().startswith(("mailto:", "https:")))
            return uris or None
    return None


def _mailto_address(uri: str) -> str | None:
    """The address of a ``mailto:`` URI (its query and any ``!size`` dropped), or None."""
    address = unquote(uri[len("mailto:") :].split("?", 1)[0].split("!", 1)[0]).strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c in address for c in " <>,\r\n"):
        return None
    return address


def report_message(
    report: bytes,
    *,
    filename: str,
    domain: str,
    submitter: str,
    sender: str,
    recipients: list[str],
    report_id: str,
    now: float,
) -> bytes:
    """
    The RFC 8460 5.3 message carrying C{report} (the JSON, gzipped here) as
    C{filename} + ``.gz``, with CRLF line ends: what the Router is given.
    """
    boundary = f"tlsrpt-{base64.b32encode(os.urandom(10)).decode('ascii').lower()}"
    attachment = base64.encodebytes(gzip.compress(report, mtime=0)).decode("ascii")
    head = [
        f"From: {sender}",
        f"To: {', '.join(recipients)}",
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: {email.utils.make_msgid('tlsrpt', submitter)}",
        f"Subject: Report Domain: {domain}",
        f" Submitter: {submitter}",
        f" Report-ID: <{report_id}>",
        f"TLS-Report-Domain: {domain}",
        f"TLS-Report-Submitter: {submitter}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type="tlsrpt";\r\n boundary="{boundary}"',
        "",
        "This is a multipart message in MIME format.",
        "",
        f"--{boundary}",
        'Content-Type: text/plain; charset="us-ascii"',
        "Content-Transfer-Encoding: 7bit",
        "",
        f"This is an aggregate TLS report from {submitter} for {domain}.",
        "",
        f"--{boundary}",
        "Content-Type: application/tlsrpt+gzip",
        "Content-Transfer-Encoding: base64",
        f'Content-Disposition: attachment;\r\n filename="{filename}.gz"',
        "",
        attachment.rstrip("\n").replace("\n", "\r\n"),
        "",
        f"--{boundary}--",
        "",
    ]
    return "\r\n".join(head).encode("ascii")


@dataclass(frozen=True)
class _Report:
    """One report file, as read on a worker thread."""

    path: Path
    domain: str
    report_id: str
    end: float
    data: bytes
    sent: dict[str, str]


class ReportSender:
    """
    Sends the reports under C{directory} (see the module docstring).

    @param resolver: the relay's twisted.names resolver (C{lookupText}).
    @param router: the L{mailapp.delivery.Router} the mailed reports go through.
    @param run: runs a blocking function on a worker thread (a Deferred).
    @param agent: an HTTP agent for the ``https:`` rua (its TLS verified).
    @param enabled: C{[relay] tls_report_send}.
    @param submitter: who we are in the reports (C{tls_report_submitter}, else our hostname).
    @param sender: the From: of mailed reports (C{tls_report_from}, else postmaster of our first domain).
    """

    def __init__(
        self,
        reactor: Any,
        resolver: Any,
        router: Any,
        run: Callable[..., Deferred[Any]],
        directory: Path,
        agent: Any,
        *,
        enabled: bool,
        submitter: str,
        sender: str,
    ) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._router = router
        self._run = run
        self.directory = directory
        self._agent = agent
        self.enabled = enabled
        self.submitter = submitter
        self.sender = sender
        self._busy = False

    def reconfigure(self, config: Config) -> None:
        """SIGHUP: the next check uses the new C{[relay] tls_report_*}."""
        settings = sender_settings(config)
        self.enabled, self.submitter, self.sender = settings["enabled"], settings["submitter"], settings["sender"]

    def send_pending(self) -> Deferred[None]:
        """Send every report not sent yet (one pass at a time; never fails)."""
        if not self.enabled or self._busy:
            return defer.succeed(None)
        self._busy = True

        def done(result: object) -> None:
            self._busy = False
            if isinstance(result, Failure):
                _log.failure("sending the TLS-RPT reports", result)

        d: Deferred[None] = defer.ensureDeferred(self._sendPending())
        d.addBoth(done)
        return d

    async def _sendPending(self) -> None:
        now = self._reactor.seconds()
        today = _day(now)
        reports: list[_Report] = await self._run(_pending, self.directory, now)
        for report in reports:
            try:
                destinations = await self._lookup(report.domain)
            except _LookupFailed as failed:
                _log.info(
                    "TLS-RPT report {report_id}: _smtp._tls.{domain} not found yet: {reason}",
                    log_event=logevents.RELAY_TLS_REPORT_SENT,
                    report_id=report.report_id,
                    domain=report.domain,
                    destination="",
                    outcome="lookup failed",
                    reason=str(failed),
                )
                continue
            sent = dict(report.sent)
            due = [uri for uri in destinations if sent.get(uri) != SENT and sent.get(uri) != today and sent.get(uri + "#tries") != "2"]
            mailto = [uri for uri in due if uri.lower().startswith("mailto:")]
            if mailto:
                outcome = await self._mail(report, mailto)
                for uri in mailto:
                    self._note(sent, uri, outcome, today)
            for uri in due:
                if uri.lower().startswith("https:"):
                    self._note(sent, uri, await self._post(report, uri), today)
            if all(sent.get(uri) == SENT or sent.get(uri + "#tries") == "2" for uri in destinations):
                sent["-"] = SENT  # every destination done, or given up on: never looked at again
            await self._run(_write_sent, report.path, sent)

    @staticmethod
    def _note(sent: dict[str, str], uri: str, outcome: bool, today: str) -> None:
        tries = int(sent.get(uri + "#tries", "0")) + 1
        sent[uri] = SENT if outcome else today
        sent[uri + "#tries"] = str(tries)

    @defer.inlineCallbacks
    def _lookup(self, domain: str) -> Generator[Deferred[Any], Any, tuple[str, ...]]:
        name = f"_smtp._tls.{domain}"
        try:
            answers, _, _ = yield self._resolver.lookupText(name)
        except dns_error.DNSNameError:
            return ()
        except Exception as error:
            raise _LookupFailed(f"TXT lookup of {name} failed: {type(error).__name__}") from error
        texts = [b"".join(a.payload.data) for a in answers if getattr(a.payload, "data", None) is not None]
        records = [text for text in texts if text.startswith(b"v=TLSRPTv1")]
        # RFC 8460 3: more than one v=TLSRPTv1 record is as if there were none.
        if len(records) != 1:
            return ()
        return parse_rua(records) or ()

    async def _mail(self, report: _Report, uris: list[str]) -> bool:
        recipients = [address for uri in uris if (address := _mailto_address(uri)) is not None]
        if not recipients:
            return False
        message = report_message(
            report.data,
            filename=report.path.name,
            domain=report.domain,
            submitter=self.submitter,
            sender=self.sender,
            recipients=recipients,
            report_id=report.report_id,
            now=self._reactor.seconds(),
        )
        transaction = self._router.start(self.sender, relay_allowed=True)
        try:
            for address in recipients:
                await transaction.addRecipient(address)
            writer = transaction.open()
            writer.write(message)
            queue_id = await transaction.commit()
        except Exception as error:
            transaction.abort()
            self._logSent(report, ",".join(uris), "failed", f"{type(error).__name__}: {error}")
            return False
        self._logSent(report, ",".join(uris), "sent", f"as {queue_id}")
        return True

    async def _post(self, report: _Report, uri: str) -> bool:
        body = FileBodyProducer(io.BytesIO(gzip.compress(report.data, mtime=0)))
        headers = Headers({b"content-type": [b"application/tlsrpt+gzip"], b"user-agent": [b"mailapp TLS-RPT"]})
        request = self._agent.request(b"POST", uri.encode("ascii"), headers, body)
        timer = self._reactor.callLater(POST_TIMEOUT, request.cancel)
        try:
            response = await request
            code = response.code
            # Read (and drop) whatever it answers, so the connection is let go cleanly.
            reading = readBody(response)
            try:
                await reading
            except Exception:
                pass
        except Exception as error:
            self._logSent(report, uri, "failed", Failure(error).getErrorMessage()[:200])
            return False
        finally:
            if timer.active():
                timer.cancel()
        if not 200 <= code < 300:
            self._logSent(report, uri, "failed", f"HTTP {code}")
            return False
        self._logSent(report, uri, "sent", f"HTTP {code}")
        return True

    @staticmethod
    def _logSent(report: _Report, destination: str, outcome: str, reason: str) -> None:
        _log.info(
            "TLS-RPT report {report_id} to {destination}: {outcome} ({reason})",
            log_event=logevents.RELAY_TLS_REPORT_SENT,
            report_id=report.report_id,
            domain=report.domain,
            destination=destination,
            outcome=outcome,
            reason=reason,
        )


class _LookupFailed(Exception):
    """A temporary DNS failure: asked again at the next check."""


def _day(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d")


def _pending(directory: Path, now: float) -> list[_Report]:
    """The reports (blocking: a worker thread) still to send: recent, and some destination not done."""
    reports = []
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return []
    for path in paths:
        parts = path.name[: -len(".json")].split("!")
        if len(parts) < 4 or not parts[3].isdigit():
            continue
        end = float(parts[3])
        if now - end > GIVE_UP_AFTER:
            continue
        try:
            data = path.read_bytes()
            report = json.loads(data)
            sent = json.loads(path.with_suffix(".sent").read_text(encoding="utf-8")) if path.with_suffix(".sent").exists() else {}
        except (OSError, ValueError):
            continue
        if sent.get("-") == SENT:
            continue
        reports.append(_Report(path, parts[1], str(report.get("report-id", path.name)), end, data, sent))
    return reports


def _write_sent(path: Path, sent: dict[str, str]) -> None:
    """Record what was sent (fsync'd: a lost record would send a report twice)."""
    target = path.with_suffix(".sent")
    temporary = target.with_name("." + target.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(sent, file, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, target)


def sender_settings(config: Config) -> dict[str, Any]:
    """L{ReportSender}'s settings from the config: C{[relay] tls_report_*}, and their defaults."""
    relay = config.relay
    domain = config.local_domains[0] if config.local_domains else config.hostname
    return {
        "enabled": relay.tls_report_send,
        "submitter": relay.tls_report_submitter or config.hostname,
        "sender": relay.tls_report_from or f"postmaster@{domain}",
    }


def https_agent(reactor: Any, addresses: Callable[[str], Deferred[list[str]]], trust: Any) -> Agent:
    """An Agent whose hosts are found through the relay's resolver and whose TLS is verified against C{trust}."""
    from mailapp.relay.mtasts import _Endpoints  # the same connection as the MTA-STS policy fetch

    agent: Agent = Agent.usingEndpointFactory(reactor, _Endpoints(reactor, addresses, trust))
    return agent
