"""
What an SMTP session leaves on the disk of the real Maildir store: nothing
in the spool after a client drops mid-message, and no message after the one
being committed when it dropped. (The protocol behaviour itself is in
C{tests/protocol/test_smtp_session.py}, over fakes.)
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.protocol.smtp_client import Session
from tests.smtp_helpers import make_factory, stored_messages, wait_for

ALICE = "alice@example.test"


class SpoolTests(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.factory = make_factory(self.root)
        self.session = Session(self.factory)

    def tearDown(self) -> None:
        self.session.proto.connectionLost(None)

    @inlineCallbacks
    def test_client_dropping_mid_data_leaves_nothing_behind(self):
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        yield wait_for(lambda: b"354" in self.session.codes())
        self.session.send(b"Subject: s\r\n\r\n" + b"z" * 200_000)
        self.session.proto.connectionLost(None)
        spool = self.factory.router.store.spool_dir
        yield wait_for(lambda: list(spool.iterdir()) == [])
        self.assertEqual(stored_messages(self.root, ALICE), [])

    @inlineCallbacks
    def test_commands_pipelined_before_a_drop_never_run(self):
        self.session.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        yield wait_for(lambda: b"354" in self.session.codes())
        self.session.clear()
        # The end of one message, the next transaction and a large body, then the client goes away
        # while the first commit is still in flight.
        self.session.send(
            b"Subject: one\r\n\r\nfirst\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" + b"z" * 200_000
        )
        self.session.proto.connectionLost(None)
        spool = self.factory.router.store.spool_dir
        yield wait_for(lambda: len(stored_messages(self.root, ALICE)) == 1)
        yield wait_for(lambda: list(spool.iterdir()) == [])
        # Only the first message's own answer (written into the void); nothing after it ran.
        self.assertEqual(self.session.codes(), [b"250"])
        self.assertEqual(stored_messages(self.root, "bob@example.test"), [])
