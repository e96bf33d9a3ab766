"""
The IMAP extensions beyond RFC 3501 that imaptest's groups and modern
clients use, each behaviour over L{StringTransport} with the fakes: BINARY
(RFC 3516), MULTIAPPEND (RFC 3502), CATENATE (RFC 4469), LIST-EXTENDED
(RFC 5258), LIST-STATUS (RFC 5819), STATUS=SIZE (RFC 8438), SPECIAL-USE
(RFC 6154) and UTF8=ACCEPT (RFC 6855).
"""

from __future__ import annotations

import base64
import re

from twisted.trial.unittest import TestCase

from mailapp.testing import FakeStore, build_factory, service_context
from mailapp.testing.store import FakeFolder
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

    def test_append_of_a_literal8_message_stores_its_binary_part_as_base64_and_binary_gives_it_back(self) -> None:
        message = b"From: a@example.test\r\nContent-Transfer-Encoding: binary\r\n\r\n" + CONTENT
        client = self.client()
        client.ok(b"APPEND INBOX ~{%d+}\r\n" % len(message) + message)
        [stored] = self.bodies()
        self.assertNotIn(b"\x00", stored)
        self.assertIn(b"Content-Transfer-Encoding: base64\r\n", stored)
        reply = client.ok(b"FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])")
        self.assertIn(b"BINARY[1] ~{%d}\r\n" % len(CONTENT) + CONTENT + b" BINARY.SIZE[1] %d)" % len(CONTENT), reply)

    def test_a_literal8_outside_append_is_bad(self) -> None:
        self.assertIn(b"t2 BAD literal8 is only for APPEND", self.client(select=None).command(b"SELECT ~{5+}\r\nINBOX"))

    # -- MULTIAPPEND ---------------------------------------------------------------------------

    def test_multiappend_adds_every_message_and_answers_appenduid_with_their_uids(self) -> None:
        second = b"Subject: two\r\n\r\nsecond\r\n"
        reply = self.client(select=None).ok(
            b"APPEND INBOX {%d+}\r\n%s (\\Flagged) {%d+}\r\n%s" % (len(SIMPLE), SIMPLE, len(second), second)
        )
        status = self.successResultOf(self.inbox.status())
        self.assertIn(b"OK [APPENDUID %d 1:2] APPEND completed" % status.uidvalidity, reply)
        self.assertEqual(self.bodies(), [SIMPLE, second])
        self.assertEqual([m.flags for m in self.successResultOf(self.inbox.messages())], [frozenset(), {"\\Flagged"}])

    def test_multiappend_adds_none_when_the_store_refuses_a_later_message(self) -> None:
        original = FakeFolder.appendMessage
        calls = []

        def failing_second(folder, message, flags=(), internaldate=None):  # type: ignore[no-untyped-def]
            calls.append(1)
            if len(calls) == 2:
                raise OSError("disk gone")
            return original(folder, message, flags, internaldate)

        self.patch(FakeFolder, "appendMessage", failing_second)
        reply = self.client(select=None).command(
            b"APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s" % (len(SIMPLE), SIMPLE, len(SIMPLE), SIMPLE)
        )
        self.assertIn(b"t2 NO [SERVERBUG]", reply)
        self.assertEqual(self.successResultOf(self.inbox.messages()), [])
        self.flushLoggedErrors(OSError)

    # -- CATENATE ------------------------------------------------------------------------------

    def test_catenate_joins_text_parts_and_a_section_of_the_users_own_message(self) -> None:
        uid = self.successResultOf(self.inbox.append(SIMPLE))
        validity = self.successResultOf(self.inbox.status()).uidvalidity
        client = self.client(select=None)
        header = b"From: new@example.test\r\n\r\n"
        client.ok(
            b'APPEND Drafts CATENATE (TEXT {%d+}\r\n%s URL "/INBOX;UIDVALIDITY=%d/;UID=%d/;SECTION=TEXT" TEXT {3+}\r\nend)'
            % (len(header), header, validity, uid)
        )
        self.assertEqual(self.bodies("Drafts"), [header + b"first body\r\nend"])

    def test_catenate_url_with_a_changed_uidvalidity_is_no_badurl_and_adds_nothing(self) -> None:
        uid = self.successResultOf(self.inbox.append(SIMPLE))
        reply = self.client(select=None).command(b'APPEND Drafts CATENATE (URL "/INBOX;UIDVALIDITY=1234/;UID=%d")' % uid)
        self.assertIn(b'NO [BADURL /INBOX;UIDVALIDITY=1234/;UID=%d]' % uid, reply)
        self.assertEqual(self.bodies("Drafts"), [])

    def test_catenate_url_of_another_users_mail_is_badurl_whatever_its_form(self) -> None:
        bob = self.successResultOf(self.store.mailbox("bob@example.test").folder("INBOX"))
        uid = self.successResultOf(bob.append(b"Subject: secret\r\n\r\nbob's\r\n"))
        client = self.client(select=None)
        for url in (
            b"/INBOX/;UID=%d" % uid,
            b"imap://bob@example.test@localhost/INBOX/;UID=%d" % uid,
            b"imap://bob%%40example.test@localhost/INBOX/;UID=%d" % uid,
            b"/../bob@example.test/INBOX/;UID=%d" % uid,
        ):
            self.assertIn(b"NO [BADURL", client.command(b'APPEND Drafts CATENATE (URL "' + url + b'")'), url)
        self.assertEqual(self.bodies("Drafts"), [])

    def test_catenate_to_a_missing_mailbox_is_trycreate(self) -> None:
        reply = self.client(select=None).command(b"APPEND Nowhere CATENATE (TEXT {2+}\r\nhi)")
        self.assertIn(b"NO [TRYCREATE]", reply)

    # -- LIST-EXTENDED, LIST-STATUS, STATUS=SIZE, SPECIAL-USE ----------------------------------

    def make_tree(self) -> Client:
        client = self.client(select=None)
        for name in (b"a", b"a/one", b"a/two", b"a/two/deep", b"b"):
            client.ok(b"CREATE " + name)
        client.ok(b"SUBSCRIBE a/two/deep")
        client.ok(b"SUBSCRIBE b")
        return client

    def test_list_with_several_patterns_lists_what_any_of_them_matches(self) -> None:
        reply = self.make_tree().ok(b'LIST "" (a/one b)')
        self.assertEqual(re.findall(rb'LIST \([^)]*\) "/" "([^"]+)"', reply), [b"a/one", b"b"])

    def test_list_subscribed_recursivematch_says_childinfo_for_a_subscribed_child_not_listed(self) -> None:
        reply = self.make_tree().ok(b'LIST (SUBSCRIBED RECURSIVEMATCH) "" %')
        self.assertIn(b'* LIST (\\HasChildren) "/" "a" (CHILDINFO ("SUBSCRIBED"))\r\n', reply)
        self.assertIn(b'* LIST (\\HasNoChildren \\Subscribed) "/" "b"\r\n', reply)
        self.assertNotIn(b'"/" "a/two', reply)

    def test_list_subscribed_lists_only_subscribed_names_with_subscribed_attribute(self) -> None:
        reply = self.make_tree().ok(b'LIST (SUBSCRIBED) "" a/*')
        self.assertEqual(re.findall(rb'\* LIST \(([^)]*)\) "/" "([^"]+)"', reply), [(b"\\HasNoChildren \\Subscribed", b"a/two/deep")])

    def test_list_return_subscribed_and_children(self) -> None:
        reply = self.make_tree().ok(b'LIST "" a/% RETURN (SUBSCRIBED CHILDREN)')
        self.assertIn(b'* LIST (\\HasNoChildren) "/" "a/one"\r\n', reply)
        self.assertIn(b'* LIST (\\HasChildren) "/" "a/two"\r\n', reply)

    def test_list_unknown_options_and_recursivematch_alone_are_bad(self) -> None:
        client = self.make_tree()
        for command in (b'LIST (FROB) "" %', b'LIST (RECURSIVEMATCH) "" %', b'LIST (REMOTE RECURSIVEMATCH) "" %', b'LIST "" % RETURN (FROB)'):
            self.assertRegex(client.command(command), rb"t\d+ BAD ")

    def test_list_remote_is_the_same_as_list(self) -> None:
        self.assertIn(b'"/" "a"\r\n', self.make_tree().ok(b'LIST (REMOTE) "" %'))

    def test_a_deleted_subscribed_folder_stays_subscribed_as_nonexistent(self) -> None:
        client = self.make_tree()
        client.ok(b"DELETE b")
        self.assertIn(b'* LIST (\\NonExistent \\Subscribed) "/" "b"\r\n', client.ok(b'LIST (SUBSCRIBED) "" %'))
        self.assertIn(b'* LSUB () "/" "b"\r\n', client.ok(b'LSUB "" %'))
        self.assertNotIn(b'"/" "b"', client.ok(b'LIST "" %'))
        client.ok(b"UNSUBSCRIBE b")
        self.assertNotIn(b'"/" "b"', client.ok(b'LIST (SUBSCRIBED) "" %'))

    def test_list_return_status_sends_each_mailboxs_status_after_its_line(self) -> None:
        self.successResultOf(self.inbox.append(SIMPLE))
        reply = self.client(select=None).ok(b'LIST "" INBOX RETURN (STATUS (MESSAGES UNSEEN SIZE))')
        self.assertIn(
            b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n* STATUS "INBOX" (MESSAGES 1 UNSEEN 1 SIZE %d)\r\n' % len(SIMPLE), reply
        )

    def test_status_size_is_the_sum_of_the_messages_sizes(self) -> None:
        self.successResultOf(self.inbox.append(SIMPLE))
        self.successResultOf(self.inbox.append(MULTIPART))
        reply = self.client(select=None).ok(b"STATUS INBOX (SIZE MESSAGES)")
        self.assertIn(b'* STATUS "INBOX" (SIZE %d MESSAGES 2)' % (len(SIMPLE) + len(MULTIPART)), reply)

    def test_list_special_use_selection_lists_only_the_special_folders(self) -> None:
        reply = self.make_tree().ok(b'LIST (SPECIAL-USE) "" * RETURN (SPECIAL-USE)')
        names = re.findall(rb'\* LIST \(([^)]*)\) "/" "([^"]+)"', reply)
        self.assertIn((b"\\HasNoChildren \\Sent", b"Sent"), names)
        self.assertNotIn(b"INBOX", [n for _, n in names])
        self.assertNotIn(b"a", [n for _, n in names])

    # -- UTF8=ACCEPT ---------------------------------------------------------------------------

    def test_enable_utf8_accept_answers_enabled_once(self) -> None:
        client = self.client(select=None)
        self.assertIn(b"* ENABLED UTF8=ACCEPT\r\n", client.ok(b"ENABLE UTF8=ACCEPT"))
        self.assertIn(b"* ENABLED\r\n", client.ok(b"ENABLE UTF8=ACCEPT"))

    def test_without_utf8_accept_mailbox_names_are_sent_in_modified_utf7(self) -> None:
        client = self.client(select=None)
        client.ok(b"CREATE Entw&APw-rfe")
        reply = client.ok(b'LIST "" Entw*')
        self.assertIn(b'"/" "Entw&APw-rfe"\r\n', reply)
        self.assertNotIn("ü".encode(), reply)

    def test_after_utf8_accept_mailbox_names_are_utf8_both_ways(self) -> None:
        client = self.client(select=None)
        client.ok(b"ENABLE UTF8=ACCEPT")
        client.ok('CREATE "Entwürfe"'.encode())
        self.assertIn('* LIST (\\HasNoChildren) "/" "Entwürfe"\r\n'.encode(), client.ok(b'LIST "" Entw*'))
        self.assertIn('* STATUS "Entwürfe" (MESSAGES 0)'.encode(), client.ok('STATUS "Entwürfe" (MESSAGES)'.encode()))
        self.assertIn(b"Entw\xc3\xbcrfe", [f.name.encode() for f in self.successResultOf(self.mailbox.listFolders())])

    def test_utf8_append_needs_utf8_accept_and_then_stores_the_message(self) -> None:
        message = "Subject: Grüße\r\n\r\nHallo Jörg\r\n".encode()
        client = self.client(select=None)
        self.assertIn(b"BAD UTF8 APPEND needs ENABLE UTF8=ACCEPT", client.command(b"APPEND INBOX UTF8 (~{%d+}\r\n%s)" % (len(message), message)))
        client.ok(b"ENABLE UTF8=ACCEPT")
        client.ok(b"APPEND INBOX UTF8 (~{%d+}\r\n%s)" % (len(message), message))
        self.assertEqual(self.bodies(), [message])

    def test_search_after_utf8_accept_matches_a_raw_utf8_subject_and_an_encoded_one(self) -> None:
        self.successResultOf(self.inbox.append("Subject: Grüße aus Köln\r\n\r\nhallo\r\n".encode()))
        self.successResultOf(self.inbox.append(b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nhallo\r\n"))
        client = self.client(select=None)
        client.ok(b"ENABLE UTF8=ACCEPT")
        client.ok(b"SELECT INBOX")
        self.assertIn(b"* SEARCH 1 2\r\n", client.ok('SEARCH SUBJECT "grüße"'.encode()))

    def test_login_takes_a_utf8_user_name(self) -> None:
        accounts = make_accounts()
        accounts.add_domain("bücher.example")
        accounts.add_user("jörg@bücher.example", "jörg-secret")
        context = service_context(store=self.store, accounts=accounts)
        client = Client(self, build_factory(context, "imap", allow_plaintext_auth=True))
        reply = client.command('LOGIN "jörg@bücher.example" "jörg-secret"'.encode())
        self.assertIn(b"t1 OK [CAPABILITY ", reply)
