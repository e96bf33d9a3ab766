"""``[dnsbl]`` and ``[postscreen]``: their defaults (nothing checked) and their bad values."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from mailapp.config import DEFAULT_DNSBL, DEFAULT_POSTSCREEN, Blocklist, ConfigError, parse

MINIMAL = '[server]\nhostname = "mail.example.test"\n'


def config(text: str):  # type: ignore[no-untyped-def]
    return parse(MINIMAL + text, Path("etc/test.toml"), base_dir=Path("/srv"))


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        config(text)
    return raised.value.problems


def test_by_default_no_list_is_asked_and_no_client_is_delayed_or_judged() -> None:
    parsed = config("")
    assert parsed.dnsbl == DEFAULT_DNSBL
    assert dict(parsed.dnsbl.lists) == {}
    assert (parsed.dnsbl.threshold, parsed.dnsbl.timeout_seconds) == (1, 5)
    assert parsed.postscreen == DEFAULT_POSTSCREEN
    assert (parsed.postscreen.greeting_delay, parsed.postscreen.reject_unauth_pipelining) == (0, False)
    assert parsed.postscreen.pass_seconds == 86400
    loopback = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert parsed.dnsbl.exempt_networks == loopback == parsed.postscreen.exempt_networks


def test_urls_are_checked_by_default_within_safe_bounds() -> None:
    parsed = config("")
    assert parsed.dnsbl.check_urls is True
    assert (parsed.dnsbl.url_max_parts, parsed.dnsbl.url_max_text_kib, parsed.dnsbl.url_max_domains) == (20, 512, 20)
    changed = config("[dnsbl]\ncheck_urls = false\nurl_max_parts = 5\nurl_max_text_kib = 64\nurl_max_domains = 8\n")
    assert (changed.dnsbl.check_urls, changed.dnsbl.url_max_parts, changed.dnsbl.url_max_text_kib, changed.dnsbl.url_max_domains) == (
        False,
        5,
        64,
        8,
    )


def test_bad_url_bounds_are_each_a_problem() -> None:
    assert problems_of('[dnsbl]\ncheck_urls = "yes"\nurl_max_parts = 0\nurl_max_text_kib = -1\nurl_max_domains = "20"\n') == [
        "etc/test.toml: dnsbl.check_urls: must be a boolean, not a string ('yes')",
        "etc/test.toml: dnsbl.url_max_parts: must be a positive integer, not 0",
        "etc/test.toml: dnsbl.url_max_text_kib: must be a positive integer, not -1",
        "etc/test.toml: dnsbl.url_max_domains: must be an integer, not a string ('20')",
    ]


def test_lists_are_read_with_their_kind_weight_and_codes() -> None:
    parsed = config(
        '[dnsbl]\nthreshold = 3\n[dnsbl.lists."zen.test"]\nweight = 2\ncodes = ["127.0.0.2", "127.0.0.4"]\n'
        '[dnsbl.lists."dbl.test"]\nkind = "domain"\n'
    )
    assert dict(parsed.dnsbl.lists) == {
        "zen.test": Blocklist(kind="ip", weight=2, codes=("127.0.0.2", "127.0.0.4")),
        "dbl.test": Blocklist(kind="domain", weight=1, codes=()),
    }
    assert parsed.dnsbl.threshold == 3


def test_bad_list_values_are_each_a_problem() -> None:
    assert problems_of('[dnsbl.lists."zen.test"]\nkind = "url"\nweight = 0\ncodes = ["10.0.0.2", "x"]\n') == [
        "etc/test.toml: dnsbl.lists.\"zen.test\".kind: must be one of ip, domain, not 'url'",
        'etc/test.toml: dnsbl.lists."zen.test".weight: must be a positive integer, not 0',
        "etc/test.toml: dnsbl.lists.\"zen.test\".codes[0]: bad return code '10.0.0.2': blocklists answer in 127.0.0.0/8",
        "etc/test.toml: dnsbl.lists.\"zen.test\".codes[1]: bad return code 'x': must be an IPv4 address in 127.0.0.0/8",
    ]


def test_a_zone_must_be_a_domain_and_a_list_a_table() -> None:
    problems = problems_of('[dnsbl.lists]\n"not a zone" = {}\n"zen.test" = 1\n')
    assert len(problems) == 2
    assert problems[0].startswith('etc/test.toml: dnsbl.lists."not a zone": ')
    assert problems[1] == 'etc/test.toml: dnsbl.lists."zen.test": must be a table { kind, weight, codes }, not an integer (1)'


def test_bad_dnsbl_and_postscreen_keys_are_problems() -> None:
    assert problems_of(
        "[dnsbl]\nthreshold = 0\ntimeout_seconds = -1\nexempt_networks = [\"10.0.0.1/8\"]\n"
        "[postscreen]\ngreeting_delay = -1\nreject_unauth_pipelining = 1\npass_seconds = 0\nbogus = 1\n"
    ) == [
        "etc/test.toml: dnsbl.threshold: must be a positive integer, not 0",
        "etc/test.toml: dnsbl.timeout_seconds: must be a positive integer, not -1",
        "etc/test.toml: dnsbl.exempt_networks[0]: bad network '10.0.0.1/8': 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?",
        "etc/test.toml: postscreen.bogus: unknown key (expected one of: exempt_networks, greeting_delay, pass_seconds, reject_unauth_pipelining)",
        "etc/test.toml: postscreen.greeting_delay: must be 0 (off) or a positive integer, not -1",
        "etc/test.toml: postscreen.reject_unauth_pipelining: must be a boolean, not an integer (1)",
        "etc/test.toml: postscreen.pass_seconds: must be a positive integer, not 0",
    ]


def test_greylisting_is_off_by_default_with_postgreys_times() -> None:
    greylisting = config("").greylisting
    assert not greylisting.enabled
    assert (greylisting.delay, greylisting.retry_window, greylisting.whitelist_days) == (300, 86400, 36)


def test_bad_greylisting_values_are_problems() -> None:
    assert problems_of("[greylisting]\nenabled = \"yes\"\ndelay = 0\nwhitelist_days = -1\n") == [
        "etc/test.toml: greylisting.enabled: must be a boolean, not a string ('yes')",
        "etc/test.toml: greylisting.delay: must be a positive integer, not 0",
        "etc/test.toml: greylisting.whitelist_days: must be a positive integer, not -1",
    ]


def test_a_retry_window_shorter_than_the_delay_is_a_problem() -> None:
    assert problems_of("[greylisting]\ndelay = 600\nretry_window = 600\n") == [
        "etc/test.toml: greylisting.retry_window: must be longer than greylisting.delay"
    ]
