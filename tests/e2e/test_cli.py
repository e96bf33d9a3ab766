"""
Tests for the ``mailapp`` admin command: every verb, bad input, passwords
from a prompt or stdin, JSON output, and the installed console script.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from mailapp import cli
from mailapp.cli import users as cli_users
from mailapp.accounts import AccountsDatabase, accounts_path
from mailapp.testing import cheap_password_hasher
from tests.paths import REPOSITORY



@dataclass
class Result:
    status: int
    out: str
    err: str

    @property
    def json(self) -> object:
        return json.loads(self.out)


class _Stdin(io.StringIO):
    """A stdin that can pretend to be a terminal."""

    def __init__(self, text: str = "", tty: bool = False) -> None:
        super().__init__(text)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mailapp.toml"
    path.write_text(
        "[server]\n"
        'hostname = "mail.example.test"\n'
        f"state_dir = {json.dumps(str(tmp_path / 'var'))}\n"
        "[domains]\n"
        'local = ["example.test"]\n'
    )
    return path


@pytest.fixture
def mailapp(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    """Run the command in-process with the test config and cheap hashes."""
    monkeypatch.delenv("MAILAPP_CONFIG", raising=False)

    def run(*argv: str, stdin: str = "", tty: bool = False, config_option: bool = True) -> Result:
        monkeypatch.setattr(sys, "stdin", _Stdin(stdin, tty))
        arguments = ["--config", str(config), *argv] if config_option else list(argv)
        status = cli.main(arguments, password_hasher=cheap_password_hasher())
        captured = capsys.readouterr()
        return Result(status, captured.out, captured.err)

    return run


def _database(config: Path) -> AccountsDatabase:
    return AccountsDatabase(accounts_path(config.parent / "var"), ["example.test"], hasher=cheap_password_hasher())


def _password_matches(config: Path, address: str, password: str) -> bool:
    with _database(config) as database:
        found = database.lookup_password_hash(address)
    assert found is not None, f"{address} is not a user"
    try:
        return cheap_password_hasher().verify(found[1], password)
    except Exception:
        return False


def _one_error_line(result: Result) -> str:
    assert result.out == ""
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


# --- user add ----------------------------------------------------------------


def test_user_add_reads_the_password_from_stdin_and_prints_how_to_log_in(mailapp, config) -> None:
    result = mailapp("user", "add", "Alice@Example.TEST", stdin="long-secret\n")
    assert result.status == 0, result.err
    assert "added user Alice@example.test" in result.out
    assert "username Alice@example.test" in result.out
    assert _password_matches(config, "alice@example.test", "long-secret")


def test_user_add_strips_only_the_trailing_newline(mailapp, config) -> None:
    assert mailapp("user", "add", "alice@example.test", stdin="  two words \n").status == 0
    assert _password_matches(config, "alice@example.test", "  two words ")


def test_user_add_takes_an_explicit_password_option(mailapp, config) -> None:
    assert mailapp("user", "add", "alice@example.test", "--password", "option-password").status == 0
    assert _password_matches(config, "alice@example.test", "option-password")


def test_user_add_creates_the_users_mailbox(mailapp, config) -> None:
    result = mailapp("user", "add", "alice@example.test", stdin="long-secret\n")
    assert result.status == 0
    mailbox = next(line for line in result.out.splitlines() if line.startswith("mailbox: "))[len("mailbox: "):]
    assert Path(mailbox).is_dir()
    assert (config.parent / "var") in Path(mailbox).parents
    assert (Path(mailbox) / "new").is_dir()


def test_user_add_prompts_twice_without_echo_on_a_terminal(mailapp, config, monkeypatch) -> None:
    prompts: list[str] = []
    answers = iter(["typed-password", "typed-password"])
    monkeypatch.setattr(cli_users.getpass, "getpass", lambda prompt: prompts.append(prompt) or next(answers))
    assert mailapp("user", "add", "alice@example.test", tty=True).status == 0
    assert len(prompts) == 2
    assert _password_matches(config, "alice@example.test", "typed-password")


def test_user_add_with_mismatched_prompts_changes_nothing(mailapp, config, monkeypatch) -> None:
    answers = iter(["one", "two"])
    monkeypatch.setattr(cli_users.getpass, "getpass", lambda prompt: next(answers))
    result = mailapp("user", "add", "alice@example.test", tty=True)
    assert result.status == 1
    assert "do not match" in _one_error_line(result)
    assert mailapp("user", "list").out.strip() == "no users"


def test_user_add_with_empty_password_is_refused(mailapp) -> None:
    result = mailapp("user", "add", "alice@example.test", stdin="\n")
    assert result.status == 1
    assert "empty password" in _one_error_line(result)
    assert mailapp("--json", "user", "list").json == []


def test_user_add_with_empty_password_option_is_refused(mailapp) -> None:
    result = mailapp("user", "add", "alice@example.test", "--password", "")
    assert result.status == 1
    assert "empty password" in _one_error_line(result)


def test_user_add_without_any_stdin_is_refused(mailapp) -> None:
    result = mailapp("user", "add", "alice@example.test", stdin="")
    assert result.status == 1
    assert "no password on standard input" in _one_error_line(result)


def test_user_add_in_unknown_domain_is_refused_before_reading_a_password(mailapp) -> None:
    result = mailapp("user", "add", "bob@nowhere.test", stdin="long-secret\n")
    assert result.status == 1
    assert "unknown domain nowhere.test" in _one_error_line(result)
    assert sys.stdin.read() == "long-secret\n"


def test_user_add_duplicate_in_other_case_is_refused(mailapp) -> None:
    assert mailapp("user", "add", "alice@example.test", stdin="password-a\n").status == 0
    result = mailapp("user", "add", "ALICE@example.test", stdin="password-b\n")
    assert result.status == 1
    assert "user alice@example.test exists already" in _one_error_line(result)


@pytest.mark.parametrize("address", ["alice", "alice@", "a b@example.test", "<alice@example.test>", "a/b@example.test"])
def test_user_add_with_bad_address_is_refused(mailapp, address: str) -> None:
    result = mailapp("user", "add", address, stdin="long-secret\n")
    assert result.status == 1
    assert f"address {address!r}" in _one_error_line(result)


def test_user_add_json_names_the_login(mailapp) -> None:
    result = mailapp("--json", "user", "add", "alice@example.test", stdin="long-secret\n")
    assert result.status == 0
    assert result.json["address"] == "alice@example.test"  # type: ignore[index]
    assert result.json["username"] == "alice@example.test"  # type: ignore[index]


# --- user del / passwd / list ------------------------------------------------


def _mailbox(config: Path, local: str = "alice") -> Path:
    return config.parent / "var" / "mail" / "example.test" / local


def _deliver_file(config: Path, name: str = "1.eml") -> None:
    """A message in alice's Maildir, as a delivery would leave it."""
    (_mailbox(config) / "new" / name).write_bytes(b"Subject: old\r\n\r\nold mail\r\n")


