"""Test-wide set-up."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _run_in_a_scratch_directory(tmp_path_factory: pytest.TempPathFactory):
    """
    Trial's C{mktemp()} makes directories relative to the working directory;
    run the suite from a scratch directory so none lands in the checkout.
    """
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


# The network-namespace rig's fixtures (internet, module_internet) and its hooks.
from tests.rig.fixtures import internet, module_internet, pytest_runtest_makereport, pytest_terminal_summary  # noqa: E402, F401
