"""
L{JunkLearner} on the in-memory store: a transfer into Junk teaches spam,
out of it ham, whichever client moved it; a failure to learn is logged and
the move stands.
"""

from __future__ import annotations

from types import SimpleNamespace

from typing import Any

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from mailapp.config.spam import SpamConfig
from mailapp.spam.client import RspamdError
from mailapp.spam.learning import JunkLearner
from mailapp.testing import FakeStore

ALICE = "alice@example.test"
SETTINGS = SpamConfig(controller_url="http://127.0.0.1:11334", controller_password="q1")


class FakeController:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.learned: list[tuple[str, str | None, bool, bytes]] = []

    def learn(self, url: str, password: str | None, spam: bool, message: bytes, timeout: float) -> defer.Deferred[int]:
        if self.fail:
            return defer.fail(RspamdError("connection refused"))
        self.learned.append((url, password, spam, message))
        return defer.succeed(200)


class JunkLearnerTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def learner(self, controller: FakeController, settings: SpamConfig = SETTINGS) -> JunkLearner:
        learner = JunkLearner(self.store, controller, settings)
        learner.startService()
        self.addCleanup(learner.stopService)
        return learner

    def folders(self, *names: str) -> list[Any]:
        mailbox = self.store.mailbox(ALICE)
        return [self.successResultOf(mailbox.folder(name)) for name in names]

    def test_moving_into_junk_teaches_spam_with_the_password(self) -> None:
        controller = FakeController()
        self.learner(controller)
        inbox, junk = self.folders("INBOX", "Junk")
        uid = self.successResultOf(inbox.append(b"Subject: buy\r\n\r\nnow\r\n"))
        self.successResultOf(inbox.moveTo([uid], junk))
        self.assertEqual(controller.learned, [("http://127.0.0.1:11334", "q1", True, b"Subject: buy\r\n\r\nnow\r\n")])
        [learned] = [e for e in self.events if e.get("log_event") == "spam.learned"]
        self.assertEqual((learned["as_"], learned["source"]), ("spam", "INBOX"))

    def test_copying_out_of_junk_teaches_ham_and_into_trash_nothing(self) -> None:
        controller = FakeController()
        self.learner(controller)
        junk, archive, trash = self.folders("Junk", "Archive", "Trash")
        uid = self.successResultOf(junk.append(b"Subject: hi\r\n\r\nlunch\r\n"))
        self.successResultOf(junk.copyTo([uid], archive))
        self.successResultOf(junk.moveTo([uid], trash))
        self.assertEqual([spam for _, _, spam, _ in controller.learned], [False])

    def test_a_delivery_into_junk_teaches_nothing(self) -> None:
        controller = FakeController()
        self.learner(controller)
        [junk] = self.folders("Junk")
        self.successResultOf(junk.append(b"Subject: x\r\n\r\ny\r\n"))
        self.assertEqual(controller.learned, [])

    def test_a_failure_to_learn_is_logged_and_the_move_stands(self) -> None:
        self.learner(FakeController(fail=True))
        inbox, junk = self.folders("INBOX", "Junk")
        uid = self.successResultOf(inbox.append(b"Subject: buy\r\n\r\nnow\r\n"))
        mapping = self.successResultOf(inbox.moveTo([uid], junk))
        self.assertEqual(len(self.successResultOf(junk.messages())), 1)
        self.assertEqual(list(mapping), [uid])
        [failed] = [e for e in self.events if e.get("log_event") == "spam.learn_failed"]
        self.assertEqual(failed["error"], "connection refused")

    def test_nothing_is_learned_without_controller_url_until_a_reload_sets_it(self) -> None:
        controller = FakeController()
        learner = self.learner(controller, SpamConfig())
        inbox, junk = self.folders("INBOX", "Junk")
        first = self.successResultOf(inbox.append(b"Subject: 1\r\n\r\n1\r\n"))
        self.successResultOf(inbox.moveTo([first], junk))
        self.assertEqual(controller.learned, [])
        learner.reconfigure(SimpleNamespace(spam=SETTINGS))  # type: ignore[arg-type]  # a reload's config, for its [spam]
        second = self.successResultOf(inbox.append(b"Subject: 2\r\n\r\n2\r\n"))
        self.successResultOf(inbox.moveTo([second], junk))
        self.assertEqual(len(controller.learned), 1)

    def test_a_message_over_max_scan_size_is_not_learned(self) -> None:
        controller = FakeController()
        self.learner(controller, SpamConfig(controller_url="http://127.0.0.1:11334", max_scan_size=10))
        inbox, junk = self.folders("INBOX", "Junk")
        uid = self.successResultOf(inbox.append(b"Subject: a long one\r\n\r\nbody\r\n"))
        self.successResultOf(inbox.moveTo([uid], junk))
        self.assertEqual(controller.learned, [])

    def test_a_stopped_learner_hears_nothing(self) -> None:
        controller = FakeController()
        learner = self.learner(controller)
        self.successResultOf(learner.stopService())
        inbox, junk = self.folders("INBOX", "Junk")
        uid = self.successResultOf(inbox.append(b"Subject: 1\r\n\r\n1\r\n"))
        self.successResultOf(inbox.moveTo([uid], junk))
        self.assertEqual(controller.learned, [])