def test_user_del_deletes_the_users_mail(mailapp, config) -> None:
    mailapp("user", "add", "alice@example.test", stdin="long-secret\n")
    _deliver_file(config)
    result = mailapp("user", "del", "ALICE@example.test")
    assert result.status == 0, result.err
    assert result.out.strip() == "deleted user alice@example.test; its mail was deleted"
    assert not _mailbox(config).exists()
    assert list((config.parent / "var" / "deleted" / "example.test").iterdir()) == []
    assert mailapp("user", "list").out.strip() == "no users"


def test_user_del_with_keep_mail_moves_the_mail_out_of_the_store(mailapp, config) -> None:
    mailapp("user", "add", "alice@example.test", stdin="long-secret\n")
    _deliver_file(config)
    result = mailapp("--json", "user", "del", "alice@example.test", "--keep-mail")
    assert result.status == 0, result.err
    archive = Path(result.json["mail_archive"])  # type: ignore[index]
    assert archive.parent == config.parent / "var" / "deleted" / "example.test"
    assert archive.name.startswith("alice.")
    assert (archive / "new" / "1.eml").read_bytes().endswith(b"old mail\r\n")
    assert result.json["mail_kept"] is True  # type: ignore[index]
    assert not _mailbox(config).exists()


def test_user_added_again_after_del_starts_with_an_empty_mailbox(mailapp, config) -> None:
    mailapp("user", "add", "alice@example.test", stdin="long-secret\n")
    _deliver_file(config)
    mailapp("user", "del", "alice@example.test", "--keep-mail")
    assert mailapp("user", "add", "alice@example.test", stdin="other-secret\n").status == 0
    assert list((_mailbox(config) / "new").iterdir()) == []
    assert list((_mailbox(config) / "cur").iterdir()) == []


