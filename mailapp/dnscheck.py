"""
``mailapp dns --check``: look up every record of
L{mailapp.dnsrecords.required_records} and say, per record, whether it is
``ok``, ``missing`` or ``wrong`` (and what was found).

A command-line tool, run off the reactor: dnspython's blocking resolver,
with a timeout per query, the system's resolver configuration unless name
servers are given. What counts as right is what the server needs, not the
exact text printed: an SPF record with more terms than ours still passes if
it allows the MX; a DKIM record must carry our key; DMARC, MTA-STS and
TLS-RPT need their version and the one tag each depends on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from mailapp.dnsrecords import Record

__all__ = ["MISSING", "OK", "UNKNOWN", "WRONG", "Finding", "check_records", "system_lookup"]

OK: Final = "ok"
MISSING: Final = "missing"
WRONG: Final = "wrong"
#: The lookup itself failed (timeout, SERVFAIL): neither right nor missing.
UNKNOWN: Final = "unknown"

#: C{lookup(name, type)}: the record texts found (TXT strings joined), [] for none; raises L{LookupFailed}.
Lookup = Callable[[str, str], list[str]]


class LookupFailed(Exception):
    """A query that got no answer either way (timeout, SERVFAIL, refused)."""


@dataclass(frozen=True)
class Finding:
    """One record's verdict; C{found} is what DNS had (empty when missing)."""

    record: Record
    status: str
    found: tuple[str, ...] = ()
    detail: str = ""


def system_lookup(timeout: float = 5.0, nameservers: Sequence[str] = ()) -> Lookup:
    """A L{Lookup} over dnspython, each query bounded by C{timeout} seconds in all."""
    resolver = dns.resolver.Resolver(configure=not nameservers)
    if nameservers:
        addresses, ports = [], set()
        for server in nameservers:
            host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
            addresses.append(host or server)
            ports.add(int(port) if port else 53)
        resolver.nameservers = addresses
        resolver.port = ports.pop() if len(ports) == 1 else 53
    resolver.timeout = resolver.lifetime = timeout

    def lookup(name: str, type: str) -> list[str]:
        try:
            answer = resolver.resolve(dns.name.from_text(name), dns.rdatatype.from_text(type), search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
            raise LookupFailed(str(error) or type) from None
        found = []
        for rdata in answer:
            if type == "TXT":
                found.append(b"".join(rdata.strings).decode("utf-8", "replace"))
            else:
                found.append(rdata.to_text())
        return found

    return lookup


def _tags(text: str) -> dict[str, str]:
    """A tag=value record (DKIM, DMARC, MTA-STS, TLS-RPT), tag names lower-cased."""
    tags = {}
    for part in text.split(";"):
        name, equals, value = part.partition("=")
        if equals:
            tags[name.strip().lower()] = "".join(value.split())
    return tags


def _versioned(found: list[str], version: str) -> list[str]:
    return [text for text in found if _tags(text).get("v", "").lower() == version.lower()]


def _judge(record: Record, found: list[str]) -> tuple[str, str]:
    """(status, detail) for C{record} given what DNS answered at its name and type."""
    kind = record.kind
    if kind == "mx":
        host = record.value.split()[1].rstrip(".").lower()
        hosts = [text.split()[-1].rstrip(".").lower() for text in found]
        if not hosts:
            return MISSING, ""
        return (OK, "") if host in hosts else (WRONG, f"no MX names {host}")
    if kind == "address":
        if not found:
            return MISSING, ""
        wanted = ipaddress.ip_address(record.value)
        return (OK, "") if any(ipaddress.ip_address(text) == wanted for text in found) else (WRONG, f"no {record.type} {wanted}")
    if kind == "srv":
        if not found:
            return MISSING, ""
        port_and_target = record.value.lower().split()[2:]
        for text in found:
            fields = text.lower().split()
            if len(fields) == 4 and fields[2:] == port_and_target:
                return OK, ""
        return WRONG, f"wanted port and target {' '.join(port_and_target)}"
    if kind == "spf":
        spf = [text for text in found if text.lower().split()[:1] == ["v=spf1"]]
        if not spf:
            return MISSING, ""
        if len(spf) > 1:
            return WRONG, "more than one SPF record (RFC 7208 4.5: a permanent error)"
        terms = {term.lower().lstrip("+") for term in spf[0].split()}
        lacking = [term for term in record.value.split()[1:-1] if term.lower() not in terms]
        if lacking:
            return WRONG, f"it does not allow {' '.join(lacking)}"
        if not terms & {"-all", "~all"}:
            return WRONG, "it ends in neither -all nor ~all: anyone may send as the domain"
        return OK, ""
    if kind == "dkim":
        keys = _versioned(found, "DKIM1") or [text for text in found if "p=" in text]
        if not keys:
            return MISSING, ""
        ours = _tags(record.value)
        for text in keys:
            tags = _tags(text)
            if tags.get("p") == ours["p"] and tags.get("k", "rsa").lower() == ours["k"]:
                return OK, ""
        return WRONG, "not this selector's public key"
    version = {"dmarc": "DMARC1", "mta-sts": "STSv1", "tls-rpt": "TLSRPTv1"}[kind]
    needed = {"dmarc": "p", "mta-sts": "id", "tls-rpt": "rua"}[kind]
    records = _versioned(found, version)
    if not records:
        return MISSING, ""
    if len(records) > 1:
        return WRONG, f"more than one v={version} record"
    if not _tags(records[0]).get(needed):
        return WRONG, f"it has no {needed}= tag"
    return OK, ""


def check_records(records: Sequence[Record], lookup: Lookup) -> list[Finding]:
    """Look up each of C{records} and judge it; never raises for DNS trouble (that is L{UNKNOWN})."""
    findings = []
    for record in records:
        try:
            found = lookup(record.name, record.type)
        except LookupFailed as error:
            findings.append(Finding(record, UNKNOWN, (), f"lookup failed: {error}"))
            continue
        status, detail = _judge(record, found)
        findings.append(Finding(record, status, tuple(found), detail))
    return findings
