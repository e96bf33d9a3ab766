"""
The DNS resolver the relay's L{mailapp.relay.routing.MXResolver} asks: the
configured ``[relay] nameservers``, or what the system uses (``/etc/hosts``,
then the name servers of ``resolv.conf``), made on the first lookup so that
building the service reads no DNS configuration.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IResolver

from mailapp.config import HostPort

__all__ = ["LazyResolver", "system_resolver"]


class LazyResolver:
    """
    A L{twisted.names} resolver made on first use (reading resolv.conf, or
    the configured ``[relay] nameservers``), so that building the service
    touches no DNS configuration. Offers every C{lookup*} method of the
    resolver it makes.
    """

    def __init__(
        self,
        reactor: Any,
        nameservers: Iterable[HostPort],
        resolv_conf: str = "/etc/resolv.conf",
        hosts_file: str = "/etc/hosts",
    ) -> None:
        self._reactor = reactor
        self._nameservers = tuple(nameservers)
        self._resolv_conf = resolv_conf
        self._hosts_file = hosts_file
        self._resolver: IResolver | None = None

    def close(self) -> None:
        """Cancel the resolver's periodic re-reading of resolv.conf (for tests: a running server keeps it till exit)."""
        for resolver in getattr(self._resolver, "resolvers", [self._resolver]):
            parse = getattr(resolver, "_parseCall", None)
            if parse is not None and parse.active():
                parse.cancel()

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("lookup"):
            raise AttributeError(name)
        if self._resolver is None:
            from twisted.names import client

            if self._nameservers:
                servers = [(hop.host, hop.port) for hop in self._nameservers]
                self._resolver = client.Resolver(servers=servers, reactor=self._reactor)
            else:
                self._resolver = system_resolver(self._reactor, self._resolv_conf, self._hosts_file)
        return getattr(self._resolver, name)


def system_resolver(reactor: Any, resolv_conf: str = "/etc/resolv.conf", hosts_file: str = "/etc/hosts") -> IResolver:
    """
    What L{twisted.names.client.createResolver} builds (``/etc/hosts``, a
    cache, then the name servers of ``resolv.conf``), but on C{reactor}:
    C{createResolver} takes no reactor argument, and calling it with one made
    every MX lookup of the default configuration fail with C{TypeError}.
    """
    from twisted.names import cache, client, hosts, resolve

    return resolve.ResolverChain(
        [
            hosts.Resolver(file=hosts_file.encode()),
            cache.CacheResolver(reactor=reactor),
            client.Resolver(resolv=resolv_conf, reactor=reactor),
        ]
    )
