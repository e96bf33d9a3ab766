"""
The IMAP extensions beyond RFC 3501 that imaptest's groups and modern
clients use, each behaviour over L{StringTransport} with the fakes: BINARY
(RFC 3516), MULTIAPPEND (RFC 3502), CATENATE (RFC 4469), LIST-EXTENDED
(RFC 5258), LIST-STATUS (RFC 5819), STATUS=SIZE (RFC 8438), SPECIAL-USE
(RFC 6154) and UTF8=ACCEPT (RFC 6855).
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import TestCase

from mailapp.testing import FakeStore, build_factory, service_context
from tests.protocol.accounts import make_accounts
from tests.protocol.test_imap_conformance import PASSWORD, USER, Client, literal

CONTENT = b"hello\x00world\r\nsecond line\r\n"
MULTIPART = (
    b"From: a@example.test\r\nSubject: parts\r\nMime-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"Gr=C3=BC=C3=9Fe, =\r\nJ=C3=B6rg\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(CONTENT).replace(b"\n", b"\r\n")
    + b"--b\r\nContent-Type: application/x-thing\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
    b"--b--\r\n"
)
SIMPLE = b"From: a@example.test\r\nSubject: one\r\n\r\nfirst body\r\n"


class ExtensionTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        self.mailbox = self.store.mailbox(USER.decode())
        self.inbox = self.successResultOf(self.mailbox.folder("INBOX"))

    def client(self, select: bytes | None = b"INBOX") -> Client:
        client = Client(self, self.factory)
        client.ok(b"LOGIN " + USER + b" " + PASSWORD)
        if select is not None:
            client.ok(b"SELECT " + select)
        return client

    def bodies(self, folder: str = "INBOX") -> list[bytes]:
        box = self.successResultOf(self.mailbox.folder(folder))
        return [self.successResultOf(box.readMessage(m.uid, 10**6)) for m in self.successResultOf(box.messages())]

    # -- BINARY --------------------------------------------------------------------------------

    def test_binary_peek_sends_a_quoted_printable_part_decoded(self) -> None:
        self.successResultOf(self.inbox.append(MULTIPART))
        reply = self.client().ok(b"FETCH 1 (BINARY.PEEK[1])")
        # the line end before the boundary is the boundary's
        self.assertEqual(literal(reply, b"BINARY[1]"), "Grüße, Jörg".encode())

    def test_binary_of_a_base64_part_with_a_nul_is_sent_as_literal8(self) -> None:
        self.successResultOf(self.inbox.append(MULTIPART))
        reply = self.client().ok(b"FETCH 1 (BINARY.PEEK[2])")
        self.assertIn(b"BINARY[2] ~{%d}\r\n" % len(CONTENT) + CONTENT + b")", reply)

    def test_binary_size_is_the_decoded_length(self) -> None:
        self.successResultOf(self.inbox.append(MULTIPART))
        reply = self.client().ok(b"FETCH 1 (BINARY.SIZE[1] BINARY.SIZE[2])")
        self.assertIn(b"BINARY.SIZE[1] %d BINARY.SIZE[2] %d" % (len("Grüße, Jörg".encode()), len(CONTENT)), reply)

    def test_binary_partial_counts_decoded_octets(self) -> None:
        self.successResultOf(self.inbox.append(MULTIPART))
        reply = self.client().ok(b"FETCH 1 (BINARY.PEEK[2]<6.5>)")
        self.assertIn(b"BINARY[2]<6> {5}\r\nworld)", reply)

    def test_binary_of_an_unknown_transfer_encoding_is_no_unknown_cte(self) -> None:
        self.successResultOf(self.inbox.append(MULTIPART))
        reply = self.client().command(b"FETCH 1 (BINARY.PEEK[3])")
        self.assertIn(b"t3 NO [UNKNOWN-CTE]", reply)

    def test_binary_sets_seen_and_binary_peek_does_not(self) -> None:
        self.successResultOf(self.inbox.append(MULTIPART))
        client = self.client()
        client.ok(b"FETCH 1 (BINARY.PEEK[1])")
        self.assertEqual(self.successResultOf(self.inbox.messages())[0].flags, frozenset())
        client.ok(b"FETCH 1 (BINARY[1])")
        self.assertEqual(self.successResultOf(self.inbox.messages())[0].flags, frozenset({"\\Seen"}))

    def test_binary_with_a_text_specifier_is_bad(self) -> None:
        self.successResultOf(self.inbox.append(MULTIPART))
        self.assertIn(b"t3 BAD", self.client().command(b"FETCH 1 (BINARY[1.TEXT])"))
