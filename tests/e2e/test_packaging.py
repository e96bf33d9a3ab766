"""pyproject.toml as setuptools reads it: no deprecated forms (each prints a warning box on every install)."""

from __future__ import annotations

import re
import tomllib
from tests.paths import REPOSITORY

PYPROJECT = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_license_is_an_spdx_expression_without_license_classifiers() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    assert not [c for c in PYPROJECT["project"].get("classifiers", []) if c.startswith("License ::")]


def test_the_build_requires_a_setuptools_that_reads_spdx_licenses() -> None:
    [setuptools] = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    minimum = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", setuptools)
    assert minimum is not None and int(minimum.group(1)) >= 77
