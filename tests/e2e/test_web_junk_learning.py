"""
The webmail's move into and out of Junk teaches rspamd as IMAP's does: the
same store transfer, heard by the one L{JunkLearner} (here with a
controller that records what it is taught), the webmail on a loopback
socket of the real reactor over a real Maildir store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.auth import makePortal
from mailapp.config.spam import SpamConfig
from mailapp.delivery import Router
from mailapp.spam import JunkLearner
from mailapp.store import MaildirStore
from mailapp.testing import FakeAccounts
from mailapp.web import Webmail, WebmailPolicy
from tests.e2e.test_web_http import ALICE, PASSWORDS, Client, csrf_of


class RecordingController:
    def __init__(self) -> None:
        self.learned: list[tuple[bool, bytes]] = []

    def learn(self, url: str, password: str | None, spam: bool, message: bytes, timeout: float) -> defer.Deferred[int]:
        self.learned.append((spam, message))
        return defer.succeed(200)


class WebmailJunkLearningTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.store = MaildirStore(Path(self.mktemp()) / "mail", reactor=reactor)
        accounts = FakeAccounts(["example.test"])
        accounts.add_user(ALICE, PASSWORDS[ALICE])
        policy = WebmailPolicy(
            hostname="mail.example.test", max_message_size=200_000, idle_timeout=600, absolute_timeout=3600,
            login_failure_delay=0.2, login_failure_limit=3,
        )
        webmail = Webmail(Router(accounts, self.store), makePortal(accounts, self.store), policy, reactor)
        self.port = reactor.listenTCP(0, webmail.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.controller = RecordingController()
        self.learner = JunkLearner(self.store, self.controller, SpamConfig(controller_url="http://127.0.0.1:11334"))
        self.learner.startService()
        self.addCleanup(self.learner.stopService)

    @inlineCallbacks
    def move(self, client: Client, source: str, uid: int, target: str) -> Any:
        page = yield client.get(f"/list?f={source}")
        response = yield client.post("/action", {"f": source, "uid": str(uid), "do": "move", "target": target, "csrf": csrf_of(page)})
        self.assertEqual(response.status, 303)
        yield self.learner.pending

    @inlineCallbacks
    def test_moving_into_junk_teaches_spam_and_back_out_teaches_ham(self) -> Any:
        inbox = yield self.store.mailbox(ALICE).folder("INBOX")
        message = b"From: x@remote.test\r\nTo: alice@example.test\r\nSubject: offer\r\n\r\nbuy now\r\n"
        uid = yield inbox.append(message)
        client = Client(self.port.getHost().port)
        yield client.sign_in(ALICE)
        yield self.move(client, "INBOX", uid, "Junk")
        self.assertEqual(self.controller.learned, [(True, message)])
        junk = yield self.store.mailbox(ALICE).folder("Junk")
        [info] = yield junk.messages()
        yield self.move(client, "Junk", info.uid, "Archive")
        self.assertEqual([spam for spam, _ in self.controller.learned], [True, False])
