"""
The signing process (L{mailapp.dkim.process}, L{mailapp.dkim.worker}): a
real child on the real reactor signs what the server's threads would sign,
from memory and from a spool file; a child that dies has its requests sent
again once to a new child, a request it kills twice fails (the Router's 451),
a child that stops answering is killed; stopping lets it answer first.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import dkim
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.dkim import DkimSigner, KeyStore
from mailapp.dkim.process import SigningFailed, SigningProcess
from mailapp.dkim.worker import FrameReader, encode_frame, read_frame, write_frame

MESSAGE = (
    b"From: Alice <alice@a.test>\r\n"
    b"To: bob@b.test\r\n"
    b"Subject: hello\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <1@a.test>\r\n"
    b"\r\n" + b"x" * 76 + b"\r\n" * 3
)

#: A child that dies at every request it reads: what a crash in dkimpy looks like from here.
DIES = "import sys; sys.stdin.buffer.read(8); sys.exit(3)"
#: A child that reads and never answers.
HANGS = "import sys, time; sys.stdin.buffer.read(8); time.sleep(60)"


def test_frames_split_anywhere_are_read_whole() -> None:
    data = encode_frame({"id": 1, "path": None}, b"payload") + encode_frame({"id": 2}, b"")
    reader = FrameReader()
    frames = [frame for byte in range(len(data)) for frame in reader.feed(data[byte : byte + 1])]
    assert frames == [({"id": 1, "path": None}, b"payload"), ({"id": 2}, b"")]


def test_a_blocking_reader_reads_what_the_writer_wrote_and_then_the_end() -> None:
    stream = io.BytesIO()
    write_frame(stream, {"id": 7}, b"\x00\r\n")
    stream.seek(0)
    assert read_frame(stream) == ({"id": 7}, b"\x00\r\n")
    assert read_frame(stream) is None


def test_a_stream_out_of_step_is_refused_not_buffered() -> None:
    reader = FrameReader()
    try:
        reader.feed(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    except ValueError as error:
        assert "out of step" in str(error)
    else:
        raise AssertionError("an impossible header length was accepted")


class SigningProcessTests(TestCase):
    def setUp(self) -> None:
        self.state = Path(self.mktemp())
        self.keys = KeyStore(self.state)
        self.keys.generate("a.test", "one")
        self.process = SigningProcess(reactor, self.state, timeout=20)
        self.signer = DkimSigner(self.keys, reactor, None, process=self.process)
        self.addCleanup(self.process.stop)

    def dns(self, name: bytes, timeout: int = 5) -> bytes | None:
        found = self.keys.signing_keys("a.test")
        assert found is not None
        return {f"{key.record_name}.".encode(): key.record_text.encode() for key in found.keys}.get(name)

    def assert_signed(self, fields: bytes) -> None:
        signed = fields + MESSAGE
        assert fields.count(b"DKIM-Signature:") == 2
        for index in range(2):
            assert dkim.DKIM(signed).verify(idx=index, dnsfunc=self.dns)

    @inlineCallbacks
    def test_a_message_held_in_memory_is_signed_by_the_child_with_both_keys(self):  # type: ignore[no-untyped-def]
        fields = yield self.signer.sign(MESSAGE, "Q1")
        self.assert_signed(fields)
        assert self.process.started == 1

    @inlineCallbacks
    def test_a_queued_message_file_is_read_and_signed_by_the_child(self):  # type: ignore[no-untyped-def]
        queued = Path(self.mktemp())
        queued.write_bytes(MESSAGE)
        fields = yield self.signer.sign(queued, "Q2")
        self.assert_signed(fields)

    @inlineCallbacks
    def test_many_requests_at_once_are_all_answered_in_one_child(self):  # type: ignore[no-untyped-def]
        self.process.max_in_flight = 4
        results = yield Deferred.fromCoroutine(self._all(30))
        for fields in results:
            self.assert_signed(fields)
        assert self.process.started == 1 and self.process.pending == 0

    async def _all(self, count: int) -> list[bytes]:
        from twisted.internet.defer import gatherResults

        return await gatherResults([self.signer.sign(MESSAGE, f"Q{n}") for n in range(count)])

    @inlineCallbacks
    def test_a_domain_without_keys_is_answered_unsigned(self):  # type: ignore[no-untyped-def]
        fields = yield self.signer.sign(MESSAGE.replace(b"a.test>", b"z.test>"), "Q3")
        assert fields == b""

    @inlineCallbacks
    def test_a_child_that_dies_is_replaced_and_its_requests_sent_again(self):  # type: ignore[no-untyped-def]
        real = list(self.process.argv)
        self.process.argv = [sys.executable, "-c", DIES]
        first = self.signer.sign(MESSAGE, "Q4")
        # The next child is a real one: the request is sent to it and signed.
        self.process.argv = real
        fields = yield first
        self.assert_signed(fields)
        assert self.process.started == 2

    @inlineCallbacks
    def test_a_request_that_kills_two_children_fails_instead_of_going_unsigned(self):  # type: ignore[no-untyped-def]
        self.process.argv = [sys.executable, "-c", DIES]
        try:
            yield self.signer.sign(MESSAGE, "Q5")
        except SigningFailed:
            pass
        else:
            raise AssertionError("a request was answered after two deaths")
        assert self.process.started == 2 and self.process.pending == 0
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_a_child_that_stops_answering_is_killed_and_the_request_retried(self):  # type: ignore[no-untyped-def]
        real = list(self.process.argv)
        self.process.argv = [sys.executable, "-c", HANGS]
        self.process.timeout = 0.5
        first = self.signer.sign(MESSAGE, "Q6")
        self.process.argv = real
        self.process.timeout = 20
        fields = yield first
        self.assert_signed(fields)
        assert self.process.started == 2

    @inlineCallbacks
    def test_stopping_answers_every_request_sent_before_the_child_exits(self):  # type: ignore[no-untyped-def]
        self.process.max_in_flight = 1
        answers = [self.signer.sign(MESSAGE, f"S{n}") for n in range(5)]
        yield self.process.stop()
        for answer in answers:
            assert answer.called
            self.assert_signed(answer.result)
