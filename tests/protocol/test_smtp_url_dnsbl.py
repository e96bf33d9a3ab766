"""
The domain lists asked about the URLs of a message's body at the end of
DATA on the MX (L{mailapp.postscreen.urls}, L{mailapp.postscreen.screen}),
through the SMTP session on fakes: a L{FakeResolver} serving the zones, a
L{Clock}, inline pools (or a held filtering pool).
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from mailapp import logevents
from mailapp.dnsthread import ServiceDNS
from mailapp.metrics import Metrics
from mailapp.testing import MINIMAL_CONFIG, FakeResolver, HeldThreadPool, InlineWorkerPools, RecordingStore, build_factory, service_context
from tests.protocol.accounts import make_accounts
from tests.protocol.smtp_client import Session
from tests.protocol.test_smtp_postscreen import CLEAN, LISTED, NO_AUTHENTICATION, ZEN, ZONES, SessionTestCase

#: dbl.test lists spam.test (ZONES) and urls.test; zen.test lists LISTED (ZONES) and 192.0.2.66.
URL_ZONES: dict[str, dict[str, list[str]]] = {
    **ZONES,
    "urls.test.dbl.test": {"A": ["127.0.1.2"]},
    "66.2.0.192.zen.test": {"A": ["127.0.0.2"]},
}

DBL = '[dnsbl.lists."dbl.test"]\nkind = "domain"\n'
REFUSED = b"554 5.7.1 Service unavailable; URL domain urls.test blocked using dbl.test"


def body(text: bytes) -> bytes:
    return b"From: bob@a.test\r\nTo: alice@example.test\r\nSubject: offer\r\n\r\n" + text + b"\r\n"


class URLBlocklistTests(SessionTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.store = RecordingStore()
        self.resolver = FakeResolver(URL_ZONES)
        self.pools = InlineWorkerPools()
        self.clock = Clock()

    def factory(self, sections: str, trusted: str = "[]", protocol: str = "smtp") -> Any:
        config = f"{MINIMAL_CONFIG}[relay]\ntrusted_networks = {trusted}\n[limits]\nmx_messages_per_minute = 0\n{NO_AUTHENTICATION}{sections}"
        context = service_context(
            config=config,
            reactor=self.clock,
            store=self.store,
            accounts=make_accounts(),
            pools=self.pools,
            dns=ServiceDNS(self.clock, self.resolver),
        )
        return build_factory(context, protocol, allow_plaintext_auth=protocol == "submission")

    def send(self, factory: Any, message: bytes, peer: str = CLEAN, sender: bytes = b"bob@a.test") -> Session:
        session = self.connect(factory, peer)
        session.send(b"EHLO mail.a.test\r\nMAIL FROM:<" + sender + b">\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        session.clear()
        session.send(message + b".\r\n")
        return session

    def url_queries(self) -> list[str]:
        return [name for name, _ in self.resolver.queries if name.startswith(("urls.test.", "clean.test.", "66.2.0.192."))]

    def test_a_message_linking_a_listed_domain_is_refused_at_the_end_of_data(self) -> None:
        session = self.send(self.factory("[dnsbl]\n" + DBL), body(b"Buy now: https://www.shop.urls.test/offer"))
        self.assertEqual(session.replies(), [REFUSED])
        self.assertEqual(self.store.delivered, [])
        [event] = self.log.named(logevents.POSTSCREEN_DNSBL_URL_REFUSED)
        self.assertEqual(
            (event["action"], event["reason"], event["zone"], event["what"], event["client"]),
            ("reject", "dnsbl_url", "dbl.test", "URL domain urls.test", CLEAN),
        )
        # The session goes on: the next transaction is judged afresh.
        session.clear()
        session.send(b"MAIL FROM:<bob@a.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + body(b"hello") + b".\r\n")
        self.assertEqual(session.codes(), [b"250", b"250", b"354", b"250"])

    def test_a_message_with_clean_links_is_stored_with_its_received_field(self) -> None:
        session = self.send(self.factory("[dnsbl]\n" + DBL), body(b"See http://clean.test/ and <a href='http://urls.test.example/'>"))
        self.assertEqual(session.codes(), [b"250"])
        [delivery] = self.store.delivered
        self.assertIn(b"\r\nReceived: from mail.a.test", delivery.data)
        self.assertTrue(delivery.data.endswith(body(b"See http://clean.test/ and <a href='http://urls.test.example/'>")))
        self.assertIn("clean.test.dbl.test", self.url_queries())

    def test_a_base64_html_part_is_read(self) -> None:
        html = base64.b64encode(b'<p><a href="http://urls.test/x">click</a></p>') + b"\r\n"
        message = (
            b"From: bob@a.test\r\nTo: alice@example.test\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" + html
        )
        self.assertEqual(self.send(self.factory("[dnsbl]\n" + DBL), message).replies(), [REFUSED])

    def test_an_ip_literal_url_is_asked_of_the_ip_lists(self) -> None:
        session = self.send(self.factory("[dnsbl]\n" + ZEN), body(b"http://192.0.2.66/login"))
        self.assertEqual(session.replies(), [b"554 5.7.1 Service unavailable; URL address [192.0.2.66] blocked using zen.test"])

    def test_the_url_listing_adds_to_the_client_listings_weight(self) -> None:
        lists = '[dnsbl]\nthreshold = 3\n[dnsbl.lists."zen.test"]\nweight = 2\n' + DBL
        factory = self.factory(lists)
        # The client's own listing (2) is under the threshold: accepted through RCPT.
        unlisted = self.send(factory, body(b"hello http://clean.test/"), peer=LISTED)
        self.assertEqual(unlisted.codes(), [b"250"])
        # A clean client linking a listed domain (1): still under it.
        self.assertEqual(self.send(factory, body(b"http://urls.test/"), peer=CLEAN).codes(), [b"250"])
        # Both: 3, refused, naming the URL's listing.
        self.assertEqual(self.send(factory, body(b"http://urls.test/"), peer=LISTED).replies(), [REFUSED])
        [event] = self.log.named(logevents.POSTSCREEN_DNSBL_URL_REFUSED)
        self.assertEqual((event["score"], event["listings"]), (3, "zen.test=127.0.0.2, dbl.test=127.0.1.2"))

    def test_a_zone_that_listed_the_sender_and_a_url_counts_once(self) -> None:
        factory = self.factory('[dnsbl]\nthreshold = 2\n[dnsbl.lists."dbl.test"]\nkind = "domain"\nweight = 1\n')
        session = self.send(factory, body(b"http://urls.test/"), sender=b"bob@spam.test")
        self.assertEqual(session.codes(), [b"250"])

    def test_a_url_lookup_that_times_out_counts_zero_and_is_logged(self) -> None:
        self.resolver.unanswered.add("urls.test.dbl.test")
        session = self.send(self.factory("[dnsbl]\ntimeout_seconds = 3\n" + DBL), body(b"http://urls.test/"))
        self.clock.advance(2.9)
        self.assertEqual(session.replies(), [])
        self.clock.advance(0.2)
        self.assertEqual(session.codes(), [b"250"])
        [failed] = self.log.named(logevents.POSTSCREEN_DNSBL_FAILED)
        self.assertEqual((failed["zone"], failed["name"], failed["error"]), ("dbl.test", "urls.test.dbl.test", "timeout"))

    def test_a_failing_list_counts_zero(self) -> None:
        self.resolver.servfail.add("urls.test.dbl.test")
        self.assertEqual(self.send(self.factory("[dnsbl]\n" + DBL), body(b"http://urls.test/")).codes(), [b"250"])

    def test_the_lookups_run_in_parallel(self) -> None:
        self.resolver.unanswered.update({"a.test.dbl.test", "b.test.dbl.test"})
        self.send(self.factory("[dnsbl]\n" + DBL), body(b"http://a.test/ http://b.test/"))
        self.assertEqual(len(self.resolver.held), 2)

    def test_the_urls_are_read_on_the_filtering_pool(self) -> None:
        filtering = self.pools.filtering = HeldThreadPool()
        filtering.held = True
        session = self.send(self.factory("[dnsbl]\n" + DBL), body(b"http://urls.test/"))
        self.assertEqual(session.replies(), [])
        self.assertEqual(len(filtering.jobs), 1)
        filtering.run()
        self.assertEqual(session.replies(), [REFUSED])

    def test_at_most_url_max_domains_are_looked_up(self) -> None:
        links = b" ".join(b"http://d%d.test/" % n for n in range(30)) + b" http://urls.test/"
        session = self.send(self.factory("[dnsbl]\nurl_max_domains = 5\n" + DBL), body(links))
        self.assertEqual(session.codes(), [b"250"])
        asked = [name for name, _ in self.resolver.queries if name.endswith(".test.dbl.test") and name.startswith("d")]
        self.assertEqual(asked, [f"d{n}.test.dbl.test" for n in range(5)])

    def test_check_urls_false_asks_nothing_at_the_end_of_data(self) -> None:
        session = self.send(self.factory("[dnsbl]\ncheck_urls = false\n" + DBL), body(b"http://urls.test/"))
        self.assertEqual(session.codes(), [b"250"])
        self.assertEqual(self.url_queries(), [])

    def test_trusted_and_exempt_clients_are_not_checked(self) -> None:
        exempt = self.factory('[dnsbl]\nexempt_networks = ["198.51.100.0/24"]\n' + DBL)
        self.assertEqual(self.send(exempt, body(b"http://urls.test/")).codes(), [b"250"])
        trusted = self.factory("[dnsbl]\n" + DBL, trusted='["198.51.100.0/24"]')
        self.assertEqual(self.send(trusted, body(b"http://urls.test/")).codes(), [b"250"])
        self.assertEqual(self.url_queries(), [])

    def test_submission_is_never_checked(self) -> None:
        session = self.connect(self.factory("[dnsbl]\n" + DBL, protocol="submission"), "127.0.0.1")
        token = base64.b64encode(b"\x00alice@example.test\x00alice-secret")
        session.send(
            b"EHLO c\r\nAUTH PLAIN " + token + b"\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
            + body(b"http://urls.test/").replace(b"From: bob@a.test", b"From: alice@example.test")
            + b".\r\n"
        )
        self.assertEqual(session.codes()[-1], b"250", session.replies())
        self.assertEqual(self.url_queries(), [])

    def test_a_refusal_is_counted_in_the_spam_decisions_metric(self) -> None:
        metrics = Metrics()
        globalLogPublisher.addObserver(metrics)
        self.addCleanup(globalLogPublisher.removeObserver, metrics)
        self.send(self.factory("[dnsbl]\n" + DBL), body(b"http://urls.test/"))
        self.assertIn(b'mailapp_spam_decisions_total{action="reject",reason="dnsbl_url"} 1.0', metrics.exposition())
