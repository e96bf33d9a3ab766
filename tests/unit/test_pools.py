"""
One bounded thread pool per kind of blocking work (L{mailapp.pools}): the
webmail's message parsing, however slow a hostile message makes it, never
holds up the accounts lookups that SMTP RCPT needs or the store's I/O. They
once shared the reactor's ten threads: ten slow webmail reads made an SMTP
RCPT wait 13 s.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThreadPool
from twisted.trial import unittest

from mailapp import service
from mailapp.config import ListenerConfig
from mailapp.service import makeService
from mailapp.web import app as web_app
from tests.e2e.test_service import make_config


class PoolTests(unittest.TestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        webmail = ListenerConfig(name="web", protocol="webmail", endpoint="tcp:0:interface=127.0.0.1", tls="none", allow_plaintext_auth=False)
        self.root = makeService(make_config(directory, webmail, generate=True), reactor=reactor, relay=False)
        self.pools = self.root.context.pools
        self.addCleanup(self.pools.stop)
        self.addCleanup(self.root.context.accounts.close)

    def test_every_kind_of_work_has_its_own_pool_none_the_reactors(self) -> None:
        shared = reactor.getThreadPool()
        pools = {id(pool) for pool in (self.pools.store, self.pools.accounts, self.pools.queue, self.pools.parsing, shared)}
        self.assertEqual(len(pools), 5)
        self.assertIs(self.root.store.threadpool, self.pools.store)
        self.assertIs(self.root.context.accounts._threadpool, self.pools.accounts)

    def test_the_webmail_parses_on_the_parsing_pool(self) -> None:
        seen: list[Any] = []
        original = web_app.Webmail.__init__

        def spy(webmail: Any, *args: Any, **kwargs: Any) -> None:
            original(webmail, *args, **kwargs)
            seen.append(webmail.threadpool)

        self.patch(web_app.Webmail, "__init__", spy)
        [listener] = self.root.config.listeners
        service.PROTOCOL_BUILDERS["webmail"](self.root.context, listener)
        self.assertEqual(seen, [self.pools.parsing])

    @defer.inlineCallbacks
    def test_a_saturated_parsing_pool_delays_neither_accounts_nor_the_store(self) -> Any:
        release = threading.Event()
        self.addCleanup(release.set)
        stuck = [deferToThreadPool(reactor, self.pools.parsing, release.wait, 30) for _ in range(20)]
        started = time.monotonic()
        count = yield self.root.context.accounts.countUsers()
        listed = yield self.root.store.run(lambda: "read")
        elapsed = time.monotonic() - started
        self.assertEqual((count, listed), (0, "read"))
        self.assertLess(elapsed, 2.0)
        self.assertFalse(any(d.called for d in stuck))
        release.set()
        yield defer.gatherResults(stuck)
