"""Unit tests of the IMAP pieces, no session: wire syntax, MIME structure, search parsing (the session is in tests/protocol/test_imap_session.py)."""

from __future__ import annotations

import io

import pytest

from mailapp.imap import mime, search
from mailapp.imap.wire import (
    Atom,
    BadCommand,
    BadMailboxName,
    String,
    decode_mailbox,
    format_uid_set,
    format_value,
    mailbox_pattern,
    parse_arguments,
    parse_datetime,
    parse_sequence_set,
    select_positions,
)


def test_arguments_parse_atoms_strings_literals_lists_and_sections():
    tokens = parse_arguments([b'1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM "TO")]<0.10>) "a \\"q\\"" ', String(b"lit")])
    assert tokens == [Atom(b"1:*"), [Atom(b"FLAGS"), Atom(b'BODY.PEEK[HEADER.FIELDS (FROM "TO")]<0.10>')], String(b'a "q"'), String(b"lit")]


@pytest.mark.parametrize("text", [b"(a", b"a)", b'"open', b"BODY[b", b"BODY.PEEK[HEADER.FIELDS (A)", b"(" * 40 + b")" * 40])
def test_unbalanced_or_too_deep_arguments_are_bad(text):
    with pytest.raises(BadCommand):
        parse_arguments([text])


@pytest.mark.parametrize("atom", [b"a[b", b"x]", b"!#$&'+,-.0123456789:;<=>?@^_`|[}", b"[%*", b"]["])
def test_brackets_outside_a_fetch_section_are_ordinary_atom_characters(atom):
    assert parse_arguments([b"INBOX " + atom]) == [Atom(b"INBOX"), Atom(atom)]


def test_sequence_sets_are_clamped_without_expansion():
    ranges = parse_sequence_set(b"1:4294967295")
    assert select_positions(ranges, [3, 7, 9], by_uid=False) == [0, 1, 2]
    assert select_positions(ranges, [3, 7, 9], by_uid=True) == [0, 1, 2]
    assert select_positions(parse_sequence_set(b"5:*"), [3, 7, 9], by_uid=True) == [1, 2]
    assert select_positions(parse_sequence_set(b"100:*"), [3, 7, 9], by_uid=True) == [2]
    assert select_positions(parse_sequence_set(b"2,1,2"), [3, 7, 9], by_uid=False) == [0, 1]
    assert format_uid_set([1, 2, 3, 7, 9, 10]) == b"1:3,7,9:10"


def test_mailbox_names_decode_from_modified_utf7_and_refuse_escapes():
    assert decode_mailbox(b"Entw&APw-rfe/&ZeVnLIqe-") == "Entwürfe/日本語"
    assert decode_mailbox(b"inbox") == "INBOX"
    assert decode_mailbox(b"a/") == "a"
    for bad in (b"../x", b"&AC4ALg-", b"/etc", b"&AC8-etc", b"~x", b"a\x00", b"&AAA-", b"&Jjo"):
        with pytest.raises(BadMailboxName):
            decode_mailbox(bad)


def test_list_patterns():
    assert mailbox_pattern("", "%").match("a") and not mailbox_pattern("", "%").match("a/b")
    assert mailbox_pattern("a/", "*").match("a/b/c")
    assert mailbox_pattern("", "inbox").match("INBOX")


def test_formatting_and_dates():
    assert format_value([None, 3, b"plain", b'q"uote', b"line\r\nbreak"]) == b'(NIL 3 "plain" "q\\"uote" {11}\r\nline\r\nbreak)'
    assert parse_datetime(b"17-Jul-1996 02:44:25 -0700") == 837596665.0


def test_mime_structure_of_nested_message_rfc822():
    inner = b"Subject: inner\r\nContent-Type: text/plain\r\n\r\ninner body\r\n"
    raw = (
        b"Subject: outer\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--b--\r\n"
    )
    root = mime.scan(io.BytesIO(raw))
    structure = mime.body_structure(root, False)
    assert structure[0][:2] == ["TEXT", "PLAIN"] and structure[-1] == "MIXED"
    rfc822 = structure[1]
    assert rfc822[:2] == ["MESSAGE", "RFC822"] and rfc822[7][1] == b"inner"
    # The CRLF before a boundary belongs to the boundary (RFC 2046 5.1.1).
    start, end = mime.resolve(root, mime.parse_section(b"2", []))
    assert raw[start:end] == inner[:-2]
    start, end = mime.resolve(root, mime.parse_section(b"2.TEXT", []))
    assert raw[start:end] == b"inner body"
    start, end = mime.resolve(root, mime.parse_section(b"2.1", []))
    assert raw[start:end] == b"inner body"
    assert mime.resolve(root, mime.parse_section(b"3", [])) is None


