"""
IMAP hardening, each case a regression test over real sockets against the
real service: what stock Twisted's IMAP4Server gets wrong must stay fixed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.imap_helpers import PASSWORD, Raw, Users, deliver, message, start_server
from tests.service_runner import ServiceProcess, unverified_tls


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = start_server(tmp_path_factory.mktemp("imap-hardening"))
    yield running
    running.terminate()


_users = Users()


@pytest.fixture
def user(server: ServiceProcess) -> str:
    return _users.take()


def logged_in(server: ServiceProcess, user: str) -> Raw:
    raw = Raw(server.port("imap"))
    assert raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())[-1].startswith(b"a OK")
    return raw


def spool_files(server: ServiceProcess) -> list[str]:
    spool = server.state_dir / "mail" / ".spool"
    return sorted(os.listdir(spool)) if spool.exists() else []


def test_commands_pipelined_after_starttls_are_discarded(server, user):
    raw = Raw(server.port("imapstrict"))
    # LOGIN would succeed inside TLS: if it were run after the handshake, the
    # attacker's plaintext would have logged the session in.
    raw.send(b"a STARTTLS\r\nb LOGIN " + user.encode() + b" " + PASSWORD.encode() + b"\r\n")
    assert raw.line() == b"a OK Begin TLS negotiation now"
    assert raw.buffer == b""
    raw.sock = unverified_tls().wrap_socket(raw.sock)
    lines = raw.command(b"c", b"NOOP")
    assert not any(line.startswith(b"b ") for line in lines)
    assert raw.command(b"d", b"SELECT INBOX")[-1] == b"d BAD Command not valid in this state"
    assert raw.command(b"e", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())[-1].startswith(b"e OK")
    raw.close()


def test_append_above_the_size_limit_is_refused_before_any_byte_is_read(server, user):
    raw = logged_in(server, user)
    before = spool_files(server)
    assert raw.command(b"b", b"APPEND INBOX {2000000}") == [b"b NO [TOOBIG] Message exceeds the size limit (APPENDLIMIT)"]
    assert spool_files(server) == before
    # The session goes on: nothing of the refused literal is expected.
    assert raw.command(b"c", b"NOOP")[-1] == b"c OK NOOP completed"
    raw.close()


def test_non_synchronizing_append_above_the_limit_is_refused_and_the_connection_closed(server, user):
    raw = logged_in(server, user)
    before = spool_files(server)
    raw.send(b"b APPEND INBOX {2000000+}\r\n" + b"x" * 1000)
    assert raw.line() == b"b NO [TOOBIG] Message exceeds the size limit (APPENDLIMIT)"
    assert raw.line().startswith(b"* BYE")
    assert raw.closed()
    assert spool_files(server) == before


def test_negative_or_malformed_literal_sizes_get_bad(server, user):
    raw = logged_in(server, user)
    assert raw.command(b"b", b"APPEND INBOX {-1}")[-1].startswith(b"b BAD")
    assert raw.command(b"c", b"APPEND INBOX {-5+}")[-1].startswith(b"c BAD")
    assert raw.command(b"d", b"APPEND INBOX {99999999999}")[-1].startswith(b"d BAD")
    assert raw.command(b"e", b"NOOP")[-1] == b"e OK NOOP completed"
    raw.close()


def test_append_before_login_is_refused_without_reading_the_literal(server):
    raw = Raw(server.port("imap"))
    assert raw.command(b"a", b"APPEND INBOX {10}")[-1].startswith(b"a BAD")
    raw.close()


def test_lines_and_literals_before_login_are_small(server, user):
    raw = Raw(server.port("imap"))
    assert raw.command(b"a", b"LOGIN {5000}") == [b"a BAD Literal too large"]
    raw.send(b"b LOGIN " + b"x" * 40_000 + b" y\r\n")
    assert raw.line().startswith(b"* BAD Line too long")
    assert raw.closed()
    # After login, the same literal is fine.
    raw = logged_in(server, user)
    raw.send(b"c SELECT {5000}\r\n")
    assert raw.line().startswith(b"+ ")
    raw.send(b"x" * 5000 + b"\r\n")
    assert raw.until(b"c")[-1].startswith(b"c NO")
    raw.close()


def test_an_unterminated_line_cannot_grow_without_bound(server, user):
    raw = logged_in(server, user)
    try:
        for _ in range(20):
            raw.send(b"y" * 65536)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert raw.closed()


@pytest.mark.parametrize(
    "name",
    [
        b'"../evil"',
        b'"a/../../evil"',
        b'"/etc"',
        b'"~root"',
        b'"a..b"',
        b'"&AC4ALg-"',  # ".." written in modified UTF-7
        b'"&AC8-etc"',  # "/etc"
        b'"&AH4-root"',  # "~root"
        b'"&AAA-"',  # NUL
        b'"bad\\\\name"',
        b'"a//b"',
        b'"&Jjo"',  # not valid modified UTF-7
    ],
)
def test_dangerous_mailbox_names_are_refused_and_never_touch_the_filesystem(server, user, name):
    raw = logged_in(server, user)
    before = sorted(os.listdir(server.state_dir / "mail"))
    for tag, verb in ((b"b", b"CREATE "), (b"c", b"SELECT "), (b"d", b"DELETE "), (b"e", b"RENAME INBOX/x "),
                      (b"f", b"STATUS "), (b"g", b"SUBSCRIBE ")):
        suffix = b" (MESSAGES)" if verb == b"STATUS " else b""
        reply = raw.command(tag, verb + name + suffix)[-1]
        assert reply.startswith(tag + b" NO") or reply.startswith(tag + b" BAD"), reply
    assert sorted(os.listdir(server.state_dir / "mail")) == before
    listing = raw.command(b"h", b'LIST "" "*"')
    assert not any(b"evil" in line or b"etc" in line or b"root" in line for line in listing)
    raw.close()


def test_mailbox_name_with_nul_in_a_literal_is_refused(server, user):
    raw = logged_in(server, user)
    raw.send(b"b CREATE {5}\r\n")
    assert raw.line().startswith(b"+ ")
    raw.send(b"a\x00b/c\r\n")
    assert raw.until(b"b")[-1].startswith(b"b NO")
    raw.close()


def test_deeply_nested_search_gets_bad_not_a_recursion_error(server, user):
    deliver(server, user, message("x"))
    raw = logged_in(server, user)
    raw.command(b"b", b"SELECT INBOX")
    assert raw.command(b"c", b"SEARCH " + b"(" * 5000 + b"ALL" + b")" * 5000)[-1].startswith(b"c BAD")
    assert raw.command(b"d", b"SEARCH " + b"NOT " * 5000 + b"ALL")[-1].startswith(b"d BAD")
    assert raw.command(b"e", b"SEARCH " + b"OR ALL " * 5000 + b"ALL")[-1].startswith(b"e BAD")
    assert raw.command(b"f", b"SEARCH NOT NOT ALL") == [b"* SEARCH 1", b"f OK SEARCH completed"]
    raw.close()


@pytest.mark.parametrize(
    "command",
    [b"FETCH 1:: FLAGS", b"FETCH 0 FLAGS", b"FETCH 1,,2 FLAGS", b"FETCH a FLAGS", b"FETCH 99999999999 FLAGS",
     b"FETCH 1 (FLAGS", b"FETCH 1 FLAGS)", b"FETCH 1 ((FLAGS)", b"STORE 1 +FLAGS (\\Seen", b"SEARCH (ALL",
     b"SEARCH ALL)", b"FETCH 1 BODY[HEADER.FIELDS (FROM]", b"FETCH 1 BODY[1.FOO]", b"UID FETCH 1:*:2 FLAGS",
     b"COPY 1: INBOX", b'FETCH 1 BODY[]<1>', b"FETCH 4294967296 FLAGS"],
)
def test_malformed_sequence_sets_and_parentheses_get_bad(server, user, command):
    raw = logged_in(server, user)
    raw.command(b"b", b"SELECT INBOX")
    assert raw.command(b"c", command)[-1].startswith(b"c BAD"), command
    assert raw.command(b"d", b"NOOP")[-1] == b"d OK NOOP completed"
    raw.close()


def test_the_widest_sequence_set_is_clamped_and_cheap(server, user):
    for n in range(3):
        deliver(server, user, message(f"m{n}"))
    raw = logged_in(server, user)
    raw.command(b"b", b"SELECT INBOX")
    started = time.monotonic()
    assert len(raw.command(b"c", b"FETCH 1:4294967295 (UID)")) == 4
    assert len(raw.command(b"d", b"UID FETCH 1:4294967295 (UID)")) == 4
    assert raw.command(b"e", b"UID SEARCH UID 1:4294967295") == [b"* SEARCH 1 2 3", b"e OK SEARCH completed"]
    assert raw.command(b"f", b"STORE 1:4294967295,1:4294967295 +FLAGS.SILENT (\\Seen)")[-1].startswith(b"f OK")
    assert raw.command(b"g", b"UID FETCH 4000000000:* (UID)")[0] == b"* 3 FETCH (UID 3)"
    assert time.monotonic() - started < 2.0
    raw.close()


def test_a_client_that_stops_reading_cannot_make_the_server_buffer_without_bound(server, user):
    body = ("x" * 998 + "\r\n") * 900  # about 900 kB
    deliver(server, user, message("big", body=body))
    raw = logged_in(server, user)
    raw.command(b"b", b"SELECT INBOX")
    raw.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
    baseline = server.status("VmRSS")["VmRSS"]
    # 200 pipelined fetches of the whole message: 180 MB if the server buffered them.
    raw.send(b"".join(b"f%d FETCH 1 BODY.PEEK[]\r\n" % n for n in range(200)))
    time.sleep(2.0)
    grown = server.status("VmRSS")["VmRSS"] - baseline
    assert grown < 40_000, f"server grew by {grown} kB for a client that does not read"
    raw.close()


def test_keywords_are_capped_per_message_and_per_folder(server: ServiceProcess, user: str) -> None:
    deliver(server, user, message("keywords"))
    deliver(server, user, message("more keywords"))
    raw = logged_in(server, user)
    try:
        assert raw.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        too_many = b" ".join(b"$k%d" % n for n in range(65))
        reply = raw.command(b"a", b"STORE 1 +FLAGS (" + too_many + b")")
        assert reply[-1].startswith(b"a NO [LIMIT]"), reply
        for start in range(0, 64, 16):  # 64 in four steps is the most one message may carry
            batch = b" ".join(b"$k%d" % n for n in range(start, start + 16))
            assert raw.command(b"b", b"STORE 1 +FLAGS.SILENT (" + batch + b")")[-1].startswith(b"b OK")
        reply = raw.command(b"c", b"STORE 1 +FLAGS ($one-too-many)")
        assert reply[-1].startswith(b"c NO [LIMIT]"), reply
        # 64 on message 1; message 2 may take the folder to 256 distinct keywords and no further.
        for start in range(64, 256, 64):
            batch = b" ".join(b"$k%d" % n for n in range(start, start + 64))
            assert raw.command(b"d", b"STORE 2 FLAGS.SILENT (" + batch + b")")[-1].startswith(b"d OK")
        reply = raw.command(b"e", b"STORE 2 +FLAGS ($k999)")
        assert reply[-1].startswith(b"e NO [LIMIT]"), reply
        assert raw.command(b"f", b"STORE 2 FLAGS.SILENT ($k1)")[-1].startswith(b"f OK"), "known keywords stay usable"
        reply = raw.command(b"g", b"APPEND INBOX (" + too_many + b") {5+}\r\nhello")
        assert reply[-1].startswith(b"g NO [LIMIT]"), reply
        assert raw.command(b"n", b"NOOP")[-1].startswith(b"n OK")
    finally:
        raw.close()
