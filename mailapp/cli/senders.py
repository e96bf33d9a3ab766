"""
``mailapp sender``: the allow and block lists of senders, per user and per
domain (C{mailapp sender block spam.example --for alice@example.org}).

The rules of an entry and of matching are L{mailapp.accounts.senderlists};
the database refuses a list for nobody (an unknown user, a domain not
local). The MX reads the lists at every RCPT, so a change here applies to
the server's next message without a reload.
"""

from __future__ import annotations

from typing import Any

from mailapp.accounts import ALLOW, BLOCK, SenderRule
from mailapp.cli.command import EXIT_OK, CommandLineParser, Context, add_command

__all__ = ["add_sender_commands"]


def _rule_data(rule: SenderRule) -> dict[str, str]:
    return {"for": rule.owner, "entry": rule.pattern, "list": rule.action}


def _set(action: str) -> Any:
    def handler(context: Context) -> int:
        with context.database() as database:
            rule, before = database.set_sender_rule(context.options.owner, context.options.entry, action)
        if before is None:
            text = f"{rule.action}ed {rule.pattern} for {rule.owner}"
        elif before == rule.action:
            text = f"{rule.pattern} was already {rule.action}ed for {rule.owner}"
        else:
            text = f"{rule.action}ed {rule.pattern} for {rule.owner} (it was {before}ed)"
        context.report(text, {"action": f"sender.{action}", **_rule_data(rule), "previous": before})
        return EXIT_OK

    return handler


def _sender_del(context: Context) -> int:
    with context.database() as database:
        rule = database.remove_sender_rule(context.options.owner, context.options.entry)
    context.report(
        f"deleted {rule.pattern} ({rule.action}) from the list of {rule.owner}",
        {"action": "sender.del", **_rule_data(rule)},
    )
    return EXIT_OK


def _sender_list(context: Context) -> int:
    with context.database() as database:
        rules = database.sender_rules(context.options.owner)
    lines = [f"{rule.owner}  {rule.action}  {rule.pattern}" for rule in rules]
    context.report("\n".join(lines) if lines else "no sender list entries", [_rule_data(rule) for rule in rules])
    return EXIT_OK


_ENTRY_HELP = "a sender address (alice@example.org), a domain (example.org) or its subdomains (*.example.org)"
_FOR_HELP = "whose list: a user (alice@example.test) or a local domain (example.test); a user's list wins over its domain's"


def add_sender_commands(verbs: Any, common: CommandLineParser) -> None:
    """Declare ``mailapp sender ...`` in the subparsers action C{verbs}."""
    senders = verbs.add_parser(
        "sender", help="allow, block, del, list senders per user or domain", parents=[common]
    )
    sender_verbs = senders.add_subparsers(dest="sender_verb", metavar="ACTION", required=True, parser_class=CommandLineParser)
    for action, verb_help in (
        (ALLOW, "Allow a sender: its mail skips greylisting and Junk for this user or domain."),
        (BLOCK, "Block a sender: the MX refuses it (550 5.7.1) for this user or domain."),
    ):
        sub = add_command(common, sender_verbs, action, _set(action), verb_help)
        sub.add_argument("entry", metavar="ADDRESS-OR-DOMAIN", help=_ENTRY_HELP)
        sub.add_argument("--for", dest="owner", metavar="USER|DOMAIN", required=True, help=_FOR_HELP)
    sub = add_command(common, sender_verbs, "del", _sender_del, "Take an entry off a user's or a domain's list.")
    sub.add_argument("entry", metavar="ADDRESS-OR-DOMAIN", help=_ENTRY_HELP)
    sub.add_argument("--for", dest="owner", metavar="USER|DOMAIN", required=True, help=_FOR_HELP)
    sub = add_command(common, sender_verbs, "list", _sender_list, "List the entries of one list, or of every list.")
    sub.add_argument("--for", dest="owner", metavar="USER|DOMAIN", default=None, help=_FOR_HELP)
