"""The webmail shows a huge header field cut, decoded without the parser whose time is quadratic in its length."""

from __future__ import annotations

import io
import time

from mailapp.web import messages


def test_a_megabyte_to_header_is_shown_cut_in_milliseconds() -> None:
    recipients = ",\r\n ".join(f"person{n:06d}@example.test" for n in range(40_000))
    raw = f"From: a@b.test\r\nTo: =?utf-8?q?J=C3=B6rg?= <j@x.test>, {recipients}\r\nSubject: big\r\n\r\nbody\r\n".encode()
    started = time.perf_counter()
    view = messages.view(messages.parse(io.BytesIO(raw)))
    assert time.perf_counter() - started < 1.0  # the full parse took minutes
    assert view.to.startswith("Jörg <j@x.test>, person000000@example.test, person000001@example.test")
    assert view.to.endswith("more characters)")
    assert len(view.to) < messages.DISPLAY_HEADER_LIMIT + 100
    assert view.subject == "big" and view.text == "body\n"


def test_ordinary_headers_are_decoded_as_before() -> None:
    raw = b"From: =?utf-8?q?J=C3=B6rg?= <j@x.test>\r\nTo: a@b.test,\r\n c@d.test\r\nSubject: =?utf-8?b?SGFsbG8=?=\r\n\r\nx\r\n"
    view = messages.view(messages.parse(io.BytesIO(raw)))
    assert (view.sender, view.to, view.subject) == ("Jörg <j@x.test>", "a@b.test, c@d.test", "Hallo")
