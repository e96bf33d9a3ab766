"""
The state directory's format number: written at the first start, and a
newer one refused with one clear line and a non-zero exit.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mailapp.stateformat import CURRENT_FORMAT, StateFormatError, check_state_format
from tests.ops_runner import TWIST, environment

pytestmark = pytest.mark.timeout(60)


def test_first_start_writes_the_current_format(tmp_path: Path) -> None:
    assert check_state_format(tmp_path) == CURRENT_FORMAT
    assert (tmp_path / "FORMAT").read_text() == f"{CURRENT_FORMAT}\n"
    assert check_state_format(tmp_path) == CURRENT_FORMAT


def test_a_newer_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "FORMAT").write_text(f"{CURRENT_FORMAT + 1}\n")
    with pytest.raises(StateFormatError, match="newer than this mailapp knows"):
        check_state_format(tmp_path)


def test_a_garbled_format_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "FORMAT").write_text("two\n")
    with pytest.raises(StateFormatError, match="does not hold a format number"):
        check_state_format(tmp_path)


def test_the_server_refuses_to_start_on_a_newer_state_format(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "FORMAT").write_text("999\n")
    config = tmp_path / "mailapp.toml"
    config.write_text(
        f'[server]\nhostname = "mail.example.test"\nstate_dir = "{state}"\n'
        '[listeners.smtp]\nprotocol = "smtp"\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "none"\n'
    )
    finished = subprocess.run(
        [str(TWIST), "mailapp", "--config", str(config)],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert finished.returncode == 1
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, finished.stderr
    assert lines[0].startswith(f"cannot start: {state} is in state format 999, newer than this mailapp knows (1)")
    assert not (state / "mail").exists()
