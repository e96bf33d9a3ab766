"""
IMAP4rev2 (RFC 9051) over L{StringTransport}: advertised beside IMAP4rev1,
and after ``ENABLE IMAP4rev2`` the session follows rev2 where it differs
(appendix E): no \\Recent and no RECENT, SEARCH answered as ESEARCH, STATUS
DELETED, ``OK [CLOSED]`` when SELECT closes a mailbox, UTF-8 mailbox names;
a rev1 session is unchanged.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from mailapp.testing import FakeStore, build_factory, service_context
from tests.protocol.accounts import make_accounts
from tests.protocol.test_imap_conformance import PASSWORD, USER, Client

MESSAGE = b"From: a@example.test\r\nSubject: one\r\n\r\nfirst body\r\n"


class Rev2Tests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        self.mailbox = self.store.mailbox(USER.decode())
        self.inbox = self.successResultOf(self.mailbox.folder("INBOX"))
        for _ in range(3):
            self.successResultOf(self.inbox.append(MESSAGE))

    def client(self, rev2: bool = True) -> Client:
        client = Client(self, self.factory)
        client.ok(b"LOGIN " + USER + b" " + PASSWORD)
        if rev2:
            self.assertIn(b"* ENABLED IMAP4rev2\r\n", client.ok(b"ENABLE IMAP4rev2"))
        return client

    def test_imap4rev2_is_advertised_beside_imap4rev1_before_and_after_login(self) -> None:
        client = Client(self, self.factory)
        self.assertIn(b"* CAPABILITY IMAP4rev1 IMAP4rev2 ", client.ok(b"CAPABILITY"))
        client.ok(b"LOGIN " + USER + b" " + PASSWORD)
        self.assertIn(b"* CAPABILITY IMAP4rev1 IMAP4rev2 ", client.ok(b"CAPABILITY"))

    def test_the_capabilities_rfc_9051_requires_are_all_announced(self) -> None:
        caps = Client(self, self.factory).ok(b"CAPABILITY").split(b"\r\n")[0].split()
        # LITERAL+ covers LITERAL- (RFC 7888 3); UIDPLUS, MOVE, ... are base rev2 commands we have.
        for name in (b"LITERAL+", b"SASL-IR", b"ENABLE", b"IDLE", b"NAMESPACE", b"UNSELECT", b"UIDPLUS", b"MOVE", b"ESEARCH",
                     b"SEARCHRES", b"BINARY", b"LIST-EXTENDED", b"LIST-STATUS", b"STATUS=SIZE", b"SPECIAL-USE", b"CHILDREN", b"ID"):
            self.assertIn(name, caps)
        self.assertTrue(any(c.startswith(b"APPENDLIMIT=") for c in caps))

    def test_enable_imap4rev2_is_answered_once(self) -> None:
        client = self.client()
        self.assertIn(b"* ENABLED\r\n", client.ok(b"ENABLE IMAP4rev2"))

    def test_select_under_rev2_sends_neither_recent_nor_unseen(self) -> None:
        reply = self.client().ok(b"SELECT INBOX")
        self.assertIn(b"* 3 EXISTS\r\n", reply)
        self.assertNotIn(b"RECENT", reply)
        self.assertNotIn(b"[UNSEEN", reply)
        self.assertIn(b"[UIDVALIDITY ", reply)

    def test_rev1_select_still_sends_recent(self) -> None:
        self.assertIn(b"* 3 RECENT\r\n", self.client(rev2=False).ok(b"SELECT INBOX"))

    def test_fetch_flags_under_rev2_never_has_recent(self) -> None:
        client = self.client()
        client.ok(b"SELECT INBOX")
        reply = client.ok(b"FETCH 1:* FLAGS")
        self.assertEqual(reply.count(b"FETCH (FLAGS ()"), 3, reply)
        self.assertNotIn(b"\\Recent", reply)

    def test_new_mail_under_rev2_is_exists_without_recent(self) -> None:
        client = self.client()
        client.ok(b"SELECT INBOX")
        self.successResultOf(self.inbox.append(MESSAGE))
        reply = client.ok(b"NOOP")
        self.assertIn(b"* 4 EXISTS\r\n", reply)
        self.assertNotIn(b"RECENT", reply)
        self.assertNotIn(b"\\Recent", client.ok(b"FETCH 4 FLAGS"))

    def test_search_under_rev2_is_answered_with_esearch(self) -> None:
        client = self.client()
        client.ok(b"SELECT INBOX")
        reply = client.command(b"SEARCH ALL")
        self.assertEqual(reply, b'* ESEARCH (TAG "t4") ALL 1:3\r\nt4 OK SEARCH completed\r\n')
        reply = client.command(b"UID SEARCH 2")
        self.assertEqual(reply, b'* ESEARCH (TAG "t5") UID ALL 2\r\nt5 OK SEARCH completed\r\n')

    def test_search_with_no_match_under_rev2_is_an_empty_esearch(self) -> None:
        client = self.client()
        client.ok(b"SELECT INBOX")
        self.assertEqual(client.command(b"SEARCH DELETED"), b'* ESEARCH (TAG "t4")\r\nt4 OK SEARCH completed\r\n')

    def test_rev1_search_is_still_a_search_response(self) -> None:
        client = self.client(rev2=False)
        client.ok(b"SELECT INBOX")
        self.assertIn(b"* SEARCH 1 2 3\r\n", client.ok(b"SEARCH ALL"))

    def test_status_deleted_counts_the_deleted_messages(self) -> None:
        client = self.client()
        client.ok(b"SELECT INBOX")
        client.ok(b"STORE 1,3 +FLAGS.SILENT (\\Deleted)")
        self.assertIn(b"* STATUS \"INBOX\" (MESSAGES 3 DELETED 2 SIZE %d)\r\n" % (3 * len(MESSAGE)), client.ok(b"STATUS INBOX (MESSAGES DELETED SIZE)"))

    def test_status_recent_is_bad_under_rev2_and_fine_under_rev1(self) -> None:
        self.assertIn(b"t3 BAD RECENT is not a STATUS item in IMAP4rev2", self.client().command(b"STATUS INBOX (RECENT)"))
        self.assertIn(b"* STATUS \"INBOX\" (RECENT ", self.client(rev2=False).ok(b"STATUS INBOX (RECENT)"))

    def test_select_while_selected_under_rev2_says_closed_first(self) -> None:
        client = self.client()
        client.ok(b"CREATE Other")
        self.assertNotIn(b"[CLOSED]", client.ok(b"SELECT INBOX"))
        reply = client.ok(b"EXAMINE Other")
        self.assertTrue(reply.startswith(b"* OK [CLOSED] "), reply)

    def test_mailbox_names_under_rev2_are_utf8(self) -> None:
        client = self.client()
        client.ok('CREATE "Grüße"'.encode())
        self.assertIn('* LIST (\\HasNoChildren) "/" "Grüße"'.encode(), client.ok(b'LIST "" "Gr*"'))

    def test_lsub_and_check_are_still_accepted_under_rev2(self) -> None:
        client = self.client()
        client.ok(b"LSUB \"\" \"*\"")
        client.ok(b"SELECT INBOX")
        client.ok(b"CHECK")
