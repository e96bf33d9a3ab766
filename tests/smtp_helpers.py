"""Shared set-up for the SMTP tests: a server over a real Maildir store and fake accounts."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater

from mailapp.auth import makePortal
from mailapp.delivery import Router
from mailapp.smtp import SMTPFactory, SMTPPolicy
from mailapp.store import MaildirStore, open_message_file
from mailapp.store.names import mailbox_directory
from tests.protocol.accounts import make_accounts


def make_factory(
    root: Path,
    submission: bool = False,
    tls: Any = None,
    allow_plaintext_auth: bool = False,
    max_message_size: int = 1024 * 1024,
    trusted: tuple[str, ...] = (),
    clock: Any = None,
    **limits: Any,
) -> SMTPFactory:
    accounts = make_accounts()
    store = MaildirStore(root, reactor=reactor)
    policy = SMTPPolicy(
        hostname="mail.example.test",
        submission=submission,
        max_message_size=max_message_size,
        timeout=300,
        allow_plaintext_auth=allow_plaintext_auth,
        trusted_networks=tuple(ipaddress.ip_network(n) for n in trusted),
        auth_failure_delay=limits.pop("auth_failure_delay", 0.01),
        **limits,
    )
    router = Router(accounts, store, max_recipients=5)
    factory = SMTPFactory(router, makePortal(accounts, store), policy, clock or reactor, tls=tls)
    return factory


def stored_messages(root: Path, account: str, folder: str = "") -> list[bytes]:
    """Every message in an account's folder (new/ and cur/), read from its file as the store serves it (CRLF)."""
    directory = mailbox_directory(root, account)
    if folder:
        directory = directory / ("." + folder)
    found = []
    for sub in ("new", "cur"):
        path = directory / sub
        if path.is_dir():
            for name in sorted(os.listdir(path)):
                with open_message_file(path / name) as handle:
                    found.append(handle.read())
    return found


def settle(seconds: float = 0.05) -> Deferred[None]:
    """Let worker threads and the reactor finish what a reply started."""
    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError("condition not met in time")
        yield settle(0.02)
        waited += 0.02
    return None
