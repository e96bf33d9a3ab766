"""
pytest fixtures for the rig (imported into ``tests/conftest.py``, so every
test module can ask for them):

``internet``
    A fresh L{Internet} for one test: the bridge, the DNS host (not serving
    until ``internet.dns.serve(zones)``), and whatever hosts the test adds.
``module_internet``
    The same, shared by the tests of one module (build it once, change zones
    per test with ``serve``).

Where namespaces cannot be made (not root, no iproute2) the tests that use
them are skipped with one reason; with ``CI=true`` they fail instead, since
CI runs as root and must run them. Set-up and tear-down times are summed up
at the end of the run ("network-namespace rig: ..." in pytest's summary).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.rig import network
from tests.needs import unavailable
from tests.rig.network import Internet, RigUnavailable

__all__ = ["SKIP_REASON", "internet", "module_internet", "pytest_runtest_makereport", "pytest_terminal_summary"]

SKIP_REASON = "network-namespace rig needs root and iproute2: run as root (CI does)"

_unavailable: list[str] = []
_timings: list[dict[str, float]] = []


def _open(root: Path) -> Internet:
    if not _unavailable:
        try:
            return Internet.build(root)
        except RigUnavailable as error:
            _unavailable.append(str(error))
    unavailable(f"{SKIP_REASON} ({_unavailable[0]})")


def _close(internet: Internet, failed: bool) -> None:
    if failed:
        sys.stderr.write(internet.log_report())
    internet.close()
    _timings.append(dict(internet.timings))


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rig_call_report", None)
    return report is not None and report.failed


@pytest.fixture
def internet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Internet]:
    built = _open(tmp_path / "rig")
    try:
        yield built
    finally:
        _close(built, _failed(request))


@pytest.fixture(scope="module")
def module_internet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Internet]:
    built = _open(tmp_path_factory.mktemp("rig"))
    try:
        yield built
    finally:
        _close(built, False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """
    Keep the call phase's report on the item, so the fixture knows to print
    the rig's logs; and report every "no rig here" skip at one place, so that
    pytest's summary folds them into one line.
    """
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rig_call_report = report  # type: ignore[attr-defined]
    elif report.skipped and isinstance(report.longrepr, tuple) and SKIP_REASON in str(report.longrepr[2]):
        report.longrepr = ("tests/rig/fixtures.py", _open.__code__.co_firstlineno - 1, report.longrepr[2])


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if network.swept:
        terminalreporter.write_line(f"network-namespace rig: swept what dead runs left: {' '.join(network.swept)}")
    if not _timings:
        return
    builds = [t["build"] for t in _timings if "build" in t]
    closes = [t["close"] for t in _timings if "close" in t]
    hosts = sum(t.get("host_count", 0) for t in _timings)
    per_host = sum(t.get("hosts", 0.0) for t in _timings) / max(hosts, 1)
    terminalreporter.write_line(
        f"network-namespace rig: {len(_timings)} internets; set-up (bridge + DNS host) "
        f"mean {sum(builds) / len(builds):.3f} s, max {max(builds):.3f} s; {hosts} hosts added, "
        f"{per_host:.3f} s each; tear-down (every process "
        f"stopped, every namespace deleted) mean {sum(closes) / len(closes):.3f} s, max {max(closes):.3f} s"
    )
