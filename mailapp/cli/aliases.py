"""
``mailapp alias``: aliases and catch-alls.

The database refuses an alias that would loop or name nobody
(L{mailapp.accounts.AccountsDatabase.add_alias}); this module only says
what changed, for a person or as JSON.
"""

from __future__ import annotations

from typing import Any

from mailapp.cli.command import EXIT_OK, CommandLineParser, Context, add_command

__all__ = ["add_alias_commands"]


def _alias_add(context: Context) -> int:
    with context.database() as database:
        source, targets = database.add_alias(context.options.source, context.options.targets)
    context.report(
        f"added alias {source} -> {', '.join(targets)}",
        {"action": "alias.add", "source": source, "targets": list(targets)},
    )
    return EXIT_OK


def _alias_del(context: Context) -> int:
    with context.database() as database:
        removed = database.remove_alias(context.options.source, context.options.target)
    source = context.options.source
    context.report(
        f"deleted alias {source} -> {', '.join(removed)}",
        {"action": "alias.del", "source": source, "targets": removed},
    )
    return EXIT_OK


def _alias_list(context: Context) -> int:
    with context.database() as database:
        aliases = database.list_aliases()
    lines = [f"{info.source} -> {', '.join(info.targets)}" for info in aliases]
    context.report(
        "\n".join(lines) if lines else "no aliases",
        [{"source": info.source, "targets": list(info.targets)} for info in aliases],
    )
    return EXIT_OK


def add_alias_commands(verbs: Any, common: CommandLineParser) -> None:
    """Declare ``mailapp alias ...`` in the subparsers action C{verbs}."""
    aliases = verbs.add_parser("alias", help="add, del, list aliases and catch-alls", parents=[common])
    alias_verbs = aliases.add_subparsers(dest="alias_verb", metavar="ACTION", required=True, parser_class=CommandLineParser)
    sub = add_command(
        common,
        alias_verbs,
        "add",
        _alias_add,
        "Deliver mail for SOURCE to every TARGET (users, other aliases, or remote addresses). "
        "SOURCE '@domain' is the domain's catch-all.",
    )
    sub.add_argument("source", metavar="SOURCE", help="local@domain, or @domain for a catch-all")
    sub.add_argument("targets", metavar="TARGET", nargs="+")
    sub = add_command(common, alias_verbs, "del", _alias_del, "Delete one target of an alias, or the whole alias.")
    sub.add_argument("source", metavar="SOURCE")
    sub.add_argument("target", metavar="TARGET", nargs="?")
    add_command(common, alias_verbs, "list", _alias_list, "List aliases and their targets.")
