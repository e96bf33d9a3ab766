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
from mailapp.pools import LeanThreadPool, WorkerPools
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
        pools = {
            id(pool)
            for pool in (self.pools.store, self.pools.writer, self.pools.accounts, self.pools.queue, self.pools.parsing, self.pools.filtering, shared)
        }
        self.assertEqual(len(pools), 7)
        self.assertIs(self.root.store.threadpool, self.pools.store)
        self.assertIs(self.root.store.committer._threadpool, self.pools.writer)
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
    def test_run_does_the_work_on_a_thread_of_the_pool_it_names(self) -> Any:
        name = yield self.pools.run(self.pools.store, lambda: threading.current_thread().name)
        self.assertIn("mailapp-store", name)

    @defer.inlineCallbacks
    def test_a_saturated_parsing_pool_delays_neither_accounts_nor_the_store_nor_a_deliverys_filters(self) -> Any:
        # Twenty webmail reads of hostile messages hold every parsing thread;
        # a delivery's Sieve check runs on the filtering pool.
        release = threading.Event()
        self.addCleanup(release.set)
        stuck = [deferToThreadPool(reactor, self.pools.parsing, release.wait, 30) for _ in range(20)]
        started = time.monotonic()
        count = yield self.root.context.accounts.countUsers()
        listed = yield self.root.store.run(lambda: "read")
        filtered = yield self.root.context.router.sieve.run_blocking(lambda: threading.current_thread().name)
        elapsed = time.monotonic() - started
        self.assertEqual((count, listed), (0, "read"))
        self.assertIn("mailapp-filtering", filtered)
        self.assertLess(elapsed, 2.0)
        self.assertFalse(any(d.called for d in stuck))
        release.set()
        yield defer.gatherResults(stuck)

    def test_a_forwarded_copy_is_sealed_on_the_filtering_pool(self) -> None:
        # Its seal is made before the 250, so it must not queue behind the webmail's parsing.
        directory = Path(self.mktemp())
        directory.mkdir()
        root = makeService(make_config(directory, generate=True), reactor=reactor, relay=True)
        self.addCleanup(root.context.pools.stop)
        self.addCleanup(root.context.accounts.close)
        self.assertIs(root.context.router.forwarding.sealer.sealer.pool(), root.context.pools.filtering)

    @defer.inlineCallbacks
    def test_reads_that_fill_the_store_pool_delay_no_commit(self) -> Any:
        # Twenty slow reads (a burst of IMAP searches over big folders) hold
        # every store thread; a delivery's commit runs on the writer's own.
        release = threading.Event()
        self.addCleanup(release.set)
        stuck = [self.root.store.run(release.wait, 30) for _ in range(20)]
        started = time.monotonic()
        written = yield self.root.store.write(lambda: threading.current_thread().name)
        elapsed = time.monotonic() - started
        self.assertIn("mailapp-writer", written)
        self.assertLess(elapsed, 2.0)
        self.assertFalse(any(d.called for d in stuck))
        release.set()
        yield defer.gatherResults(stuck)


class LeanThreadPoolTests(unittest.TestCase):
    """L{LeanThreadPool}: Twisted's pool's contract, with one shared queue."""

    def pool(self, size: int = 3) -> LeanThreadPool:
        pool = LeanThreadPool(minthreads=0, maxthreads=size, name="lean-test")
        pool.start()
        self.addCleanup(pool.stop)
        return pool

    def test_no_thread_starts_before_work_arrives(self) -> None:
        pool = self.pool()
        self.assertEqual(pool.workers, 0)

    @defer.inlineCallbacks
    def test_results_and_failures_come_back_through_defer_to_thread_pool(self) -> Any:
        pool = self.pool()
        value = yield deferToThreadPool(reactor, pool, lambda a, b=0: a + b, 2, b=3)
        self.assertEqual(value, 5)
        failed = deferToThreadPool(reactor, pool, lambda: 1 // 0)
        yield self.assertFailure(failed, ZeroDivisionError)

    @defer.inlineCallbacks
    def test_jobs_run_in_parallel_up_to_the_pool_size_and_no_further(self) -> Any:
        pool = self.pool(size=3)
        release = threading.Event()
        self.addCleanup(release.set)
        running: list[str] = []
        lock = threading.Lock()

        def job() -> None:
            with lock:
                running.append(threading.current_thread().name)
            release.wait(10)

        jobs = [deferToThreadPool(reactor, pool, job) for _ in range(5)]
        deadline = time.monotonic() + 5
        while len(running) < 3 and time.monotonic() < deadline:
            yield deferLater(0.01)
        yield deferLater(0.1)
        self.assertEqual((len(running), pool.workers, len(set(running))), (3, 3, 3))
        release.set()
        yield defer.gatherResults(jobs)
        self.assertEqual(len(running), 5)
        self.assertEqual(pool.workers, 3)

    @defer.inlineCallbacks
    def test_an_idle_thread_takes_the_next_job_without_a_new_thread(self) -> Any:
        pool = self.pool(size=10)
        for _ in range(20):
            yield deferToThreadPool(reactor, pool, lambda: None)
        self.assertEqual(pool.workers, 1)

    def test_stop_lets_queued_work_finish_and_joins_every_thread(self) -> None:
        pool = LeanThreadPool(minthreads=0, maxthreads=2, name="lean-stop")
        pool.start()
        done: list[int] = []
        for n in range(6):
            pool.callInThread(lambda n=n: (time.sleep(0.01), done.append(n)))
        threads = list(pool._threads)
        pool.stop()
        self.assertEqual(sorted(done), list(range(6)))
        self.assertFalse(any(t.is_alive() for t in threads))
        pool.callInThread(done.append, 99)  # after stop: dropped, as Twisted's pool drops it
        self.assertNotIn(99, done)

    def test_work_queued_before_start_runs_once_started(self) -> None:
        pool = LeanThreadPool(minthreads=0, maxthreads=2, name="lean-late")
        ran = threading.Event()
        pool.callInThread(ran.set)
        self.assertFalse(ran.wait(0.05))
        pool.start()
        self.addCleanup(pool.stop)
        self.assertTrue(ran.wait(5))

    def test_a_failing_job_without_a_callback_is_logged_and_the_thread_lives_on(self) -> None:
        pool = self.pool(size=1)
        ran = threading.Event()
        pool.callInThread(lambda: 1 // 0)
        pool.callInThread(ran.set)
        self.assertTrue(ran.wait(5))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_the_server_pools_are_lean(self) -> None:
        pools = WorkerPools(reactor)
        self.addCleanup(pools.stop)
        self.assertIsInstance(pools.store, LeanThreadPool)


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)
