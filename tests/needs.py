"""
What a test needs from the machine (a peer program from Debian, root for
the network-namespace rig), in one place: missing on a developer's machine,
the test is skipped with the one line that says how to get it; under CI
(``CI`` set), where ``make test`` installs everything, the test fails
instead, so a missing install step can never pass as a skip.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

__all__ = ["command", "unavailable"]


def unavailable(message: str) -> NoReturn:
    """Skip with C{message}, or fail with it under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so this must run: {message}", pytrace=False)
    pytest.skip(message)


def command(*names: str) -> str:
    """The path of the first of C{names} on the PATH (e.g. C{"chromium", "chromium-browser"})."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    unavailable(f"{names[0]} is not installed: run 'make install' as root (it installs the Debian packages the tests drive)")
