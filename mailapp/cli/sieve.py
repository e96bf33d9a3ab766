"""
``mailapp sieve``: a user's Sieve scripts, as ManageSieve sees them
(C{mailapp sieve put alice@example.test filters.sieve --activate}).

Scripts live in C{state_dir/sieve} (L{mailapp.sieve.scripts}); a script is
checked before it is stored, and a broken one is refused with its line and
column (exit 1). The server reads the active script at every delivery, so
a change here applies to the next message without a reload.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mailapp.cli.command import (
    EXIT_OK,
    CommandFailure,
    CommandLineParser,
    Context,
    add_command,
)
from mailapp.sieve import SieveSyntaxError, compile
from mailapp.sieve.scripts import ScriptError, ScriptStore, sieve_directory

__all__ = ["add_sieve_commands"]


def _scripts(context: Context) -> tuple[ScriptStore, str]:
    limits = context.config.limits
    user = context.options.user
    with context.database() as database:
        if user.lower() not in (
            name.lower() for name in database.list_users(user.rpartition("@")[2])
        ):
            raise CommandFailure(f"no such user: {user}")
    return ScriptStore(
        sieve_directory(context.state_dir),
        limits.sieve_max_scripts,
        limits.sieve_max_script_size,
    ), user


def _refused(error: Exception) -> CommandFailure:
    if isinstance(error, SieveSyntaxError):
        return CommandFailure(f"script refused: {error}")
    return CommandFailure(str(error))


def _list(context: Context) -> int:
    scripts, user = _scripts(context)
    listing = scripts.listing(user)
    lines = [f"{info.name}{'  (active)' if info.active else ''}" for info in listing]
    context.report(
        "\n".join(lines) if lines else f"no scripts for {user}",
        [{"name": i.name, "active": i.active} for i in listing],
    )
    return EXIT_OK


def _put(context: Context) -> int:
    scripts, user = _scripts(context)
    source = context.options.file
    text = sys.stdin.read() if source == "-" else Path(source).read_text("utf-8")
    name = context.options.name or (Path(source).stem if source != "-" else "main")
    try:
        scripts.put(user, name, text)
        if context.options.activate:
            scripts.activate(user, name)
    except (ScriptError, SieveSyntaxError) as error:
        raise _refused(error) from None
    active = " and made it active" if context.options.activate else ""
    context.report(
        f"stored {name} for {user}{active}",
        {"action": "sieve.put", "user": user, "name": name, "active": bool(active)},
    )
    return EXIT_OK


def _check(context: Context) -> int:
    source = context.options.file
    text = sys.stdin.read() if source == "-" else Path(source).read_text("utf-8")
    try:
        compile(text)
    except SieveSyntaxError as error:
        raise _refused(error) from None
    context.report(f"{source}: OK", {"ok": True, "file": source})
    return EXIT_OK


def _global_store(context: Context) -> ScriptStore:
    limits = context.config.limits
    return ScriptStore(sieve_directory(context.state_dir), limits.sieve_max_scripts, limits.sieve_max_script_size)


def _put_global(context: Context) -> int:
    source, name = context.options.file, context.options.name
    text = sys.stdin.read() if source == "-" else Path(source).read_text("utf-8")
    try:
        _global_store(context).put_global(name, text)
    except (ScriptError, SieveSyntaxError) as error:
        raise _refused(error) from None
    role = {"before": " (runs before every user's script)", "after": " (runs after every user's script)"}.get(name, "")
    context.report(f"stored global script {name}{role}", {"action": "sieve.put-global", "name": name})
    return EXIT_OK


def _del_global(context: Context) -> int:
    try:
        _global_store(context).delete_global(context.options.name)
    except ScriptError as error:
        raise _refused(error) from None
    context.report(f"deleted global script {context.options.name}", {"action": "sieve.del-global", "name": context.options.name})
    return EXIT_OK


def _activate(context: Context) -> int:
    scripts, user = _scripts(context)
    name = context.options.name
    try:
        scripts.activate(user, None if context.options.none else name)
    except ScriptError as error:
        raise _refused(error) from None
    text = (
        f"no active script for {user}"
        if context.options.none
        else f"{name} is the active script of {user}"
    )
    context.report(
        text,
        {
            "action": "sieve.activate",
            "user": user,
            "name": None if context.options.none else name,
        },
    )
    return EXIT_OK


def _get(context: Context) -> int:
    scripts, user = _scripts(context)
    try:
        text = scripts.get(user, context.options.name)
    except ScriptError as error:
        raise _refused(error) from None
    if context.json:
        context.report("", {"user": user, "name": context.options.name, "script": text})
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _delete(context: Context) -> int:
    scripts, user = _scripts(context)
    try:
        scripts.delete(user, context.options.name)
    except ScriptError as error:
        raise _refused(error) from None
    context.report(
        f"deleted {context.options.name} of {user}",
        {"action": "sieve.del", "user": user, "name": context.options.name},
    )
    return EXIT_OK


def add_sieve_commands(verbs: Any, common: CommandLineParser) -> None:
    """Declare ``mailapp sieve ...`` in the subparsers action C{verbs}."""
    sieve = verbs.add_parser(
        "sieve",
        help="list, put, activate, get, del a user's Sieve scripts; check one",
        parents=[common],
    )
    sieve_verbs = sieve.add_subparsers(
        dest="sieve_verb",
        metavar="ACTION",
        required=True,
        parser_class=CommandLineParser,
    )
    sub = add_command(
        common,
        sieve_verbs,
        "list",
        _list,
        "List a user's scripts; the active one is marked.",
    )
    sub.add_argument("user", metavar="USER")
    sub = add_command(
        common,
        sieve_verbs,
        "put",
        _put,
        "Check a script and store it (refused with its line and column if broken).",
    )
    sub.add_argument("user", metavar="USER")
    sub.add_argument("file", metavar="FILE", help="the script, or - for standard input")
    sub.add_argument(
        "--name",
        metavar="NAME",
        default=None,
        help="its name (default: the file's name without .sieve)",
    )
    sub.add_argument(
        "--activate", action="store_true", help="make it the active script too"
    )
    sub = add_command(
        common,
        sieve_verbs,
        "activate",
        _activate,
        "Make one script the active one (or none with --none).",
    )
    sub.add_argument("user", metavar="USER")
    sub.add_argument("name", metavar="NAME", nargs="?", default=None)
    sub.add_argument("--none", action="store_true", help="deactivate: no script runs")
    sub = add_command(
        common,
        sieve_verbs,
        "check",
        _check,
        "Check a script (a global one, say) without storing it.",
    )
    sub.add_argument("file", metavar="FILE", help="the script, or - for standard input")
    sub = add_command(
        common, sieve_verbs, "put-global", _put_global, "Store a global script: before, after, or one for include :global."
    )
    sub.add_argument("name", metavar="NAME", help="before and after run around every user's script")
    sub.add_argument("file", metavar="FILE", help="the script, or - for standard input")
    sub = add_command(common, sieve_verbs, "del-global", _del_global, "Delete a global script.")
    sub.add_argument("name", metavar="NAME")
    sub = add_command(common, sieve_verbs, "get", _get, "Print a script.")
    sub.add_argument("user", metavar="USER")
    sub.add_argument("name", metavar="NAME")
    sub = add_command(
        common, sieve_verbs, "del", _delete, "Delete a script (not the active one)."
    )
    sub.add_argument("user", metavar="USER")
    sub.add_argument("name", metavar="NAME")
