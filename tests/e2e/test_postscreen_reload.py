"""
``[dnsbl]``, ``[greylisting]`` and ``[postscreen]`` apply on reload (what
SIGHUP calls), to new MX sessions, and the MX's screening state (the pass
memory, the greylist) outlives it. In-process, no socket.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from mailapp.config import load
from mailapp.service import ListenerService, makeService
from mailapp.testing import FakeAccounts, FakeStore

pytestmark = pytest.mark.timeout(60)


def _config(root: Path, extra: str = "") -> str:
    return f"""
[server]
hostname = "mail.example.test"
state_dir = "{root / 'state'}"

[domains]
local = ["example.test"]

[listeners.smtp]
protocol = "smtp"
endpoint = "tcp:0:interface=127.0.0.1"
tls = "none"
{extra}
"""


def test_reload_turns_the_checks_before_data_on_for_new_sessions_and_keeps_their_state(tmp_path: Path) -> None:
    path = tmp_path / "mailapp.toml"
    path.write_text(_config(tmp_path))
    root = makeService(load(path), reactor=MemoryReactorClock(), store=FakeStore(), accounts=FakeAccounts())
    smtp = next(child for child in root if isinstance(child, ListenerService) and child.listener.name == "smtp")
    factory = smtp.factory
    postscreen, greylist = factory.postscreen, factory.greylist
    assert postscreen is not None and greylist is not None
    assert not factory.policy.greylisting.enabled and not factory.policy.dnsbl.lists
    postscreen.passes.passed("192.0.2.1", 3600)

    path.write_text(
        _config(
            tmp_path,
            '[dnsbl]\ncheck_urls = false\nurl_max_domains = 5\n[dnsbl.lists."zen.test"]\nweight = 2\n[greylisting]\nenabled = true\n[postscreen]\ngreeting_delay = 6\n',
        )
    )
    result = root.reload()

    assert result.ok, result
    assert {"dnsbl", "greylisting", "postscreen"} <= set(result.applied)
    assert result.needs_restart == []
    assert factory.policy.dnsbl.lists["zen.test"].weight == 2
    assert (factory.policy.dnsbl.check_urls, factory.policy.dnsbl.url_max_domains) == (False, 5)
    assert factory.policy.greylisting.enabled
    assert factory.policy.postscreen.greeting_delay == 6
    assert factory.postscreen is postscreen and factory.greylist is greylist
    assert postscreen.passes.known("192.0.2.1")
    # Greylisting off at start opened no file.
    assert not (tmp_path / "state" / "greylist.sqlite3").exists()
