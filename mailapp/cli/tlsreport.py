"""
``mailapp tls-report [--date YYYY-MM-DD] [--output DIR]``: the RFC 8460
TLS-RPT reports of one UTC day (yesterday by default, the last whole day),
made from what the relay recorded in ``state_dir/tls-rpt``
(L{mailapp.relay.tlsrpt}). One report per policy domain: printed as a JSON
list, or with C{--output} written as one file each, named as RFC 8460 5.3
asks (``receiver!policy-domain!begin!end.json``). Sending them to each
domain's ``rua=`` is left to the operator for now.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from mailapp.cli.command import EXIT_OK, CommandFailure, CommandLineParser, Context, add_command

__all__ = ["add_tls_report_command"]


def _day(text: str | None) -> str:
    if text is None:
        return (datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1)).isoformat()
    try:
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        raise CommandFailure(f"bad date {text!r}: expected YYYY-MM-DD") from None


def _tls_report(context: Context) -> int:
    from mailapp.relay.tlsrpt import build_report, read_day, write_reports

    day = _day(context.options.date)
    hostname = context.config.hostname
    records = context.state_dir / "tls-rpt"
    output: str | None = context.options.output
    if output is None:
        reports = build_report(read_day(records, day), day, hostname, f"mailto:postmaster@{hostname}")
        print(json.dumps(reports, indent=2, sort_keys=True))
        return EXIT_OK
    written = [str(path) for path in write_reports(records, day, Path(output), hostname)]
    data: dict[str, Any] = {"date": day, "files": written}
    context.report("\n".join(written) if written else f"nothing recorded on {day}", data)
    return EXIT_OK


def add_tls_report_command(verbs: Any, common: CommandLineParser) -> None:
    """Declare ``mailapp tls-report`` in the subparsers action C{verbs}."""
    sub = add_command(
        common,
        verbs,
        "tls-report",
        _tls_report,
        "make one day's RFC 8460 TLS reports",
        description="Make the RFC 8460 TLS reports of one day (yesterday by default).",
    )
    sub.add_argument("--date", metavar="YYYY-MM-DD", default=None, help="the UTC day to report (default: yesterday)")
    sub.add_argument("--output", metavar="DIR", default=None, help="write one file per policy domain here instead of printing")
