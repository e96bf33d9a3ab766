"""Where the tests find the checkout and the shared conformance data, wherever a test file sits."""

from __future__ import annotations

from pathlib import Path

#: The repository's root (the directory holding pyproject.toml).
REPOSITORY = Path(__file__).resolve().parent.parent

#: ``../shared`` beside the checkout: the conformance suites nobody here wrote.
SHARED = REPOSITORY.parent / "shared"
