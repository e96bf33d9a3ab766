"""
Mail sent from the webmail to another domain is queued DKIM-signed: the
webmail hands it to the Router like authenticated submission, and the
Router's signer puts both signatures on the relay queue's copy before it is
durable. (Submission and the relay's DSNs: tests/unit/test_dkim_signing.py
and tests/e2e/test_rig_dkim.py.)
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
from mailapp.relay.queue import Queue
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
        router = Router(accounts, store, queue=self.queue, signer=DkimSigner(self.keys, reactor, reactor.getThreadPool()))
        webmail = Webmail(router, makePortal(accounts, store), WebmailPolicy(hostname="mail.example.test", login_failure_delay=0.01), reactor)
        self.port = reactor.listenTCP(0, webmail.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @inlineCallbacks
    def test_a_message_to_another_domain_is_queued_with_both_signatures(self) -> Any:
        client = Client(self.port.getHost().port)
        yield client.sign_in(ALICE)
        token = csrf_of((yield client.get("/compose")))
        response = yield client.post_multipart(
            "/compose", {"csrf": token, "to": "bob@b.test", "subject": "from the webmail", "body": "hello", "action": "send"}
        )
        self.assertEqual(response.status, 303, response.text[:500])
        [queued] = [path.read_bytes() for path in self.queue.layout.messages.iterdir()]
        # Below our Return-Path, which the relay client strips before sending (RFC 5321 4.4).
        self.assertTrue(queued.startswith(b"Return-Path: <alice@example.test>\r\nDKIM-Signature: v=1; a=rsa-sha256;"), queued[:200])
        keys = self.keys.signing_keys("example.test")
        assert keys is not None
        records = {f"{key.record_name}.".encode(): key.record_text.encode() for key in keys.keys}

        def dns(name: bytes, timeout: float = 5) -> bytes | None:
            return records.get(name)

        self.assertTrue(dkim.DKIM(queued).verify(idx=0, dnsfunc=dns))
        self.assertTrue(dkim.DKIM(queued).verify(idx=1, dnsfunc=dns))
