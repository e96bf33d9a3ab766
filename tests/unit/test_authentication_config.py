"""``[authentication]``: its defaults, a bad value of each kind, and SIGHUP applying it to the MX's policy."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from mailapp.config import DEFAULT_AUTHENTICATION, ConfigError, parse

MINIMAL = '[server]\nhostname = "mail.example.test"\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse(MINIMAL + text, Path("etc/test.toml"), base_dir=Path("/srv"))
    return raised.value.problems


def test_the_defaults_check_everything_and_honour_p_reject() -> None:
    config = parse(MINIMAL, Path("etc/test.toml"), base_dir=Path("/srv"))
    assert config.authentication == DEFAULT_AUTHENTICATION
    a = config.authentication
    assert (a.spf, a.dkim, a.dmarc) == (True, True, True)
    assert (a.dmarc_reject, a.dmarc_quarantine, a.temperror) == ("reject", "junk", "tempfail")
    assert a.exempt_networks == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert (a.dns_budget_seconds, a.dns_query_timeout, a.max_dkim_signatures) == (20, 5, 10)


def test_values_are_read() -> None:
    text = '[authentication]\ndkim = false\ndmarc_reject = "junk"\ntemperror = "accept"\nexempt_networks = ["10.0.0.0/8"]\n'
    a = parse(MINIMAL + text, Path("etc/test.toml"), base_dir=Path("/srv")).authentication
    assert (a.dkim, a.dmarc_reject, a.temperror, a.exempt_networks) == (False, "junk", "accept", (ipaddress.ip_network("10.0.0.0/8"),))


def test_bad_values_are_each_a_problem() -> None:
    found = problems(
        '[authentication]\nspf = "yes"\ndmarc_reject = "bounce"\ndmarc_quarantine = "reject"\ntemperror = 4\n'
        'exempt_networks = ["10.0.0.1/8"]\ndns_budget_seconds = 0\nbogus = 1\n'
    )
    assert len(found) == 7, found
    assert any("authentication.dmarc_reject" in p and "bounce" in p for p in found)
    assert any("authentication.exempt_networks" in p and "did you mean 10.0.0.0/8" in p for p in found)
    assert any("authentication.bogus" in p or "bogus: unknown key" in p for p in found)


def test_sighup_applies_a_new_authentication_section_to_the_mx(tmp_path: Path) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from mailapp.config import load
    from mailapp.service import ListenerService, makeService
    from mailapp.testing import FakeAccounts, FakeStore

    def write(reject: str) -> None:
        path.write_text(
            f'[server]\nhostname = "mx.example.test"\nstate_dir = "{tmp_path / "state"}"\n'
            '[listeners.smtp]\nprotocol = "smtp"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "none"\n'
            f'[authentication]\ndmarc_reject = "{reject}"\n'
        )

    path = tmp_path / "mailapp.toml"
    write("reject")
    root = makeService(load(path), reactor=MemoryReactorClock(), store=FakeStore(), accounts=FakeAccounts())
    smtp = next(child for child in root if isinstance(child, ListenerService) and child.listener.name == "smtp")
    assert smtp.factory.inbound is not None and smtp.factory.policy.authentication.dmarc_reject == "reject"
    write("junk")
    result = root.reload()
    assert result.ok and "authentication" in result.applied
    assert smtp.factory.policy.authentication.dmarc_reject == "junk"
