"""
``mailapp domain``: the local domains kept in the accounts database.

Domains named in the config file are listed too but changed only there. A
domain is deleted only once it has no users or aliases, and any old
mailbox left under it goes with it (or, with C{--keep-mail}, out of the
store), so that a domain added again later starts empty.
"""

from __future__ import annotations

from typing import Any

from mailapp.cli.command import EXIT_OK, KEEP_MAIL_HELP, CommandLineParser, Context, add_command

__all__ = ["add_domain_commands"]


def _domain_add(context: Context) -> int:
    with context.database() as database:
        domain = database.add_domain(context.options.name)
    context.report(f"added domain {domain}", {"action": "domain.add", "domain": domain})
    return EXIT_OK


def _domain_del(context: Context) -> int:
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
    return EXIT_OK


def _domain_list(context: Context) -> int:
    with context.database() as database:
        domains = database.list_domains()
    lines = [f"{info.name}{'  (config file)' if info.from_config else ''}" for info in domains]
    context.report(
        "\n".join(lines) if lines else "no local domains",
        [{"name": info.name, "source": "config" if info.from_config else "database"} for info in domains],
    )
    return EXIT_OK


def add_domain_commands(verbs: Any, common: CommandLineParser) -> None:
    """Declare ``mailapp domain ...`` in the subparsers action C{verbs}."""
    domains = verbs.add_parser("domain", help="add, del, list local domains", parents=[common])
    domain_verbs = domains.add_subparsers(dest="domain_verb", metavar="ACTION", required=True, parser_class=CommandLineParser)
    sub = add_command(common, domain_verbs, "add", _domain_add, "Make a domain local (mail for it is delivered here).")
    sub.add_argument("name", metavar="NAME")
    sub = add_command(
        common,
        domain_verbs,
        "del",
        _domain_del,
        "Stop treating a domain as local. Refused while it has users or aliases, "
        "and for domains named in the config file. Old mailboxes left under it are deleted "
        "(or, with --keep-mail, moved out of the store).",
    )
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--keep-mail", action="store_true", help=KEEP_MAIL_HELP)
    add_command(common, domain_verbs, "list", _domain_list, "List local domains, marking those from the config file.")
