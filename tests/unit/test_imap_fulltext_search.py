"""
SEARCH BODY and TEXT from the full-text index (L{mailapp.store.fulltext}),
over StringTransport on the real Maildir store: on a varied set of
messages every answer is the one the scan of the files gives, messages not
indexed yet are found by reading them, and a search the index decides
opens no file it covers.
"""

from __future__ import annotations

import base64

from twisted.internet.defer import inlineCallbacks, succeed

from mailapp.store.folder import MaildirFolder
from tests.store_sessions import StoreSessionCase


def _b64(text: bytes) -> bytes:
    return base64.encodebytes(text).replace(b"\n", b"\r\n")


VARIED = [
    b"Subject: invoice 1\r\nFrom: Bob <bob@x.test>\r\n\r\nPlease pay the invoice today.\r\n",
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nFrom: =?iso-8859-1?q?Andr=E9?= <a@x.test>\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nCaf\xe9 cr\xe8me, na\xefve INVOICE\r\n",
    b"Subject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p class=big>Fish &amp; Chips</p><a href=\"https://x.test/invoice\">pay</a></body></html>\r\n",
    b"Subject: qp\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nsoft=\r\nbreak na=C3=AFve and more invoi=\r\nce text\r\n",
    b"Subject: b64\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" + _b64("The ledger says: grüße, invoice 42".encode()),
    b"Subject: parts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
    b"--b\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=a.csv\r\n\r\nledger,42\r\n"
    b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + _b64(b"secret pdf invoice") + b"--b--\r\n",
    b"Subject: fwd\r\nContent-Type: multipart/mixed; boundary=f\r\n\r\n--f\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: inner invoice\r\n\r\nforwarded words\r\n--f--\r\n",
    b"Subject: dsn\r\nContent-Type: multipart/report; boundary=r\r\n\r\n--r\r\nContent-Type: text/plain\r\n\r\nnot delivered\r\n"
    b"--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.invoice.test\r\n\r\nFinal-Recipient: rfc822; y@x.test\r\n--r--\r\n",
    "Subject: eight bit\r\n\r\nStraße ohne Content-Type, ab\r\n".encode(),
    b"Subject: alt\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\nContent-Type: text/plain\r\n\r\nfish and chips\r\n"
    b"--a\r\nContent-Type: text/html\r\n\r\n<b>fish</b> and chips\r\n--a--\r\n",
]

QUERIES = [
    b'BODY "invoice"',
    b'TEXT "invoice"',
    b'BODY "INVOICE"',
    b'BODY "fish & chips"',
    b'BODY "fish &amp; chips"',
    b'BODY "<p class"',
    b'BODY "href"',
    b'TEXT "subject: html"',
    b'TEXT "from: bob"',
    b"CHARSET UTF-8 BODY na\xc3\xafve",
    b"CHARSET UTF-8 BODY \"caf\xc3\xa9 cr\"",
    b"CHARSET UTF-8 BODY stra\xc3\x9fe",
    b"CHARSET UTF-8 TEXT gr\xc3\xbc\xc3\x9fe",
    b'BODY "softbreak"',
    b'BODY "ledger"',
    b'BODY "secret pdf"',
    b'BODY "forwarded words"',
    b'BODY "inner invoice"',
    b'BODY "mx.invoice"',
    b"BODY ab",
    b'BODY ""',
    b'NOT BODY "invoice"',
    b'OR BODY "ledger" TEXT "subject: fwd"',
    b'BODY "invoice" SUBJECT "invoice"',
    b'BODY "invoice" TEXT "invoice"',
    b'UID 1:4 BODY "invoice"',
    b'BODY "no such words at all"',
    b'NOT TEXT "chips" BODY "and"',
]

#: Other commands that walk SEARCH's keys: their whole untagged answer is compared.
OTHERS = [
    b'UID SEARCH RETURN (MIN MAX COUNT ALL) BODY "invoice"',
    b'UID SORT (SUBJECT) UTF-8 BODY "invoice"',
    b'UID SORT (REVERSE ARRIVAL) UTF-8 OR BODY "ledger" NOT TEXT "invoice"',
    b'UID THREAD ORDEREDSUBJECT UTF-8 BODY "invoice"',
]


class FullTextSearchTests(StoreSessionCase):
    @inlineCallbacks
    def test_answers_equal_the_scan_of_the_files(self) -> None:
        for raw in VARIED:
            yield self.deliver(raw)
        yield self.store.fulltext.caughtUp()
        # Two more the indexer is not told of: they must be found by reading them.
        changed = self.store.fulltext.changed
        self.patch(self.store.fulltext, "changed", lambda mailbox_dir: None)
        late = [(yield self.deliver(VARIED[0])), (yield self.deliver(VARIED[2]))]
        protocol, transport = yield self.session()
        indexed = yield self.answers(protocol, transport, QUERIES, OTHERS)
        self.patch(self.store.fulltext, "changed", changed)
        self.patch(MaildirFolder, "searchText", lambda folder, terms: succeed(None))
        scanned = yield self.answers(protocol, transport, QUERIES, OTHERS)
        self.assertEqual(indexed, scanned)
        # Not 6 (its "invoice" is in a PDF) nor 7 (in the forwarded message's Subject, a header).
        self.assertEqual(scanned[b'BODY "invoice"'], [b"* SEARCH 1 2 3 4 5 8 %d %d" % tuple(late)])
        self.assertEqual(scanned[b'BODY "fish &amp; chips"'], [b"* SEARCH 3 %d" % late[1]])

    @inlineCallbacks
    def test_a_search_the_index_decides_reads_only_what_it_does_not_cover(self) -> None:
        for raw in VARIED:
            yield self.deliver(raw)
        yield self.store.fulltext.caughtUp()
        self.patch(self.store.fulltext, "changed", lambda mailbox_dir: None)
        late = yield self.deliver(VARIED[0])
        protocol, transport = yield self.session()
        self.opened.clear()
        reply = yield self.command(protocol, transport, b'UID SEARCH BODY "invoice"')
        self.assertIn(b"* SEARCH 1 2 3 4 5 8 %d\r\n" % late, reply)
        # The message delivered since, and the delivery report the index cannot read exactly.
        self.assertEqual(sorted(self.opened), [8, late])
