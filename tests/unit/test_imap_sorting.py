"""The rules of SORT and THREAD (RFC 5256, 5957) without a session: base subjects, sort keys, threads."""

from __future__ import annotations

import pytest

from mailapp.imap.sorting import base_subject, parse_sort_criteria, sort_fields, sort_order
from mailapp.imap.threads import format_threads, ordered_subject, references
from mailapp.imap.wire import Atom, BadCommand


@pytest.mark.parametrize(
    ("subject", "base"),
    [
        ("Re: hello", "HELLO"),
        ("RE: Re: re:hello", "HELLO"),
        ("Fwd: hello", "HELLO"),
        ("fw: hello", "HELLO"),
        ("[list] Re: hello", "HELLO"),
        ("[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "B"),
        ("Re: [FWD: c]", "C"),
        ("re: [fwd: [fwd: re: [fwd: babylon]]]", "BABYLON"),
        ("[xyz]", "[XYZ]"),
        ("Ad: Re: x", "AD: RE: X"),
        ("hello   \t world ", "HELLO WORLD"),
        ("=?iso-8859-1?q?RE:_C?=", "C"),
        ("=?us-ascii?b?UmU6IGM=?=", "C"),
        ("=?iso-8859-1?q?_?=", ""),
        ("", ""),
    ],
)
def test_base_subject_removes_reply_and_forward_markers_per_rfc_5256_section_2_1(subject, base):
    assert base_subject(subject)[0] == base


def test_base_subject_says_whether_the_subject_was_a_reply_or_forward():
    assert base_subject("Re: x")[1]
    assert base_subject("x (fwd)")[1]
    assert base_subject("[fwd: x]")[1]
    assert not base_subject("[list] x")[1]
    assert not base_subject("x")[1]


def test_sort_criteria_reject_reverse_without_a_key_and_unknown_keys():
    assert parse_sort_criteria([Atom(b"REVERSE"), Atom(b"date"), Atom(b"SIZE")]) == [("DATE", True), ("SIZE", False)]
    for bad in ([Atom(b"REVERSE")], [Atom(b"NAME")], [], [Atom(b"REVERSE"), Atom(b"REVERSE"), Atom(b"DATE")]):
        with pytest.raises(BadCommand):
            parse_sort_criteria(bad)


def _fields(header: str, internaldate: float = 0.0, size: int = 0):
    return sort_fields(header.encode() + b"\r\n\r\n", internaldate, size)


def test_equal_messages_stay_in_sequence_order_even_when_reversed():
    items = [(1, _fields("From: b@x")), (2, _fields("From: a@x")), (3, _fields("From: b@x"))]
    assert sort_order([("FROM", False)], items) == [2, 1, 3]
    assert sort_order([("FROM", True)], items) == [1, 3, 2]


def test_date_sorts_by_utc_and_falls_back_to_the_internal_date():
    items = [
        (1, _fields("Date: Mon, 7 Feb 1994 21:52:25 -0800")),  # 05:52 UTC on the 8th
        (2, _fields("Date: Tue, 8 Feb 1994 04:00:00 +0000")),
        (3, _fields("Date: nonsense", internaldate=1.0)),
    ]
    assert sort_order([("DATE", False)], items) == [3, 2, 1]


def test_address_keys_use_the_first_mailbox_and_display_keys_the_name():
    fields = _fields("From: Zed <alice@x>, bob@y\r\nTo: group: c@d;\r\nCc: (comment) carol@z")
    assert fields.from_ == "ALICE"
    assert fields.display_from == "ZED"
    assert fields.to == "GROUP"
    assert fields.cc == "CAROL"
    assert _fields("To: =?iso-8859-1?q?foo_aar?= <e@f.g>").display_to == "FOO AAR"
    assert _fields("To: b@c.d").display_to == "B@C.D"


def _thread(messages: list[str], algorithm=references) -> bytes:
    items = [(n, _fields(text, internaldate=float(n))) for n, text in enumerate(messages, 1)]
    return format_threads(algorithm(items))


def test_references_threads_replies_under_their_parents():
    assert _thread(["Message-ID: <a@x>", "Message-ID: <b@x>\r\nReferences: <a@x>", "Message-ID: <c@x>\r\nIn-Reply-To: <a@x>"]) == b"(1 (2)(3))"


def test_references_keeps_a_missing_parent_as_a_dummy_over_its_several_children():
    assert _thread(["Message-ID: <b@x>\r\nReferences: <a@x>", "Message-ID: <c@x>\r\nReferences: <a@x>"]) == b"((1)(2))"


def test_references_promotes_the_only_child_of_a_missing_parent():
    assert _thread(["Message-ID: <b@x>\r\nReferences: <a@x>"]) == b"(1)"


def test_references_breaks_a_parent_link_that_a_later_message_contradicts():
    # imaptest's thread.mbox: c's link under a is broken by its own References (b), which would loop.
    messages = ["Message-ID: <a@b>", "Message-Id: <b@b>\r\nReferences: <a@b> <c@b>", "Message-Id: <c@b>\r\nReferences: <b@b>"]
    items = [(n, _fields(text, internaldate=date)) for n, (text, date) in enumerate(zip(messages, [3.0, 1.0, 2.0]), 1)]
    assert format_threads(references(items)) == b"(3 2)(1)"


def test_references_gathers_roots_with_the_same_base_subject():
    assert _thread(["Message-ID: <a@x>\r\nSubject: hi", "Message-ID: <b@x>\r\nSubject: Re: hi"]) == b"(1 2)"


def test_references_survives_a_chain_thousands_deep():
    messages = ["Message-ID: <m0@x>"] + [f"Message-ID: <m{n}@x>\r\nReferences: <m{n - 1}@x>" for n in range(1, 3000)]
    text = _thread(messages)
    assert text.startswith(b"(1 2 3 ") and text.endswith(b" 3000)")


def test_ordered_subject_puts_every_later_message_of_a_subject_under_the_first():
    messages = ["Subject: b", "Subject: a", "Subject: Re: b", "Subject: re: a", "Subject: c", "Subject: Fwd: b"]
    assert _thread(messages, ordered_subject) == b"(1 (3)(6))(2 4)(5)"


def test_references_lists_every_message_once_whatever_the_references_say():
    import random
    import re

    generator = random.Random(5256)
    for _ in range(200):
        count = generator.randint(1, 30)
        messages = []
        for n in range(count):
            own = f"Message-ID: <m{generator.randint(0, count)}@x>\r\n" if generator.random() < 0.9 else ""
            refs = " ".join(f"<m{generator.randint(0, count)}@x>" for _ in range(generator.randint(0, 4)))
            subject = generator.choice(["a", "Re: a", "b", "Fwd: b", ""])
            messages.append(f"{own}References: {refs}\r\nSubject: {subject}")
        text = _thread(messages).decode()
        assert sorted(int(n) for n in re.findall(r"\d+", text)) == list(range(1, count + 1)), text
        assert text.count("(") == text.count(")")
        assert "()" not in text


@pytest.mark.parametrize(
    "header",
    [
        "From: Zed <alice@x>\r\nTo: group: c@d;\r\nCc: (comment) carol@z\r\nSubject: Re: [list] hi\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800",
        'From: "Quoted \\"Name\\"" <q@x>\r\nTo: =?iso-8859-1?q?foo_aar?= <e@f.g>\r\nSubject: =?utf-8?q?Fwd:_=C3=A9t=C3=A9?=',
        "To: d\r\nCc: empty:;\r\nSubject: \r\nDate: nonsense",
        "Subject: caf\u00e9 ( fwd)\r\nFrom: <@route:u@h>",
        "",
    ],
)
def test_a_cached_envelope_gives_the_same_sort_keys_as_the_header_block(header):
    import io

    from mailapp.imap import mime
    from mailapp.imap.sorting import ENVELOPE_FIELDS, envelope_fields
    from mailapp.imap.wire import format_value

    block = header.encode() + b"\r\n\r\n"
    envelope = b"ENVELOPE " + format_value(mime.envelope(mime.scan(io.BytesIO(block + b"body\r\n"))))
    assert envelope_fields(envelope, 5.0, 9, ENVELOPE_FIELDS) == sort_fields(block, 5.0, 9, ENVELOPE_FIELDS)
