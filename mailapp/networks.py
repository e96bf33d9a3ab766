"""
Is a client address in a list of networks? One answer for every policy that
asks (relay's trusted networks, ban exemptions, the MX's unchecked
networks), so that an IPv4 client on a dual-stack listener
(``::ffff:192.0.2.1``) is matched as the IPv4 address it is everywhere
(and is looked up and greylisted as one: L{client_address}).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["client_address", "in_networks"]


def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """C{ip} (text) as the address it is (an IPv4-mapped IPv6 address as IPv4); None if it is none."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(ip: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether C{ip} (text) is in one of C{networks}; an unparsable address is in none."""
    address = client_address(ip)
    return address is not None and any(address in network for network in networks)
