"""
The MX's checks before DATA (L{mailapp.postscreen}) through the SMTP
session, on fakes: the listener built by its real builder from a context
whose DNS is a L{FakeResolver} serving blocklist zones, on a L{Clock}, so
that every lookup, timeout and greeting delay is under the test's control.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.trial.unittest import TestCase

from mailapp import logevents
from mailapp.dnsthread import ServiceDNS
from mailapp.metrics import Metrics
from mailapp.testing import MINIMAL_CONFIG, FakeResolver, RecordingStore, build_factory, service_context
from tests.protocol.accounts import make_accounts
from tests.protocol.smtp_client import Session

LISTED = "203.0.113.5"
CLEAN = "198.51.100.7"
LISTED_V6 = "2001:db8::5"

#: zen.test lists LISTED (127.0.0.2) and LISTED_V6; dbl.test lists spam.test; quota.test answers its error code.
ZONES: dict[str, dict[str, list[str]]] = {
    "5.113.0.203.zen.test": {"A": ["127.0.0.2"]},
    "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test": {"A": ["127.0.0.4"]},
    "5.113.0.203.weak.test": {"A": ["127.0.0.10"]},
    "spam.test.dbl.test": {"A": ["127.0.1.2"]},
    "7.100.51.198.quota.test": {"A": ["127.255.255.254"]},
    "5.113.0.203.quota.test": {"A": ["127.255.255.254"]},
}

NO_AUTHENTICATION = "[authentication]\nspf = false\ndkim = false\ndmarc = false\n"


def mx(sections: str, resolver: FakeResolver | None = None, clock: Clock | None = None, trusted: str = "[]") -> tuple[Any, Clock]:
    clock = clock or Clock()
    config = f"{MINIMAL_CONFIG}[relay]\ntrusted_networks = {trusted}\n[limits]\nmx_messages_per_minute = 0\n{NO_AUTHENTICATION}{sections}"
    context = service_context(
        config=config,
        reactor=clock,
        store=RecordingStore(),
        accounts=make_accounts(),
        dns=ServiceDNS(clock, resolver if resolver is not None else FakeResolver(ZONES)),
    )
    return build_factory(context, "smtp"), clock


ZEN = '[dnsbl.lists."zen.test"]\n'
DBL = '[dnsbl.lists."dbl.test"]\nkind = "domain"\n'


class _Chained:
    """A resolver whose answers come as twisted.names' ResolverChain gives them: a fired Deferred chained to the next one's."""

    def __init__(self, resolver: FakeResolver) -> None:
        self.resolver = resolver

    def lookupAddress(self, name: str, timeout: Any = None) -> Any:
        return defer.fail(DNSNameError(name)).addErrback(lambda _: self.resolver.lookupAddress(name, timeout))


class Events:
    """The log events of one test, by name."""

    def __init__(self, test: TestCase) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def named(self, name: str) -> list[LogEvent]:
        return [event for event in self.events if event.get("log_event") == name]


class SessionTestCase(TestCase):
    """Sessions that are disconnected after the test, and the test's log events."""

    def setUp(self) -> None:
        self.sessions: list[Session] = []
        self.log = Events(self)

    def tearDown(self) -> None:
        for session in self.sessions:
            session.proto.connectionLost(None)

    def connect(self, factory: Any, peer: str = CLEAN) -> Session:
        session = Session(factory, peer=peer)
        self.sessions.append(session)
        return session


