"""
The outbound SMTP client: the exact bytes it writes (dot-stuffing and CRLF at
every boundary, PIPELINING), per-recipient replies, STARTTLS policy, and a
capture of the bytes on a real loopback socket.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailapp.relay.client import BytesSource, DataEncoder, Reply, SessionError, SMTPClient


def encode(chunks: list[bytes]) -> bytes:
    encoder = DataEncoder()
    return b"".join(encoder.encode(chunk) for chunk in chunks) + encoder.finish()


class DataEncoderTests(unittest.TestCase):
    def test_a_dot_at_the_very_start_of_the_message_is_stuffed(self) -> None:
        self.assertEqual(encode([b".hidden\r\nline\r\n"]), b"..hidden\r\nline\r\n.\r\n")

    def test_a_dot_at_the_start_of_a_chunk_is_stuffed(self) -> None:
        self.assertEqual(encode([b"a\r\n", b".\r\nMAIL FROM:<x>\r\n"]), b"a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n")

    def test_a_crlf_split_across_chunks_is_one_line_end(self) -> None:
        self.assertEqual(encode([b"a\r", b"\n.b\r\n"]), b"a\r\n..b\r\n.\r\n")

    def test_bare_lf_and_bare_cr_become_crlf_so_no_lone_dot_line_survives(self) -> None:
        smuggled = b"Subject: x\n\nhello\n.\nMAIL FROM:<evil@x>\r\r.\r"
        self.assertEqual(
            encode([smuggled]),
            b"Subject: x\r\n\r\nhello\r\n..\r\nMAIL FROM:<evil@x>\r\n\r\n..\r\n.\r\n",
        )

    def test_a_message_without_a_final_line_end_gets_one(self) -> None:
        self.assertEqual(encode([b"no newline"]), b"no newline\r\n.\r\n")

    def test_every_16k_and_64k_boundary_is_handled(self) -> None:
        line = b"." + b"x" * 1022 + b"\r\n"  # 1 KiB lines that each start with a dot
        data = line * 200
        for size in (1, 7, 1024, 16 * 1024, 64 * 1024):
            chunks = [data[i : i + size] for i in range(0, len(data), size)]
            self.assertEqual(encode(chunks), (b"." + line) * 200 + b".\r\n", size)


class ScriptedServer:
    """Drive an SMTPClient over a StringTransport: feed replies, read what it wrote."""

    def __init__(self, test: unittest.TestCase) -> None:
        self.clock = Clock()
        self.client = SMTPClient(self.clock, command_timeout=60, session_timeout=600)
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)

    def reply(self, text: bytes) -> None:
        self.client.dataReceived(text)

    def written(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data


EHLO_PIPELINING = b"250-b.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"


class ClientTests(unittest.TestCase):
    def greet(self, server: ScriptedServer, ehlo: bytes = EHLO_PIPELINING, **kwargs: Any) -> defer.Deferred[Any]:
        d = server.client.greet("mail.a.test", **kwargs)
        server.reply(b"220 b.test ESMTP\r\n")
        self.assertEqual(server.written(), b"EHLO mail.a.test\r\n")
        server.reply(ehlo)
        return d

    def test_pipelined_transaction_writes_mail_rcpts_and_data_at_once_and_reports_each_recipient(self) -> None:
        server = ScriptedServer(self)
        self.successResultOf(self.greet(server))
        d = server.client.send("alice@a.test", ["bob@b.test", "carol@b.test"], BytesSource(b".x\r\n"), 5)
        self.assertEqual(
            server.written(),
            b"MAIL FROM:<alice@a.test> SIZE=5 BODY=8BITMIME\r\nRCPT TO:<bob@b.test>\r\nRCPT TO:<carol@b.test>\r\nDATA\r\n",
        )
        server.reply(b"250 2.1.0 Ok\r\n550 5.1.1 no such user\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
        self.assertEqual(server.written(), b"..x\r\n.\r\n")
        server.reply(b"250 2.0.0 queued as X\r\n")
        results = self.successResultOf(d)
        self.assertEqual(results["bob@b.test"], Reply(550, ("5.1.1 no such user",)))
        self.assertEqual(results["carol@b.test"], Reply(250, ("2.0.0 queued as X",)))
        self.assertTrue(server.client.usable)

    def test_a_peer_with_chunking_gets_the_message_as_it_is_in_bdat_chunks_then_bdat_0_last(self) -> None:
        server = ScriptedServer(self)
        ehlo = b"250-b.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
        self.successResultOf(self.greet(server, ehlo=ehlo))
        message = b"Return-Path: <alice@a.test>\r\nSubject: x\r\n\r\n.a dot line\r\n"
        d = server.client.send("alice@a.test", ["bob@b.test"], BytesSource(message), len(message))
        self.assertEqual(server.written(), b"MAIL FROM:<alice@a.test> BODY=8BITMIME\r\nRCPT TO:<bob@b.test>\r\n")
        server.reply(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
        body = b"Subject: x\r\n\r\n.a dot line\r\n"  # our Return-Path stripped, no dot-stuffing
        self.assertEqual(server.written(), b"BDAT %d\r\n" % len(body) + body)
        server.reply(b"250 2.0.0 chunk ok\r\n")
        self.assertEqual(server.written(), b"BDAT 0 LAST\r\n")
        server.reply(b"250 2.0.0 queued as Y\r\n")
        self.assertEqual(self.successResultOf(d), {"bob@b.test": Reply(250, ("2.0.0 queued as Y",))})

    def test_a_refused_chunk_ends_the_message_with_its_reply(self) -> None:
        server = ScriptedServer(self)
        self.successResultOf(self.greet(server, ehlo=b"250-b.test\r\n250 CHUNKING\r\n"))
        d = server.client.send("alice@a.test", ["bob@b.test"], BytesSource(b"Subject: x\r\n\r\nhi\r\n"), 20)
        server.reply(b"250 2.1.0 Ok\r\n")
        server.reply(b"250 2.1.5 Ok\r\n")
        server.written()
        server.reply(b"552 5.3.4 too big\r\n")
        self.assertEqual(server.written(), b"RSET\r\n")
        server.reply(b"250 2.0.0 Ok\r\n")
        self.assertEqual(self.successResultOf(d), {"bob@b.test": Reply(552, ("5.3.4 too big",))})

    def test_without_pipelining_commands_go_one_by_one_and_no_data_when_every_rcpt_fails(self) -> None:
        server = ScriptedServer(self)
        self.successResultOf(self.greet(server, ehlo=b"250 b.test\r\n"))
        d = server.client.send("", ["bob@b.test"], BytesSource(b"x\r\n"), 3)
        self.assertEqual(server.written(), b"MAIL FROM:<>\r\n")
        server.reply(b"250 Ok\r\n")
        self.assertEqual(server.written(), b"RCPT TO:<bob@b.test>\r\n")
        server.reply(b"450 4.2.0 mailbox busy\r\n")
        self.assertEqual(server.written(), b"RSET\r\n")
        server.reply(b"250 Ok\r\n")
        self.assertEqual(self.successResultOf(d), {"bob@b.test": Reply(450, ("4.2.0 mailbox busy",))})

    def test_ehlo_refused_falls_back_to_helo(self) -> None:
        server = ScriptedServer(self)
        d = server.client.greet("mail.a.test")
        server.reply(b"220 old ESMTP\r\n")
        server.written()
        server.reply(b"502 what\r\n")
        self.assertEqual(server.written(), b"HELO mail.a.test\r\n")
        server.reply(b"250 old\r\n")
        self.successResultOf(d)
        self.assertEqual(server.client.extensions, {})

    def test_required_tls_without_starttls_is_a_session_error(self) -> None:
        server = ScriptedServer(self)
        d = self.greet(server, tls=object(), require_tls=True)
        failure = self.failureResultOf(d, SessionError)
        self.assertEqual(failure.value.reply.code, 451)
        self.assertIn("STARTTLS", str(failure.value.reply))

    def test_a_password_is_never_sent_without_tls(self) -> None:
        server = ScriptedServer(self)
        d = self.greet(server, ehlo=b"250-b.test\r\n250 AUTH PLAIN\r\n", auth=("u", "p"))
        self.failureResultOf(d, SessionError)
        self.assertEqual(server.written(), b"")

    def test_a_silent_server_times_out_as_a_temporary_failure(self) -> None:
        server = ScriptedServer(self)
        d = server.client.greet("mail.a.test")
        server.clock.advance(61)
        self.assertTrue(server.transport.disconnecting or server.client.usable is False)
        server.client.connectionLost(None)
        failure = self.failureResultOf(d, SessionError)
        self.assertEqual(failure.value.reply.code, 451)
        self.assertIn("timed out", str(failure.value.reply))

    def test_a_multiline_greeting_and_a_421_are_understood(self) -> None:
        server = ScriptedServer(self)
        d = server.client.greet("mail.a.test")
        server.reply(b"421-b.test busy\r\n421 try later\r\n")
        failure = self.failureResultOf(d, SessionError)
        self.assertEqual(failure.value.reply, Reply(421, ("b.test busy", "try later")))


class _Capture(protocol.Protocol):
    """A minimal SMTP server that records every byte it receives."""

    def connectionMade(self) -> None:
        self.factory.received = b""
        self.data = False
        self.transport.write(b"220 capture ESMTP\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.factory.received += data
        received = self.factory.received
        if self.data:
            if received.endswith(b"\r\n.\r\n"):
                self.data = False
                self.transport.write(b"250 2.0.0 Ok\r\n")
            return
        if received.endswith(b"DATA\r\n"):
            self.transport.write(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
            self.data = True
        elif received.endswith(b"\r\n") and received.count(b"\r\n") == 1:
            self.transport.write(b"250-capture\r\n250 PIPELINING\r\n")
        elif received.endswith(b"QUIT\r\n"):
            self.transport.write(b"221 bye\r\n")
            self.transport.loseConnection()


class WireCaptureTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_the_bytes_on_the_wire_are_stuffed_at_the_start_and_at_16k_boundaries(self) -> Any:
        factory = protocol.Factory.forProtocol(_Capture)
        factory.received = b""
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        # A message whose first line, and the lines at 16 KiB and 64 KiB, start with a dot.
        body = bytearray(b".first\r\n")
        while len(body) < 200 * 1024:
            body += b"x" * 70 + b"\r\n"
        for offset in (16 * 1024, 64 * 1024, 128 * 1024):
            start = body.rfind(b"\r\n", 0, offset) + 2
            body[start : start + 1] = b"."
        body += b"bare\n.\nMAIL FROM:<smuggled@x>\n"
        client = SMTPClient(reactor, command_timeout=10, session_timeout=30)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=5), client)
        yield client.greet("mail.a.test")
        results = yield client.send("a@a.test", ["b@b.test"], BytesSource(bytes(body)), len(body))
        self.assertEqual(results["b@b.test"].code, 250)
        yield client.quit()
        wire = factory.received
        data = wire[wire.index(b"DATA\r\n") + 6 : wire.rindex(b"QUIT\r\n")]
        expected = DataEncoder()
        self.assertEqual(data, expected.encode(bytes(body)) + expected.finish())
        self.assertTrue(data.startswith(b"..first\r\n"))
        self.assertEqual(data.count(b"\r\n.\r\n"), 1)  # only the real end of data
        self.assertNotIn(b"\n.\n", data)
        self.assertTrue(data.endswith(b"\r\n..\r\nMAIL FROM:<smuggled@x>\r\n.\r\n"))
        for offset in (16 * 1024, 64 * 1024, 128 * 1024):
            start = bytes(body).rfind(b"\r\n", 0, offset) + 2
            self.assertEqual(bytes(body)[start : start + 2], b".x")
        self.assertEqual(data.count(b"\r\n..x"), 3)


def test_our_return_path_is_not_relayed_but_the_rest_of_the_message_is():
    from mailapp.relay.client import strip_return_path

    message = b"Return-Path: <alice@a.test>\r\nReceived: from x\r\nSubject: hi\r\n\r\nbody\r\n"
    assert strip_return_path(message) == b"Received: from x\r\nSubject: hi\r\n\r\nbody\r\n"
    folded = b"Return-Path:\r\n <alice@a.test>\r\nSubject: hi\r\n\r\n"
    assert strip_return_path(folded) == b"Subject: hi\r\n\r\n"
    assert strip_return_path(b"Subject: Return-Path: no\r\n\r\n") == b"Subject: Return-Path: no\r\n\r\n"


class _StalledTransport(StringTransport):
    """A peer that stops reading: the first DATA write fills its window and pauses the producer for good."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and not data.endswith(b"\r\n.\r\n"):
            self.producer.pauseProducing()


