"""The blocklists' query names and the early-talker pass memory, without a reactor."""

from __future__ import annotations

from mailapp.postscreen.blocklists import domain_query, ip_query
from mailapp.postscreen.earlytalk import PassMemory


def test_an_ipv4_address_is_asked_as_its_reversed_octets() -> None:
    assert ip_query("203.0.113.5", "zen.test") == "5.113.0.203.zen.test"


def test_an_ipv4_mapped_address_is_asked_as_the_ipv4_address() -> None:
    assert ip_query("::ffff:203.0.113.5", "zen.test") == "5.113.0.203.zen.test"


def test_an_ipv6_address_is_asked_as_its_reversed_nibbles() -> None:
    assert ip_query("2001:db8::5", "zen.test") == "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test"


def test_what_is_not_an_address_is_not_asked() -> None:
    assert ip_query("unix:/socket", "zen.test") is None


def test_a_domain_is_asked_under_the_zone_lower_cased() -> None:
    assert domain_query("Spam.Test.", "dbl.test") == "spam.test.dbl.test"


def test_address_literals_bare_addresses_single_labels_and_overlong_names_are_not_asked() -> None:
    for name in ("[192.0.2.1]", "192.0.2.1", "localhost", "", "a." * 125 + "test"):
        assert domain_query(name, "dbl.test") is None, name


def test_a_pass_is_remembered_for_its_time_and_then_forgotten() -> None:
    now = [1000.0]
    memory = PassMemory(lambda: now[0])
    memory.passed("192.0.2.1", 60)
    assert memory.known("192.0.2.1")
    assert not memory.known("192.0.2.2")
    now[0] += 60
    assert not memory.known("192.0.2.1")


def test_the_memory_is_bounded_the_oldest_going_first() -> None:
    now = [0.0]
    memory = PassMemory(lambda: now[0], limit=3)
    for last in range(1, 5):
        memory.passed(f"192.0.2.{last}", 100)
    assert not memory.known("192.0.2.1")
    assert all(memory.known(f"192.0.2.{last}") for last in range(2, 5))


def test_a_client_is_greylisted_by_its_24_or_its_64() -> None:
    from mailapp.postscreen.greylist import client_network

    assert client_network("203.0.113.77") == "203.0.113.0/24"
    assert client_network("::ffff:203.0.113.77") == "203.0.113.0/24"
    assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