def test_user_add_moves_aside_an_old_mailbox_left_at_its_path(mailapp, config) -> None:
    # What an older mailapp's 'user del' left behind.
    (_mailbox(config) / "new").mkdir(parents=True)
    _deliver_file(config)
    result = mailapp("user", "add", "alice@example.test", stdin="long-secret\n")
    assert result.status == 0, result.err
    assert "an old mailbox was at the new user's path; it was moved to" in result.err
    assert list((_mailbox(config) / "new").iterdir()) == []
    (archive,) = (config.parent / "var" / "deleted" / "example.test").iterdir()
    assert (archive / "new" / "1.eml").exists()


def test_user_del_drops_alias_targets_naming_the_user(mailapp) -> None:
    mailapp("user", "add", "alice@example.test", stdin="long-secret\n")
    mailapp("user", "add", "bob@example.test", stdin="long-secret\n")
    mailapp("alias", "add", "team@example.test", "alice@example.test", "bob@example.test")
    mailapp("alias", "add", "lists@example.test", "alice+lists@example.test")
    result = mailapp("user", "del", "alice@example.test")
    assert result.out.splitlines()[1:] == [
        "alias lists@example.test no longer points at alice+lists@example.test "
        "(it had no other target, so the alias was deleted)",
        "alias team@example.test no longer points at alice@example.test",
    ]
    assert mailapp("alias", "list").out.strip() == "team@example.test -> bob@example.test"


def test_user_del_json_lists_the_aliases_changed(mailapp) -> None:
    mailapp("user", "add", "alice@example.test", stdin="long-secret\n")
    mailapp("alias", "add", "team@example.test", "alice@example.test")
    result = mailapp("--json", "user", "del", "alice@example.test")
    assert result.json["aliases_pruned"] == [{"source": "team@example.test", "targets": ["alice@example.test"]}]  # type: ignore[index]
    assert result.json["aliases_removed"] == ["team@example.test"]  # type: ignore[index]
    assert result.json["mail_kept"] is False  # type: ignore[index]


def test_user_del_unknown_user_is_refused(mailapp) -> None:
    result = mailapp("user", "del", "nobody@example.test")
    assert result.status == 1
    assert "no such user" in _one_error_line(result)


def test_user_passwd_changes_the_password(mailapp, config) -> None:
    mailapp("user", "add", "alice@example.test", stdin="old-password\n")
    result = mailapp("user", "passwd", "Alice@example.test", stdin="new-password\n")
    assert result.status == 0
    assert "changed the password of alice@example.test" in result.out
    assert _password_matches(config, "alice@example.test", "new-password")


def test_user_passwd_of_unknown_user_is_refused_before_reading_a_password(mailapp) -> None:
    result = mailapp("user", "passwd", "nobody@example.test", stdin="new-password\n")
    assert result.status == 1
    assert "no such user" in _one_error_line(result)
    assert sys.stdin.read() == "new-password\n"


def test_user_passwd_with_empty_password_keeps_the_old_one(mailapp, config) -> None:
    mailapp("user", "add", "alice@example.test", stdin="old-password\n")
    assert mailapp("user", "passwd", "alice@example.test", stdin="\n").status == 1
    assert _password_matches(config, "alice@example.test", "old-password")


@pytest.mark.parametrize(
    "password, problem",
    [
        ("x", "too short: at least 8 characters"),
        ("seven77", "too short: at least 8 characters"),
        ("ALICEBOB", "must not be the address or its local part"),
        ("AliceBob@Example.test", "must not be the address or its local part"),
    ],
)
def test_user_add_refuses_a_weak_password(mailapp, password: str, problem: str) -> None:
    result = mailapp("user", "add", "alicebob@example.test", "--password", password)
    assert result.status == 1
    assert problem in _one_error_line(result)
    assert mailapp("user", "list").out.strip() == "no users"


