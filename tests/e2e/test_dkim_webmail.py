"""
Mail sent from the webmail to another domain is queued to be DKIM-signed:
the webmail hands it to the Router like authenticated submission, the
queue's envelope says "sign", and the relay's signer (the Router's) signs
the queue's copy as it leaves with both signatures. (The relay's sending,
submission and the relay's DSNs: tests/unit/test_dkim_signing.py and
tests/e2e/test_rig_dkim.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dkim
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.auth import makePortal
from mailapp.delivery import Router
from mailapp.dkim import DkimSigner, KeyStore
from mailapp.relay.queue import Envelope, Queue
from mailapp.relay.signing import signature_for
from mailapp.store import MaildirStore
from mailapp.testing import FakeAccounts
from mailapp.web import Webmail, WebmailPolicy
from tests.e2e.test_web_http import ALICE, PASSWORDS, Client, csrf_of


class WebmailSigningTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        root = Path(self.mktemp())
        store = MaildirStore(root / "mail", reactor=reactor)
        accounts = FakeAccounts(["example.test"])
        accounts.add_user(ALICE, PASSWORDS[ALICE])
        self.keys = KeyStore(root / "state")
        self.keys.generate("example.test", "web")
        self.queue = Queue(root / "queue", reactor, use_syncfs=False)
        router = self.router = Router(accounts, store, queue=self.queue, signer=DkimSigner(self.keys, reactor, reactor.getThreadPool()))
        webmail = Webmail(router, makePortal(accounts, store), WebmailPolicy(hostname="mail.example.test", login_failure_delay=0.01), reactor)
        self.port = reactor.listenTCP(0, webmail.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @inlineCallbacks
    def test_a_message_to_another_domain_is_queued_to_be_signed_with_both_signatures(self) -> Any:
        client = Client(self.port.getHost().port)
        yield client.sign_in(ALICE)
        token = csrf_of((yield client.get("/compose")))
        response = yield client.post_multipart(
            "/compose", {"csrf": token, "to": "bob@b.test", "subject": "from the webmail", "body": "hello", "action": "send"}
        )
        self.assertEqual(response.status, 303, response.text[:500])
        [path] = list(self.queue.layout.messages.iterdir())
        [envelope] = [Envelope.from_bytes(entry.read_bytes()) for entry in self.queue.layout.envelopes.iterdir()]
        self.assertTrue(envelope.sign)
        fields = yield signature_for(self.router.signer, path, envelope.id)
        self.assertTrue(fields.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;"), fields[:200])
        queued = fields + path.read_bytes()
        keys = self.keys.signing_keys("example.test")
        assert keys is not None
        records = {f"{key.record_name}.".encode(): key.record_text.encode() for key in keys.keys}

        def dns(name: bytes, timeout: float = 5) -> bytes | None:
            return records.get(name)

        self.assertTrue(dkim.DKIM(queued).verify(idx=0, dnsfunc=dns))
        self.assertTrue(dkim.DKIM(queued).verify(idx=1, dnsfunc=dns))
