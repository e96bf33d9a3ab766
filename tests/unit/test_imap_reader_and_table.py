"""
Unit tests of two IMAP pieces on their own, with no session, store or
reactor: the command reader (bytes in, whole commands out, limits kept) and
the command table the session dispatches from; and AUTHENTICATE's answers
to each kind of bad SASL response, through a session on the fakes.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from mailapp.imap.commands import CAPABILITIES, COMMANDS
from mailapp.imap.reader import CommandReader, ReadLimits
from mailapp.imap.state import State
from mailapp.imap.wire import Literal8, ParsedLiteral, String
from mailapp.testing import build_factory, service_context
from tests.protocol.accounts import make_accounts


class _Deadlines:
    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class _Writer:
    def __init__(self) -> None:
        self.data = b""
        self.discarded = False

    def write(self, data: bytes) -> defer.Deferred[None]:
        self.data += data
        return defer.succeed(None)

    def discard(self) -> None:
        self.discarded = True


class _Owner:
    """Records what the reader hands its session."""

    def __init__(self, authenticated: bool = False) -> None:
        self.limits = ReadLimits(True, 100, 200, 50, 1000) if authenticated else ReadLimits.before_login(1000)
        self.commands: list[list[Any]] = []
        self.out: list[bytes] = []
        self.closed = False
        self.writers: list[_Writer] = []

    def readLimits(self) -> ReadLimits:
        return self.limits

    def commandReceived(self, pieces: list[Any]) -> None:
        self.commands.append(pieces)

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def tagged(self, tag: bytes, status: bytes, text: bytes) -> None:
        self.out.append(tag + b" " + status + b" " + text + b"\r\n")

    def untagged(self, text: bytes) -> None:
        self.out.append(b"* " + text + b"\r\n")

    def bad(self, tag: bytes, text: bytes) -> None:
        self.tagged(tag, b"BAD", text)

    def close(self) -> None:
        self.closed = True

    def holdReading(self, until: defer.Deferred[Any]) -> None:
        raise AssertionError("the spool writers here are never slow")

    def spool(self) -> _Writer:
        writer = _Writer()
        self.writers.append(writer)
        return writer


def feed(reader: CommandReader, owner: _Owner, data: bytes) -> None:
    """What the session's line base does with the bytes: whole lines, or a literal's bytes while one is read."""
    while data and not owner.closed:
        if reader.readingLiteral:
            data = data[reader.literalReceived(data) :]
            continue
        line, end, data = data.partition(b"\n")
        if not end:
            return
        reader.lineReceived(line.removesuffix(b"\r"))


def read(owner: _Owner, data: bytes) -> CommandReader:
    reader = CommandReader(owner, _Deadlines(), owner.spool)
    feed(reader, owner, data)
    return reader


def test_reader_joins_a_synchronizing_literal_into_its_command_after_asking_for_it():
    owner = _Owner()
    read(owner, b"a LOGIN {5}\r\nalice pw\r\n")
    assert owner.out == [b"+ Ready for literal data\r\n"]
    assert owner.commands == [[b"a LOGIN ", String(b"alice"), b" pw"]]


def test_reader_takes_a_non_synchronizing_literal_without_a_continuation():
    owner = _Owner()
    read(owner, b"a LOGIN {5+}\r\nalice pw\r\n")
    assert owner.out == []
    assert owner.commands == [[b"a LOGIN ", String(b"alice"), b" pw"]]


def test_reader_refuses_a_large_literal_before_login_and_hangs_up_on_a_non_synchronizing_one():
    owner = _Owner()
    read(owner, b"a LOGIN {5000}\r\n")
    assert owner.out == [b"a BAD Literal too large\r\n"] and not owner.closed
    owner = _Owner()
    read(owner, b"a LOGIN {5000+}\r\n")
    assert owner.out == [b"a BAD Literal too large\r\n", b"* BYE Non-synchronizing literal too large\r\n"]
    assert owner.closed


def test_reader_refuses_an_append_message_before_login_and_spools_it_after():
    owner = _Owner()
    read(owner, b"a APPEND INBOX {3}\r\n")
    assert owner.out == [b"a BAD Log in first\r\n"] and owner.writers == []
    owner = _Owner(authenticated=True)
    read(owner, b"a APPEND INBOX {3}\r\nhi!\r\n")
    [writer] = owner.writers
    assert writer.data == b"hi!"
    [[first, literal, rest]] = owner.commands
    assert first == b"a APPEND INBOX " and isinstance(literal, ParsedLiteral) and literal.size == 3 and rest == b""


def test_reader_closes_on_a_line_over_the_limit():
    owner = _Owner(authenticated=True)
    read(owner, b"a NOOP " + b"x" * 200 + b"\r\n")
    assert owner.out == [b"* BAD Line too long; closing connection\r\n"] and owner.closed


def test_reader_hands_the_next_line_to_a_taker_instead_of_reading_a_command():
    owner = _Owner()
    reader = read(owner, b"")
    taken: list[bytes] = []
    reader.takeNextLine(taken.append)
    feed(reader, owner, b"DONE\r\nb NOOP\r\n")
    assert taken == [b"DONE"]
    assert owner.commands == [[b"b NOOP"]]


def test_the_table_names_every_command_once_with_the_states_it_is_valid_in():
    assert all(name == command.name and command.states for name, command in COMMANDS.items())
    assert not any(State.LOGOUT in command.states for command in COMMANDS.values())
    assert COMMANDS["LOGIN"].states == {State.NOT_AUTHENTICATED}
    assert COMMANDS["UID FETCH"].states == {State.SELECTED}
    assert COMMANDS["SELECT"].states == {State.AUTHENTICATED, State.SELECTED}
    assert not COMMANDS["IDLE"].timed


def test_the_commands_capabilities_are_announced_in_the_order_clients_saw_before_then_the_extensions():
    assert b" ".join(CAPABILITIES) == (
        b"ID ENABLE UTF8=ACCEPT IDLE COMPRESS=DEFLATE NAMESPACE LIST-EXTENDED LIST-STATUS STATUS=SIZE MULTIAPPEND CATENATE"
        b" UIDPLUS MOVE UNSELECT ESEARCH SEARCHRES SEARCH=FUZZY CONTEXT=SEARCH SORT SORT=DISPLAY ESORT CONTEXT=SORT"
        b" THREAD=ORDEREDSUBJECT THREAD=REFERENCES BINARY OBJECTID SAVEDATE PREVIEW NOTIFY"
    )


def test_search_sort_and_thread_extensions_are_announced():
    announced = b" ".join(CAPABILITIES).split()
    for capability in (b"ESEARCH", b"SEARCHRES", b"SORT", b"SORT=DISPLAY", b"ESORT", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES", b"CONTEXT=SEARCH", b"CONTEXT=SORT"):
        assert capability in announced


@pytest.mark.parametrize("name", ["CAPABILITY", "NOOP", "LOGOUT", "ID"])
def test_the_commands_of_any_state_are_valid_before_and_after_login(name):
    assert COMMANDS[name].states == {State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED}


# -- AUTHENTICATE PLAIN through the session (mailapp.sasl's decoder, IMAP's words) ------------------


def _session() -> tuple[Any, StringTransport]:
    factory = build_factory(service_context(accounts=make_accounts()), "imap", allow_plaintext_auth=True)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    transport.clear()
    return protocol, transport


@pytest.mark.parametrize(
    ("response", "reply"),
    [
        (b"*", b"a BAD Authentication cancelled"),
        (b"not base64!", b"a BAD Invalid base64"),
        (b"=", b"a BAD Malformed PLAIN response"),
        (base64.b64encode(b"alice@example.test\x00alice-secret"), b"a BAD Malformed PLAIN response"),
    ],
)
def test_authenticate_plain_refusals_in_the_continuation_line(response, reply):
    protocol, transport = _session()
    try:
        protocol.dataReceived(b"a AUTHENTICATE PLAIN\r\n")
        assert transport.value() == b"+ \r\n"
        transport.clear()
        protocol.dataReceived(response + b"\r\n")
        assert transport.value() == reply + b"\r\n"
    finally:
        protocol.connectionLost(None)


def test_authenticate_plain_in_the_continuation_line_logs_in():
    protocol, transport = _session()
    try:
        protocol.dataReceived(b"a AUTHENTICATE PLAIN\r\n")
        protocol.dataReceived(base64.b64encode(b"\x00alice@example.test\x00alice-secret") + b"\r\n")
        assert transport.value().splitlines()[-1].startswith(b"a OK [CAPABILITY IMAP4rev1 ")
        assert protocol.state is State.AUTHENTICATED
    finally:
        protocol.connectionLost(None)


def test_reader_keeps_an_appends_literal8_message_in_memory_as_literal8():
    owner = _Owner(authenticated=True)
    read(owner, b"a APPEND INBOX ~{5+}\r\nx\x00y\r\n\r\n")
    [pieces] = owner.commands
    assert pieces == [b"a APPEND INBOX ", Literal8(b"x\x00y\r\n"), b""]
    assert isinstance(pieces[1], Literal8) and owner.writers == []


def test_reader_refuses_a_literal8_outside_append():
    owner = _Owner(authenticated=True)
    read(owner, b"a LOGIN ~{5}\r\n")
    assert owner.out == [b"a BAD literal8 is only for APPEND\r\n"] and owner.commands == []


def test_reader_keeps_a_catenate_text_part_in_memory_and_spools_each_message_of_a_multiappend():
    owner = _Owner(authenticated=True)
    read(owner, b"a APPEND INBOX CATENATE (TEXT {2+}\r\nhi) {3+}\r\nabc\r\n")
    [pieces] = owner.commands
    assert pieces[1] == String(b"hi") and not isinstance(pieces[1], ParsedLiteral)
    assert isinstance(pieces[3], ParsedLiteral) and owner.writers[0].data == b"abc"
