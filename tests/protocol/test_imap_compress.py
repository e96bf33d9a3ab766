"""
COMPRESS=DEFLATE (RFC 4978) over L{StringTransport}: the client's side is
zlib's raw DEFLATE (wbits -15), as a real client's is. The OK goes out in
the clear, then every burst is compressed and flushed (the client decodes
it whole); the line limits and the back-pressure hold for the inflated
bytes, so a decompression bomb is never inflated ahead of the session.
"""

from __future__ import annotations

import tracemalloc
import zlib
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp import logevents
from mailapp.compression import INFLATE_STEP
from mailapp.testing import FakeStore, HeldThreadPool, build_factory, service_context
from tests.protocol.accounts import make_accounts

LOGIN = b"a LOGIN alice@example.test alice-secret\r\n"
MESSAGE = b"Subject: hello\r\nFrom: x@remote.test\r\n\r\n" + b"body line\r\n" * 200


def bomb(pattern: bytes, mebibytes: int) -> bytes:
    """Raw DEFLATE of C{pattern} repeated to C{mebibytes} MiB: about 1 KiB of input per MiB inflated."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = pattern * ((1 << 20) // len(pattern))
    blocks = [deflate.compress(chunk) + deflate.flush(zlib.Z_SYNC_FLUSH) for _ in range(4)]
    # Past the first block the compressor's output for the same MiB is the same bytes.
    assert blocks[2] == blocks[3]
    return blocks[0] + blocks[1] + blocks[2] * (mebibytes - 2)


class CompressedClient:
    """The client's half: compress what it sends, inflate what the server wrote since the last call."""

    def __init__(self, transport: StringTransport) -> None:
        self.transport = transport
        self.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)

    def pack(self, data: bytes) -> bytes:
        return self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)

    def received(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return self.inflate.decompress(data)


class CompressTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        self.inbox = self.successResultOf(self.store.mailbox("alice@example.test").folder("INBOX"))

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, None)
        return protocol, transport

    def compressed(self) -> tuple[Any, StringTransport, CompressedClient]:
        protocol, transport = self.connect()
        protocol.dataReceived(LOGIN)
        transport.clear()
        protocol.dataReceived(b"z COMPRESS DEFLATE\r\n")
        self.assertEqual(transport.value(), b"z OK DEFLATE active\r\n")
        transport.clear()
        return protocol, transport, CompressedClient(transport)

    def test_compress_deflate_is_announced_after_login_only(self) -> None:
        protocol, transport = self.connect()
        self.assertNotIn(b"COMPRESS=DEFLATE", transport.value())
        protocol.dataReceived(b"b CAPABILITY\r\n")
        self.assertNotIn(b"COMPRESS=DEFLATE", transport.value())
        transport.clear()
        protocol.dataReceived(LOGIN + b"c CAPABILITY\r\n")
        self.assertIn(b" COMPRESS=DEFLATE ", transport.value().split(b"\r\n")[1])

    def test_compress_before_login_is_not_valid(self) -> None:
        protocol, transport = self.connect()
        transport.clear()
        protocol.dataReceived(b"z COMPRESS DEFLATE\r\n")
        self.assertEqual(transport.value(), b"z BAD Command not valid in this state\r\n")

    def test_after_the_clear_ok_both_directions_are_deflate_and_each_burst_is_complete(self) -> None:
        self.successResultOf(self.inbox.append(MESSAGE))
        protocol, transport, client = self.compressed()
        protocol.dataReceived(client.pack(b"b SELECT INBOX\r\nc FETCH 1 BODY.PEEK[]\r\n"))
        # Z_SYNC_FLUSH: everything the server wrote inflates now, with nothing held back.
        reply = client.received()
        self.assertIn(b"* 1 EXISTS\r\n", reply)
        self.assertIn(b"BODY[] {%d}\r\n%s)\r\nc OK FETCH completed\r\n" % (len(MESSAGE), MESSAGE), reply)
        self.assertNotIn(b"body line", transport.value())
        self.assertLess(len(transport.value()), len(MESSAGE))

    def test_a_second_compress_is_no_compressionactive(self) -> None:
        protocol, transport, client = self.compressed()
        protocol.dataReceived(client.pack(b"b COMPRESS DEFLATE\r\nc NOOP\r\n"))
        self.assertEqual(client.received(), b"b NO [COMPRESSIONACTIVE] DEFLATE is active already\r\nc OK NOOP completed\r\n")

    def test_an_unknown_mechanism_is_no_and_nothing_is_compressed(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(LOGIN)
        transport.clear()
        protocol.dataReceived(b"z COMPRESS LZW\r\ny NOOP\r\n")
        self.assertEqual(transport.value(), b"z NO Unsupported compression mechanism\r\ny OK NOOP completed\r\n")

    def test_a_literal_is_read_through_the_inflater(self) -> None:
        protocol, transport, client = self.compressed()
        protocol.dataReceived(client.pack(b"b APPEND INBOX {%d+}\r\n%s\r\n" % (len(MESSAGE), MESSAGE)))
        self.assertIn(b"b OK [APPENDUID ", client.received())
        self.assertEqual(self.successResultOf(self.inbox.readMessage(1, 10**6)), MESSAGE)

    def test_commands_sent_byte_by_byte_are_read_whole(self) -> None:
        protocol, transport, client = self.compressed()
        for byte in client.pack(b"b NOOP\r\n"):
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(client.received(), b"b OK NOOP completed\r\n")

    def test_input_that_is_not_deflate_gets_bye_and_a_close(self) -> None:
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        protocol, transport, client = self.compressed()
        protocol.dataReceived(b"\xff\xff\xff\xff not deflate\r\n")
        self.assertEqual(client.received(), b"* BYE Compressed data is corrupt; closing connection\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertIn(logevents.COMPRESSED_INPUT_CORRUPT, [e.get("log_event") for e in events])

    def test_a_bomb_of_one_line_is_cut_at_the_line_limit_without_inflating_the_rest(self) -> None:
        protocol, transport, client = self.compressed()
        data = bomb(b"A", 1024)  # 1 MiB in, 1 GiB out, with no line end
        tracemalloc.start()
        try:
            protocol.dataReceived(data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(client.received(), b"* BAD Line too long; closing connection\r\n")
        self.assertTrue(transport.disconnecting)
        # The line limit and a step or two, not the gigabyte.
        self.assertLess(peak, len(data) + 4 * (protocol.maxUnterminated + INFLATE_STEP))

    def test_a_bomb_of_pipelined_commands_behind_a_busy_command_is_not_inflated_and_reading_stops(self) -> None:
        self.successResultOf(self.inbox.append(MESSAGE))
        pool = HeldThreadPool()
        self.context.pools.store = pool
        protocol, transport, client = self.compressed()
        protocol.dataReceived(client.pack(b"b SELECT INBOX\r\n"))
        client.received()
        pool.held = True
        protocol.dataReceived(client.pack(b"c FETCH 1 BODY.PEEK[]\r\n"))
        self.assertTrue(pool.jobs)
        data = bomb(b"x NOOP\r\n", 256)  # 256 MiB of NOOPs
        tracemalloc.start()
        try:
            protocol.dataReceived(data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(transport.producerState, "paused")
        self.assertLess(len(protocol._buffer), INFLATE_STEP)
        self.assertLess(peak, 2 * len(data) + INFLATE_STEP)
        self.assertGreater(protocol._inflater.pending, len(data) // 2)

    def test_a_client_that_stops_reading_pauses_the_session_under_compression(self) -> None:
        for n in range(3000):
            self.inbox._add(b"Subject: %d\r\n\r\nbody\r\n" % n, (), 0.0)
        protocol, transport, client = self.compressed()
        protocol.dataReceived(client.pack(b"b SELECT INBOX\r\n"))
        client.received()
        protocol.flow.pauseProducing()  # as the transport does when its buffer fills
        protocol.dataReceived(client.pack(b"c FETCH 1:* (FLAGS UID RFC822.SIZE)\r\nd NOOP\r\n"))
        self.assertNotIn(b"c OK", client.received())
        protocol.flow.resumeProducing()
        self.context.reactor.advance(0)
        sent = client.received()
        self.assertEqual(sent.count(b" FETCH (FLAGS"), 3000)
        self.assertTrue(sent.endswith(b"c OK FETCH completed\r\nd OK NOOP completed\r\n"), sent[-200:])
