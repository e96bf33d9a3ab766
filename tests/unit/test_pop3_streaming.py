"""Units of POP3's RETR and TOP streaming: dot-stuffing, the TOP cut, and the sender's back-pressure, fed in awkward chunks."""

from __future__ import annotations


from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp.pop3 import CHUNK_SIZE, _DotStuffer, _MessageSender, _TopFilter


class StreamingTests(TestCase):
    """The pieces RETR and TOP stream through, fed in awkward chunks."""

    MESSAGE = b"A: b\r\n.x: y\r\n\r\n.\r\n..\r\nbody.\r\n.end\r\n\r\n.\r\nlast"

    def chunked(self, data: bytes, size: int) -> list[bytes]:
        return [data[i : i + size] for i in range(0, len(data), size)]

    def test_dot_stuffing_is_the_same_whatever_the_chunk_boundaries(self) -> None:
        whole = _DotStuffer()
        expected = whole.stuff(self.MESSAGE) + whole.end()
        self.assertEqual(expected, b"A: b\r\n..x: y\r\n\r\n..\r\n...\r\nbody.\r\n..end\r\n\r\n..\r\nlast\r\n.\r\n")
        for size in range(1, 8):
            stuffer = _DotStuffer()
            pieces = [stuffer.stuff(chunk) for chunk in self.chunked(self.MESSAGE, size)]
            self.assertEqual(b"".join(pieces) + stuffer.end(), expected, size)

    def test_top_cut_is_the_same_whatever_the_chunk_boundaries(self) -> None:
        for lines, expected in [(0, b"A: b\r\n.x: y\r\n\r\n"), (2, b"A: b\r\n.x: y\r\n\r\n.\r\n..\r\n"), (9, self.MESSAGE)]:
            for size in range(1, 8):
                top = _TopFilter(lines)
                out = b""
                for chunk in self.chunked(self.MESSAGE, size):
                    piece, done = top.feed(chunk)
                    out += piece
                    if done:
                        break
                self.assertEqual(out, expected, (lines, size))

    def test_top_treats_a_bare_lf_blank_line_as_the_end_of_the_header(self) -> None:
        self.assertEqual(_TopFilter(0).feed(b"A: b\n\nbody\n"), (b"A: b\n\n", True))

    def test_sender_reads_no_further_while_the_transport_is_paused(self) -> None:
        """Bounded memory: at most one chunk is read ahead of what the transport accepted."""
        data = b"x" * (CHUNK_SIZE * 5 + 10)
        reads: list[int] = []

        class File:
            position = 0
            closed = False

            def read(self, size: int) -> bytes:
                reads.append(size)
                chunk = data[self.position : self.position + size]
                self.position += len(chunk)
                return chunk

            def close(self) -> None:
                self.closed = True

        class SlowClientTransport(StringTransport):
            """Asks the producer to pause once two chunks wait in its buffer, as a TCP transport does."""

            def write(self, data: bytes) -> None:
                super().write(data)
                if len(self.value()) >= 2 * CHUNK_SIZE:
                    self.producer.pauseProducing()

        transport = SlowClientTransport()
        file = File()
        sender = _MessageSender(transport, file, lambda f, n: succeed(f.read(n)), None, lambda: None)  # type: ignore[arg-type]
        done = sender.start()
        received = b""
        for expected_reads in (2, 4):
            self.assertEqual(len(reads), expected_reads)
            self.assertFalse(done.called)
            received += transport.value()
            transport.clear()
            sender.resumeProducing()
        self.assertEqual(len(reads), 6)
        self.assertIs(self.successResultOf(done), True)
        self.assertIsNone(transport.producer)
        self.assertTrue(file.closed)
        self.assertEqual(received + transport.value(), data + b"\r\n.\r\n")

    def test_sender_stopped_by_a_lost_connection_closes_the_file(self) -> None:
        closed: list[bool] = []
        pending: Deferred[bytes] = Deferred()

        class File:
            def close(self) -> None:
                closed.append(True)

        transport = StringTransport()
        sender = _MessageSender(transport, File(), lambda f, n: pending, None, lambda: None)  # type: ignore[arg-type]
        done = sender.start()
        sender.stopProducing()
        self.assertIs(self.successResultOf(done), False)
        self.assertEqual(closed, [])  # a read is in flight on a worker thread: not yet
        pending.callback(b"late")
        self.assertEqual(closed, [True])
        self.assertEqual(transport.value(), b"")