class BlocklistTests(SessionTestCase):

    def talk(self, session: Session, *commands: bytes) -> list[bytes]:
        for command in commands:
            session.send(command + b"\r\n")
        return session.replies()

    def test_a_client_on_a_listed_address_is_refused_554_naming_the_zone(self) -> None:
        factory, _ = mx("[dnsbl]\n" + ZEN)
        session = self.connect(factory, LISTED)
        session.send(b"EHLO mail.a.test\r\n")
        session.clear()
        replies = self.talk(session, b"MAIL FROM:<bob@a.test>", b"RCPT TO:<alice@example.test>")
        # Already answered at connect: refused at MAIL, the first command that may be.
        self.assertEqual(replies[0], b"554 5.7.1 Service unavailable; client [203.0.113.5] blocked using zen.test")
        self.assertEqual(replies[1], b"503 5.5.1 Error: need MAIL command")
        [event] = self.log.named(logevents.POSTSCREEN_DNSBL_REFUSED)
        self.assertEqual((event["action"], event["reason"], event["zone"], event["stage"]), ("reject", "dnsbl", "zen.test", "mail"))

    def test_a_clean_client_is_accepted(self) -> None:
        factory, _ = mx("[dnsbl]\n" + ZEN + DBL)
        session = self.connect(factory, CLEAN)
        replies = self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>", b"RCPT TO:<alice@example.test>")
        self.assertEqual(session.codes()[-2:], [b"250", b"250"], replies)
        self.assertEqual(self.log.named(logevents.POSTSCREEN_DNSBL_REFUSED), [])

    def test_an_ipv6_client_is_looked_up_by_its_nibbles(self) -> None:
        factory, _ = mx("[dnsbl]\n" + ZEN)
        session = self.connect(factory, LISTED_V6)
        replies = self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>")
        self.assertEqual(replies[-1], b"554 5.7.1 Service unavailable; client [2001:db8::5] blocked using zen.test")

    def test_a_lookup_still_running_is_waited_for_at_rcpt(self) -> None:
        resolver = FakeResolver(ZONES, unanswered=["zen.test"])
        factory, _ = mx("[dnsbl]\n" + ZEN, resolver=resolver)
        session = self.connect(factory, LISTED)
        self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>")
        session.clear()
        session.send(b"RCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.replies(), [])
        [held] = resolver.held
        held.callback(([dns.RRHeader(b"5.113.0.203.zen.test", dns.A, dns.IN, 60, dns.Record_A("127.0.0.2"))], [], []))
        self.assertEqual(session.replies(), [b"554 5.7.1 Service unavailable; client [203.0.113.5] blocked using zen.test"])

    def test_a_lookup_answered_through_a_resolver_chain_is_judged_only_once_it_has_answered(self) -> None:
        # The server's resolver is a ResolverChain (/etc/hosts, cache, name servers): its
        # Deferred has fired already with the next resolver's Deferred while that one waits.
        resolver = FakeResolver(ZONES, unanswered=["spam.test.dbl.test"])
        factory, _ = mx("[dnsbl]\n" + DBL, resolver=_Chained(resolver))  # type: ignore[arg-type]
        session = self.connect(factory, CLEAN)
        self.talk(session, b"EHLO spam.test", b"MAIL FROM:<bob@a.test>")
        self.assertEqual(session.codes()[-1], b"250")
        session.clear()
        session.send(b"RCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.replies(), [])
        [held] = resolver.held
        held.callback(([dns.RRHeader(b"spam.test.dbl.test", dns.A, dns.IN, 60, dns.Record_A("127.0.1.2"))], [], []))
        self.assertEqual(session.replies(), [b"554 5.7.1 Service unavailable; HELO name spam.test blocked using dbl.test"])

    def test_a_list_that_times_out_counts_zero_and_is_logged(self) -> None:
        resolver = FakeResolver(ZONES, unanswered=["zen.test"])
        factory, clock = mx("[dnsbl]\ntimeout_seconds = 3\n" + ZEN, resolver=resolver)
        session = self.connect(factory, LISTED)
        self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>")
        session.clear()
        session.send(b"RCPT TO:<alice@example.test>\r\n")
        clock.advance(2.9)
        self.assertEqual(session.replies(), [])
        clock.advance(0.2)
        self.assertEqual(session.codes(), [b"250"])
        [failed] = self.log.named(logevents.POSTSCREEN_DNSBL_FAILED)
        self.assertEqual((failed["zone"], failed["error"]), ("zen.test", "timeout"))

    def test_a_failing_list_counts_zero(self) -> None:
        factory, _ = mx("[dnsbl]\n" + ZEN, resolver=FakeResolver(ZONES, servfail=["zen.test"]))
        session = self.connect(factory, LISTED)
        self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>", b"RCPT TO:<alice@example.test>")
        self.assertEqual(session.codes()[-1], b"250")
        self.assertEqual(len(self.log.named(logevents.POSTSCREEN_DNSBL_FAILED)), 1)

    def test_the_error_code_127_255_255_x_counts_zero_and_is_logged_once(self) -> None:
        factory, _ = mx('[dnsbl]\n[dnsbl.lists."quota.test"]\n')
        for peer in (CLEAN, LISTED):
            session = self.connect(factory, peer)
            self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>", b"RCPT TO:<alice@example.test>")
            self.assertEqual(session.codes()[-1], b"250")
        [logged] = self.log.named(logevents.POSTSCREEN_DNSBL_ERROR_CODE)
        self.assertEqual((logged["zone"], logged["code"]), ("quota.test", "127.255.255.254"))

    def test_only_the_configured_return_codes_count(self) -> None:
        factory, _ = mx('[dnsbl]\n[dnsbl.lists."zen.test"]\ncodes = ["127.0.0.3"]\n')
        session = self.connect(factory, LISTED)
        self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>", b"RCPT TO:<alice@example.test>")
        self.assertEqual(session.codes()[-1], b"250")

    def test_weights_add_up_to_the_threshold(self) -> None:
        weak = '[dnsbl.lists."weak.test"]\nweight = 1\n'
        alone, _ = mx("[dnsbl]\nthreshold = 3\n" + weak)
        session = self.connect(alone, LISTED)
        self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>", b"RCPT TO:<alice@example.test>")
        self.assertEqual(session.codes()[-1], b"250")
        both, _ = mx("[dnsbl]\nthreshold = 3\n" + weak + '[dnsbl.lists."zen.test"]\nweight = 2\n')
        session = self.connect(both, LISTED)
        self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>")
        # The heaviest zone is named.
        self.assertEqual(session.replies()[-1], b"554 5.7.1 Service unavailable; client [203.0.113.5] blocked using zen.test")

    def test_a_listed_helo_name_is_refused(self) -> None:
        factory, _ = mx("[dnsbl]\n" + DBL)
        session = self.connect(factory, CLEAN)
        self.talk(session, b"EHLO spam.test", b"MAIL FROM:<bob@a.test>")
        self.assertEqual(session.replies()[-1], b"554 5.7.1 Service unavailable; HELO name spam.test blocked using dbl.test")

    def test_a_listed_sender_domain_is_refused_at_rcpt_and_the_next_sender_is_judged_afresh(self) -> None:
        factory, _ = mx("[dnsbl]\n" + DBL)
        session = self.connect(factory, CLEAN)
        self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@spam.test>")
        session.clear()
        self.talk(session, b"RCPT TO:<alice@example.test>")
        self.assertEqual(session.replies(), [b"554 5.7.1 Service unavailable; sender domain spam.test blocked using dbl.test"])
        session.clear()
        self.talk(session, b"RSET", b"MAIL FROM:<bob@a.test>", b"RCPT TO:<alice@example.test>")
        self.assertEqual(session.codes(), [b"250", b"250", b"250"])

    def test_trusted_and_exempt_clients_are_not_looked_up(self) -> None:
        resolver = FakeResolver(ZONES)
        factory, _ = mx("[dnsbl]\nexempt_networks = [\"203.0.113.0/24\"]\n" + ZEN, resolver=resolver)
        session = self.connect(factory, LISTED)
        self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>", b"RCPT TO:<alice@example.test>")
        self.assertEqual(session.codes()[-1], b"250")
        trusted, _ = mx("[dnsbl]\n" + ZEN, resolver=resolver, trusted='["203.0.113.0/24"]')
        session = self.connect(trusted, LISTED)
        self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>", b"RCPT TO:<alice@example.test>")
        self.assertEqual(session.codes()[-1], b"250")
        self.assertEqual([q for q in resolver.queries if q[0].endswith("zen.test")], [])

    def test_without_lists_nothing_is_asked(self) -> None:
        resolver = FakeResolver(ZONES)
        factory, _ = mx("", resolver=resolver)
        session = self.connect(factory, LISTED)
        self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>", b"RCPT TO:<alice@example.test>")
        self.assertEqual(session.codes()[-1], b"250")
        self.assertEqual(resolver.queries, [])

    def test_a_refusal_is_counted_in_the_spam_decisions_metric(self) -> None:
        metrics = Metrics()
        globalLogPublisher.addObserver(metrics)
        self.addCleanup(globalLogPublisher.removeObserver, metrics)
        factory, _ = mx("[dnsbl]\n" + ZEN)
        session = self.connect(factory, LISTED)
        self.talk(session, b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>")
        self.assertIn(b'mailapp_spam_decisions_total{action="reject",reason="dnsbl"} 1.0', metrics.exposition())


class EarlyTalkerTests(SessionTestCase):

    def test_the_greeting_waits_for_the_configured_delay(self) -> None:
        factory, clock = mx("[postscreen]\ngreeting_delay = 6\n")
        session = self.connect(factory)
        clock.advance(5.9)
        self.assertEqual(session.replies(), [])
        clock.advance(0.1)
        self.assertEqual(session.replies(), [b"220 mail.example.test ESMTP mailapp"])

    def test_a_client_that_talks_before_the_greeting_is_refused_and_closed(self) -> None:
        factory, clock = mx("[postscreen]\ngreeting_delay = 6\n")
        session = self.connect(factory)
        clock.advance(2)
        session.send(b"EHLO bot.test\r\n")
        self.assertEqual(session.replies(), [b"554 5.5.1 Protocol error: talked before the greeting"])
        self.assertTrue(session.transport.disconnecting)
        clock.advance(10)
        self.assertEqual(session.replies(), [b"554 5.5.1 Protocol error: talked before the greeting"])
        [event] = self.log.named(logevents.POSTSCREEN_EARLY_TALKER)
        self.assertEqual((event["action"], event["reason"], event["client"], event["waited"]), ("reject", "early_talker", CLEAN, 2.0))

    def test_a_shutdown_during_the_delay_says_goodbye_and_never_greets(self) -> None:
        factory, clock = mx("[postscreen]\ngreeting_delay = 6\n")
        session = self.connect(factory)
        session.proto.shutdown()
        clock.advance(10)
        self.assertEqual(session.codes(), [b"421"])

    def test_a_client_that_passed_is_greeted_at_once_next_time(self) -> None:
        factory, clock = mx("[postscreen]\ngreeting_delay = 6\npass_seconds = 3600\n")
        first = self.connect(factory)
        clock.advance(6)
        for command in (b"EHLO mail.a.test", b"MAIL FROM:<bob@a.test>", b"QUIT"):
            first.send(command + b"\r\n")
        again = self.connect(factory)
        self.assertEqual(again.replies(), [b"220 mail.example.test ESMTP mailapp"])
        clock.advance(3600)
        later = self.connect(factory)
        self.assertEqual(later.replies(), [])

    def test_exempt_clients_are_greeted_at_once(self) -> None:
        factory, _ = mx("[postscreen]\ngreeting_delay = 6\nexempt_networks = [\"198.51.100.0/24\"]\n")
        self.assertEqual(self.connect(factory).replies(), [b"220 mail.example.test ESMTP mailapp"])
        trusted, _ = mx("[postscreen]\ngreeting_delay = 6\n", trusted='["198.51.100.0/24"]')
        self.assertEqual(self.connect(trusted).replies(), [b"220 mail.example.test ESMTP mailapp"])

    def test_by_default_the_greeting_is_not_delayed_and_pipelining_is_not_judged(self) -> None:
        factory, _ = mx("")
        session = self.connect(factory)
        session.send(b"HELO mail.a.test\r\nMAIL FROM:<bob@a.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.codes(), [b"220", b"250", b"250", b"250"])

    def test_commands_pipelined_after_helo_are_refused(self) -> None:
        factory, _ = mx("[postscreen]\nreject_unauth_pipelining = true\n")
        session = self.connect(factory)
        session.send(b"HELO mail.a.test\r\n")
        session.clear()
        session.send(b"MAIL FROM:<bob@a.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.replies(), [b"554 5.5.1 Protocol error: commands pipelined before PIPELINING was offered"])
        self.assertTrue(session.transport.disconnecting)
        [event] = self.log.named(logevents.POSTSCREEN_UNAUTH_PIPELINING)
        self.assertEqual((event["reason"], event["command"]), ("unauth_pipelining", "MAIL"))

    def test_commands_sent_with_ehlo_before_its_reply_are_refused(self) -> None:
        factory, _ = mx("[postscreen]\nreject_unauth_pipelining = true\n")
        session = self.connect(factory)
        session.clear()
        session.send(b"EHLO mail.a.test\r\nMAIL FROM:<bob@a.test>\r\n")
        self.assertEqual(session.replies(), [b"554 5.5.1 Protocol error: commands pipelined before PIPELINING was offered"])

    def test_pipelining_after_ehlo_offered_it_is_fine(self) -> None:
        factory, _ = mx("[postscreen]\nreject_unauth_pipelining = true\n")
        session = self.connect(factory)
        session.send(b"EHLO mail.a.test\r\n")
        session.clear()
        session.send(b"MAIL FROM:<bob@a.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertEqual(session.codes(), [b"250", b"250", b"354"])

    def test_a_client_that_waits_for_each_reply_after_helo_is_fine(self) -> None:
        factory, _ = mx("[postscreen]\nreject_unauth_pipelining = true\n")
        session = self.connect(factory)
        for command in (b"HELO mail.a.test", b"MAIL FROM:<bob@a.test>", b"RCPT TO:<alice@example.test>"):
            session.send(command + b"\r\n")
        self.assertEqual(session.codes(), [b"220", b"250", b"250", b"250"])

    def test_the_early_talker_checks_do_not_apply_to_submission(self) -> None:
        clock = Clock()
        context = service_context(
            config=f"{MINIMAL_CONFIG}[postscreen]\ngreeting_delay = 6\nreject_unauth_pipelining = true\n", reactor=clock
        )
        session = self.connect(build_factory(context, "submission"))
        self.assertEqual(session.codes(), [b"220"])


class GreylistingTests(SessionTestCase):
    """Greylisting at RCPT, its triplets in an in-memory SQLite (on the context's inline pools)."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()

    def factory(self, sections: str = "[greylisting]\nenabled = true\n", trusted: str = "[]") -> Any:
        from mailapp.postscreen.greylist import Greylist
        from mailapp.testing import InlineWorkerPools

        config = f"{MINIMAL_CONFIG}[relay]\ntrusted_networks = {trusted}\n[limits]\nmx_messages_per_minute = 0\n{sections}"
        pools = InlineWorkerPools()
        if not hasattr(self, "greylist"):
            self.greylist = Greylist(":memory:", self.clock, pools, pools.greylist)
            self.addCleanup(self.greylist.close)
        context = service_context(
            config=config, reactor=self.clock, store=RecordingStore(), accounts=make_accounts(), pools=pools, greylist=self.greylist
        )
        return build_factory(context, "smtp")

    def attempt(self, factory: Any, peer: str = CLEAN, sender: str = "bob@a.test", recipient: str = "alice@example.test") -> bytes:
        session = self.connect(factory, peer)
        for command in (b"EHLO mail.a.test", b"MAIL FROM:<" + sender.encode() + b">", b"RCPT TO:<" + recipient.encode() + b">"):
            session.send(command + b"\r\n")
        return session.replies()[-1]

    def test_a_new_triplet_gets_451_and_its_retry_after_the_delay_is_accepted(self) -> None:
        factory = self.factory("[greylisting]\nenabled = true\ndelay = 60\n")
        self.assertEqual(self.attempt(factory), b"451 4.7.1 Greylisted: please try again later")
        self.clock.advance(59)
        self.assertEqual(self.attempt(factory), b"451 4.7.1 Greylisted: please try again later")
        self.clock.advance(1)
        self.assertEqual(self.attempt(factory), b"250 2.1.5 Ok")
        greylisted = self.log.named(logevents.POSTSCREEN_GREYLISTED)
        self.assertEqual([(e["action"], e["reason"], e["network"]) for e in greylisted], [("tempfail", "greylist", "198.51.100.0/24")] * 2)
        self.assertEqual(len(self.log.named(logevents.POSTSCREEN_GREYLIST_PASSED)), 1)

    def test_a_passed_client_network_is_whitelisted_for_other_senders_and_addresses(self) -> None:
        factory = self.factory()
        self.attempt(factory)
        self.clock.advance(300)
        self.assertEqual(self.attempt(factory), b"250 2.1.5 Ok")
        self.assertEqual(self.attempt(factory, peer="198.51.100.99", sender="carol@b.test"), b"250 2.1.5 Ok")
        self.clock.advance(36 * 86400 + 1)
        self.assertEqual(self.attempt(factory, sender="dave@c.test"), b"451 4.7.1 Greylisted: please try again later")

    def test_a_retry_after_the_window_starts_over(self) -> None:
        factory = self.factory("[greylisting]\nenabled = true\ndelay = 60\nretry_window = 3600\n")
        self.attempt(factory)
        self.clock.advance(3601)
        self.assertEqual(self.attempt(factory), b"451 4.7.1 Greylisted: please try again later")
        self.clock.advance(60)
        self.assertEqual(self.attempt(factory), b"250 2.1.5 Ok")

    def test_an_ipv6_client_is_greylisted_by_its_64(self) -> None:
        factory = self.factory()
        self.attempt(factory, peer="2001:db8:1:2::5")
        self.clock.advance(300)
        self.assertEqual(self.attempt(factory, peer="2001:db8:1:2::99"), b"250 2.1.5 Ok")

    def test_by_default_nothing_is_greylisted(self) -> None:
        self.assertEqual(self.attempt(self.factory("")), b"250 2.1.5 Ok")

    def test_trusted_and_exempt_clients_are_not_greylisted(self) -> None:
        exempt = self.factory('[greylisting]\nenabled = true\nexempt_networks = ["198.51.100.0/24"]\n')
        self.assertEqual(self.attempt(exempt), b"250 2.1.5 Ok")
        trusted = self.factory(trusted='["198.51.100.0/24"]')
        self.assertEqual(self.attempt(trusted), b"250 2.1.5 Ok")

    def test_the_sweep_removes_triplets_past_their_window(self) -> None:
        factory = self.factory()
        self.attempt(factory)
        self.clock.advance(86401)
        removed: list[int] = []
        self.greylist.sweep().addCallback(removed.append)
        self.assertEqual(removed, [1])

    def test_a_greylisting_is_counted_in_the_spam_decisions_metric(self) -> None:
        metrics = Metrics()
        globalLogPublisher.addObserver(metrics)
        self.addCleanup(globalLogPublisher.removeObserver, metrics)
        self.attempt(self.factory())
        self.assertIn(b'mailapp_spam_decisions_total{action="tempfail",reason="greylist"} 1.0', metrics.exposition())
