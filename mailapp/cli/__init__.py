"""
The ``mailapp`` admin command: users, domains, aliases, sender lists, the relay queue,
DKIM keys, the DNS records to publish and a config check.

It touches only the accounts database (SQLite, shared safely with a running
server) and the user's Maildir, so it works while the server runs; the
server sees each change at its next lookup. A deleted user's Maildir is
moved out of the store in one rename, and the server's sessions still open
on it fail from then on (L{mailapp.store.index.MailboxPin}).

Exit status: 0 on success, 1 for a refused change (unknown domain, duplicate
user, bad address, weak password, …), 2 for a bad command line or a bad
config file. Errors are one line on stderr, never a traceback; with
``--json`` results are JSON on stdout, errors still go to stderr (and a bad
config file is also reported as JSON on stdout).

This module reads the command line and turns every refusal into that one
line and status; each command group is a module of its own
(L{mailapp.cli.users}, L{mailapp.cli.domains}, L{mailapp.cli.aliases}, L{mailapp.cli.senders},
L{mailapp.cli.queue}, L{mailapp.cli.dkim}, L{mailapp.cli.dns}) over what they all share (L{mailapp.cli.command}).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence

from argon2 import PasswordHasher

from mailapp.cli.aliases import add_alias_commands
from mailapp.cli.command import (
    DEFAULT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    CommandFailure,
    CommandLineParser,
    ConfigProblems,
    Context,
    add_command,
    warn,
)
from mailapp.cli.dkim import add_dkim_commands
from mailapp.cli.dns import add_dns_commands
from mailapp.cli.domains import add_domain_commands
from mailapp.cli.queue import add_queue_commands
from mailapp.cli.senders import add_sender_commands
from mailapp.cli.sieve import add_sieve_commands
from mailapp.cli.tlsreport import add_tls_report_command
from mailapp.cli.users import add_user_commands
from mailapp.dkim.keys import KeyStoreError
from mailapp.errors import AccountError

__all__ = ["DEFAULT_CONFIG", "main"]


def _check_config(context: Context) -> int:
    config = context.config
    context.report(f"config OK: {config.path}", {"ok": True, "path": str(config.path), "problems": []})
    return EXIT_OK


def _parser() -> CommandLineParser:
    # --config and --json are accepted before the verb and after it;
    # SUPPRESS keeps a value given before the verb from being reset after.
    common = CommandLineParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"the server's config file (default: $MAILAPP_CONFIG, else {DEFAULT_CONFIG})",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print machine-readable JSON"
    )

    parser = CommandLineParser(
        prog="mailapp",
        description="Manage mailapp's domains, users and aliases. Safe to use while the server runs.",
        parents=[common],
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=CommandLineParser)

    add_user_commands(verbs, common)
    add_domain_commands(verbs, common)
    add_alias_commands(verbs, common)
    add_sender_commands(verbs, common)
    add_sieve_commands(verbs, common)
    add_queue_commands(verbs, common)
    add_dkim_commands(verbs, common)
    add_dns_commands(verbs, common)
    add_tls_report_command(verbs, common)
    add_command(common, verbs, "check-config", _check_config, "Check the config file and print every problem in it.")
    return parser


def main(argv: Sequence[str] | None = None, *, password_hasher: PasswordHasher | None = None) -> int:
    """
    Run one command; return the exit status.

    @param password_hasher: the argon2 hasher for new passwords; the
        production default when C{None}. Tests pass a cheap one.
    """
    parser = _parser()
    try:
        options = parser.parse_args(argv)
    except CommandFailure as failure:
        print(str(failure), file=sys.stderr)
        return failure.status
    except SystemExit as exit:  # --help
        return exit.code if isinstance(exit.code, int) else EXIT_OK
    options.config = getattr(options, "config", None)
    options.json = getattr(options, "json", False)
    context = Context(options, password_hasher)
    try:
        return int(options.handler(context))
    except ConfigProblems as problems:
        if options.json:
            print(json.dumps({"ok": False, "path": str(problems.path), "problems": problems.problems}, indent=2))
        warn(f"{problems}:")
        for problem in problems.problems:
            print(f"  {problem}", file=sys.stderr)
        return problems.status
    except CommandFailure as failure:
        warn(str(failure))
        return failure.status
    except (AccountError, KeyStoreError) as error:
        warn(str(error))
        return EXIT_REFUSED
    except sqlite3.Error as error:
        warn(f"accounts database error: {error}")
        return EXIT_REFUSED
    except OSError as error:
        warn(f"{error.filename or ''}{': ' if error.filename else ''}{error.strerror or error}")
        return EXIT_REFUSED
    except (KeyboardInterrupt, EOFError):
        warn("interrupted; nothing was changed")
        return EXIT_INTERRUPTED
