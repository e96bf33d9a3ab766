"""
On the MX, a sender in one of our own domains is refused unless the client
is in ``[relay] trusted_networks`` (``[security] mx_refuse_local_senders``):
our users send through submission, so anyone else claiming our domains on
port 25 forges them, and through a forwarding alias we would re-send the
forgery from our own address.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.config import parse
from tests.smtp_helpers import make_factory, wait_for
from tests.protocol.smtp_client import Session

REFUSED = b"553 5.7.1 Sender address in a local domain: log in on the submission port to send as it"


class LocalSenderTests(TestCase):
    def session(self, **options: Any) -> Session:
        session = Session(make_factory(Path(self.mktemp()), **options))
        self.addCleanup(session.proto.connectionLost, None)
        session.send(b"EHLO client.test\r\n")
        session.clear()
        return session

    @inlineCallbacks
    def test_a_local_sender_from_outside_is_refused_on_the_mx(self) -> Any:
        session = self.session()
        session.send(b"MAIL FROM:<alice@example.test>\r\n")
        yield wait_for(lambda: session.replies())
        self.assertEqual(session.replies(), [REFUSED])
        session.send(b"MAIL FROM:<ALICE@EXAMPLE.TEST>\r\n")
        yield wait_for(lambda: len(session.replies()) == 2)
        self.assertEqual(session.replies()[1], REFUSED)

    @inlineCallbacks
    def test_remote_and_null_senders_and_trusted_clients_are_accepted(self) -> Any:
        for options, sender in (({}, b"someone@remote.test"), ({}, b""), ({"trusted": ("192.0.2.0/24",)}, b"alice@example.test")):
            session = self.session(**options)
            session.send(b"MAIL FROM:<" + sender + b">\r\n")
            yield wait_for(lambda: session.replies())
            self.assertEqual(session.replies(), [b"250 2.1.0 Ok"], (options, sender))

    @inlineCallbacks
    def test_the_check_can_be_turned_off(self) -> Any:
        session = self.session(refuse_local_senders=False)
        session.send(b"MAIL FROM:<alice@example.test>\r\n")
        yield wait_for(lambda: session.replies())
        self.assertEqual(session.replies(), [b"250 2.1.0 Ok"])

    def test_the_config_key_defaults_to_refusing(self) -> None:
        base = '[server]\nhostname = "mail.example.test"\n'
        self.assertTrue(parse(base, Path("x.toml")).security.mx_refuse_local_senders)
        self.assertFalse(parse(base + "[security]\nmx_refuse_local_senders = false\n", Path("x.toml")).security.mx_refuse_local_senders)


class _CountedDomains:
    """The factory's accounts, counting isLocalDomain questions."""

    def __init__(self, accounts: Any) -> None:
        self.accounts = accounts
        self.asked: list[str] = []

    def isLocalDomain(self, domain: str) -> Any:
        self.asked.append(domain)
        return self.accounts.isLocalDomain(domain)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.accounts, name)


class SenderDomainMemoryTests(TestCase):
    """One MX connection asks the accounts once per sender domain; each new connection asks again."""

    def setUp(self) -> None:
        self.factory = make_factory(Path(self.mktemp()))
        self.counted = self.factory.router.accounts = _CountedDomains(self.factory.router.accounts)

    def session(self) -> Session:
        session = Session(self.factory)
        self.addCleanup(session.proto.connectionLost, None)
        session.send(b"EHLO client.test\r\n")
        session.clear()
        return session

    @inlineCallbacks
    def mail(self, session: Session, sender: bytes) -> Any:
        count = len(session.replies())
        session.send(b"MAIL FROM:<" + sender + b">\r\n")
        yield wait_for(lambda: len(session.replies()) > count)
        reply = session.replies()[-1]
        session.send(b"RSET\r\n")
        yield wait_for(lambda: len(session.replies()) > count + 1)
        return reply

    @inlineCallbacks
    def test_a_connection_asks_once_per_sender_domain_and_still_refuses_a_local_one_every_time(self) -> Any:
        session = self.session()
        for sender in (b"a@remote.test", b"b@REMOTE.test", b"alice@example.test", b"c@remote.test", b"bob@Example.Test"):
            reply = yield self.mail(session, sender)
            self.assertEqual(reply, REFUSED if b"example" in sender.lower() else b"250 2.1.0 Ok", sender)
        self.assertEqual(self.counted.asked, ["remote.test", "example.test"])

    @inlineCallbacks
    def test_a_new_connection_sees_a_domain_added_since(self) -> Any:
        first = self.session()
        self.assertEqual((yield self.mail(first, b"x@new.test")), b"250 2.1.0 Ok")
        self.counted.accounts.add_domain("new.test")
        self.assertEqual((yield self.mail(self.session(), b"x@new.test")), REFUSED)
        self.assertEqual(self.counted.asked, ["new.test", "new.test"])
