"""
The ``mailapp`` admin command: users, domains, aliases, the relay queue and
a config check.

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
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from argon2 import PasswordHasher

from mailapp.accounts import AccountsDatabase, QuotaOverride, accounts_path, check_address, check_new_password
from mailapp.config import Config, ConfigError, load
from mailapp.stateformat import StateFormatError, check_state_format
from mailapp.store.maildir import DELETED_NAME
from mailapp.errors import AccountError

__all__ = ["DEFAULT_CONFIG", "main"]

#: Used when neither ``--config`` nor ``$MAILAPP_CONFIG`` is given.
DEFAULT_CONFIG = "etc/mailapp.toml"

_EXIT_OK = 0
_EXIT_REFUSED = 1
_EXIT_USAGE = 2
_EXIT_INTERRUPTED = 130


class _Failure(Exception):
    """Stop the command with a one-line message and an exit status."""

    def __init__(self, message: str, status: int = _EXIT_REFUSED) -> None:
        super().__init__(message)
        self.status = status


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so that L{main} returns."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise _Failure(f"{self.prog}: {message}", _EXIT_USAGE)


class _Context:
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
                raise _Failure(f"cannot change the state: {error}") from None
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
        raise _ConfigProblems(path, error.problems) from None


class _ConfigProblems(_Failure):
    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        super().__init__(f"bad config file {path}", _EXIT_USAGE)
        self.path = path
        self.problems = list(problems)


# --- passwords ---------------------------------------------------------------


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
            raise _Failure("the two passwords do not match; nothing was changed")
    else:
        line = stdin.readline()
        if not line:
            raise _Failure("no password on standard input (pipe one line, or use a terminal)")
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    if not password:
        raise _Failure("empty passwords are not allowed; nothing was changed")
    return password


# --- commands ----------------------------------------------------------------


def _user_add(context: _Context) -> int:
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
        account = database.add_user(context.options.address, password)
    if leftover is not None:
        _warn(f"an old mailbox was at the new user's path; it was moved to {leftover}")
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
        _warn(f"user {account} was added, but creating its mailbox failed: {mailbox_problem}")
        return _EXIT_REFUSED
    return _EXIT_OK


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


def _user_del(context: _Context) -> int:
    from mailapp.store import retire_mailbox

    keep = context.options.keep_mail
    with context.database() as database:
        removed = database.remove_user(context.options.address)
    account = removed.address
    # After the user is gone from the database, so that nothing new is
    # delivered while the mailbox moves; one rename, so that the running
    # server sees the old mailbox or none (never a new user's mixed in).
    moved = retire_mailbox(context.state_dir, account, keep=keep)
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
    return _EXIT_OK


def _user_passwd(context: _Context) -> int:
    with context.database() as database:
        if database.find_user(check_address(context.options.address)) is None:
            raise AccountError(f"no such user {context.options.address}")
        password = _read_password(context.options, sys.stdin)
        check_new_password(context.options.address, password)
        account = database.set_password(context.options.address, password)
    context.report(f"changed the password of {account}", {"action": "user.passwd", "address": account})
    return _EXIT_OK


def _quota_value(text: str) -> int | None:
    """A C{--bytes}/C{--messages} value: a count (0: unlimited), or C{default} to follow the config."""
    if text.strip().lower() == "default":
        return None
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"not 0, a positive integer or 'default': {text!r}")
    return int(text)


def _user_quota(context: _Context) -> int:
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
    return _EXIT_OK


#: An option not given on the command line (C{None} means "default").
_UNCHANGED: Any = object()


def _user_list(context: _Context) -> int:
    with context.database() as database:
        users = database.list_users(context.options.domain)
    context.report("\n".join(users) if users else "no users", users)
    return _EXIT_OK


def _domain_add(context: _Context) -> int:
    with context.database() as database:
        domain = database.add_domain(context.options.name)
    context.report(f"added domain {domain}", {"action": "domain.add", "domain": domain})
    return _EXIT_OK


def _domain_del(context: _Context) -> int:
    from mailapp.store import retire_domain_mailboxes

    keep = context.options.keep_mail
    with context.database() as database:
        domain = database.remove_domain(context.options.name)
    # The domain had no users left (remove_domain refuses otherwise); any
    # mailbox still on disk under it is an old one, never to be revived.
    moved = retire_domain_mailboxes(context.state_dir, domain, keep=keep)
    text = f"deleted domain {domain}"
    if moved:
        text += f"; {len(moved)} old mailbox(es) left under it were " + (
            f"moved to {moved[0].parent}" if keep else "deleted"
        )
    context.report(
        text,
        {"action": "domain.del", "domain": domain, "mail_archives": [str(path) for path in moved] if keep else []},
    )
    return _EXIT_OK


def _domain_list(context: _Context) -> int:
    with context.database() as database:
        domains = database.list_domains()
    lines = [f"{info.name}{'  (config file)' if info.from_config else ''}" for info in domains]
    context.report(
        "\n".join(lines) if lines else "no local domains",
        [{"name": info.name, "source": "config" if info.from_config else "database"} for info in domains],
    )
    return _EXIT_OK


def _alias_add(context: _Context) -> int:
    with context.database() as database:
        source, targets = database.add_alias(context.options.source, context.options.targets)
    context.report(
        f"added alias {source} -> {', '.join(targets)}",
        {"action": "alias.add", "source": source, "targets": list(targets)},
    )
    return _EXIT_OK


def _alias_del(context: _Context) -> int:
    with context.database() as database:
        removed = database.remove_alias(context.options.source, context.options.target)
    source = context.options.source
    context.report(
        f"deleted alias {source} -> {', '.join(removed)}",
        {"action": "alias.del", "source": source, "targets": removed},
    )
    return _EXIT_OK


def _alias_list(context: _Context) -> int:
    with context.database() as database:
        aliases = database.list_aliases()
    lines = [f"{info.source} -> {', '.join(info.targets)}" for info in aliases]
    context.report(
        "\n".join(lines) if lines else "no aliases",
        [{"source": info.source, "targets": list(info.targets)} for info in aliases],
    )
    return _EXIT_OK


# --- the relay queue ------------------------------------------------------------
#
# Reading needs no lock (envelopes are only ever replaced by rename). Changes
# go through mailapp.relay.control: done here when no server holds the queue
# lock, else handed to the running relay manager as a request file.

#: How long a change waits for the running server to answer.
QUEUE_ANSWER_TIMEOUT = 10.0


def _queue_layout(context: _Context) -> Any:
    from mailapp.relay.queue import QueueLayout

    return QueueLayout(context.state_dir / "queue")


def _envelope_data(envelope: Any) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(envelope)
    data.pop("version", None)
    return data


def _when(seconds: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _queue_list(context: _Context) -> int:
    from mailapp.relay.queue import load_entries

    problems: list[str] = []
    entries = load_entries(_queue_layout(context), problems=problems)
    for problem in problems:
        _warn(f"unreadable queue entry {problem}")
    lines = []
    for envelope in entries:
        lines.append(
            f"{envelope.id}  {_when(envelope.created)}  {envelope.size:>9}  <{envelope.sender}>  "
            f"attempts={envelope.attempts}  next={_when(envelope.next_attempt)}"
        )
        for recipient in envelope.recipients:
            reply = f"  ({recipient.last_reply})" if recipient.last_reply else ""
            lines.append(f"    {recipient.state:<9} {recipient.address}{reply}")
    context.report(
        "\n".join(lines) if lines else "the queue is empty",
        [_envelope_data(envelope) for envelope in entries],
    )
    return _EXIT_OK


def _queue_show(context: _Context) -> int:
    from mailapp.relay.queue import CorruptEntry, read_envelope

    layout = _queue_layout(context)
    entry_id = context.options.id
    try:
        envelope = read_envelope(layout.envelope(entry_id))
    except FileNotFoundError:
        raise _Failure(f"no queue entry {entry_id}") from None
    except CorruptEntry as error:
        raise _Failure(f"queue entry {entry_id} is unreadable: {error}") from None
    data = _envelope_data(envelope)
    data["message_file"] = str(layout.message(entry_id))
    text = [
        f"id:           {envelope.id}",
        f"sender:       <{envelope.sender}>",
        f"created:      {_when(envelope.created)}",
        f"size:         {envelope.size}",
        f"attempts:     {envelope.attempts}",
        f"next attempt: {_when(envelope.next_attempt)}",
        f"message file: {layout.message(entry_id)}",
        "recipients:",
    ]
    for recipient in envelope.recipients:
        text.append(f"  {recipient.address}: {recipient.state}, {recipient.attempts} attempts")
        if recipient.last_reply:
            text.append(f"    last reply ({recipient.remote or '-'}): {recipient.last_reply}")
    context.report("\n".join(text), data)
    return _EXIT_OK


def _queue_change(context: _Context) -> int:
    from mailapp.relay import control
    from mailapp.relay.queue import CorruptEntry, load_entries, read_envelope, remove_entry_sync, write_envelope_sync

    verb = context.options.queue_verb
    entry_id = getattr(context.options, "id", None)
    layout = _queue_layout(context)
    lock = control.try_lock(layout)
    if lock is None:
        name = control.submit(layout, verb, entry_id)
        result = control.wait_for_result(layout, name, QUEUE_ANSWER_TIMEOUT)
        if result is None:
            raise _Failure(
                f"the server did not answer within {QUEUE_ANSWER_TIMEOUT:.0f} s; the request stays "
                "in the queue's control directory and is carried out when the server gets to it"
            )
        result["server"] = "running"
    else:
        import time

        try:
            if entry_id is None:
                envelopes = load_entries(layout, problems=[])
            else:
                try:
                    envelopes = [read_envelope(layout.envelope(entry_id))]
                except FileNotFoundError:
                    raise _Failure(f"no queue entry {entry_id}") from None
                except CorruptEntry as error:
                    raise _Failure(f"queue entry {entry_id} is unreadable: {error}") from None
            now = time.time()
            for envelope in envelopes:
                changed = control.apply_to_envelope(envelope, verb, now)
                if changed is None:
                    remove_entry_sync(layout, envelope.id)
                else:
                    write_envelope_sync(layout, changed)
            result = {"ok": True, "verb": verb, "ids": [e.id for e in envelopes], "server": "stopped"}
        finally:
            control.release(lock)
    if not result.get("ok"):
        raise _Failure(str(result.get("error", "refused")))
    ids = ", ".join(result["ids"]) or "nothing"
    text = {
        "retry": f"retrying now: {ids}",
        "delete": f"deleted {ids} (no bounce is sent)",
        "bounce": f"returned to sender: {ids}",
    }[verb]
    if result["server"] == "stopped" and verb != "delete":
        text += " (the server is not running: this takes effect when it starts)"
    context.report(text, result)
    return _EXIT_OK


def _check_config(context: _Context) -> int:
    config = context.config
    context.report(f"config OK: {config.path}", {"ok": True, "path": str(config.path), "problems": []})
    return _EXIT_OK


# --- the command line --------------------------------------------------------


def _parser() -> _ArgumentParser:
    # --config and --json are accepted before the verb and after it;
    # SUPPRESS keeps a value given before the verb from being reset after.
    common = _ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"the server's config file (default: $MAILAPP_CONFIG, else {DEFAULT_CONFIG})",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print machine-readable JSON"
    )

    parser = _ArgumentParser(
        prog="mailapp",
        description="Manage mailapp's domains, users and aliases. Safe to use while the server runs.",
        parents=[common],
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=_ArgumentParser)

    def leaf(group: Any, name: str, handler: Callable[[_Context], int], help: str, **kwargs: Any) -> Any:
        sub = group.add_parser(name, help=help, description=help, parents=[common], **kwargs)
        sub.set_defaults(handler=handler)
        return sub

    password_help = (
        "the password (visible in the process list; prefer the prompt, or pipe it on stdin)"
    )
    users = verbs.add_parser("user", help="add, del, list users; passwd sets a password, quota a mailbox quota", parents=[common])
    user_verbs = users.add_subparsers(dest="user_verb", metavar="ACTION", required=True, parser_class=_ArgumentParser)
    sub = leaf(
        user_verbs,
        "add",
        _user_add,
        "Create a user and its mailbox. The password (at least 8 characters, not the address "
        "or its local part) is prompted for twice on a terminal, else read as one line from stdin.",
    )
    sub.add_argument("address", metavar="ADDRESS", help="local@domain, in a local domain")
    sub.add_argument("--password", metavar="PW", help=password_help)
    keep_mail_help = f"move the mail to STATE_DIR/{DELETED_NAME}/DOMAIN/ instead of deleting it"
    sub = leaf(
        user_verbs,
        "del",
        _user_del,
        "Delete a user: its mail is deleted (or, with --keep-mail, moved out of the store), and "
        "alias targets naming it are dropped (an alias left with no target is deleted). "
        "A user added later at the same address starts with an empty mailbox.",
    )
    sub.add_argument("address", metavar="ADDRESS")
    sub.add_argument("--keep-mail", action="store_true", help=keep_mail_help)
    sub = leaf(
        user_verbs,
        "passwd",
        _user_passwd,
        "Set a user's password (at least 8 characters, not the address or its local part; "
        "prompted, or one line on stdin).",
    )
    sub.add_argument("address", metavar="ADDRESS")
    sub.add_argument("--password", metavar="PW", help=password_help)
    sub = leaf(
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
    sub = leaf(user_verbs, "list", _user_list, "List users, of one domain if given.")
    sub.add_argument("domain", metavar="DOMAIN", nargs="?")

    domains = verbs.add_parser("domain", help="add, del, list local domains", parents=[common])
    domain_verbs = domains.add_subparsers(dest="domain_verb", metavar="ACTION", required=True, parser_class=_ArgumentParser)
    sub = leaf(domain_verbs, "add", _domain_add, "Make a domain local (mail for it is delivered here).")
    sub.add_argument("name", metavar="NAME")
    sub = leaf(
        domain_verbs,
        "del",
        _domain_del,
        "Stop treating a domain as local. Refused while it has users or aliases, "
        "and for domains named in the config file. Old mailboxes left under it are deleted "
        "(or, with --keep-mail, moved out of the store).",
    )
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--keep-mail", action="store_true", help=keep_mail_help)
    leaf(domain_verbs, "list", _domain_list, "List local domains, marking those from the config file.")

    aliases = verbs.add_parser("alias", help="add, del, list aliases and catch-alls", parents=[common])
    alias_verbs = aliases.add_subparsers(dest="alias_verb", metavar="ACTION", required=True, parser_class=_ArgumentParser)
    sub = leaf(
        alias_verbs,
        "add",
        _alias_add,
        "Deliver mail for SOURCE to every TARGET (users, other aliases, or remote addresses). "
        "SOURCE '@domain' is the domain's catch-all.",
    )
    sub.add_argument("source", metavar="SOURCE", help="local@domain, or @domain for a catch-all")
    sub.add_argument("targets", metavar="TARGET", nargs="+")
    sub = leaf(alias_verbs, "del", _alias_del, "Delete one target of an alias, or the whole alias.")
    sub.add_argument("source", metavar="SOURCE")
    sub.add_argument("target", metavar="TARGET", nargs="?")
    leaf(alias_verbs, "list", _alias_list, "List aliases and their targets.")

    queue = verbs.add_parser("queue", help="list and manage the outbound relay queue", parents=[common])
    queue_verbs = queue.add_subparsers(dest="queue_verb", metavar="ACTION", required=True, parser_class=_ArgumentParser)
    leaf(queue_verbs, "list", _queue_list, "List the messages waiting to be relayed, with each recipient's state.")
    sub = leaf(queue_verbs, "show", _queue_show, "Show one queued message's envelope.")
    sub.add_argument("id", metavar="ID")
    sub = leaf(queue_verbs, "retry", _queue_change, "Try one queued message (or all) again now.")
    sub.add_argument("id", metavar="ID", nargs="?")
    sub = leaf(queue_verbs, "delete", _queue_change, "Delete a queued message without telling its sender.")
    sub.add_argument("id", metavar="ID")
    sub = leaf(
        queue_verbs, "bounce", _queue_change, "Give up on a queued message: its sender gets a delivery status notification."
    )
    sub.add_argument("id", metavar="ID")

    leaf(verbs, "check-config", _check_config, "Check the config file and print every problem in it.")
    return parser


def _warn(message: str) -> None:
    print(f"mailapp: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None, *, password_hasher: PasswordHasher | None = None) -> int:
    """
    Run one command; return the exit status.

    @param password_hasher: the argon2 hasher for new passwords; the
        production default when C{None}. Tests pass a cheap one.
    """
    parser = _parser()
    try:
        options = parser.parse_args(argv)
    except _Failure as failure:
        print(str(failure), file=sys.stderr)
        return failure.status
    except SystemExit as exit:  # --help
        return exit.code if isinstance(exit.code, int) else _EXIT_OK
    options.config = getattr(options, "config", None)
    options.json = getattr(options, "json", False)
    context = _Context(options, password_hasher)
    try:
        return int(options.handler(context))
    except _ConfigProblems as problems:
        if options.json:
            print(json.dumps({"ok": False, "path": str(problems.path), "problems": problems.problems}, indent=2))
        _warn(f"{problems}:")
        for problem in problems.problems:
            print(f"  {problem}", file=sys.stderr)
        return problems.status
    except _Failure as failure:
        _warn(str(failure))
        return failure.status
    except AccountError as error:
        _warn(str(error))
        return _EXIT_REFUSED
    except sqlite3.Error as error:
        _warn(f"accounts database error: {error}")
        return _EXIT_REFUSED
    except OSError as error:
        _warn(f"{error.filename or ''}{': ' if error.filename else ''}{error.strerror or error}")
        return _EXIT_REFUSED
    except (KeyboardInterrupt, EOFError):
        _warn("interrupted; nothing was changed")
        return _EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
