"""
``mailapp dns DOMAIN``: every DNS record the domain needs, ready to paste
into a zone file (L{mailapp.dnsrecords}); with ``--check``, each looked up
and judged (L{mailapp.dnscheck}): ok, missing, wrong (with what was found)
or unknown (the lookup failed), and the MTA-STS policy file fetched over
HTTPS and judged the same way (L{mailapp.cli.mtastscheck}). Exit status 1
when any is not ok.
"""

from __future__ import annotations

import argparse
from typing import Any

from mailapp.cli.command import EXIT_OK, EXIT_REFUSED, CommandLineParser, Context, add_command
from mailapp.cli.mtastscheck import POLICY_KIND, check_policy, https_fetch, policy_record
from mailapp.dkim.keys import KeyStore, check_domain
from mailapp.dnscheck import OK, check_records, system_lookup
from mailapp.dnsrecords import (
    DMARC_POLICIES,
    MTA_STS_MODES,
    Record,
    RecordOptions,
    mta_sts_policy,
    mta_sts_url,
    required_records,
)

__all__ = ["add_dns_commands"]


def _record_data(record: Record) -> dict[str, Any]:
    return {"kind": record.kind, "name": record.name, "type": record.type, "value": record.value, "zone": record.zone_line()}


def _dns(context: Context) -> int:
    options = context.options
    domain = check_domain(options.domain)
    keys = KeyStore(context.state_dir).keys(domain)
    choices = RecordOptions(
        dmarc_policy=options.dmarc_policy,
        report_address=options.report_address or "",
        mta_sts_mode=options.mta_sts_mode,
        spf_terms=tuple(options.spf or ()),
    )
    config = context.config
    records = required_records(domain, config, keys, choices)
    if options.check:
        return _check(context, domain, records, mta_sts_policy(config, choices), options.timeout, list(options.nameserver or ()))
    lines = [f"; DNS records for {domain}, served by {config.hostname} (mailapp dns {domain})"]
    if domain not in config.local_domains:
        lines.append(f"; note: {domain} is not in [domains] local")
    if not keys:
        lines.append(f"; no DKIM keys: run 'mailapp dkim keygen {domain}' and run this again")
    for record in records:
        if record.comment:
            lines.append(f"; {record.comment}")
        lines.append(record.zone_line())
    policy = mta_sts_policy(config, choices)
    lines.append(f"; MTA-STS policy: serve this text as {mta_sts_url(domain)} (text/plain):")
    lines += [f";   {line}" for line in policy.splitlines()]
    context.report(
        "\n".join(lines),
        {"domain": domain, "records": [_record_data(r) for r in records], "mta_sts_url": mta_sts_url(domain), "mta_sts_policy": policy},
    )
    return EXIT_OK


def _check(context: Context, domain: str, records: list[Record], policy: str, timeout: float, nameservers: list[str]) -> int:
    lookup = system_lookup(timeout, nameservers)
    findings = check_records(records, lookup)
    mx_hosts = [record.value.split()[-1].rstrip(".") for record in records if record.kind == "mx"]
    findings.append(
        check_policy(policy_record(domain, policy), domain, mx_hosts, https_fetch(lookup, timeout, context.config.relay.tls_ca_file))
    )
    lines = []
    for finding in findings:
        record = finding.record
        line = f"{finding.status:8} {record.type:4} {record.name}"
        if finding.status != OK:
            wanted = f"serving {record.value}" if record.kind == POLICY_KIND else record.zone_line()
            line += f"\n         wanted: {wanted}"
            if finding.found:
                line += "\n         found:  " + "\n                 ".join(finding.found)
            if finding.detail:
                line += f"\n         {finding.detail}"
        lines.append(line)
    bad = [finding for finding in findings if finding.status != OK]
    lines.append(f"{len(findings) - len(bad)} of {len(findings)} records ok")
    context.report(
        "\n".join(lines),
        [
            {**_record_data(f.record), "status": f.status, "found": list(f.found), "detail": f.detail}
            for f in findings
        ],
    )
    return EXIT_REFUSED if bad else EXIT_OK


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"not a number of seconds above 0 and at most 60: {text!r}")
    return value


def add_dns_commands(verbs: Any, common: CommandLineParser) -> None:
    """Declare ``mailapp dns DOMAIN [--check]`` in the subparsers action C{verbs}."""
    sub = add_command(
        common,
        verbs,
        "dns",
        _dns,
        "print the DNS records DOMAIN must publish; --check looks them up",
        description="Print every DNS record DOMAIN must publish (MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, client SRV "
        "records), ready for a zone file; with --check, look each up and say which are missing or wrong.",
    )
    sub.add_argument("domain", metavar="DOMAIN")
    sub.add_argument("--check", action="store_true", help="look the records up; exit 1 if any is missing or wrong")
    sub.add_argument("--dmarc-policy", choices=DMARC_POLICIES, default=RecordOptions.dmarc_policy, help="DMARC p= (default: %(default)s)")
    sub.add_argument("--mta-sts-mode", choices=MTA_STS_MODES, default=RecordOptions.mta_sts_mode, help="MTA-STS mode (default: %(default)s)")
    sub.add_argument("--report-address", metavar="ADDRESS", help="where DMARC and TLS reports go (default: postmaster@DOMAIN)")
    sub.add_argument("--spf", metavar="TERM", action="append", help="another SPF term, e.g. ip4:192.0.2.0/24 (repeatable)")
    sub.add_argument("--timeout", type=_timeout, default=5.0, metavar="SECONDS", help="per lookup, with --check (default: 5)")
    sub.add_argument("--nameserver", metavar="ADDRESS[:PORT]", action="append", help="ask this server, with --check (default: the system's)")
