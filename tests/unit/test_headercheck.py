"""The header block checks of :mod:`mailapp.headercheck`, fed the way the SMTP receiver feeds them."""

from __future__ import annotations

import time

from mailapp.headercheck import MAX_HEADER_FIELD, HeaderCheck

MESSAGE = (
    b"Received: from a.test;\r\n\tMon, 1 Dec 2026 00:00:00 +0000\r\n"
    b"received: from b.test\r\n"
    b"X-Received: not a hop\r\n"
    b"Subject: hello\r\n\r\n"
    b"Received: in the body, not a hop\r\n"
)


def check(pieces: list[bytes], **limits: int) -> HeaderCheck:
    checker = HeaderCheck(**limits)
    for piece in pieces:
        if not checker.done:
            checker.feed(piece)
    return checker


def test_received_fields_of_the_header_block_are_counted_wherever_the_data_is_split() -> None:
    for split in range(1, len(MESSAGE)):
        if MESSAGE[split - 1 : split + 1] == b"\r\n":
            continue  # the receiver never splits a CR from its LF
        checker = check([MESSAGE[:split], MESSAGE[split:]])
        assert (checker.hops, checker.done) == (2, True), split
        assert checker.longest == len(b"Received: from a.test;\r\n\tMon, 1 Dec 2026 00:00:00 +0000\r\n")


def test_the_hop_limit_and_the_field_limit_give_their_replies() -> None:
    assert check([b"Received: x\r\n" * 3 + b"\r\n"], max_hops=3).verdict().reply() == (  # type: ignore[union-attr]
        b"554 5.4.6 Too many hops (3 Received: header fields): mail loop detected"
    )
    assert check([b"Received: x\r\n" * 2 + b"\r\n"], max_hops=3).verdict() is None
    long_field = b"To: " + b"a" * MAX_HEADER_FIELD + b"\r\n\r\n"
    assert check([long_field]).verdict().reply() == b"552 5.6.0 Message header field longer than 100 KiB"  # type: ignore[union-attr]


def test_a_message_with_no_end_of_headers_is_still_judged() -> None:
    checker = check([b"Received: a\r\nReceived: b"], max_hops=2)
    assert not checker.done
    assert checker.verdict() is not None


def test_a_huge_header_block_is_checked_in_linear_time() -> None:
    block = b"To: " + b"x@example.test,\r\n " * 150_000 + b"y@example.test\r\n\r\n"  # ~2.5 MB, one field
    started = time.perf_counter()
    checker = check([block[start : start + 65536] for start in range(0, len(block), 65536)])
    assert time.perf_counter() - started < 1.0
    assert checker.longest > 2_000_000 and checker.verdict() is not None
