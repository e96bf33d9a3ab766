"""
The ``[relay]`` keys the relay manager added: typed values, defaults, and
every mistake reported with its dotted key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailapp.config import ConfigError, HostPort, RelayConfig, parse

PATH = Path("etc/test.toml")
HEAD = '[server]\nhostname = "mail.example.test"\n[relay]\n'


def relay(text: str) -> RelayConfig:
    return parse(HEAD + text, PATH, base_dir=Path("/srv")).relay


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse(HEAD + text, PATH, base_dir=Path("/srv"))
    return raised.value.problems


def test_defaults_are_five_days_a_growing_schedule_and_no_delay_warning() -> None:
    config = relay("")
    assert config.max_lifetime == 5 * 24 * 3600
    assert config.retry_schedule == (300, 600, 1200, 2400, 3600)
    assert config.delay_warning == 0
    assert config.require_tls == frozenset()
    assert (config.smarthost_username, config.smarthost_password, config.smarthost_require_tls) == (None, None, True)
    assert (config.max_connections, config.max_connections_per_domain) == (50, 20)
    assert config.max_connections_per_address == 10
    assert (config.connect_timeout, config.command_timeout, config.session_timeout) == (30, 300, 1800)
    assert config.nameservers == ()


def test_every_new_key_is_parsed() -> None:
    config = relay(
        """
max_lifetime = 3600
retry_schedule = [1, 2, 3]
delay_warning = 600
require_tls = ["B.test", "c.test"]
smarthost = "smtp.provider.test:587"
smarthost_username = "me"
smarthost_password = "pw"
smarthost_require_tls = false
max_connections = 4
max_connections_per_domain = 2
connect_timeout = 5
command_timeout = 60
session_timeout = 120
nameservers = ["127.0.0.1:5353", "[::1]:53"]
"""
    )
    assert config.max_lifetime == 3600
    assert config.retry_schedule == (1, 2, 3)
    assert config.delay_warning == 600
    assert config.require_tls == frozenset({"b.test", "c.test"})
    assert (config.smarthost, config.smarthost_username, config.smarthost_password) == (
        HostPort("smtp.provider.test", 587),
        "me",
        "pw",
    )
    assert config.smarthost_require_tls is False
    assert (config.max_connections, config.max_connections_per_domain) == (4, 2)
    assert (config.connect_timeout, config.command_timeout, config.session_timeout) == (5, 60, 120)
    assert config.nameservers == (HostPort("127.0.0.1", 5353), HostPort("::1", 53))


def test_bad_values_are_all_reported_with_their_keys() -> None:
    found = problems(
        """
max_lifetime = 0
retry_schedule = [60, -1, "x"]
delay_warning = -5
require_tls = ["not a domain", 3]
smarthost_username = "me"
max_connections = 2
max_connections_per_domain = 3
nameservers = ["dns.example.test:53"]
"""
    )
    assert found == [
        "etc/test.toml: relay.max_lifetime: must be a positive integer, not 0",
        "etc/test.toml: relay.max_connections_per_domain: 3 is more than relay.max_connections (2)",
        "etc/test.toml: relay.delay_warning: must be 0 (off) or a positive integer, not -5",
        "etc/test.toml: relay.retry_schedule[1]: must be a positive integer (seconds), not an integer (-1)",
        "etc/test.toml: relay.retry_schedule[2]: must be a positive integer (seconds), not a string ('x')",
        "etc/test.toml: relay.require_tls[0]: 'not a domain' is not a valid domain name (letters, digits and "
        "hyphens in dot-separated labels; write an international name in its xn-- form)",
        "etc/test.toml: relay.require_tls[1]: must be a string, not an integer (3)",
        "etc/test.toml: relay.smarthost_password: smarthost_username and smarthost_password go together",
        "etc/test.toml: relay.smarthost_username: is only used with relay.smarthost",
        "etc/test.toml: relay.nameservers[0]: 'dns.example.test:53': a name server is given by its IP address",
    ]


def test_an_empty_retry_schedule_is_refused() -> None:
    assert problems("retry_schedule = []\n") == ["etc/test.toml: relay.retry_schedule: must list at least one interval"]


def test_an_unknown_relay_key_lists_the_known_ones() -> None:
    [problem] = problems("retries = 3\n")
    assert problem.startswith("etc/test.toml: relay.retries: unknown key (expected one of: command_timeout, ")
    assert "max_lifetime" in problem and "smarthost_password" in problem


def test_one_destination_address_gets_a_fifth_of_the_connections_unless_the_config_says() -> None:
    assert relay("max_connections = 12\nmax_connections_per_domain = 5\n").max_connections_per_address == 2
    assert relay("max_connections = 3\nmax_connections_per_domain = 3\n").max_connections_per_address == 1
    assert relay("max_connections_per_address = 7\n").max_connections_per_address == 7
    assert problems("max_connections = 4\nmax_connections_per_domain = 4\nmax_connections_per_address = 5\n") == [
        "etc/test.toml: relay.max_connections_per_address: 5 is more than relay.max_connections (4)"
    ]
    assert problems("max_connections_per_address = 0\n") == [
        "etc/test.toml: relay.max_connections_per_address: must be a positive integer, not 0"
    ]


def test_the_relay_manager_defaults_to_the_configs_values(tmp_path: Path) -> None:
    from mailapp.relay.manager import RetryPolicy
    from tests.relay_helpers import Harness

    config = relay("")
    manager = Harness(tmp_path).manager  # no budget passed: the manager's own defaults
    assert (manager.max_connections, manager.max_connections_per_domain, manager.max_connections_per_address) == (
        config.max_connections,
        config.max_connections_per_domain,
        config.max_connections_per_address,
    )
    assert RetryPolicy() == RetryPolicy(config.retry_schedule, config.max_lifetime, config.delay_warning)


def test_the_connection_cache_is_two_seconds_and_zero_turns_it_off() -> None:
    assert (relay("").connection_cache_time, relay("").connection_reuse_time) == (2, 300)
    assert relay("connection_cache_time = 0\n").connection_cache_time == 0
    assert any("relay.connection_cache_time" in p for p in problems("connection_cache_time = -1\n"))
    assert any("relay.connection_reuse_time" in p for p in problems("connection_reuse_time = 0\n"))
