"""
``mailapp dkim``: make (keygen), list, rotate and delete (del) a domain's DKIM keys
(L{mailapp.dkim.keys}).

The keys are in ``state_dir/dkim`` (0700, files 0600); the running server
reads the store's index again whenever it changes, so a rotation reaches
it without a restart. Every command that makes a key prints the TXT
records to publish, ready to paste into a zone file. A refusal is a
L{mailapp.dkim.KeyStoreError}, which L{mailapp.cli.main} turns into its
one line and exit status 1.
"""

from __future__ import annotations

import time
from typing import Any

from mailapp.cli.command import EXIT_OK, CommandLineParser, Context, add_command
from mailapp.dkim.keys import DkimKey, KeyStore
from mailapp.dnsrecords import zone_line

__all__ = ["add_dkim_commands"]


def _store(context: Context) -> KeyStore:
    return KeyStore(context.state_dir)


def _records(keys: list[DkimKey]) -> list[str]:
    return [zone_line(key.record_name, "TXT", key.record_text) for key in keys]


def _key_data(key: DkimKey) -> dict[str, Any]:
    return {
        "domain": key.domain,
        "selector": key.dns_selector,
        "algorithm": key.algorithm,
        "created": key.created,
        "active": key.active,
        "record_name": key.record_name,
        "record": key.record_text,
    }


def _selector_keys(store: KeyStore, domain: str, selector: str) -> list[DkimKey]:
    return [key for key in store.keys(domain) if key.selector == selector]


def _keygen(context: Context) -> int:
    store = _store(context)
    options = context.options
    selector, active = store.generate(options.domain, options.selector)
    keys = _selector_keys(store, options.domain, selector)
    domain = keys[0].domain
    if active:
        status = f"{domain} signs with selector {selector} from now on: publish these records first"
    else:
        status = (
            f"{domain} still signs with its current selector; publish these records, "
            f"then run 'mailapp dkim rotate {domain} --selector {selector}'"
        )
    context.report(
        f"made selector {selector} of {domain} (RSA 2048 and Ed25519) in {store.root / domain}\n{status}:\n"
        + "\n".join(_records(keys)),
        {"action": "dkim.keygen", "domain": domain, "selector": selector, "active": active, "keys": [_key_data(k) for k in keys]},
    )
    return EXIT_OK


def _list(context: Context) -> int:
    keys = _store(context).keys(context.options.domain)
    if not keys:
        context.report("no DKIM keys (make some with 'mailapp dkim keygen DOMAIN')", [])
        return EXIT_OK
    lines = []
    for key in keys:
        created = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(key.created))
        lines.append(f"{key.domain}  {key.dns_selector}  {key.algorithm}  created {created}  {'active' if key.active else 'inactive'}")
        lines.append("  " + zone_line(key.record_name, "TXT", key.record_text))
    context.report("\n".join(lines), [_key_data(key) for key in keys])
    return EXIT_OK


def _rotate(context: Context) -> int:
    store = _store(context)
    options = context.options
    selector, previous = store.rotate(options.domain, options.selector)
    keys = _selector_keys(store, options.domain, selector)
    domain = keys[0].domain
    text = [f"{domain} now signs with selector {selector}; its records (publish them now if they are not yet):"]
    text += _records(keys)
    if previous is not None:
        text.append(
            f"the previous selector {previous} no longer signs, but keep its records ({previous}-rsa and "
            f"{previous}-ed25519._domainkey.{domain}) published for a week or so, until mail signed with it has "
            f"been delivered and read; then remove them from DNS and run 'mailapp dkim del {domain} {previous}'"
        )
    context.report(
        "\n".join(text),
        {"action": "dkim.rotate", "domain": domain, "selector": selector, "previous": previous, "keys": [_key_data(k) for k in keys]},
    )
    return EXIT_OK


def _delete(context: Context) -> int:
    options = context.options
    _store(context).remove(options.domain, options.selector)
    context.report(
        f"deleted selector {options.selector} of {options.domain}; take its TXT records out of DNS too",
        {"action": "dkim.del", "domain": options.domain, "selector": options.selector},
    )
    return EXIT_OK


def add_dkim_commands(verbs: Any, common: CommandLineParser) -> None:
    """Declare ``mailapp dkim ...`` in the subparsers action C{verbs}."""
    group = verbs.add_parser("dkim", help="keygen, list, rotate, del DKIM signing keys", parents=[common])
    actions = group.add_subparsers(dest="dkim_verb", metavar="ACTION", required=True, parser_class=CommandLineParser)
    sub = add_command(
        common,
        actions,
        "keygen",
        _keygen,
        "Make a selector's keys (RSA 2048 and Ed25519) for DOMAIN and print its TXT records. "
        "A domain's first selector signs at once; a later one waits for 'dkim rotate'.",
    )
    sub.add_argument("domain", metavar="DOMAIN")
    sub.add_argument("--selector", metavar="S", help="the selector's name (default: s + today's date, UTC)")
    sub = add_command(common, actions, "list", _list, "List the keys: domain, selector, algorithm, created, active, TXT record.")
    sub.add_argument("domain", metavar="DOMAIN", nargs="?")
    sub = add_command(
        common,
        actions,
        "rotate",
        _rotate,
        "Make a new selector (or the staged one named by --selector) DOMAIN's signing one. "
        "The previous selector's records must stay published until the admin removes them.",
    )
    sub.add_argument("domain", metavar="DOMAIN")
    sub.add_argument("--selector", metavar="S", help="a selector made earlier with keygen, or the name of a new one")
    sub = add_command(common, actions, "del", _delete, "Delete a selector that no longer signs.")
    sub.add_argument("domain", metavar="DOMAIN")
    sub.add_argument("selector", metavar="SELECTOR")