def test_user_add_accepts_a_password_of_eight_characters(mailapp, config) -> None:
    assert mailapp("user", "add", "alice@example.test", stdin="12345678\n").status == 0
    assert _password_matches(config, "alice@example.test", "12345678")


def test_user_passwd_refuses_a_short_password_and_keeps_the_old_one(mailapp, config) -> None:
    mailapp("user", "add", "alice@example.test", stdin="old-password\n")
    result = mailapp("user", "passwd", "alice@example.test", stdin="short\n")
    assert result.status == 1
    assert "too short" in _one_error_line(result)
    assert _password_matches(config, "alice@example.test", "old-password")


def test_user_passwd_refuses_the_local_part_as_password(mailapp, config) -> None:
    mailapp("user", "add", "Administrator@example.test", stdin="old-password\n")
    result = mailapp("user", "passwd", "administrator@example.test", stdin="administrator\n")
    assert result.status == 1
    assert "must not be the address or its local part" in _one_error_line(result)


def test_user_list_of_one_domain(mailapp) -> None:
    mailapp("domain", "add", "other.test")
    mailapp("user", "add", "bob@other.test", stdin="password-x\n")
    mailapp("user", "add", "Alice@example.test", stdin="password-x\n")
    assert mailapp("user", "list").out.splitlines() == ["Alice@example.test", "bob@other.test"]
    assert mailapp("user", "list", "other.test").out.splitlines() == ["bob@other.test"]
    assert mailapp("user", "list", "--json").json == ["Alice@example.test", "bob@other.test"]


def test_user_list_of_unknown_domain_is_refused(mailapp) -> None:
    result = mailapp("user", "list", "nowhere.test")
    assert result.status == 1
    assert "unknown domain" in _one_error_line(result)


# --- domains -----------------------------------------------------------------


def test_domain_add_list_del(mailapp) -> None:
    assert mailapp("domain", "add", "Other.TEST").out.strip() == "added domain other.test"
    assert mailapp("domain", "list").out.splitlines() == ["example.test  (config file)", "other.test"]
    assert mailapp("--json", "domain", "list").json == [
        {"name": "example.test", "source": "config"},
        {"name": "other.test", "source": "database"},
    ]
    assert mailapp("domain", "del", "other.test").status == 0
    assert mailapp("--json", "domain", "list").json == [{"name": "example.test", "source": "config"}]


def test_domain_del_of_a_config_domain_is_refused(mailapp) -> None:
    result = mailapp("domain", "del", "example.test")
    assert result.status == 1
    assert "config file" in _one_error_line(result)


def test_domain_del_with_users_is_refused(mailapp) -> None:
    mailapp("domain", "add", "other.test")
    mailapp("user", "add", "bob@other.test", stdin="password-x\n")
    result = mailapp("domain", "del", "other.test")
    assert result.status == 1
    assert "still has 1 user(s)" in _one_error_line(result)


def test_domain_del_retires_old_mailboxes_left_under_it(mailapp, config) -> None:
    mailapp("domain", "add", "other.test")
    old = config.parent / "var" / "mail" / "other.test" / "bob"
    (old / "new").mkdir(parents=True)
    (old / "new" / "1.eml").write_bytes(b"Subject: old\r\n\r\n")
    result = mailapp("domain", "del", "other.test", "--keep-mail")
    assert result.status == 0, result.err
    assert not (config.parent / "var" / "mail" / "other.test").exists()
    (archive,) = (config.parent / "var" / "deleted" / "other.test").iterdir()
    assert (archive / "new" / "1.eml").exists()
    mailapp("domain", "add", "other.test")
    mailapp("user", "add", "bob@other.test", stdin="password-x\n")
    assert list((old / "new").iterdir()) == []


