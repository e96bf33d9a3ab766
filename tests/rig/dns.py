"""
The rig's name server (``dns_server.py``, twisted.names) and zone data.

Zones are data: ``{zone: [(owner, type, *values), ...]}`` with types
``MX`` (preference, exchange; exchange ``"."`` is a null MX), ``A``,
``AAAA``, ``CNAME``, ``TXT`` (one or more strings), ``NS`` and ``SRV``
(priority, weight, port, target; target ``"."``: no such service). Names are
absolute, without the trailing dot. Names under ``servfail`` answer SERVFAIL,
names under ``timeout`` are never answered, a name in no zone is NXDOMAIN::

    internet.dns.serve(
        {"b.test": [*mail_domain("b.test", b_host)], "d.test": [("d.test", "MX", 0, ".")]},
        servfail=["broken.test"], timeout=["slow.test"],
    )

:meth:`DNSServer.serve` (re)starts the server with the zones and returns
once it listens on port 53, UDP and TCP, at the DNS host's IPv4 and IPv6
addresses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.rig.network import PYTHON, Host, RigProcess
from mailapp.dkim.keys import SigningKeys

__all__ = ["DNSServer", "Record", "address_records", "mail_domain"]

Record = tuple[Any, ...]
_SCRIPT = Path(__file__).with_name("dns_server.py")


def address_records(name: str, host: Host) -> list[Record]:
    """C{name}'s A and AAAA records: C{host}'s addresses."""
    return [(name, "A", host.ipv4), (name, "AAAA", host.ipv6)]


def mail_domain(domain: str, *exchanges: Host | tuple[int, str, Host | tuple[str, str]]) -> list[Record]:
    """
    A domain's MX records and their hosts' addresses. Each exchange is a
    L{Host} (preference 10 upwards, named by its hostname) or
    (preference, name, host or (ipv4, ipv6)).
    """
    records: list[Record] = []
    for number, exchange in enumerate(exchanges):
        if isinstance(exchange, Host):
            exchange = (10 * (number + 1), exchange.hostname, exchange)
        preference, name, target = exchange
        records.append((domain, "MX", preference, name))
        ipv4, ipv6 = (target.ipv4, target.ipv6) if isinstance(target, Host) else target
        records += [(name, "A", ipv4), (name, "AAAA", ipv6)]
    return records


class DNSServer:
    """The authoritative server for the test zones, on the DNS host."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.process: RigProcess | None = None
        self.zones: dict[str, list[Record]] = {}

    def serve(
        self,
        zones: Mapping[str, Iterable[Sequence[Any]]],
        servfail: Iterable[str] = (),
        timeout: Iterable[str] = (),
        secure: Iterable[str] = (),
    ) -> None:
        """Answer with C{zones} from now on (the server restarts); answers under C{secure} carry the AD bit."""
        self.stop()
        self.zones = {zone: [tuple(r) for r in records] for zone, records in zones.items()}
        path = self.host.directory / "zones.json"
        path.write_text(
            json.dumps({"zones": self.zones, "servfail": list(servfail), "timeout": list(timeout), "secure": list(secure)}, indent=1),
            encoding="utf-8",
        )
        self.process = self.host.popen(
            [PYTHON, str(_SCRIPT), str(path), self.host.ipv4, self.host.ipv6], "dns.log", stdout_pipe=True
        )
        self.process.wait_line("ready")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def txt_records(keys: list[dict[str, object]] | SigningKeys) -> list[tuple[object, ...]]:
    """Zone data for the keys' TXT records, each text in strings of at most 255 bytes."""
    items = [(k.record_name, k.record_text) for k in keys.keys] if isinstance(keys, SigningKeys) else [
        (k["record_name"], k["record"]) for k in keys
    ]
    records: list[tuple[object, ...]] = []
    for name, text in items:
        assert isinstance(text, str)
        records.append((name, "TXT", *[text[i : i + 255] for i in range(0, len(text), 255)]))
    return records
