"""
PREVIEW's text (RFC 8970) and THREADID's thread root (RFC 8474), as
L{mailapp.imap.preview} computes them for the structure cache, and the
cache's blob carrying both.
"""

from __future__ import annotations

import base64
import io

from mailapp.imap import mime, preview, structurecache


def preview_of(data: bytes) -> str:
    structure = mime.scan_structure(io.BytesIO(data))
    return preview.preview(io.BytesIO(data), structure.root)


def thread_of(header: bytes) -> str | None:
    return preview.thread_id(mime.scan_structure(io.BytesIO(header + b"\r\nbody\r\n")).root)


ALTERNATIVE = (
    b"From: a@example.test\r\nMime-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"Gr=C3=BC=C3=9Fe,\r\n\r\n   J=C3=B6rg\r\n"
    b"--b\r\nContent-Type: text/html\r\n\r\n<p>the <b>html</b> one</p>\r\n--b--\r\n"
)


def test_the_first_plain_text_part_is_the_preview_decoded_with_white_space_collapsed():
    assert preview_of(ALTERNATIVE) == "Grüße, Jörg"


def test_an_html_only_message_is_previewed_as_its_text_without_markup_style_or_title():
    html = (
        b"Content-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(b"<html><head><title>T</title><style>b{}</style></head><body>caf\xe9\n &lt;ok&gt;</body></html>")
        + b"\r\n"
    )
    assert preview_of(html) == "café <ok>"


def test_an_attachment_is_never_the_preview_and_a_message_without_text_has_an_empty_one():
    mixed = (
        b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n\r\nattached\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nthe body\r\n--b--\r\n"
    )
    assert preview_of(mixed) == "the body"
    only_image = b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n"
    assert preview_of(only_image) == ""


def test_text_inside_a_forwarded_message_is_not_the_preview():
    forwarded = (
        b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner text\r\n--b--\r\n"
    )
    assert preview_of(forwarded) == ""


def test_the_preview_is_at_most_256_characters_never_a_split_character():
    text = "é" * 300
    data = b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text.encode() + b"\r\n"
    assert preview_of(data) == "é" * 256


def test_a_part_without_a_charset_is_read_as_utf_8():
    assert preview_of("Subject: x\r\n\r\ncafé\r\n".encode()) == "café"


def test_a_reply_and_its_original_share_the_thread_of_the_first_reference():
    original = thread_of(b"Message-ID: <root@example.test>\r\n")
    reply = thread_of(b"Message-ID: <r1@example.test>\r\nIn-Reply-To: <root@example.test>\r\n")
    deeper = thread_of(b"Message-ID: <r2@example.test>\r\nReferences: <root@example.test>\r\n <r1@example.test>\r\n")
    assert original is not None and original == reply == deeper
    assert original.startswith("T") and original[1:].isalnum()
    assert thread_of(b"Message-ID: <other@example.test>\r\n") != original
    assert thread_of(b"Subject: no identifiers\r\n") is None


def test_the_cached_blob_carries_the_preview_and_threadid_items_as_sent():
    data = b"Message-ID: <root@example.test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + "Grüße".encode() + b"\r\n"
    blob = structurecache.compute(io.BytesIO(data))
    assert blob is not None
    decoded = structurecache.decode(blob, structurecache.PREVIEW | structurecache.THREADID)
    assert decoded is not None
    assert decoded[4] == b"PREVIEW {7}\r\n" + "Grüße".encode()
    assert decoded[5] == b"THREADID (" + (thread_of(b"Message-ID: <root@example.test>\r\n") or "").encode() + b")"
    assert decoded[0] == b""  # not asked for
    at = blob.index(b"THREADID (") + len(b"THREADID (")  # a byte of the THREADID section (the part tree follows it)
    damaged = blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]
    assert structurecache.decode(damaged, structurecache.THREADID) is None
    assert structurecache.decode(damaged, structurecache.ENVELOPE) is not None
