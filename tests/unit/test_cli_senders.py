"""
``mailapp sender`` (allow, block, del, list): what each says, its JSON,
and the one-line refusals for a bad entry or a list nobody owns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailapp import cli
from mailapp.accounts import AccountsDatabase, SenderVerdict, accounts_path
from mailapp.testing import cheap_password_hasher
from tests.unit.test_cli_dkim import CONFIG

ALICE = "alice@example.test"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mailapp.toml"
    path.write_text(CONFIG.format(state=json.dumps(str(tmp_path / "var"))))
    with AccountsDatabase(accounts_path(tmp_path / "var"), ["example.test"], hasher=cheap_password_hasher()) as database:
        database.add_user(ALICE, "password-1")
    return path


def run(config: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["--config", str(config), *argv], password_hasher=cheap_password_hasher())
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def verdict(config: Path, recipient: str, sender: str) -> SenderVerdict | None:
    with AccountsDatabase(accounts_path(config.parent / "var"), ["example.test"]) as database:
        return database.sender_verdict(recipient, sender)


def test_block_then_allow_for_a_user_replaces_the_entry(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, capsys, "sender", "block", "Spam.Example", "--for", ALICE) == (
        0,
        f"blocked spam.example for {ALICE}\n",
        "",
    )
    assert verdict(config, ALICE, "x@spam.example") == SenderVerdict("block", ALICE, "spam.example", (ALICE,))
    assert run(config, capsys, "sender", "allow", "spam.example", "--for", ALICE)[1] == (
        f"allowed spam.example for {ALICE} (it was blocked)\n"
    )
    assert verdict(config, ALICE, "x@spam.example") == SenderVerdict("allow", ALICE, "spam.example", (ALICE,))


def test_a_domains_list_and_list_and_del_in_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, capsys, "sender", "block", "*.bad.example", "--for", "Example.Test")[0] == 0
    assert run(config, capsys, "sender", "allow", "friend@bad.example", "--for", ALICE)[0] == 0
    status, out, _ = run(config, capsys, "sender", "list", "--json")
    assert status == 0
    assert json.loads(out) == [
        {"for": ALICE, "entry": "friend@bad.example", "list": "allow"},
        {"for": "example.test", "entry": "*.bad.example", "list": "block"},
    ]
    assert run(config, capsys, "sender", "list", "--for", "example.test")[1] == "example.test  block  *.bad.example\n"
    status, out, _ = run(config, capsys, "sender", "del", "*.bad.example", "--for", "example.test", "--json")
    assert (status, json.loads(out)["action"]) == (0, "sender.del")
    assert run(config, capsys, "sender", "list", "--for", "example.test")[1] == "no sender list entries\n"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("block", "*bad.example", "--for", ALICE), "wildcard is only allowed as a leading '*.'"),
        (("block", "bad.example", "--for", "nobody@example.test"), "no such user nobody@example.test"),
        (("allow", "bad.example", "--for", "elsewhere.test"), "unknown domain elsewhere.test"),
        (("del", "bad.example", "--for", ALICE), "bad.example is not on the list of alice@example.test"),
    ],
)
def test_a_refused_change_is_one_line_and_status_1(
    config: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str
) -> None:
    status, out, err = run(config, capsys, "sender", *argv)
    assert (status, out) == (1, "")
    assert err.startswith("mailapp: ") and says in err and err.count("\n") == 1


def test_allow_without_for_is_a_usage_error(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(config, capsys, "sender", "allow", "bad.example")
    assert status == 2 and "--for" in err
