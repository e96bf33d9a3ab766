"""
Is a client address in a list of networks? One answer for every policy that
asks (relay's trusted networks, ban exemptions, the MX's unchecked
networks), so that an IPv4 client on a dual-stack listener
(``::ffff:192.0.2.1``) is matched as the IPv4 address it is everywhere.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["in_networks"]


def in_networks(ip: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether C{ip} (text) is in one of C{networks}; an unparsable address is in none."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
