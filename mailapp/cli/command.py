"""
What every ``mailapp`` command shares: the exit statuses, the one-line
failure, the context a command runs in (options, config, database, output)
and the helper that declares a command on the command line.

Each command group (L{mailapp.cli.users}, L{mailapp.cli.domains},
L{mailapp.cli.aliases}, L{mailapp.cli.queue}) builds on this alone, so that
all of them refuse, report and exit alike; L{mailapp.cli.main} turns what
they raise into the one line on stderr and the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from argon2 import PasswordHasher

from mailapp.accounts import AccountsDatabase, accounts_path
from mailapp.config import Config, ConfigError, load
from mailapp.stateformat import StateFormatError, check_state_format
from mailapp.store.maildir import DELETED_NAME

__all__ = [
    "DEFAULT_CONFIG",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "KEEP_MAIL_HELP",
    "CommandFailure",
    "CommandLineParser",
    "ConfigProblems",
    "Context",
    "add_command",
    "warn",
]

#: Used when neither ``--config`` nor ``$MAILAPP_CONFIG`` is given.
DEFAULT_CONFIG = "etc/mailapp.toml"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: The help of C{--keep-mail}, for deleting a user and a domain alike.
KEEP_MAIL_HELP = f"move the mail to STATE_DIR/{DELETED_NAME}/DOMAIN/ instead of deleting it"


class CommandFailure(Exception):
    """Stop the command with a one-line message and an exit status."""

    def __init__(self, message: str, status: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.status = status


class CommandLineParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so that L{main} returns."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise CommandFailure(f"{self.prog}: {message}", EXIT_USAGE)


class Context:
    """What every command needs: the parsed options, the config, the output."""

    def __init__(self, options: argparse.Namespace, password_hasher: PasswordHasher | None) -> None:
        self.options = options
        self.json: bool = options.json
        self.password_hasher = password_hasher
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        """The loaded L{mailapp.config.Config}; a bad file stops the command (exit 2)."""
        if self._config is None:
            self._config = _load_config(self.options.config)
        return self._config

    @property
    def state_dir(self) -> Path:
        """
        The state directory, once its format is known to be one this code
        can change: a newer mailapp's state is never touched (exit 1).
        """
        state_dir = self.config.state_dir
        if state_dir.exists():
            try:
                check_state_format(state_dir)
            except StateFormatError as error:
                raise CommandFailure(f"cannot change the state: {error}") from None
        return state_dir

    def database(self) -> AccountsDatabase:
        config = self.config
        return AccountsDatabase(
            accounts_path(self.state_dir), config.local_domains, hasher=self.password_hasher
        )

    def report(self, text: str, data: Any) -> None:
        """Print C{text} for a person, or C{data} as JSON with C{--json}."""
        if self.json:
            print(json.dumps(data, indent=2, sort_keys=True))
        elif text:
            print(text)


def _config_path(option: str | None) -> Path:
    return Path(option or os.environ.get("MAILAPP_CONFIG") or DEFAULT_CONFIG)


def _load_config(option: str | None) -> Config:
    path = _config_path(option)
    try:
        return load(path)
    except ConfigError as error:
        raise ConfigProblems(path, error.problems) from None


class ConfigProblems(CommandFailure):
    """A bad config file: L{main} prints every problem in it (and, with C{--json}, reports them as JSON)."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        super().__init__(f"bad config file {path}", EXIT_USAGE)
        self.path = path
        self.problems = list(problems)


def add_command(
    common: argparse.ArgumentParser, group: Any, name: str, handler: Callable[[Context], int], help: str, **kwargs: Any
) -> Any:
    """
    Declare command C{name} in C{group} (a subparsers action), run by
    C{handler}, accepting the C{common} options (C{--config}, C{--json})
    after the verb as well as before it.
    """
    kwargs.setdefault("description", help)
    sub = group.add_parser(name, help=help, parents=[common], **kwargs)
    sub.set_defaults(handler=handler)
    return sub


def warn(message: str) -> None:
    print(f"mailapp: {message}", file=sys.stderr)

