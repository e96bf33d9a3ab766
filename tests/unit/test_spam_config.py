"""``[spam]``: its defaults (scanning off) and what a bad value is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailapp.config import DEFAULT_SPAM, ConfigError, parse

MINIMAL = '[server]\nhostname = "mail.example.test"\n'


def spam(lines: str) -> str:
    return MINIMAL + "[spam]\n" + lines + "\n"


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse(text, Path("etc/test.toml"), base_dir=Path("/srv/mailapp"))
    return raised.value.problems


def test_the_defaults_scan_nothing_and_learn_nothing() -> None:
    config = parse(MINIMAL, Path("etc/test.toml"), base_dir=Path("/srv/mailapp"))
    assert config.spam == DEFAULT_SPAM
    assert config.spam.rspamd_url is None and config.spam.controller_url is None
    assert config.spam.controller_password is None
    assert (config.spam.timeout, config.spam.fail, config.spam.scan_outbound) == (10, "open", True)
    assert config.spam.max_scan_size == 10 * 1024 * 1024


def test_every_key_is_read() -> None:
    config = parse(
        spam(
            'rspamd_url = "http://127.0.0.1:11333/"\ncontroller_url = "http://127.0.0.1:11334"\n'
            'controller_password = "q1"\ntimeout = 3\nfail = "closed"\nscan_outbound = false\nmax_scan_size = 1000'
        ),
        Path("etc/test.toml"),
        base_dir=Path("/srv/mailapp"),
    )
    assert config.spam.rspamd_url == "http://127.0.0.1:11333"
    assert config.spam.controller_url == "http://127.0.0.1:11334"
    assert (config.spam.controller_password, config.spam.timeout, config.spam.fail) == ("q1", 3, "closed")
    assert (config.spam.scan_outbound, config.spam.max_scan_size) == (False, 1000)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('rspamd_url = "127.0.0.1:11333"', "spam.rspamd_url: must be an http:// or https:// URL with a host, not '127.0.0.1:11333'"),
        ('controller_url = "http://127.0.0.1:99999"', "spam.controller_url: has a bad port: 'http://127.0.0.1:99999'"),
        ('fail = "maybe"', "spam.fail: must be one of open, closed, not 'maybe'"),
        ("timeout = 0", "spam.timeout: must be a positive integer, not 0"),
        ("max_scan_size = -1", "spam.max_scan_size: must be a positive integer, not -1"),
        ('scan_outbound = "yes"', "spam.scan_outbound: must be a boolean"),
        ("shout = 1", "spam.shout"),
    ],
)
def test_a_bad_value_is_a_problem(line: str, problem: str) -> None:
    [found] = problems_of(spam(line))
    assert problem in found, found
