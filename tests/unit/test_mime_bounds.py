"""
Hostile MIME, without sockets: SEARCH BODY/TEXT streams each text part
(bounded memory, a per-message byte cap), and every reader of message
structure (SEARCH, FETCH BODYSTRUCTURE, the webmail) stops at
mime.MAX_DEPTH and mime.MAX_PARTS and shows the rest as text instead of
recursing until RecursionError.
"""

from __future__ import annotations

import base64
import io
import quopri
import time
import tracemalloc
from pathlib import Path

import pytest

from mailapp.imap import mime, search
from mailapp.store import messagefile
from mailapp.web import messages
from tests.hostile_messages import nested_messages, nested_multiparts, sibling_parts

MiB = 1024 * 1024


def _multipart(*parts: tuple[str, bytes]) -> bytes:
    """A message of the given (header lines, body) parts, CRLF."""
    out = [b'From: a@example.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="p"\r\n\r\n']
    for headers, body in parts:
        out.append(b"--p\r\n" + headers.encode() + b"\r\n\r\n" + body + b"\r\n")
    out.append(b"--p--\r\n")
    return b"".join(out)


def _base64_lines(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _stored(tmp_path: Path, raw: bytes) -> messagefile.IO[bytes]:  # type: ignore[name-defined]
    """The message as the store keeps it (LF on disk) and opens it (CRLF wire form)."""
    path = tmp_path / "message"
    path.write_bytes(raw.replace(b"\r\n", b"\n"))
    return messagefile.open_message(path, len(raw))


# -- item 6: SEARCH BODY/TEXT streams -------------------------------------------------------------------


def test_body_search_of_a_20_mib_message_holds_under_4_mib(tmp_path: Path) -> None:
    filler = b"the quick brown fox jumps over the lazy dog 0123456789\r\n"
    plain = filler * (6 * MiB // len(filler)) + b"needle-plain\r\n"
    encoded = _base64_lines(filler * (6 * MiB // len(filler)) + b"needle-base64\r\n")
    printable = quopri.encodestring(("caf\u00e9 " * 20 + "\n").encode("latin-1") * (5 * MiB // 120)).replace(b"\n", b"\r\n") + b"=\r\nneedle-qp\r\n"
    raw = _multipart(
        ("Content-Type: text/plain", plain),
        ("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64", encoded),
        ("Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable", printable),
    )
    assert len(raw) > 20 * MiB
    handle = _stored(tmp_path, raw)
    del raw, plain, encoded, printable
    tracemalloc.start()
    try:
        content = search.load_content(handle, {"needle-plain", "needle-base64", "needle-qp", "absent"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB"  # the whole decode held about 200 MiB
    assert content.found_in_body == {"needle-plain", "needle-base64", "needle-qp"}


BODY = "Greetings from KÖLN: die Straße ist naß, sagt GRÜN.\n" * 3 + "tail word\n"
#: As a client sends them; parse_search folds them (RFC 3501: SEARCH strings match case-insensitively).
NEEDLES = {"köln: DIE STRASSE", "grün.", "Tail Word", "no such words"}


@pytest.mark.parametrize(
    "headers, body",
    [
        ("Content-Type: text/plain; charset=utf-8", BODY.encode("utf-8").replace(b"\n", b"\r\n")),
        ("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64", _base64_lines(BODY.encode("utf-8"))),
        (
            "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable",
            quopri.encodestring(BODY.encode("iso-8859-1"), quotetabs=True).replace(b"\n", b"\r\n"),
        ),
        ("Content-Type: text/plain; charset=utf-16\r\nContent-Transfer-Encoding: base64", _base64_lines(BODY.encode("utf-16"))),
    ],
    ids=["8bit-utf8", "base64-utf8", "qp-latin1", "base64-utf16"],
)
@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 65536])
def test_body_search_finds_case_folded_words_across_every_chunk_boundary(monkeypatch, headers, body, chunk) -> None:
    monkeypatch.setattr(search, "CHUNK_SIZE", chunk)
    raw = _multipart(("Content-Type: image/png\r\nContent-Transfer-Encoding: base64", _base64_lines(b"no such words")), (headers, body))
    found = search.load_content(io.BytesIO(raw), {needle.casefold() for needle in NEEDLES}).found_in_body
    # Full case folding: ß matches ss; the image's bytes are not text and are not searched.
    assert found == {"köln: die strasse", "grün.", "tail word"}


def test_body_search_looks_at_the_first_max_content_bytes_only(monkeypatch) -> None:
    monkeypatch.setattr(search, "MAX_CONTENT", 1 * MiB)
    raw = b"Subject: big\r\n\r\n" + b"x" * (MiB // 2) + b" early \r\n" + b"y" * MiB + b" late \r\n"

    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
            data = super().read(size)
            Counting.read_bytes += len(data)
            return data

        def readline(self, size: int | None = -1) -> bytes:  # type: ignore[override]
            data = super().readline(size)
            Counting.read_bytes += len(data)
            return data

    content = search.load_content(Counting(raw), {"early", "late"})
    assert content.found_in_body == {"early"}
    # The structure pass and the text pass each read at most the cap (and a line).
    assert Counting.read_bytes <= 2 * (MiB + 64 * 1024)


# -- item 7: structure bounds ---------------------------------------------------------------------------


def _depth(structure: list) -> int:  # type: ignore[type-arg]
    """How deeply BODYSTRUCTURE lists nest."""
    deepest, stack = 0, [(structure, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in node if isinstance(child, list))
    return deepest


def test_search_of_10000_nested_multiparts_treats_the_part_below_the_depth_limit_as_text() -> None:
    started = time.perf_counter()
    content = search.load_content(io.BytesIO(nested_multiparts(10_000)), {"deepest words", "absent"})
    assert time.perf_counter() - started < 2.0
    assert content.found_in_body == {"deepest words"}  # the stdlib parser raised RecursionError
    assert content.cut


def test_search_of_50000_sibling_parts_reads_the_parts_past_the_limit_as_text() -> None:
    started = time.perf_counter()
    content = search.load_content(io.BytesIO(sibling_parts(50_000)), {"last words", "part 17"})
    assert time.perf_counter() - started < 2.0
    assert content.found_in_body == {"last words", "part 17"}
    assert content.cut


def test_an_ordinary_message_is_not_reported_cut() -> None:
    raw = _multipart(("Content-Type: text/plain", b"hello"), ("Content-Type: text/html", b"<p>hi</p>"))
    assert not search.load_content(io.BytesIO(raw), {"hello"}).cut
    assert not mime.scan_structure(io.BytesIO(raw)).cut


def test_bodystructure_of_10000_nested_multiparts_stops_at_the_depth_limit() -> None:
    started = time.perf_counter()
    structure = mime.scan_structure(io.BytesIO(nested_multiparts(10_000)))
    shape = mime.body_structure(structure.root, True)
    assert time.perf_counter() - started < 2.0
    assert structure.cut
    assert _depth(shape) <= mime.MAX_DEPTH + 2
    innermost = shape
    while isinstance(innermost[0], list):
        innermost = innermost[0]
    assert innermost[:3] == ["TEXT", "PLAIN", ["CHARSET", "US-ASCII"]]


def test_bodystructure_of_50000_sibling_parts_lists_at_most_max_parts() -> None:
    started = time.perf_counter()
    shape = mime.body_structure(mime.scan(io.BytesIO(sibling_parts(50_000))), True)
    assert time.perf_counter() - started < 2.0
    parts = [child for child in shape if isinstance(child, list) and child and child[0] == "TEXT"]
    assert len(parts) == mime.MAX_PARTS


def test_an_embedded_message_too_deep_to_open_is_described_as_text_not_as_a_message_without_envelope() -> None:
    shape = mime.body_structure(mime.scan(io.BytesIO(nested_messages(100))), True)
    levels = 0
    while shape[:2] == ["MESSAGE", "RFC822"]:
        levels += 1
        shape = shape[8]  # the embedded message's BODYSTRUCTURE (RFC 3501 body-type-msg)
    assert 0 < levels < mime.MAX_DEPTH
    # A MESSAGE/RFC822 entry must carry an ENVELOPE and a BODYSTRUCTURE; the
    # unopened one is plain text holding the rest.
    assert shape[:2] == ["TEXT", "PLAIN"]


@pytest.mark.parametrize("raw", [nested_multiparts(10_000), nested_messages(10_000), sibling_parts(50_000)], ids=["nested", "messages", "siblings"])
def test_the_webmail_view_of_a_hostile_structure_is_quick_and_bounded(raw: bytes) -> None:
    started = time.perf_counter()
    message = messages.parse(io.BytesIO(raw))
    view = messages.view(message)
    assert time.perf_counter() - started < 3.0  # RecursionError, or 25 s for 50,000 parts
    assert view.subject in ("nested", "nested messages", "siblings")
    assert sum(1 for _ in message.walk()) <= mime.MAX_PARTS + 1
    assert len(view.attachments) < mime.MAX_PARTS
