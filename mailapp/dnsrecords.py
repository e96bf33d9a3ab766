"""
The DNS records a mail domain served by mailapp must publish, as
``mailapp dns DOMAIN`` prints them (and ``--check`` looks them up, in
L{mailapp.dnscheck}).

All of it follows from the config and the DKIM key store, so that what is
printed is what the server does: the MX is the server's hostname (and its
A/AAAA records, when the MX listens on addresses of its own); SPF
allows the MX (and the smarthost, and any addresses given); one TXT record
per DKIM key of every selector still in the store (a retired selector must
stay published while mail signed with it is in flight); DMARC (RFC 7489);
MTA-STS (RFC 8461: the TXT record, and the policy file to serve over
HTTPS); TLS-RPT (RFC 8460); and the SRV records mail clients use to find
the submission, IMAP and POP3 ports (RFC 6186, RFC 8314), with the
"no such service" target ``.`` for a protocol no listener serves.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from mailapp.config import Config
from mailapp.dkim.keys import DkimKey

__all__ = [
    "DMARC_POLICIES",
    "MTA_STS_MODES",
    "Record",
    "RecordOptions",
    "mta_sts_policy",
    "required_records",
    "zone_line",
]

DMARC_POLICIES: Final = ("none", "quarantine", "reject")
MTA_STS_MODES: Final = ("none", "testing", "enforce")
#: A week: what RFC 8461 3.2 suggests once a policy is settled.
MTA_STS_MAX_AGE: Final = 604800
#: RFC 1035 3.3.14: one character-string of a TXT record is at most 255 bytes.
_TXT_CHUNK: Final = 255

#: The client services of RFC 6186 and RFC 8314, with the protocol and TLS mode of the listener that serves each.
_SERVICES: Final = (
    ("_submissions._tcp", "submission", "implicit"),
    ("_submission._tcp", "submission", "starttls"),
    ("_imaps._tcp", "imap", "implicit"),
    ("_imap._tcp", "imap", "starttls"),
    ("_pop3s._tcp", "pop3", "implicit"),
    ("_pop3._tcp", "pop3", "starttls"),
)
#: Published even without a listener (as "no such service"), so that a client never guesses.
_ALWAYS: Final = frozenset({"_submission._tcp", "_imaps._tcp", "_pop3s._tcp"})


@dataclass(frozen=True)
class RecordOptions:
    """The choices ``mailapp dns`` takes from its command line, with safe defaults."""

    #: DMARC's p=: "quarantine" asks receivers to treat mail failing SPF and DKIM alignment as spam.
    dmarc_policy: str = "quarantine"
    #: Where DMARC aggregate reports and TLS reports go; postmaster@DOMAIN when empty.
    report_address: str = ""
    #: MTA-STS: "testing" reports failures but still delivers; "enforce" once reports are clean.
    mta_sts_mode: str = "testing"
    #: More SPF terms ("ip4:192.0.2.0/24", "include:_spf.example.net") for other hosts sending as the domain.
    spf_terms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Record:
    """
    One record to publish: owner C{name} (no final dot), C{type}, and its
    C{value} as the zone file writes it but unquoted (a TXT record's text,
    an MX's ``10 mail.example.org.``). C{kind} says what it is for
    (``mx``, ``address``, ``spf``, ``dkim``, ``dmarc``, ``mta-sts``,
    ``tls-rpt``, ``srv``) and how L{mailapp.dnscheck} compares what it finds.
    """

    kind: str
    name: str
    type: str
    value: str
    comment: str = ""

    def zone_line(self) -> str:
        return zone_line(self.name, self.type, self.value)


def _quoted(text: str) -> str:
    """A TXT value as zone-file character-strings of at most 255 bytes each."""
    chunks = [text[start : start + _TXT_CHUNK] for start in range(0, len(text), _TXT_CHUNK)] or [""]
    return " ".join('"' + chunk.replace("\\", "\\\\").replace('"', '\\"') + '"' for chunk in chunks)


def zone_line(name: str, type: str, value: str) -> str:
    """One line of a zone file (absolute owner name, class IN), TXT text quoted and split as it must be."""
    shown = _quoted(value) if type == "TXT" else value
    return f"{name}.\tIN\t{type}\t{shown}"


def _report_address(domain: str, options: RecordOptions) -> str:
    return options.report_address or f"postmaster@{domain}"


def _spf(domain: str, config: Config, options: RecordOptions) -> str:
    terms = ["v=spf1", "mx"]
    if config.relay.smarthost is not None:
        # Mail for other domains leaves from the smarthost, but DSNs and
        # anything signed here may too: its addresses must pass.
        terms.append(f"a:{config.relay.smarthost.host}")
    terms += list(options.spf_terms)
    terms.append("-all")
    return " ".join(terms)


def mta_sts_policy(config: Config, options: RecordOptions) -> str:
    """The policy file's text (RFC 8461 3.2), served at L{mta_sts_url}."""
    return (
        "version: STSv1\r\n"
        f"mode: {options.mta_sts_mode}\r\n"
        f"mx: {config.hostname}\r\n"
        f"max_age: {MTA_STS_MAX_AGE}\r\n"
    )


def mta_sts_url(domain: str) -> str:
    return f"https://mta-sts.{domain}/.well-known/mta-sts.txt"


def _mta_sts_id(policy: str) -> str:
    """The id changes whenever the policy does (RFC 8461 3.1), and only then: a digest of it."""
    return hashlib.sha256(policy.encode("ascii")).hexdigest()[:20]


def _services(domain: str, config: Config) -> list[Record]:
    host = config.hostname
    records = []
    for name, protocol, tls in _SERVICES:
        ports = [
            address[1]
            for listener in config.listeners
            if listener.protocol == protocol and listener.tls == tls and (address := listener.tcp_address) is not None
        ]
        if ports:
            records.append(Record("srv", f"{name}.{domain}", "SRV", f"0 1 {ports[0]} {host}."))
        elif name in _ALWAYS:
            records.append(Record("srv", f"{name}.{domain}", "SRV", "0 0 0 .", "no listener: the service is not offered"))
    return records


def _addresses(config: Config) -> list[Record]:
    """
    The MX host's A and AAAA records, when the MX listens on addresses of
    its own (not every interface, not loopback): those are what senders
    must reach. Behind NAT they are the private ones; edit them then.
    """
    found: dict[str, None] = {}
    for listener in config.listeners:
        address = listener.tcp_address
        if listener.protocol == "smtp" and address is not None and address[0]:
            parsed = ipaddress.ip_address(address[0])
            if not (parsed.is_loopback or parsed.is_unspecified or parsed.is_link_local):
                found[str(parsed)] = None
    return [
        Record("address", config.hostname, "AAAA" if ":" in address else "A", address, "the MX host: this server's address")
        for address in found
    ]


def required_records(domain: str, config: Config, keys: Sequence[DkimKey], options: RecordOptions) -> list[Record]:
    """Every record C{domain} needs, in the order ``mailapp dns`` prints them."""
    domain = domain.rstrip(".").lower()
    host = config.hostname
    reports = _report_address(domain, options)
    policy = mta_sts_policy(config, options)
    addresses = _addresses(config)
    unknown = "" if addresses else f"{host} needs A (and AAAA) records of this server's public addresses"
    records = [
        Record("mx", domain, "MX", f"10 {host}.", unknown),
        *addresses,
        Record("spf", domain, "TXT", _spf(domain, config, options)),
    ]
    for key in keys:
        if key.domain == domain:
            state = "signing" if key.active else "not signing: keep it while mail signed with it may be in flight"
            records.append(Record("dkim", key.record_name, "TXT", key.record_text, f"selector {key.dns_selector}, {state}"))
    records += [
        Record("dmarc", f"_dmarc.{domain}", "TXT", f"v=DMARC1; p={options.dmarc_policy}; adkim=r; aspf=r; rua=mailto:{reports}"),
        Record(
            "mta-sts",
            f"_mta-sts.{domain}",
            "TXT",
            f"v=STSv1; id={_mta_sts_id(policy)}",
            f"and serve the policy at {mta_sts_url(domain)} (mta-sts.{domain} needs A/AAAA records and a certificate)",
        ),
        Record("tls-rpt", f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua=mailto:{reports}"),
    ]
    records += _services(domain, config)
    return records
