"""
MX resolution against a real twisted.names DNS server on 127.0.0.1 (port
0), which the resolver is pointed at explicitly: MX order and shuffling,
implicit MX, null MX, CNAME, NXDOMAIN, SERVFAIL and a silent server.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.names import authority, client, dns, server
from twisted.trial import unittest

from mailapp.config import HostPort
from mailapp.relay.routing import Hop, MXResolver, Myself, RouteError, Routes


class Zone(authority.FileAuthority):
    """The ``test.`` zone, from a dict; ``broken.test`` answers SERVFAIL."""

    def __init__(self, records: dict[bytes, list[Any]]) -> None:
        self._records = records
        super().__init__("test")

    def loadFile(self, filename: str) -> None:
        self.soa = (b"test", dns.Record_SOA(mname=b"ns.test", rname=b"root.test", serial=1, minimum=60, expire=60))
        self.records = {name: [self.soa[1]] if name == b"test" else list(values) for name, values in self._records.items()}
        self.records[b"test"] = [self.soa[1]]

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        if name.lower() == b"broken.test":
            return defer.fail(RuntimeError("backend down"))
        return super()._lookup(name, cls, type, timeout)


RECORDS = {
    b"b.test": [dns.Record_MX(20, b"backup.b.test"), dns.Record_MX(10, b"mx1.b.test"), dns.Record_MX(10, b"mx2.b.test")],
    b"mx1.b.test": [dns.Record_A("192.0.2.11")],
    b"mx2.b.test": [dns.Record_A("192.0.2.12")],
    b"backup.b.test": [dns.Record_A("192.0.2.20"), dns.Record_AAAA("2001:db8::20")],
    b"nomx.test": [dns.Record_A("192.0.2.30")],
    b"nothing.test": [dns.Record_TXT(b"no mail here")],
    b"null.test": [dns.Record_MX(0, b"")],
    b"alias.test": [dns.Record_CNAME(b"b.test")],
    b"lost.test": [dns.Record_MX(10, b"gone.test")],
    b"relay.test": [dns.Record_A("192.0.2.40")],
}


class MXTests(unittest.TestCase):
    def setUp(self) -> None:
        factory = server.DNSServerFactory(authorities=[Zone(RECORDS)])
        self.port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.resolver = client.Resolver(servers=[("127.0.0.1", self.port.getHost().port)], reactor=reactor)
        self.mx = MXResolver(self.resolver, shuffle=lambda group: group.reverse(), timeout=(2,))

    @defer.inlineCallbacks
    def test_mx_records_in_preference_order_equal_preferences_shuffled(self) -> Any:
        hops = yield self.mx.resolve("b.test")
        self.assertEqual(
            [(h.name, h.address, h.preference) for h in hops],
            [
                ("mx2.b.test", "192.0.2.12", 10),
                ("mx1.b.test", "192.0.2.11", 10),
                ("backup.b.test", "192.0.2.20", 20),
                ("backup.b.test", "2001:db8::20", 20),
            ],
        )
        self.assertTrue(all(h.port == 25 for h in hops))

    @defer.inlineCallbacks
    def test_no_mx_falls_back_to_the_address_of_the_domain(self) -> Any:
        hops = yield self.mx.resolve("nomx.test")
        self.assertEqual(hops, [Hop("nomx.test", "192.0.2.30", 25, 0)])

    @defer.inlineCallbacks
    def test_no_mx_and_no_address_is_permanent(self) -> Any:
        error = yield self.assertFailure(self.mx.resolve("nothing.test"), RouteError)
        self.assertTrue(error.permanent)
        self.assertTrue(error.reply.startswith("550 5.1.2"))

    @defer.inlineCallbacks
    def test_null_mx_is_an_immediate_permanent_failure(self) -> Any:
        error = yield self.assertFailure(self.mx.resolve("null.test"), RouteError)
        self.assertTrue(error.permanent)
        self.assertTrue(error.reply.startswith("556 5.1.10"), error.reply)

    @defer.inlineCallbacks
    def test_a_cname_is_followed_to_the_mx_of_its_target(self) -> Any:
        hops = yield self.mx.resolve("alias.test")
        self.assertEqual([h.name for h in hops][:2], ["mx2.b.test", "mx1.b.test"])

    @defer.inlineCallbacks
    def test_nxdomain_is_permanent(self) -> Any:
        error = yield self.assertFailure(self.mx.resolve("missing.test"), RouteError)
        self.assertTrue(error.permanent)
        self.assertIn("NXDOMAIN", error.reply)

    @defer.inlineCallbacks
    def test_servfail_is_temporary(self) -> Any:
        error = yield self.assertFailure(self.mx.resolve("broken.test"), RouteError)
        self.flushLoggedErrors(RuntimeError)
        self.assertFalse(error.permanent)
        self.assertTrue(error.reply.startswith("451 4.4.3"), error.reply)

    @defer.inlineCallbacks
    def test_an_mx_host_without_address_is_temporary(self) -> Any:
        error = yield self.assertFailure(self.mx.resolve("lost.test"), RouteError)
        self.assertFalse(error.permanent)

    @defer.inlineCallbacks
    def test_a_transport_override_skips_the_mx_and_a_named_next_hop_is_resolved(self) -> Any:
        routes = Routes({"b.test": HostPort("relay.test", 2525)}, None, self.mx)
        hops = yield routes.resolve("b.test")
        self.assertEqual(hops, [Hop("relay.test", "192.0.2.40", 2525)])
        routes = Routes({}, HostPort("127.0.0.1", 587), self.mx)
        hops = yield routes.resolve("anything.test")
        self.assertEqual(hops, [Hop("127.0.0.1", "127.0.0.1", 587)])


class SilentServerTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_dns_timeout_is_temporary(self) -> Any:
        port = reactor.listenUDP(0, protocol.DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        resolver = client.Resolver(servers=[("127.0.0.1", port.getHost().port)], reactor=reactor)
        error = yield self.assertFailure(MXResolver(resolver, timeout=(1,)).resolve("b.test"), RouteError)
        self.assertFalse(error.permanent)
        self.assertIn("timeout", error.reply)


class DefaultResolverTests(unittest.TestCase):
    """
    The resolver the shipped config builds (no ``[relay] nameservers``):
    resolv.conf and /etc/hosts. It once raised C{TypeError} on every lookup,
    so no remote mail ever left; the network-namespace rig tests it against
    a real name server, these tests pin the construction.
    """

    def _lazy(self, resolv_conf: str, hosts: str = "") -> Any:
        from mailapp.service import _LazyResolver

        directory = self.mktemp()
        os.makedirs(directory)
        conf = os.path.join(directory, "resolv.conf")
        hosts_file = os.path.join(directory, "hosts")
        with open(conf, "w") as f:
            f.write(resolv_conf)
        with open(hosts_file, "w") as f:
            f.write(hosts)
        resolver = _LazyResolver(reactor, (), resolv_conf=conf, hosts_file=hosts_file)
        self.addCleanup(resolver.close)
        return resolver

    @defer.inlineCallbacks
    def test_default_resolver_failure_is_a_dns_error_not_a_type_error(self) -> Any:
        # Nothing answers on 127.0.0.1:53 here: the lookup must fail as DNS fails.
        resolver = self._lazy("nameserver 127.0.0.1\n")
        error = yield self.assertFailure(MXResolver(resolver, timeout=(1,)).resolve("b.test"), RouteError)
        self.assertNotIn("TypeError", error.reply)
        self.assertTrue(error.reply.startswith("451 4.4.3"), error.reply)

    @defer.inlineCallbacks
    def test_default_resolver_reads_hosts_file_for_a_smarthost_name(self) -> Any:
        resolver = self._lazy("nameserver 127.0.0.1\n", "192.0.2.77 smarthost.test\n")
        answers, _, _ = yield resolver.lookupAddress("smarthost.test")
        self.assertEqual([a.payload.dottedQuad() for a in answers], ["192.0.2.77"])


class HopTests(unittest.TestCase):
    """How a next hop is written in logs and in DSNs' diagnostics."""

    def test_an_ipv4_hop_is_name_address_port(self) -> None:
        self.assertEqual(str(Hop("mx1.c.test", "192.0.2.12", 25)), "mx1.c.test[192.0.2.12]:25")

    def test_an_ipv6_hop_has_one_pair_of_brackets(self) -> None:
        # Found by the network-namespace rig: it read "mx1.c.test[[2001:db8::12]]:25".
        self.assertEqual(str(Hop("mx1.c.test", "2001:db8::12", 25)), "mx1.c.test[2001:db8::12]:25")


