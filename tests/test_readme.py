"""The README's own claims and commands, checked against the repository."""

from __future__ import annotations

import re
from pathlib import Path

from mailapp.config import parse

REPOSITORY = Path(__file__).resolve().parent.parent
README = (REPOSITORY / "README.md").read_text(encoding="utf-8")


def _status_paragraph() -> str:
    return README.split("**Status.**", 1)[1].split("\n\n", 1)[0]


def test_the_status_paragraph_calls_nothing_built_in_progress() -> None:
    status = " ".join(_status_paragraph().split())
    assert "in progress" not in status
    for built in ("bans", "reload", "metrics"):
        assert built in status


def test_make_run_with_another_config_is_documented_as_the_makefile_spells_it() -> None:
    makefile = (REPOSITORY / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^CONFIG \?= etc/mailapp\.toml$", makefile, re.M)
    assert "--config $(CONFIG)" in makefile
    assert "make run CONFIG=path/to/my.toml" in README


def test_the_readme_port_change_example_is_a_valid_listener() -> None:
    endpoint = re.search(r'`endpoint = "(tcp:[^"]+)"` under `\[listeners\.smtp\]`', README)
    assert endpoint is not None
    text = (REPOSITORY / "etc" / "mailapp.toml").read_text(encoding="utf-8")
    changed = re.sub(r'(\[listeners\.smtp\][^\[]*?endpoint = )"[^"]+"', rf'\1"{endpoint.group(1)}"', text, count=1)
    assert changed != text
    config = parse(changed, REPOSITORY / "etc" / "mailapp.toml")
    [smtp] = [listener for listener in config.listeners if listener.name == "smtp"]
    assert smtp.endpoint == endpoint.group(1)
