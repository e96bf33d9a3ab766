"""
``mailapp user``: add, delete and list users, set a password or a quota.

The commands that create or retire a mailbox as well as a database row:
a user is added only after any old mailbox at its path is moved aside, and
deleted from the database before its mailbox is moved out of the store, so
that the running server never delivers into the wrong one. Passwords are
read here (prompt, pipe or option) and checked by the one policy of
L{mailapp.accounts.check_new_password}.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any, TextIO

from mailapp.accounts import QuotaOverride, check_address, check_new_password
from mailapp.cli.command import (
    EXIT_OK,
    EXIT_REFUSED,
    KEEP_MAIL_HELP,
    CommandFailure,
    CommandLineParser,
    Context,
    add_command,
    warn,
)
from mailapp.errors import AccountError

__all__ = ["add_user_commands"]


def _read_password(options: argparse.Namespace, stdin: TextIO) -> str:
    """
    The password from C{--password}, else from a no-echo prompt (asked twice)
    when stdin is a terminal, else the first line of stdin, so that scripts
    can pipe it in without it showing in the process list.
    """
    if options.password is not None:
        password: str = options.password
    elif stdin.isatty():
        password = getpass.getpass("New password: ")
        if password and getpass.getpass("Repeat password: ") != password:
            raise CommandFailure("the two passwords do not match; nothing was changed")
    else:
        line = stdin.readline()
        if not line:
            raise CommandFailure("no password on standard input (pipe one line, or use a terminal)")
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    if not password:
        raise CommandFailure("empty passwords are not allowed; nothing was changed")
    return password


def _user_add(context: Context) -> int:
    from mailapp.store import retire_mailbox

    with context.database() as database:
        canonical = database.check_new_user(context.options.address)  # refuse before prompting
        password = _read_password(context.options, sys.stdin)
        check_new_password(canonical, password)
        # A directory at the new account's path is nobody's: mail of a user
        # deleted by an older mailapp (which left it in place), or written by
        # a deleted user's session racing the deletion. Moved aside (kept,
        # since nobody chose to delete it) before the user exists, so that
        # no delivery to the new account can land in it first.
        leftover = retire_mailbox(context.state_dir, canonical, keep=True)
        # And a deleted user's Sieve scripts (left by an older mailapp), which would filter the new one's mail.
        old_scripts = _retire_scripts(context.state_dir, canonical, keep=True, beside=leftover)
        account = database.add_user(context.options.address, password)
    if leftover is not None:
        warn(f"an old mailbox was at the new user's path; it was moved to {leftover}")
    if old_scripts is not None:
        warn(f"old Sieve scripts were at the new user's path; they were moved to {old_scripts}")
    mailbox, mailbox_problem = _create_mailbox(context.state_dir, account)
    context.report(
        f"added user {account}"
        + (f"\nmailbox: {mailbox}" if mailbox else "")
        + f"\nlog in (IMAP, POP3, submission, webmail) with the username {account} and the password just set",
        {
            "action": "user.add",
            "address": account,
            "username": account,
            "mailbox": str(mailbox) if mailbox else None,
        },
    )
    if mailbox_problem:
        warn(f"user {account} was added, but creating its mailbox failed: {mailbox_problem}")
        return EXIT_REFUSED
    return EXIT_OK


def _create_mailbox(state_dir: Path, account: str) -> tuple[Path | None, str | None]:
    """
    Create the Maildir now rather than at the first delivery, so that an
    admin sees at once that the state directory is writable.
    Returns the mailbox directory, or the problem.
    """
    from mailapp.store import ensure_mailbox  # only this verb needs the store

    try:
        return ensure_mailbox(state_dir, account), None
    except (OSError, ValueError) as error:
        return None, str(getattr(error, "strerror", None) or error)


def _retire_scripts(state_dir: Path, account: str, *, keep: bool, beside: Path | None) -> Path | None:
    """
    C{account}'s Sieve scripts out of the way of any new account at its
    address (L{mailapp.sieve.scripts.ScriptStore.retire}): kept as
    C{<beside>.sieve}, next to the mailbox moved aside, or under
    C{deleted/} when there was none; deleted unless C{keep}.
    """
    from mailapp.sieve.scripts import ScriptStore, sieve_directory
    from mailapp.store.retire import DELETED_NAME, archive_stamp, unused_path

    scripts = ScriptStore(sieve_directory(state_dir))
    if not keep:
        return scripts.retire(account, None)
    if beside is None:
        beside = state_dir / DELETED_NAME / "sieve" / f"{ScriptStore.directory_name(account)}.{archive_stamp()}"
    return scripts.retire(account, unused_path(beside.with_name(beside.name + ".sieve")))


def _user_del(context: Context) -> int:
    from mailapp.store import retire_mailbox

    keep = context.options.keep_mail
    with context.database() as database:
        removed = database.remove_user(context.options.address)
    account = removed.address
    # After the user is gone from the database, so that nothing new is
    # delivered while the mailbox moves; one rename, so that the running
    # server sees the old mailbox or none (never a new user's mixed in).
    moved = retire_mailbox(context.state_dir, account, keep=keep)
    _retire_scripts(context.state_dir, account, keep=keep, beside=moved)
    if moved is None:
        mail = "it had no mailbox on disk"
    elif keep:
        mail = f"its mail was moved to {moved}"
    else:
        mail = "its mail was deleted"
    lines = [f"deleted user {account}; {mail}"]
    for alias in removed.aliases_pruned:
        gone = " (it had no other target, so the alias was deleted)" if alias.source in removed.aliases_removed else ""
        lines.append(f"alias {alias.source} no longer points at {', '.join(alias.targets)}{gone}")
    context.report(
        "\n".join(lines),
        {
            "action": "user.del",
            "address": account,
            "mail_kept": keep and moved is not None,
            "mail_archive": str(moved) if keep and moved is not None else None,
            "aliases_pruned": [{"source": a.source, "targets": list(a.targets)} for a in removed.aliases_pruned],
            "aliases_removed": list(removed.aliases_removed),
        },
    )
    return EXIT_OK


def _user_passwd(context: Context) -> int:
    with context.database() as database:
        if database.find_user(check_address(context.options.address)) is None:
            raise AccountError(f"no such user {context.options.address}")
        password = _read_password(context.options, sys.stdin)
        check_new_password(context.options.address, password)
        account = database.set_password(context.options.address, password)
    context.report(f"changed the password of {account}", {"action": "user.passwd", "address": account})
    return EXIT_OK


def _quota_value(text: str) -> int | None:
    """A C{--bytes}/C{--messages} value: a count (0: unlimited), or C{default} to follow the config."""
    if text.strip().lower() == "default":
        return None
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"not 0, a positive integer or 'default': {text!r}")
    return int(text)


def _user_quota(context: Context) -> int:
    from mailapp.quota import Quota
    from mailapp.store import mailbox_usage  # only this verb needs the store

    options = context.options
    with context.database() as database:
        override = database.quota_override(options.address)
        if override is None:
            raise AccountError(f"no such user {options.address}")
        changed = options.bytes is not _UNCHANGED or options.messages is not _UNCHANGED
        if changed:
            override = QuotaOverride(
                override.bytes if options.bytes is _UNCHANGED else options.bytes,
                override.messages if options.messages is _UNCHANGED else options.messages,
            )
            account = database.set_quota(options.address, override)
        else:
            account = database.find_user(options.address) or options.address
    limits = context.config.limits
    quota = Quota(limits.mailbox_quota_bytes, limits.mailbox_quota_messages).with_override(override)
    usage = mailbox_usage(context.state_dir / "mail", account)

    def shown(value: int, own: int | None) -> str:
        return ("unlimited" if value == 0 else str(value)) + (" (the config's default)" if own is None else "")

    context.report(
        (f"set the quota of {account}\n" if changed else "")
        + f"{account}: bytes {usage.bytes} of {shown(quota.bytes, override.bytes)}, "
        f"messages {usage.messages} of {shown(quota.messages, override.messages)}",
        {
            "action": "user.quota",
            "address": account,
            "quota_bytes": quota.bytes,
            "quota_messages": quota.messages,
            "override_bytes": override.bytes,
            "override_messages": override.messages,
            "used_bytes": usage.bytes,
            "used_messages": usage.messages,
        },
    )
    return EXIT_OK


#: An option not given on the command line (C{None} means "default").
_UNCHANGED: Any = object()


def _user_list(context: Context) -> int:
    with context.database() as database:
        users = database.list_users(context.options.domain)
    context.report("\n".join(users) if users else "no users", users)
    return EXIT_OK


def add_user_commands(verbs: Any, common: CommandLineParser) -> None:
    """Declare ``mailapp user ...`` in the subparsers action C{verbs}."""
    password_help = (
        "the password (visible in the process list; prefer the prompt, or pipe it on stdin)"
    )
    users = verbs.add_parser("user", help="add, del, list users; passwd sets a password, quota a mailbox quota", parents=[common])
    user_verbs = users.add_subparsers(dest="user_verb", metavar="ACTION", required=True, parser_class=CommandLineParser)
    sub = add_command(
        common,
        user_verbs,
        "add",
        _user_add,
        "Create a user and its mailbox. The password (at least 8 characters, not the address "
        "or its local part) is prompted for twice on a terminal, else read as one line from stdin.",
    )
    sub.add_argument("address", metavar="ADDRESS", help="local@domain, in a local domain")
    sub.add_argument("--password", metavar="PW", help=password_help)
    sub = add_command(
        common,
        user_verbs,
        "del",
        _user_del,
        "Delete a user: its mail is deleted (or, with --keep-mail, moved out of the store), and "
        "alias targets naming it are dropped (an alias left with no target is deleted). "
        "A user added later at the same address starts with an empty mailbox.",
    )
    sub.add_argument("address", metavar="ADDRESS")
    sub.add_argument("--keep-mail", action="store_true", help=KEEP_MAIL_HELP)
    sub = add_command(
        common,
        user_verbs,
        "passwd",
        _user_passwd,
        "Set a user's password (at least 8 characters, not the address or its local part; "
        "prompted, or one line on stdin).",
    )
    sub.add_argument("address", metavar="ADDRESS")
    sub.add_argument("--password", metavar="PW", help=password_help)
    sub = add_command(
        common,
        user_verbs,
        "quota",
        _user_quota,
        "Show a user's mailbox quota and usage, or set its own: --bytes and --messages take a "
        "number (0: unlimited) or 'default' (the config's limits.mailbox_quota_*). Applies to the "
        "next message, also while the server runs.",
    )
    sub.add_argument("address", metavar="ADDRESS")
    sub.add_argument("--bytes", type=_quota_value, default=_UNCHANGED, metavar="N", help="bytes, all folders together")
    sub.add_argument("--messages", type=_quota_value, default=_UNCHANGED, metavar="N", help="messages, all folders together")
    sub = add_command(common, user_verbs, "list", _user_list, "List users, of one domain if given.")
    sub.add_argument("domain", metavar="DOMAIN", nargs="?")
