"""
The named checks of values that several sections share: a domain name, a
next hop (C{host:port}), a network, a path. Each is a L{schema.Check}: it
reports through C{at} and returns the value converted, or L{schema.INVALID}.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from mailapp.config.schema import INVALID, At

__all__ = ["HostPort", "Network", "domain", "host_port", "name_server", "network", "path"]

_LABEL: Final = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class HostPort:
    """A next hop for relaying: a host name or IP address, and a TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def domain(at: At, text: str) -> Any:
    """C{text} lower-cased if it is a valid DNS name (LDH labels, xn-- for IDNs)."""
    name = text.lower()
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or not name.isascii()
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        at.problem(
            f"{text!r} is not a valid domain name (letters, digits and hyphens in dot-separated "
            "labels; write an international name in its xn-- form)"
        )
        return INVALID
    return name


def host_port(at: At, text: str) -> Any:
    """A L{HostPort} from C{host:port} (an IPv6 address in brackets)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text)
    if match is None:
        at.problem(f"bad next hop {text!r}: expected 'host:port' (an IPv6 address goes in brackets)")
        return INVALID
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        at.problem(f"bad next hop {text!r}: port {port} is out of range 1-65535")
        return INVALID
    try:
        return HostPort(str(ipaddress.ip_address(host)), port)
    except ValueError:
        pass
    name = domain(at, host)
    return INVALID if name is INVALID else HostPort(name, port)


def name_server(at: At, text: str) -> Any:
    """A name server: a L{HostPort} whose host is an IP address."""
    hop = host_port(at, text)
    if hop is INVALID:
        return INVALID
    try:
        ipaddress.ip_address(hop.host)
    except ValueError:
        at.problem(f"{text!r}: a name server is given by its IP address")
        return INVALID
    return hop


def network(at: At, text: str) -> Any:
    """A CIDR network; one with host bits set gets a "did you mean" hint."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        hint = ""
        try:
            hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
        except ValueError:
            pass
        at.problem(f"bad network {text!r}: {error}{hint}")
        return INVALID


def path(at: At, text: str) -> Path:
    """A path, resolved against C{at.env["base"]} when relative; an empty one is a problem (and kept)."""
    if not text:
        at.problem("must not be empty")
    resolved = Path(text).expanduser()
    base: Path = at.env["base"]
    return resolved if resolved.is_absolute() else base / resolved