class DeadlineTests(unittest.TestCase):
    """Timeouts are deadlines: a peer that trickles bytes cannot stretch them (the tarpit)."""

    def trickle(self, server: ScriptedServer, text: bytes, seconds_per_byte: float = 1.0) -> None:
        for byte in text:
            if not server.client.usable:
                return
            server.clock.advance(seconds_per_byte)
            server.reply(bytes([byte]))

    def test_a_greeting_trickled_one_byte_a_second_times_out_at_the_command_deadline(self) -> None:
        server = ScriptedServer(self)
        d = server.client.greet("mail.a.test")
        self.trickle(server, b"220 " + b"x" * 200 + b"\r\n")
        self.assertFalse(server.client.usable)
        self.assertEqual(server.clock.seconds(), 60)
        server.client.connectionLost(None)
        failure = self.failureResultOf(d, SessionError)
        self.assertEqual(str(failure.value.reply), "451 4.4.2 timed out waiting for a reply")

    def test_each_pipelined_reply_has_its_own_deadline_from_when_the_one_before_it_ended(self) -> None:
        server = ScriptedServer(self)
        self.successResultOf(ClientTests.greet(self, server))  # type: ignore[arg-type]
        d = server.client.send("alice@a.test", ["bob@b.test"], BytesSource(b"x\r\n"), 3)
        server.written()
        server.clock.advance(50)
        server.reply(b"250 2.1.0 Ok\r\n")
        server.clock.advance(50)
        server.reply(b"250 2.1.5 Ok\r\n")  # 100 s after the commands, 50 s after the reply before it
        self.assertTrue(server.client.usable)
        server.clock.advance(59)
        server.reply(b"354 go ahead\r\n")
        self.assertEqual(server.written(), b"x\r\n.\r\n")
        self.trickle(server, b"250 2.0.0 " + b"x" * 100 + b"\r\n")
        self.assertFalse(server.client.usable)
        server.client.connectionLost(None)
        self.assertEqual(str(self.failureResultOf(d, SessionError).value.reply), "451 4.4.2 timed out waiting for a reply")

    def test_a_peer_that_stops_reading_the_data_times_out_at_the_command_deadline(self) -> None:
        server = ScriptedServer(self)
        server.transport = _StalledTransport()
        server.client = SMTPClient(server.clock, command_timeout=60, session_timeout=600)
        server.client.makeConnection(server.transport)
        self.successResultOf(ClientTests.greet(self, server))  # type: ignore[arg-type]
        d = server.client.send("alice@a.test", ["bob@b.test"], BytesSource(b"x" * 200_000), 200_000)
        server.reply(b"250 Ok\r\n250 Ok\r\n354 go ahead\r\n")
        server.clock.advance(59)
        self.assertTrue(server.client.usable)
        server.clock.advance(1)
        self.assertFalse(server.client.usable)
        server.client.connectionLost(None)
        self.assertEqual(str(self.failureResultOf(d, SessionError).value.reply), "451 4.4.2 timed out sending the message")

    def test_a_connection_ends_at_its_session_deadline_however_promptly_the_peer_answers(self) -> None:
        server = ScriptedServer(self)
        self.successResultOf(ClientTests.greet(self, server))  # type: ignore[arg-type]
        outcomes = []
        while server.client.usable:
            d = server.client.send("alice@a.test", ["bob@b.test"], BytesSource(b"x\r\n"), 3)
            d.addBoth(outcomes.append)
            for reply in (b"250 Ok\r\n", b"250 Ok\r\n", b"354 go\r\n", b"250 Ok\r\n"):
                server.clock.advance(25)
                if not server.client.usable:
                    break
                server.reply(reply)
        self.assertEqual(server.clock.seconds(), 600)
        server.client.connectionLost(None)
        self.assertEqual(len(outcomes), 6)  # five transactions of 100 s done, the sixth cut off
        self.assertEqual(str(outcomes[-1].value.reply), "451 4.4.2 session time limit reached")