def test_domain_add_twice_and_bad_names_are_refused(mailapp) -> None:
    mailapp("domain", "add", "other.test")
    assert "exists already" in _one_error_line(mailapp("domain", "add", "other.test"))
    assert mailapp("domain", "add", "bad domain").status == 1
    assert mailapp("domain", "add", "-bad.test").status == 2  # argparse: looks like an option


# --- aliases -----------------------------------------------------------------


def test_alias_add_list_del(mailapp) -> None:
    mailapp("user", "add", "alice@example.test", stdin="password-x\n")
    result = mailapp("alias", "add", "team@example.test", "alice@example.test", "X@Remote.TEST")
    assert result.status == 0
    assert result.out.strip() == "added alias team@example.test -> alice@example.test, X@remote.test"
    mailapp("alias", "add", "@example.test", "alice@example.test")
    assert mailapp("alias", "list").out.splitlines() == [
        "@example.test -> alice@example.test",
        "team@example.test -> alice@example.test, X@remote.test",
    ]
    assert mailapp("alias", "del", "team@example.test", "x@remote.test").status == 0
    assert mailapp("--json", "alias", "list").json == [
        {"source": "@example.test", "targets": ["alice@example.test"]},
        {"source": "team@example.test", "targets": ["alice@example.test"]},
    ]
    assert mailapp("alias", "del", "@example.test").status == 0
    assert mailapp("alias", "del", "team@example.test").status == 0
    assert mailapp("alias", "list").out.strip() == "no aliases"


def test_alias_loop_is_refused(mailapp) -> None:
    mailapp("alias", "add", "a@example.test", "x@remote.test")
    mailapp("alias", "add", "b@example.test", "a@example.test")
    result = mailapp("alias", "add", "a@example.test", "b@example.test")
    assert result.status == 1
    assert "alias loop" in _one_error_line(result)


def test_alias_in_unknown_domain_or_to_a_local_nobody_is_refused(mailapp) -> None:
    assert "unknown domain" in _one_error_line(mailapp("alias", "add", "a@nowhere.test", "x@remote.test"))
    assert "not a user or alias" in _one_error_line(mailapp("alias", "add", "a@example.test", "nobody@example.test"))


def test_alias_del_of_unknown_alias_is_refused(mailapp) -> None:
    result = mailapp("alias", "del", "team@example.test")
    assert result.status == 1
    assert "no such alias" in _one_error_line(result)


def test_alias_add_without_target_is_a_usage_error(mailapp) -> None:
    result = mailapp("alias", "add", "team@example.test")
    assert result.status == 2
    assert "Traceback" not in result.err
    assert "TARGET" in result.err


# --- config ------------------------------------------------------------------


def test_check_config_ok(mailapp, config) -> None:
    result = mailapp("check-config")
    assert result.status == 0
    assert result.out.strip() == f"config OK: {config}"


def test_check_config_json(mailapp, config) -> None:
    assert mailapp("check-config", "--json").json == {"ok": True, "path": str(config), "problems": []}


def test_check_config_prints_every_problem(mailapp, config) -> None:
    config.write_text('[server]\nstate_dir = 5\ncolour = "blue"\n[domains]\nlocal = ["bad_domain"]\n')
    result = mailapp("check-config")
    assert result.status == 2
    assert result.out == ""
    assert "Traceback" not in result.err
    for key in ("server.hostname", "server.state_dir", "server.colour", "domains.local[0]"):
        assert key in result.err, result.err


def test_check_config_json_lists_the_problems(mailapp, config) -> None:
    config.write_text('[server]\ncolour = "blue"\n')
    result = mailapp("--json", "check-config")
    assert result.status == 2
    report = result.json
    assert report["ok"] is False  # type: ignore[index]
    assert any("server.colour" in problem for problem in report["problems"])  # type: ignore[index]


def test_missing_config_file_is_reported_not_raised(mailapp, tmp_path) -> None:
    result = mailapp("--config", str(tmp_path / "absent.toml"), "user", "list", config_option=False)
    assert result.status == 2
    assert "absent.toml" in result.err
    assert "Traceback" not in result.err


