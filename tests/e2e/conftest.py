"""Fixtures shared by the end-to-end tests of several files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_workers_e2e import LISTENERS, Workers


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """A real server with ``[server] workers = 2`` and Alice's account (L{Workers}), stopped after the test."""
    running = Workers(tmp_path / "a", LISTENERS)
    try:
        running.start()
        yield running
    finally:
        running.stop()
