"""
SEARCH and FETCH against hostile MIME over real sockets, with messages up to
the default size limit: SEARCH BODY streams (bounded memory whatever the
message size), and a message nested 10,000 deep or of 50,000 parts neither
fails its folder's searches nor slows FETCH BODYSTRUCTURE, nor puts a
traceback in the log.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator

import pytest

from mailapp.imap import mime
from tests.hostile_messages import nested_multiparts, sibling_parts
from tests.imap_helpers import LISTENERS, PASSWORD, Raw, deliver, message
from tests.service_runner import ServiceProcess

USERS = [f"bounds{n}@example.test" for n in range(1, 4)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = ServiceProcess(tmp_path_factory.mktemp("imap-mime-bounds"), LISTENERS, "\n[limits]\nmax_message_size = 26214400\n")
    running.add_users({user: PASSWORD for user in USERS})
    running.start()
    yield running
    running.terminate()


def selected(server: ServiceProcess, user: str) -> Raw:
    raw = Raw(server.port("imap"))
    assert raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())[-1].startswith(b"a OK")
    assert raw.command(b"b", b"SELECT INBOX")[-1].startswith(b"b OK")
    return raw


def _nesting(data: bytes) -> int:
    """How deeply parentheses nest in C{data}, quoted strings aside."""
    deepest = level = 0
    quoted = escaped = False
    for byte in data:
        char = chr(byte)
        if quoted:
            quoted = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            quoted = True
        elif char == "(":
            level += 1
            deepest = max(deepest, level)
        elif char == ")":
            level -= 1
    return deepest


def test_search_body_answers_ok_with_every_match_beside_hostile_structures(server):
    user = USERS[0]
    deliver(server, user, message("first", body="some deepest words\r\n"))
    deliver(server, user, nested_multiparts(10_000))
    deliver(server, user, sibling_parts(50_000, needle=b"deepest words at the end"))
    deliver(server, user, message("last", body="DEEPEST Words again\r\n"))
    raw = selected(server, user)
    started = time.monotonic()
    # 2,000 lines of traceback and NO [SERVERBUG] for the whole folder, before.
    assert raw.command(b"c", b'SEARCH BODY "deepest words"') == [b"* SEARCH 1 2 3 4", b"c OK SEARCH completed"]
    assert raw.command(b"d", b'SEARCH TEXT "part 49998"') == [b"* SEARCH 3", b"d OK SEARCH completed"]
    # Both searches take 4.6-6.5 s on a quiet 2-core VM; a clean-clone CI run under the
    # host's steal took 10.05 s. The bound is for a structure walk gone quadratic, not a timing.
    assert time.monotonic() - started < 20.0
    raw.close()
    log = server.log()
    assert "Traceback" not in log
    assert "imap message structure cut uid=2" in log and "imap message structure cut uid=3" in log


def test_fetch_bodystructure_of_hostile_structures_is_bounded_and_quick(server):
    user = USERS[1]
    deliver(server, user, nested_multiparts(10_000))
    deliver(server, user, sibling_parts(50_000))
    raw = selected(server, user)
    started = time.monotonic()
    nested = raw.command(b"c", b"FETCH 1 BODYSTRUCTURE")
    siblings = raw.command(b"d", b"FETCH 2 (BODYSTRUCTURE BODY[1.1.1.1.1.1] BODY[2.MIME])")
    assert time.monotonic() - started < 10.0
    assert nested[-1] == b"c OK FETCH completed" and siblings[-1] == b"d OK FETCH completed"
    assert 10 < _nesting(nested[0]) <= mime.MAX_DEPTH + 3
    assert b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT"' in nested[0]
    assert siblings[0].count(b'("TEXT" "PLAIN"') == mime.MAX_PARTS
    # (Raw inlines one literal a line: the second one's bytes are the next lines.)
    assert siblings[0].endswith(b"BODY[2.MIME] {28}") and siblings[1] == b"Content-Type: text/plain"
    raw.close()
    assert "Traceback" not in server.log()


def test_three_sessions_searching_20_mb_messages_stay_within_40_mb(server):
    user = USERS[2]
    filler = b"the quick brown fox jumps over the lazy dog 0123456789\r\n"
    for number in range(3):
        text = filler * (10 * 1024 * 1024 // len(filler))
        encoded = base64.encodebytes(text + b"needle %d\r\n" % number).replace(b"\n", b"\r\n")
        deliver(
            server,
            user,
            b'Subject: big %d\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="p"\r\n\r\n' % number
            + b"--p\r\nContent-Type: text/plain\r\n\r\n" + text
            + b"\r\n--p\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded
            + b"\r\n--p--\r\n",
        )
    sessions = [selected(server, user) for _ in range(3)]
    answers: list[list[bytes]] = [[] for _ in sessions]
    before = server.reset_peak_memory()

    def search(number: int) -> None:
        # What is bounded here is memory, not time: three 20 MB scans share
        # two cores with the full-text indexer's catch-up, and on a loaded
        # CI machine one took longer than the harness's 10 s read timeout.
        sessions[number].sock.settimeout(120)
        answers[number] = sessions[number].command(b"c", b"SEARCH BODY \"needle %d\"" % number)

    threads = [threading.Thread(target=search, args=(number,)) for number in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    growth_mb = (server.status("VmHWM")["VmHWM"] - before) / 1024
    for number, answer in enumerate(answers):
        assert answer == [b"* SEARCH %d" % (number + 1), b"c OK SEARCH completed"]
    # Whole decoded messages held 1.55 GB for three sessions, before.
    print(f"VmHWM grew by {growth_mb:.1f} MB")
    assert growth_mb < 40, f"peak grew by {growth_mb:.0f} MB"
    for session in sessions:
        session.close()