class LoopTests(unittest.TestCase):
    """A domain whose best MX is this server loops (5.4.6); MX hosts after us are never tried."""

    def setUp(self) -> None:
        records = dict(RECORDS)
        records[b"loop.test"] = [dns.Record_MX(10, b"mail.self.test")]
        records[b"behind.test"] = [dns.Record_MX(5, b"mx1.b.test"), dns.Record_MX(10, b"mail.self.test"), dns.Record_MX(20, b"backup.b.test")]
        records[b"byaddress.test"] = [dns.Record_MX(10, b"mx2.b.test"), dns.Record_MX(20, b"backup.b.test")]
        records[b"mail.self.test"] = [dns.Record_A("192.0.2.99")]
        factory = server.DNSServerFactory(authorities=[Zone(records)])
        self.port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        resolver = client.Resolver(servers=[("127.0.0.1", self.port.getHost().port)], reactor=reactor)
        myself = Myself("mail.self.test", [("192.0.2.12", 25), ("", 10025)])
        self.mx = MXResolver(resolver, shuffle=lambda group: None, timeout=(2,), myself=myself)

    @defer.inlineCallbacks
    def test_a_domain_whose_best_mx_is_our_hostname_bounces_as_a_loop(self) -> Any:
        error = yield self.assertFailure(self.mx.resolve("loop.test"), RouteError)
        self.assertTrue(error.permanent)
        self.assertTrue(error.reply.startswith("554 5.4.6 "), error.reply)
        self.assertIn("loops back to myself", error.reply)

    @defer.inlineCallbacks
    def test_only_mx_hosts_preferred_to_us_are_tried(self) -> Any:
        hops = yield self.mx.resolve("behind.test")
        self.assertEqual(hops, [Hop("mx1.b.test", "192.0.2.11", 25, 5)])

    @defer.inlineCallbacks
    def test_an_mx_at_the_address_we_listen_on_is_us(self) -> Any:
        error = yield self.assertFailure(self.mx.resolve("byaddress.test"), RouteError)
        self.assertIn("5.4.6", error.reply)

    def test_a_wildcard_listener_is_us_on_any_local_address_at_its_port(self) -> None:
        myself = Myself("mail.self.test", [("", 25)])
        self.assertTrue(myself(Hop("other.name", "127.0.0.1", 25)))
        self.assertFalse(myself(Hop("other.name", "127.0.0.1", 2525)))
        self.assertFalse(myself(Hop("other.name", "192.0.2.1", 25)))
