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


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_format_1_directory_is_upgraded_to_2_leaving_mail_index_and_queue_as_they_were(tmp_path: Path) -> None:
    (tmp_path / "FORMAT").write_text("1\n")
    inbox = tmp_path / "mail" / "example.test" / "alice"
    for sub in ("cur", "new", "tmp"):
        (inbox / sub).mkdir(parents=True)
    (inbox / "new" / "1700000000.M1P1Q1.host,S=20,U=1").write_bytes(b"Subject: a\r\n\r\nbody\r\n")
    (inbox / "mailapp-index.sqlite3").write_bytes(b"an index, whatever its bytes")
    (tmp_path / "queue" / "messages").mkdir(parents=True)
    (tmp_path / "queue" / "messages" / "Q1").write_bytes(b"Subject: out\r\n\r\nremote\r\n")
    (tmp_path / "queue" / "envelopes").mkdir()
    (tmp_path / "queue" / "envelopes" / "Q1.json").write_bytes(b'{"id": "Q1"}')
    before = {name: data for name, data in _tree(tmp_path).items() if name != "FORMAT"}
    assert check_state_format(tmp_path) == 2 == CURRENT_FORMAT
    assert (tmp_path / "FORMAT").read_text() == "2\n"
    assert {name: data for name, data in _tree(tmp_path).items() if name != "FORMAT"} == before
    assert check_state_format(tmp_path) == 2


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
    assert lines[0].startswith(f"cannot start: {state} is in state format 999, newer than this mailapp knows ({CURRENT_FORMAT})")
    assert not (state / "mail").exists()
