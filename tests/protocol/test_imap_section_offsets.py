"""
A FETCH of body sections finds the parts through the cached structure's
part offsets (L{mailapp.imap.partoffsets}) and scans no message once the
structure is cached: after an APPEND (which computes it), after a first
FETCH (which fills it), for a large message streamed from its file; an
old version's blob is recomputed once. Scans are counted at
L{mime.scan_structure}, which every scan goes through, with the process's
shared scans (L{fetch._scanned}) emptied, so only the index can answer.
Over StringTransport with the fake store.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from mailapp.imap import mime, structurecache
from mailapp.imap.commands import fetch
from mailapp.testing import FakeStore, build_factory, service_context
from mailapp.testing.store import FakeFolder
from tests.protocol.accounts import make_accounts
from tests.protocol.test_imap_conformance import PASSWORD, USER, Client, literal
from tests.unit.test_imap_part_offsets import NESTED

#: Every kind of section imaptest's fetch-body*, fetch-section* and binary* groups ask for, and what each is.
SECTIONS = {
    b"BODY.PEEK[1]": (b"BODY[1]", b"caf=C3=A9 =\r\nsoft"),
    b"BODY.PEEK[1.MIME]": (b"BODY[1.MIME]", b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"),
    b"BODY.PEEK[TEXT]": (b"BODY[TEXT]", NESTED[NESTED.index(b"\r\n\r\n") + 4 :]),
    b"BODY.PEEK[HEADER]": (b"BODY[HEADER]", NESTED[: NESTED.index(b"\r\n\r\n") + 4]),
    b"BODY.PEEK[HEADER.FIELDS (FROM)]": (b"BODY[HEADER.FIELDS (FROM)]", b"From: outer@remote.test\r\n\r\n"),
    b"BODY.PEEK[HEADER.FIELDS.NOT (FROM CONTENT-TYPE)]": (b"BODY[HEADER.FIELDS.NOT (FROM CONTENT-TYPE)]", b"Subject: outer\r\n\r\n"),
    b"BODY.PEEK[2.1.HEADER.FIELDS (SUBJECT)]": (b"BODY[2.1.HEADER.FIELDS (SUBJECT)]", b"Subject: inner\r\n\r\n"),
    b"BODY.PEEK[2.1.1]": (b"BODY[2.1.1]", b"inner text"),
    b"BODY.PEEK[2.1.2]<2.5>": (b"BODY[2.1.2]<2>", b"VsbG8"),
    b"BINARY.PEEK[2.1.2]": (b"BINARY[2.1.2]", b"hello world"),
}


class SectionOffsetTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        self.inbox = self.successResultOf(self.store.mailbox(USER.decode()).folder("INBOX"))
        self.scans: list[object] = []
        real = mime.scan_structure
        self.patch(mime, "scan_structure", lambda handle, limit=None: self.scans.append(handle) or real(handle, limit))
        self.patch(fetch, "_scanned", fetch._ScannedStructures())

    def client(self) -> Client:
        client = Client(self, self.factory)
        client.ok(b"LOGIN " + USER + b" " + PASSWORD)
        client.ok(b"SELECT INBOX")
        return client

    def fetch_every_section(self, client: Client, uid: int = 1) -> None:
        reply = client.ok(b"UID FETCH %d (%s BINARY.SIZE[1])" % (uid, b" ".join(SECTIONS)))
        for label, expected in SECTIONS.values():
            self.assertEqual(literal(reply, label), expected, label)
        self.assertIn(b"BINARY.SIZE[1] %d" % len("café soft".encode()), reply)

    def test_sections_fetched_after_an_append_are_cut_without_a_scan(self) -> None:
        client = self.client()
        client.ok(b"APPEND INBOX {%d+}\r\n" % len(NESTED) + NESTED)
        self.assertEqual(len(self.scans), 1)  # the APPEND's own, for the structure it keeps
        self.assertEqual(self.inbox._state.structures[1][0], structurecache.STRUCTURE_VERSION)
        client.ok(b"NOOP")
        self.fetch_every_section(client)
        self.fetch_every_section(self.client())
        self.assertEqual(len(self.scans), 1)

    def test_an_appends_ok_does_not_wait_for_the_index_and_the_fetch_after_it_still_does_not_scan(self) -> None:
        saving: list[Deferred[None]] = []

        def held(folder: FakeFolder, blobs: dict[int, bytes], version: int) -> Deferred[None]:
            saving.append(Deferred())
            return saving[-1]

        self.patch(FakeFolder, "saveStructures", held)
        client = self.client()
        client.ok(b"APPEND INBOX {%d+}\r\n" % len(NESTED) + NESTED)  # answered with the save still in flight
        self.assertEqual(len(saving), 1)
        self.assertEqual(self.inbox._state.structures, {})
        client.ok(b"NOOP")
        self.fetch_every_section(client)
        self.assertEqual(len(self.scans), 1)  # the APPEND's: the FETCH found the structure in memory
        saving[0].callback(None)

    def test_each_message_of_a_multiappend_gets_its_structure(self) -> None:
        client = self.client()
        other = NESTED.replace(b"inner text", b"other text")
        client.ok(b"APPEND INBOX {%d+}\r\n%s (\\Seen) {%d+}\r\n%s" % (len(NESTED), NESTED, len(other), other))
        self.assertEqual(sorted(self.inbox._state.structures), [1, 2])
        scans = len(self.scans)
        reply = self.client().ok(b"FETCH 1:2 (BODY.PEEK[2.1.1])")
        self.assertEqual(len(self.scans), scans)
        self.assertIn(b"BODY[2.1.1] {10}\r\ninner text)", reply)
        self.assertIn(b"BODY[2.1.1] {10}\r\nother text)", reply)

    def test_a_delivered_message_is_scanned_by_its_first_section_fetch_only(self) -> None:
        self.successResultOf(self.inbox.append(NESTED))  # as SMTP delivers: no structure kept
        self.fetch_every_section(self.client())
        self.assertEqual(len(self.scans), 1)
        self.patch(fetch, "_scanned", fetch._ScannedStructures())  # another process, or long after
        self.fetch_every_section(self.client())
        self.assertEqual(len(self.scans), 1)

    def test_the_sessions_of_one_process_read_a_messages_structure_from_the_index_once(self) -> None:
        self.successResultOf(self.inbox.append(NESTED))
        reads: list[list[int]] = []
        real = FakeFolder.cachedStructures
        self.patch(FakeFolder, "cachedStructures", lambda folder, uids, version: reads.append(list(uids)) or real(folder, uids, version))
        for _ in range(3):
            self.fetch_every_section(self.client())
        self.assertEqual(reads, [[1]])  # the first FETCH's, which found none and filled it
        self.assertEqual(len(self.scans), 1)

    def test_a_large_message_streamed_from_its_file_is_scanned_once_for_its_sections(self) -> None:
        large = NESTED.replace(b"inner text", b"inner text" + b" padding" * (fetch.SMALL_MESSAGE // 8))
        self.successResultOf(self.inbox.append(large))
        for _ in range(2):
            reply = self.client().ok(b"FETCH 1 (BODY.PEEK[2.1.2] BODY.PEEK[HEADER.FIELDS (SUBJECT)] ENVELOPE)")
            self.assertIn(b"BODY[2.1.2] {16}\r\naGVsbG8gd29ybGQ=", reply)
            self.assertIn(b"BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: outer\r\n\r\n", reply)
            self.patch(fetch, "_scanned", fetch._ScannedStructures())
        self.assertEqual(len(self.scans), 1)

    def test_a_blob_of_the_previous_version_is_recomputed_once_with_the_offsets(self) -> None:
        self.successResultOf(self.inbox.append(NESTED))
        self.successResultOf(self.inbox.saveStructures({1: b"version 5 blob"}, structurecache.STRUCTURE_VERSION - 1))
        self.fetch_every_section(self.client())
        self.assertEqual(len(self.scans), 1)
        version, blob = self.inbox._state.structures[1]
        self.assertEqual(version, structurecache.STRUCTURE_VERSION)
        decoded = structurecache.decode(blob)
        self.assertIsNotNone(decoded)
        assert decoded is not None
        self.assertIsNotNone(structurecache.parts(decoded))
        self.fetch_every_section(self.client())
        self.assertEqual(len(self.scans), 1)

    def test_a_message_whose_structure_a_bound_cut_is_scanned_for_each_fetch_as_before(self) -> None:
        from tests.hostile_messages import nested_multiparts

        self.successResultOf(self.inbox.append(nested_multiparts(mime.MAX_DEPTH + 3)))
        client = self.client()
        client.ok(b"FETCH 1 (BODY.PEEK[1])")
        self.patch(fetch, "_scanned", fetch._ScannedStructures())
        client.ok(b"FETCH 1 (BODY.PEEK[1])")
        self.assertEqual(self.inbox._state.structures, {})
        self.assertEqual(len(self.scans), 2)