def test_search_nesting_is_bounded():
    with pytest.raises(BadCommand):
        search.parse_search([Atom(b"NOT")] * 100 + [Atom(b"ALL")], 1)


def test_header_searches_read_only_the_header_block():
    import io

    from mailapp.imap import search

    raw = b"Subject: =?utf-8?q?Quarterly_n=C3=BCmbers?=\r\nDate: Tue, 1 Sep 2026 10:00:00 +0000\r\n\r\n" + b"body line\r\n" * 1000
    handle = io.BytesIO(raw)
    content = search.load_content(handle)
    assert content.headers["subject"] == ["quarterly nümbers"]
    assert content.sent == (2026, 9, 1)
    assert content.found_in_body == frozenset()
    full = search.load_content(io.BytesIO(raw), {"body line", "absent"})
    assert full.found_in_body == {"body line"}
    assert full.headers == content.headers


def test_only_body_and_text_keys_need_message_bodies():
    from mailapp.imap.search import needs_body

    assert not needs_body(("AND", [("HEADER", "subject", "x"), ("FLAG", "\\Seen", True)]))
    assert needs_body(("AND", [("NOT", ("BODY", "x"))]))
    assert needs_body(("OR", ("HEADER", "from", "a"), ("TEXT", "b")))


def _rfc3501_example() -> bytes:
    """The message of RFC 3501 6.4.5's section example, each leaf's body naming its part."""

    def part(content_type: bytes, body: bytes) -> bytes:
        return b"Content-Type: " + content_type + b"\r\n\r\n" + body

    def multipart(subtype: bytes, boundary: bytes, parts: list[bytes]) -> bytes:
        inner = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
        return part(b"multipart/" + subtype + b"; boundary=" + boundary, inner + b"--" + boundary + b"--\r\n")

    def message(subject: bytes, body: bytes) -> bytes:
        return part(b"message/rfc822", b"Subject: " + subject + b"\r\n" + body)

    three = message(b"three", multipart(b"mixed", b"c", [part(b"text/plain", b"3.1"), part(b"application/octet-stream", b"3.2")]))
    alternative = multipart(b"alternative", b"e", [part(b"text/plain", b"4.2.2.1"), part(b"text/richtext", b"4.2.2.2")])
    four_two = message(b"four-two", multipart(b"mixed", b"d", [part(b"text/plain", b"4.2.1"), alternative]))
    four = multipart(b"mixed", b"f", [part(b"image/gif", b"4.1"), four_two])
    return b"Subject: top\r\n" + multipart(b"mixed", b"a", [part(b"text/plain", b"1"), part(b"application/octet-stream", b"2"), three, four])


@pytest.mark.parametrize(
    ("section", "starts", "ends"),
    [
        (b"1", b"1", b"1"),
        (b"2", b"2", b"2"),
        (b"3", b"Subject: three\r\n", b"--c--\r\n"),
        (b"3.HEADER", b"Subject: three\r\n", b"boundary=c\r\n\r\n"),
        (b"3.TEXT", b"--c\r\n", b"--c--\r\n"),
        (b"3.1", b"3.1", b"3.1"),
        (b"3.2", b"3.2", b"3.2"),
        (b"4", b"--f\r\n", b"--f--\r\n"),
        (b"4.1", b"4.1", b"4.1"),
        (b"4.1.MIME", b"Content-Type: image/gif\r\n", b"\r\n\r\n"),
        (b"4.2", b"Subject: four-two\r\n", b"--d--\r\n"),
        (b"4.2.HEADER", b"Subject: four-two\r\n", b"boundary=d\r\n\r\n"),
        (b"4.2.TEXT", b"--d\r\n", b"--d--\r\n"),
        (b"4.2.1", b"4.2.1", b"4.2.1"),
        (b"4.2.2", b"--e\r\n", b"--e--\r\n"),
        (b"4.2.2.1", b"4.2.2.1", b"4.2.2.1"),
        (b"4.2.2.2", b"4.2.2.2", b"4.2.2.2"),
    ],
)
def test_sections_resolve_as_in_rfc_3501s_example(section, starts, ends):
    raw = _rfc3501_example()
    root = mime.scan(io.BytesIO(raw))
    start, end = mime.resolve(root, mime.parse_section(section, []))
    assert raw[start:end].startswith(starts) and raw[start:end].endswith(ends), (section, raw[start:end])
