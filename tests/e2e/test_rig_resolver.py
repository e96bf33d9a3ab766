"""
The relay's default resolver path (no ``[relay] nameservers``: /etc/hosts,
then /etc/resolv.conf) against a real authoritative name server, from inside
a network namespace whose resolv.conf names it. The path that once raised
C{TypeError} on every MX lookup while every other test used fakes.

Each test runs L{mailapp.relay.routing.MXResolver} over the resolver the
service builds (``_LazyResolver(reactor, ())``) in a process inside the
``client`` host; the zones are the module's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rig.clients import resolve_mx
from tests.rig.dns import mail_domain
from tests.rig.network import Host, Internet


@pytest.fixture(scope="module")
def client(module_internet: Internet) -> Iterator[Host]:
    net = module_internet
    first, second = net.unused_address(), net.unused_address()
    v6_only = net.unused_address()
    net.dns.serve(
        {
            "order.test": mail_domain("order.test", (20, "mx2.order.test", second), (10, "mx1.order.test", first)),
            "alias.test": [("mail.alias.test", "CNAME", "order.test")],
            "implicit.test": [("implicit.test", "A", first[0]), ("implicit.test", "AAAA", first[1])],
            "null.test": [("null.test", "MX", 0, ".")],
            "v6.test": [("v6.test", "MX", 10, "mx.v6.test"), ("mx.v6.test", "AAAA", v6_only[1])],
            "lame.test": [("lame.test", "MX", 10, "nowhere.lame.test")],
            "txt.test": [("txt.test", "TXT", "v=spf1 -all"), ("txt.test", "MX", 10, "mx.txt.test"), ("mx.txt.test", "A", first[0])],
        },
        servfail=["broken.test"],
        timeout=["slow.test"],
    )
    yield net.add_host("client", "client.rig.test")


def test_mx_hosts_come_in_preference_order_ipv4_then_ipv6(client: Host) -> None:
    hops = resolve_mx(client, "order.test")["hops"]
    assert [(name, preference) for name, _, _, preference in hops] == [
        ("mx1.order.test", 10),
        ("mx1.order.test", 10),
        ("mx2.order.test", 20),
        ("mx2.order.test", 20),
    ]
    assert [":" in address for _, address, _, _ in hops] == [False, True, False, True]
    assert {port for _, _, port, _ in hops} == {25}


def test_a_cname_is_followed_to_the_target_domains_mx(client: Host) -> None:
    hops = resolve_mx(client, "mail.alias.test")["hops"]
    assert [name for name, _, _, _ in hops] == ["mx1.order.test", "mx1.order.test", "mx2.order.test", "mx2.order.test"]


def test_a_domain_without_mx_is_its_own_implicit_mx_by_a_and_aaaa(client: Host) -> None:
    hops = resolve_mx(client, "implicit.test")["hops"]
    assert [(name, preference) for name, _, _, preference in hops] == [("implicit.test", 0), ("implicit.test", 0)]
    assert [":" in address for _, address, _, _ in hops] == [False, True]


def test_an_mx_host_with_only_aaaa_gives_ipv6_hops(client: Host) -> None:
    [(name, address, _, _)] = resolve_mx(client, "v6.test")["hops"]
    assert name == "mx.v6.test" and ":" in address


def test_txt_records_beside_the_mx_do_not_disturb_it(client: Host) -> None:
    assert [name for name, _, _, _ in resolve_mx(client, "txt.test")["hops"]] == ["mx.txt.test"]


def test_a_null_mx_is_a_permanent_5_1_10(client: Host) -> None:
    assert resolve_mx(client, "null.test") == {"error": "556 5.1.10 null.test does not accept mail (null MX)", "permanent": True}


def test_nxdomain_is_a_permanent_5_1_2(client: Host) -> None:
    assert resolve_mx(client, "missing.test") == {"error": "550 5.1.2 domain missing.test does not exist (NXDOMAIN)", "permanent": True}


def test_servfail_is_temporary(client: Host) -> None:
    assert resolve_mx(client, "broken.test") == {"error": "451 4.4.3 DNS server failure looking up broken.test", "permanent": False}


def test_a_name_server_that_never_answers_is_a_temporary_timeout(client: Host) -> None:
    assert resolve_mx(client, "slow.test", timeout=(1,)) == {"error": "451 4.4.3 DNS timeout looking up slow.test", "permanent": False}


def test_an_mx_host_without_addresses_is_temporary_4_4_4(client: Host) -> None:
    result = resolve_mx(client, "lame.test", timeout=(1,))
    assert result["permanent"] is False
    assert result["error"].startswith("451 4.4.4 no address for the mail servers of lame.test")
