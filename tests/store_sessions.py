"""
An IMAP session over StringTransport on the real Maildir store, with its
full-text indexer unpaced: what the full-text and FUZZY search tests
share (C{tests/unit/test_imap_fulltext_search.py},
C{tests/unit/test_imap_fuzzy_fulltext.py}).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp.store import MaildirStore, index
from mailapp.store.folder import MaildirFolder
from mailapp.testing import build_factory, service_context
from tests.protocol.accounts import make_accounts

ALICE = "alice@example.test"


class StoreSessionCase(TestCase):
    """A real store under C{self.store}, the UIDs opened in C{self.opened}, and helpers to deliver and to talk IMAP."""

    timeout = 60

    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "mail"
        self.store = MaildirStore(self.root, reactor=reactor)
        self.store.fulltext.delay = self.store.fulltext.quiet = 0
        self.addCleanup(index.reset_connections)
        self.addCleanup(lambda: self.store.fulltext.caughtUp())
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        self.opened: list[int] = []
        original = MaildirFolder.openMessage

        def counted(folder: MaildirFolder, uid: int) -> Any:
            self.opened.append(uid)
            return original(folder, uid)

        self.patch(MaildirFolder, "openMessage", counted)

    @inlineCallbacks
    def deliver(self, raw: bytes) -> Any:
        """Deliver C{raw} to ALICE's INBOX; fires with its UID."""
        writer = self.store.newMessage()
        yield writer.write(raw)
        yield writer.finish()
        uids = yield self.store.deliver(writer, [ALICE])
        return uids[ALICE]

    @inlineCallbacks
    def command(self, protocol: Any, transport: StringTransport, line: bytes) -> Any:
        """Send C{line} tagged "t" and fire with the reply once tagged (bounded), which must be OK."""
        transport.clear()
        protocol.dataReceived(b"t " + line + b"\r\n")
        for _ in range(2000):
            if b"\r\nt " in b"\r\n" + transport.value():
                break
            yield deferLater(reactor, 0.005, lambda: None)
        reply = transport.value()
        self.assertIn(b"t OK", reply, line)
        return reply

    @inlineCallbacks
    def session(self) -> Any:
        """A session logged in as ALICE with INBOX selected: (protocol, transport)."""
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, None)
        yield self.command(protocol, transport, b"LOGIN alice@example.test alice-secret")
        yield self.command(protocol, transport, b"SELECT INBOX")
        return protocol, transport

    @inlineCallbacks
    def answers(self, protocol: Any, transport: StringTransport, queries: list[bytes], others: tuple[bytes, ...] | list[bytes] = ()) -> Any:
        """Per UID SEARCH query, its SEARCH lines; per other command, all its untagged lines: to compare two ways of answering."""
        found = {}
        for query in queries:
            reply = yield self.command(protocol, transport, b"UID SEARCH " + query)
            found[query] = [line for line in reply.split(b"\r\n") if line.startswith(b"* SEARCH")]
        for command in others:
            reply = yield self.command(protocol, transport, command)
            found[command] = [line for line in reply.split(b"\r\n") if line.startswith(b"* ")]
        return found
