"""``mailapp sieve``: list, put (refused with line and column when broken), activate, get, del."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.e2e import test_cli
from tests.e2e.test_cli import Result

# The admin command's fixtures: its test config, and the command run in-process.
config = test_cli.config
mailapp = test_cli.mailapp


def _user(mailapp: Callable[..., Result]) -> None:
    assert (
        mailapp("user", "add", "alice@example.test", stdin="long-secret\n").status == 0
    )


def test_sieve_put_activate_list_get_del(
    mailapp: Callable[..., Result], tmp_path: Path
) -> None:
    _user(mailapp)
    script = tmp_path / "filters.sieve"
    script.write_text('require "fileinto";\nfileinto "Archive";\n')
    result = mailapp("sieve", "put", "alice@example.test", str(script), "--activate")
    assert (result.status, result.out) == (
        0,
        "stored filters for alice@example.test and made it active\n",
    )
    assert mailapp("sieve", "list", "alice@example.test").out == "filters  (active)\n"
    assert (
        mailapp("sieve", "get", "alice@example.test", "filters").out
        == script.read_text()
    )
    refused = mailapp("sieve", "del", "alice@example.test", "filters")
    assert refused.status == 1 and "active script cannot be deleted" in refused.err
    assert mailapp("sieve", "activate", "alice@example.test", "--none").status == 0
    assert mailapp("sieve", "del", "alice@example.test", "filters").status == 0
    listed = mailapp("sieve", "list", "alice@example.test", "--json")
    assert json.loads(listed.out) == []


def test_sieve_put_refuses_a_broken_script_with_its_line_and_column(
    mailapp: Callable[..., Result], tmp_path: Path
) -> None:
    _user(mailapp)
    script = tmp_path / "broken.sieve"
    script.write_text('require "fileinto";\nif true {\n  fileinto "x"\n}\n')
    result = mailapp("sieve", "put", "alice@example.test", str(script))
    assert result.status == 1
    assert (
        result.err.strip()
        == "mailapp: script refused: line 4, column 1: expected ';' after 'fileinto', found '}'"
    )
    assert (
        mailapp("sieve", "list", "alice@example.test").out
        == "no scripts for alice@example.test\n"
    )


def test_sieve_for_an_unknown_user_is_refused(
    mailapp: Callable[..., Result], tmp_path: Path
) -> None:
    result = mailapp("sieve", "list", "nobody@example.test")
    assert result.status == 1 and "no such user" in result.err


def test_sieve_check_reports_ok_or_the_first_problem(
    mailapp: Callable[..., Result], tmp_path: Path
) -> None:
    good, bad = tmp_path / "before.sieve", tmp_path / "bad.sieve"
    good.write_text('require "fileinto";\nfileinto "Junk";\n')
    bad.write_text("keep;\nfrob;\n")
    assert mailapp("sieve", "check", str(good)).out == f"{good}: OK\n"
    result = mailapp("sieve", "check", str(bad))
    assert (
        result.status == 1
        and result.err.strip()
        == "mailapp: script refused: line 2, column 1: unknown command 'frob'"
    )


def test_sieve_put_global_and_del_global(mailapp: Callable[..., Result], config: Path, tmp_path: Path) -> None:
    before = tmp_path / "before.sieve"
    before.write_text('require "fileinto";\nif header :contains "x-spam" "yes" { fileinto "Junk"; }\n')
    result = mailapp("sieve", "put-global", "before", str(before))
    assert (result.status, result.out) == (0, "stored global script before (runs before every user's script)\n")
    assert (config.parent / "var" / "sieve" / "global" / "before.sieve").read_text() == before.read_text()
    broken = tmp_path / "broken.sieve"
    broken.write_text("fileinto 1;\n")
    refused = mailapp("sieve", "put-global", "after", str(broken))
    assert refused.status == 1 and "line 1, column 1" in refused.err
    assert mailapp("sieve", "del-global", "before").status == 0
    assert mailapp("sieve", "del-global", "before").status == 1


def test_a_deleted_users_scripts_never_filter_a_new_user_at_the_same_address(
    mailapp: Callable[..., Result], tmp_path: Path
) -> None:
    # The old owner's redirect would otherwise take the new owner's mail.
    _active_script(mailapp, tmp_path, 'redirect "old-owner@example.net";\n')
    assert mailapp("user", "del", "alice@example.test").status == 0
    _user(mailapp)
    assert json.loads(mailapp("sieve", "list", "alice@example.test", "--json").out) == []


def test_a_user_deleted_keeping_the_mail_keeps_the_scripts_beside_it(
    mailapp: Callable[..., Result], tmp_path: Path
) -> None:
    text = 'require "fileinto";\nfileinto "Archive";\n'
    _active_script(mailapp, tmp_path, text)
    deleted = mailapp("user", "del", "alice@example.test", "--keep-mail", "--json")
    assert deleted.status == 0
    archive = Path(json.loads(deleted.out)["mail_archive"] + ".sieve")
    assert (archive / "scripts" / "main.sieve").read_text() == text
    assert not (archive / "active").exists()
    _user(mailapp)
    assert json.loads(mailapp("sieve", "list", "alice@example.test", "--json").out) == []


def _active_script(mailapp: Callable[..., Result], tmp_path: Path, text: str) -> None:
    """Alice, added, with C{text} as her active script C{main}."""
    _user(mailapp)
    script = tmp_path / "main.sieve"
    script.write_text(text)
    assert mailapp("sieve", "put", "alice@example.test", str(script), "--activate").status == 0
