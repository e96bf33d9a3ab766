"""
The shared line session (L{mailapp.linesession.LineSession}) on its own,
through a toy protocol over L{StringTransport} and a fake clock: the
hold-until-replied command loop and its back-pressure, line limits, the
STARTTLS buffer drop, the commands-before-login counter, command timing and
shutdown. SMTP's and POP3's own tests cover the same through their words.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from mailapp.linesession import SHUTDOWN_GRACE, LineSession
from mailapp.sessions import AuthOutcome, Overrun, SessionFactory, SessionLimits


class TLSTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.9", 40000))
        self.tls: list[Any] = []
        self.aborted = False

    def startTLS(self, contextFactory: Any) -> None:
        self.tls.append(contextFactory)

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class Echo(LineSession):
    """ECHO answers at once, HOLD waits for the test's Deferred, TLS upgrades, FAIL fails."""

    protocolName = "echo"
    maxUnterminated = 64

    def __init__(self, factory: SessionFactory) -> None:
        super().__init__(factory)
        self.held: list[defer.Deferred[None]] = []
        self.loggedIn = False
        self.paused = False

    def outputPaused(self) -> bool:
        return self.paused

    def say(self, text: bytes) -> None:
        self._write(text + b"\r\n")

    def greet(self) -> None:
        self.say(b"hello")

    def refuse(self, text: bytes, banned: bool) -> None:
        self.say(b"no " + text)

    def lineReceived(self, line: bytes) -> None:
        if not self.loggedIn and not self._commandBeforeLogin(3):
            return
        verb, _, argument = line.partition(b" ")
        handlers: dict[bytes, Callable[[], None]] = {
            b"ECHO": lambda: self.say(argument),
            b"HOLD": self.hold,
            b"NOW": lambda: self._wait(defer.succeed(self.say(argument))),
            b"TLS": lambda: self._startTLS(b"go\r\n", "context"),
            b"LOGIN": self.login,
            b"FAIL": lambda: self._wait(defer.fail(RuntimeError("boom"))),
        }
        self._command(verb.decode(), handlers.get(verb, lambda: self.say(b"what?")))

    def hold(self) -> None:
        d: defer.Deferred[None] = defer.Deferred()
        self.held.append(d)
        self._wait(d.addCallback(lambda _: self.say(b"held")))

    def login(self) -> None:
        self.loggedIn = True
        self.say(b"in")

    def lineTooLong(self) -> None:
        self.say(b"too long")
        self._close()

    def tooManyCommands(self) -> None:
        self.say(b"too many")

    def goodbye(self) -> None:
        self.say(b"bye")

    def deadlineExpired(self, overrun: Overrun) -> None:
        self.say(overrun.value)
        self._close()

    def commandFailed(self, reason: Failure) -> bool:
        self.say(b"failed")
        return True

    def loginSucceeded(self, avatar: Any, logout: Callable[[], None]) -> None:
        self.say(b"in")

    def loginsBusy(self) -> None:
        self.say(b"busy")

    def answerAuthFailure(self, outcome: AuthOutcome) -> None:
        self.say(outcome.value.encode())


class EchoFactory(SessionFactory):
    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.policy = SessionLimits()
        self.reactor = clock
        self.events: list[dict[str, Any]] = []
        self.telemetry = self.events.append  # type: ignore[assignment]

    def buildProtocol(self, addr: Any) -> Echo:  # type: ignore[override]
        return Echo(self)


class LineSessionTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = EchoFactory(self.clock)
        self.session = self.factory.buildProtocol(None)
        self.session.callLater = self.clock.callLater
        self.transport = TLSTransport()
        self.session.makeConnection(self.transport)
        self.addCleanup(self.disconnect)

    def disconnect(self) -> None:
        if self.session._connected:
            self.session.connectionLost(Failure(Exception("test over")))

    def lines(self) -> list[bytes]:
        return self.transport.value().splitlines()

    def test_a_pipelined_command_waits_for_the_reply_before_it(self) -> None:
        self.session.dataReceived(b"HOLD\r\nECHO after\r\n")
        self.assertEqual(self.lines(), [b"hello"])
        self.session.held[0].callback(None)
        self.assertEqual(self.lines(), [b"hello", b"held", b"after"])

    def test_replies_that_have_already_fired_do_not_nest_the_loop(self) -> None:
        # One frame per pipelined command would overflow the stack long before this.
        self.session.loggedIn = True
        self.session.dataReceived(b"NOW x\r\n" * 5000)
        self.assertEqual(len(self.lines()), 5001)

    def test_reading_stops_while_a_reply_is_pending_and_the_client_pipelines_past_the_limit(self) -> None:
        self.session.dataReceived(b"HOLD\r\n" + b"ECHO x\r\n" * 3)
        self.assertEqual(self.transport.producerState, "producing")
        self.session.dataReceived(b"ECHO y\r\n" * 10)
        self.assertEqual(self.transport.producerState, "paused")
        self.session.loggedIn = True
        self.session.held[0].callback(None)
        self.assertEqual(self.transport.producerState, "producing")

    def test_a_line_with_no_end_past_the_limit_closes(self) -> None:
        self.session.dataReceived(b"x" * 65)
        self.assertEqual(self.lines(), [b"hello", b"too long"])
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.session._buffer, b"")

    def test_what_was_pipelined_after_starttls_never_runs(self) -> None:
        self.session.dataReceived(b"TLS\r\nECHO injected\r\n")
        self.assertEqual(self.lines(), [b"hello", b"go"])
        self.assertEqual(self.transport.tls, ["context"])
        self.assertEqual(self.session._buffer, b"")

    def test_too_many_commands_before_login_closes(self) -> None:
        self.session.dataReceived(b"ECHO 1\r\nECHO 2\r\nECHO 3\r\nECHO 4\r\nECHO 5\r\n")
        self.assertEqual(self.lines(), [b"hello", b"1", b"2", b"3", b"too many"])
        self.assertTrue(self.transport.disconnecting)

    def test_a_command_is_timed_to_its_reply(self) -> None:
        self.session.dataReceived(b"HOLD\r\n")
        self.assertEqual(self.factory.events, [])
        self.session.held[0].callback(None)
        self.assertEqual([event["command"] for event in self.factory.events], ["HOLD"])

    def test_a_failed_reply_is_the_protocols_to_answer_and_the_loop_goes_on(self) -> None:
        self.session.dataReceived(b"FAIL\r\nECHO next\r\n")
        self.assertEqual(self.lines(), [b"hello", b"failed", b"next"])

    def test_shutdown_of_an_idle_session_says_goodbye_and_cuts_after_the_grace(self) -> None:
        closed = self.session.shutdown()
        assert closed is not None
        self.assertEqual(self.lines(), [b"hello", b"bye"])
        self.assertTrue(self.transport.disconnecting)
        self.clock.advance(SHUTDOWN_GRACE)
        self.assertTrue(self.transport.aborted)
        fired: list[object] = []
        closed.addCallback(fired.append)
        self.session.connectionLost(Failure(Exception("gone")))
        self.assertEqual(fired, [None])

    def test_shutdown_of_a_busy_session_waits_for_its_reply(self) -> None:
        self.session.dataReceived(b"HOLD\r\nECHO never\r\n")
        self.session.shutdown()
        self.assertEqual(self.lines(), [b"hello"])
        self.session.held[0].callback(None)
        self.assertEqual(self.lines(), [b"hello", b"held", b"bye"])
        self.assertTrue(self.transport.disconnecting)

    def test_nothing_runs_after_the_connection_is_lost(self) -> None:
        self.session.dataReceived(b"HOLD\r\nECHO never\r\n")
        self.session.connectionLost(Failure(Exception("gone")))
        self.session.held[0].callback(None)
        self.assertEqual(self.lines(), [b"hello"])
        self.assertNotIn(self.session, self.factory.sessions)

    def test_no_command_is_read_while_the_sessions_own_output_is_paused(self) -> None:
        self.session.paused = True
        self.session.dataReceived(b"ECHO later\r\n" + b"x" * 70)
        self.assertEqual(self.lines(), [b"hello"])
        self.assertEqual(self.transport.producerState, "paused")
        self.session.paused = False
        self.session.dataReceived(b"\r\n")
        self.assertEqual(self.lines(), [b"hello", b"later", b"what?"])

    def test_a_session_already_closing_is_cut_after_the_shutdown_grace_without_a_second_goodbye(self) -> None:
        self.session.dataReceived(b"x" * 65)  # too long: the session closes on its own, cut after CLOSE_GRACE
        self.session.shutdown()
        self.assertEqual(self.lines(), [b"hello", b"too long"])
        self.clock.advance(SHUTDOWN_GRACE)
        self.assertTrue(self.transport.aborted)
