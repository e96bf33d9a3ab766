"""
The full-text index (L{mailapp.store.fulltext}) and its text extractor
(L{mailapp.store.textextract}): what text a message gives (charsets, HTML,
quoted-printable and base64, text attachments and not others, RFC 2047
headers), and the indexer over the real Maildir store: filled after
deliveries, caught up after a restart, expunged and moved messages and
deleted folders forgotten, emptied by an index rebuild, a damaged file
built again without an error to the searcher.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.store import MaildirStore, fulltext, index, retire_mailbox
from mailapp.store.names import mailbox_directory
from mailapp.store.textextract import extract

ALICE = "alice@example.test"


def _text(raw: bytes) -> Any:
    return extract(io.BytesIO(raw))


class ExtractionTests(TestCase):
    def test_plain_text_in_its_declared_charset(self) -> None:
        text = _text(b"Subject: s\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nCaf\xe9 cr\xe8me\r\n")
        self.assertIn("café crème", text.plain)
        self.assertTrue(text.exact)

    def test_no_content_type_reads_as_utf8(self) -> None:
        self.assertIn("grüße".casefold(), _text("Subject: s\r\n\r\nGrüße\r\n".encode()).plain)

    def test_unknown_charset_reads_as_utf8(self) -> None:
        text = _text("Content-Type: text/plain; charset=x-nonsense\r\n\r\nnaïve\r\n".encode())
        self.assertIn("naïve", text.plain)

    def test_quoted_printable_is_decoded(self) -> None:
        raw = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nsoft=\r\nbreak na=C3=AFve\r\n"
        self.assertIn("softbreak naïve", _text(raw).plain)

    def test_base64_is_decoded_leniently(self) -> None:
        raw = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naW52b2lj\r\nZSBudW1i*ZXI=\r\n"
        self.assertIn("invoice number", _text(raw).plain)

    def test_html_is_kept_as_written_and_as_its_text(self) -> None:
        raw = (
            b"Content-Type: text/html; charset=utf-8\r\n\r\n"
            b"<html><head><title>T</title><style>p{color:red}</style></head>"
            b"<body><p class=x>Fish &amp; Chips</p><script>evil()</script></body></html>\r\n"
        )
        text = _text(raw)
        self.assertIn("fish & chips", text.html_text)
        self.assertNotIn("evil", text.html_text)
        self.assertNotIn("color", text.html_text)
        self.assertIn("<p class=x>fish &amp; chips</p>", text.markup)
        self.assertEqual(text.plain, "")

    def test_text_attachments_count_and_others_do_not(self) -> None:
        raw = (
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            b"--b\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=a.csv\r\n\r\nledger,42\r\n"
            b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nc2VjcmV0IHBkZg==\r\n--b--\r\n"
        )
        text = _text(raw)
        self.assertIn("hello", text.plain)
        self.assertIn("ledger,42", text.plain)
        self.assertNotIn("secret pdf", text.plain)

    def test_parts_are_joined_so_no_match_spans_two(self) -> None:
        raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nabc\r\n--b\r\n\r\ndef\r\n--b--\r\n"
        self.assertNotIn("abcdef", _text(raw).plain.replace("\r\n", ""))

    def test_forwarded_message_text_counts(self) -> None:
        raw = (
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
            b"Subject: inner\r\n\r\nforwarded words\r\n--b--\r\n"
        )
        self.assertIn("forwarded words", _text(raw).plain)

    def test_encoded_words_in_headers_are_decoded(self) -> None:
        raw = b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nFrom: =?iso-8859-1?q?Andr=E9?= <a@x.test>\r\nTo: b@x.test\r\nCc: c@x.test\r\n\r\nx\r\n"
        text = _text(raw)
        self.assertEqual(text.subject, "grüße".casefold())
        self.assertIn("andré", text.sender)
        self.assertIn("b@x.test", text.recipients)
        self.assertIn("c@x.test", text.recipients)
        self.assertIn("subject: grüße".casefold(), text.header)

    def test_a_header_block_beyond_what_is_read_is_not_exact(self) -> None:
        raw = b"Subject: long\r\n" + b"X-Filler: " + b"x" * 70_000 + b"\r\n\r\nbody\r\n"
        self.assertFalse(_text(raw).exact)
        self.assertTrue(_text(b"Subject: short\r\n\r\n" + b"body " * 20_000).exact)

    def test_delivery_status_is_not_exact(self) -> None:
        raw = (
            b"Content-Type: multipart/report; boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
            b"Reporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; y\r\n--b--\r\n"
        )
        self.assertFalse(_text(raw).exact)


def message(number: int, word: str = "") -> bytes:
    return b"Subject: message %d\r\nFrom: a@remote.test\r\n\r\nbody %d %s\r\n" % (number, number, word.encode())


class IndexerTestCase(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "mail"
        self.store = MaildirStore(self.root, reactor=reactor)
        self.store.fulltext.delay = self.store.fulltext.quiet = 0
        self.mailbox_dir = mailbox_directory(self.root, ALICE)
        self.addCleanup(index.reset_connections)
        self.addCleanup(lambda: self.store.fulltext.caughtUp())

    def restart(self) -> None:
        index.reset_connections()
        self.store = MaildirStore(self.root, reactor=reactor)
        self.store.fulltext.delay = self.store.fulltext.quiet = 0

    @inlineCallbacks
    def deliver(self, *words: str) -> Any:
        uids = []
        for number, word in enumerate(words):
            writer = self.store.newMessage()
            yield writer.write(message(number, word))
            yield writer.finish()
            uids.append((yield self.store.deliver(writer, [ALICE]))[ALICE])
        return uids

    @inlineCallbacks
    def search(self, needle: str, folder: str = "INBOX", scope: str = "body") -> Any:
        opened = yield self.store.mailbox(ALICE).folder(folder)
        matches = yield opened.searchText([(scope, needle)])
        return matches

    def fts_rows(self) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.mailbox_dir / fulltext.FULLTEXT_NAME)
        try:
            return conn.execute("SELECT folder, uid, exact FROM docs ORDER BY folder, uid").fetchall()
        finally:
            conn.close()


class IndexerTests(IndexerTestCase):
    @inlineCallbacks
    def test_deliveries_are_indexed_after_they_commit(self) -> None:
        uids = yield self.deliver("invoice", "nothing", "Invoices")
        yield self.store.fulltext.caughtUp()
        matches = yield self.search("invoice")
        self.assertEqual(matches.indexed, set(uids))
        self.assertEqual(matches.found[("body", "invoice")], {uids[0], uids[2]})

    @inlineCallbacks
    def test_a_message_not_indexed_yet_is_not_covered(self) -> None:
        uids = yield self.deliver("invoice")
        yield self.store.fulltext.caughtUp()
        # The indexer is not told of this one: as if it lagged behind.
        late = yield self._deliver_unannounced("invoice")
        matches = yield self.search("invoice")
        self.assertTrue(matches.covers(uids[0]))
        self.assertFalse(matches.covers(late))

    @inlineCallbacks
    def _deliver_unannounced(self, word: str) -> Any:
        changed = self.store.fulltext.changed
        self.store.fulltext.changed = lambda mailbox_dir: None  # type: ignore[method-assign]
        try:
            uids = yield self.deliver(word)
        finally:
            self.store.fulltext.changed = changed  # type: ignore[method-assign]
        return uids[0]

    @inlineCallbacks
    def test_restart_catches_up_when_the_folder_is_opened(self) -> None:
        yield self.deliver("invoice")
        yield self.store.fulltext.caughtUp()
        late = yield self._deliver_unannounced("invoice")
        self.restart()
        yield self.search("invoice")  # opening the folder tells the indexer
        yield self.store.fulltext.caughtUp()
        matches = yield self.search("invoice")
        self.assertTrue(matches.covers(late))
        self.assertIn(late, matches.found[("body", "invoice")])

    @inlineCallbacks
    def test_expunged_rows_are_dropped_at_the_next_pass(self) -> None:
        uids = yield self.deliver("invoice", "invoice")
        yield self.store.fulltext.caughtUp()
        inbox = yield self.store.mailbox(ALICE).folder("INBOX")
        yield inbox.expunge([uids[0]])
        yield self.deliver("other")
        yield self.store.fulltext.caughtUp()
        self.assertEqual([row[1] for row in self.fts_rows()], [uids[1], uids[1] + 1])

    @inlineCallbacks
    def test_moved_message_is_found_in_its_new_folder(self) -> None:
        uids = yield self.deliver("invoice")
        yield self.store.fulltext.caughtUp()
        mailbox = self.store.mailbox(ALICE)
        inbox = yield mailbox.folder("INBOX")
        yield mailbox.createFolder("Kept")
        target = yield mailbox.folder("Kept")
        moved = yield inbox.moveTo(uids, target)
        yield self.store.fulltext.caughtUp()
        matches = yield self.search("invoice", "Kept")
        self.assertEqual(matches.found[("body", "invoice")], {moved[uids[0]]})
        self.assertEqual([row[:2] for row in self.fts_rows()], [("Kept", moved[uids[0]])])

    @inlineCallbacks
    def test_deleted_folder_loses_its_rows(self) -> None:
        mailbox = self.store.mailbox(ALICE)
        yield self.deliver("x")
        yield mailbox.createFolder("Old")
        old = yield mailbox.folder("Old")
        yield old.append(message(9, "invoice"))
        yield self.store.fulltext.caughtUp()
        self.assertIn("Old", [row[0] for row in self.fts_rows()])
        yield mailbox.deleteFolder("Old")
        yield self.deliver("y")
        yield self.store.fulltext.caughtUp()
        self.assertNotIn("Old", [row[0] for row in self.fts_rows()])

    @inlineCallbacks
    def test_index_rebuild_rebuilds_the_full_text_file(self) -> None:
        uids = yield self.deliver("invoice")
        yield self.store.fulltext.caughtUp()
        index.reset_connections()
        (self.mailbox_dir / index.INDEX_NAME).unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(self.mailbox_dir / index.INDEX_NAME) + suffix).unlink(missing_ok=True)
        self.restart()
        changed = self.store.fulltext.changed
        self.patch(self.store.fulltext, "changed", lambda mailbox_dir: None)
        matches = yield self.search("invoice")
        self.assertEqual(self.fts_rows(), [])
        self.assertFalse(matches.covers(uids[0]))
        changed(self.mailbox_dir)
        yield self.store.fulltext.caughtUp()
        matches = yield self.search("invoice")
        self.assertEqual(matches.found[("body", "invoice")], {uids[0]})

    @inlineCallbacks
    def test_damaged_file_is_built_again_not_an_error(self) -> None:
        uids = yield self.deliver("invoice")
        yield self.store.fulltext.caughtUp()
        path = self.mailbox_dir / fulltext.FULLTEXT_NAME
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        path.write_bytes(b"this is not an SQLite file at all" * 200)
        matches = yield self.search("invoice")
        self.assertIsNone(matches)
        yield self.store.fulltext.caughtUp()
        matches = yield self.search("invoice")
        self.assertEqual(matches.found[("body", "invoice")], {uids[0]})

    @inlineCallbacks
    def test_short_strings_are_refused(self) -> None:
        yield self.deliver("ab")
        yield self.store.fulltext.caughtUp()
        with self.assertRaises(ValueError):
            yield self.search("ab")

    @inlineCallbacks
    def test_webmail_scopes(self) -> None:
        writer = self.store.newMessage()
        yield writer.write(b"Subject: Quarterly\r\nFrom: Bob <bob@x.test>\r\nContent-Type: text/html\r\n\r\n<b>Fish</b> &amp; chips\r\n")
        yield writer.finish()
        uid = (yield self.store.deliver(writer, [ALICE]))[ALICE]
        yield self.store.fulltext.caughtUp()
        opened = yield self.store.mailbox(ALICE).folder("INBOX")
        matches = yield opened.searchText([("shown", "quarterly"), ("shown_body", "fish & chips"), ("from", "bob"), ("body", "<b>fish")])
        self.assertEqual(set(matches.found.values()), {frozenset({uid})})

    @inlineCallbacks
    def test_a_retired_account_is_not_recreated_by_the_indexer(self) -> None:
        yield self.deliver("invoice")
        yield self.store.fulltext.caughtUp()
        retire_mailbox(self.root.parent, ALICE, keep=False)
        self.store.fulltext.changed(self.mailbox_dir)
        yield self.store.fulltext.caughtUp()
        self.assertFalse(self.mailbox_dir.exists())

    @inlineCallbacks
    def test_a_file_of_another_schema_version_is_built_again(self) -> None:
        uids = yield self.deliver("invoice")
        yield self.store.fulltext.caughtUp()
        conn = sqlite3.connect(self.mailbox_dir / fulltext.FULLTEXT_NAME)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        self.assertIsNone((yield self.search("invoice")))
        yield self.store.fulltext.caughtUp()
        matches = yield self.search("invoice")
        self.assertEqual(matches.found[("body", "invoice")], {uids[0]})