def test_bad_config_stops_every_verb_with_status_2(mailapp, config) -> None:
    config.write_text("[server\n")
    result = mailapp("user", "add", "alice@example.test", stdin="long-secret\n")
    assert result.status == 2
    assert "Traceback" not in result.err


def test_config_defaults_to_the_environment_variable(mailapp, config, monkeypatch) -> None:
    monkeypatch.setenv("MAILAPP_CONFIG", str(config))
    result = mailapp("check-config", config_option=False)
    assert result.out.strip() == f"config OK: {config}"


def test_config_defaults_to_etc_mailapp_toml(mailapp, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = mailapp("check-config", config_option=False)
    assert result.status == 2
    assert "etc/mailapp.toml" in result.err


# --- the command line itself -------------------------------------------------


def test_no_verb_is_a_usage_error_without_traceback(mailapp) -> None:
    result = mailapp()
    assert result.status == 2
    assert "usage: mailapp" in result.err
    assert "Traceback" not in result.err


def test_help_exits_zero_and_lists_the_verbs(mailapp) -> None:
    result = mailapp("--help")
    assert result.status == 0
    for verb in ("user", "domain", "alias", "check-config"):
        assert verb in result.out


def test_help_names_the_verbs_as_they_are_typed(mailapp) -> None:
    overview = mailapp("--help").out
    assert "user         add, del, list users; passwd sets a password" in overview
    assert "domain       add, del, list local domains" in overview
    assert "alias        add, del, list aliases and catch-alls" in overview
    for noun, verbs in {"user": ("add", "del", "passwd", "quota", "list"), "domain": ("add", "del", "list"), "alias": ("add", "del", "list")}.items():
        listed = [line.split()[0] for line in mailapp(noun, "--help").out.splitlines() if line.startswith("    ") and not line.startswith("     ")]
        assert tuple(listed) == verbs
        for verb in verbs:
            assert "remove" not in mailapp(noun, verb, "--help").out.lower()
    assert "remove" not in overview.lower()


def test_options_may_follow_the_verb(mailapp) -> None:
    mailapp("user", "add", "alice@example.test", stdin="password-x\n")
    assert mailapp("user", "list", "--json").json == ["alice@example.test"]


# --- the installed command ---------------------------------------------------


def _command() -> list[str]:
    """The console script if the package is installed, else the module."""
    script = Path(sys.executable).parent / "mailapp"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mailapp.cli"]


def test_console_script_adds_a_user_from_piped_stdin(config: Path) -> None:
    command = " ".join(shlex.quote(part) for part in [*_command(), "--config", str(config)])
    added = subprocess.run(
        ["/bin/sh", "-c", f"printf 'long-secret\\n' | {command} user add Alice@example.test"],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    assert "added user Alice@example.test" in added.stdout
    listed = subprocess.run(
        [*_command(), "--config", str(config), "--json", "user", "list"],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=60,
    )
    assert json.loads(listed.stdout) == ["Alice@example.test"]
    with _database(config) as database:
        _, password_hash = database.lookup_password_hash("alice@example.test") or ("", "")
    assert PasswordHasher().verify(password_hash, "long-secret")  # real parameters from the real command
    assert not PasswordHasher().check_needs_rehash(password_hash)


def test_console_script_reports_a_bad_config_without_traceback(tmp_path: Path) -> None:
    finished = subprocess.run(
        [*_command(), "--config", str(tmp_path / "absent.toml"), "user", "list"],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=60,
    )
    assert finished.returncode == 2
    assert "Traceback" not in finished.stderr
    assert "absent.toml" in finished.stderr


def test_the_admin_command_refuses_a_state_directory_of_a_newer_format(tmp_path, capsys):
    from mailapp.cli import main

    state = tmp_path / "var"
    state.mkdir()
    (state / "FORMAT").write_text("999\n")
    config = tmp_path / "mailapp.toml"
    config.write_text(f'[server]\nhostname = "mail.example.test"\nstate_dir = "{state}"\n[domains]\nlocal = ["example.test"]\n')
    status = main(["--config", str(config), "user", "list"])
    assert status == 1
    error = capsys.readouterr().err
    assert "state format 999, newer than this mailapp knows" in error
    assert not (state / "accounts.sqlite3").exists()
