"""
What Dovecot's imaptest expects of an IMAP server (its scripts in
``src/tests/``, issue 19), each behaviour a test over L{StringTransport}
with the fakes: sections inside message/rfc822 parts, ENVELOPE's groups and
source routes, atoms, ID before login, address searches, subscriptions,
new keywords and fetches of messages another session expunged.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailapp.testing import FakeStore, build_factory, service_context
from tests.protocol.accounts import make_accounts

USER = b"alice@example.test"
PASSWORD = b"alice-secret"

#: imaptest's fetch-body-message-rfc822-x2.mbox: a message/rfc822 holding a message/rfc822.
NESTED_RFC822 = (
    b"From: user@domain.org\r\nDate: Sat, 24 Mar 2007 23:00:00 +0200\r\nMime-Version: 1.0\r\n"
    b"Content-Type: message/rfc822\r\n\r\n"
    b"From: user2@domain.org\r\nDate: Fri, 23 Mar 2007 11:22:33 +0200\r\nMime-Version: 1.0\r\n"
    b"Content-Type: message/rfc822\r\n\r\n"
    b"From: sub@domain.org\r\nDate: Sun, 12 Aug 2012 12:34:56 +0300\r\nSubject: submsg\r\n\r\n"
    b"Hello world\r\n"
)


class Client:
    """One session over a StringTransport: C{command} sends a line and returns what came back."""

    def __init__(self, test: TestCase, factory: Any) -> None:
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        test.addCleanup(self.protocol.connectionLost, None)
        self.transport.clear()
        self.count = 0

    def command(self, text: bytes) -> bytes:
        self.count += 1
        tag = b"t%d" % self.count
        self.transport.clear()
        self.protocol.dataReceived(tag + b" " + text + b"\r\n")
        return self.transport.value()

    def ok(self, text: bytes) -> bytes:
        reply = self.command(text)
        assert re.search(rb"(^|\r\n)t%d OK " % self.count, reply), reply
        return reply


def literal(reply: bytes, label: bytes) -> bytes:
    """The literal after C{label} in a FETCH reply."""
    match = re.search(re.escape(label) + rb" \{(\d+)\}\r\n", reply)
    assert match, (label, reply)
    return reply[match.end() : match.end() + int(match.group(1))]


class ConformanceTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.context = service_context(store=self.store, accounts=make_accounts())
        self.factory = build_factory(self.context, "imap", allow_plaintext_auth=True)
        self.inbox = self.successResultOf(self.store.mailbox(USER.decode()).folder("INBOX"))

    def client(self, select: bytes | None = b"INBOX") -> Client:
        client = Client(self, self.factory)
        client.ok(b"LOGIN " + USER + b" " + PASSWORD)
        if select is not None:
            client.ok(b"SELECT " + select)
        return client

    # -- 1. sections inside message/rfc822 (imaptest fetch-body-message-rfc822*) ----------------

    def test_body_1_of_a_message_rfc822_message_is_the_whole_embedded_message(self) -> None:
        self.successResultOf(self.inbox.append(NESTED_RFC822))
        client = self.client()
        outer_body = NESTED_RFC822.split(b"\r\n\r\n", 1)[1]
        inner_body = outer_body.split(b"\r\n\r\n", 1)[1]
        wanted = {
            b"BODY[1]": outer_body,
            b"BODY[TEXT]": outer_body,
            b"BODY[1.1]": inner_body,
            b"BODY[1.HEADER]": outer_body.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n",
            b"BODY[1.TEXT]": inner_body,
            b"BODY[1.1.1]": b"Hello world\r\n",
            b"BODY[1.1.HEADER]": inner_body.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n",
            b"BODY[1.1.TEXT]": b"Hello world\r\n",
        }
        for label, data in wanted.items():
            reply = client.ok(b"FETCH 1 (" + label.replace(b"BODY[", b"BODY.PEEK[") + b")")
            self.assertEqual(literal(reply, label), data, label)

    def test_parts_of_a_multipart_inside_a_message_rfc822_message_are_numbered_from_its_body(self) -> None:
        raw = (
            b"From: user@domain.org\r\nContent-Type: message/rfc822\r\n\r\n"
            b"From: sub@domain.org\r\nSubject: submsg\r\nContent-Type: multipart/digest; boundary=\"foo\"\r\n\r\n"
            b"prologue\r\n\r\n--foo \r\n\r\nFrom: m1@example.com\r\nSubject: m1\r\n\r\nm1 body\r\n\r\n"
            b"--foo \r\nX-Mime: m2 header\r\n\r\nFrom: m2@example.com\r\nSubject: m2\r\n\r\nm2 body\r\n\r\n"
            b"--foo--\r\n\r\nepilogue\r\n"
        )
        self.successResultOf(self.inbox.append(raw))
        client = self.client()
        wanted = {
            b"BODY[1.1]": b"From: m1@example.com\r\nSubject: m1\r\n\r\nm1 body\r\n",
            b"BODY[1.1.MIME]": b"\r\n",
            b"BODY[1.1.HEADER]": b"From: m1@example.com\r\nSubject: m1\r\n\r\n",
            b"BODY[1.2.MIME]": b"X-Mime: m2 header\r\n\r\n",
            b"BODY[1.2.TEXT]": b"m2 body\r\n",
        }
        for label, data in wanted.items():
            reply = client.ok(b"FETCH 1 (" + label.replace(b"BODY[", b"BODY.PEEK[") + b")")
            self.assertEqual(literal(reply, label), data, label)

    # -- 2. ENVELOPE's groups, routes and comments (imaptest fetch-envelope) ---------------------

    def envelope(self, headers: bytes) -> bytes:
        self.successResultOf(self.inbox.append(b"Date: Thu, 15 Feb 2007 01:02:03 +0200\r\n" + headers + b"\r\nbody\r\n"))
        reply = self.client().ok(b"FETCH 1 ENVELOPE")
        match = re.match(rb'\* 1 FETCH \(ENVELOPE \("Thu, 15 Feb 2007 01:02:03 \+0200" (.*)\)\)\r\n', reply)
        assert match, reply
        return match.group(1)

    def test_envelope_sends_groups_as_start_members_and_end_markers(self) -> None:
        fields = self.envelope(
            b"From: user@domain (Real Name)\r\n"
            b"To: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\r\nCc: group:;, group2: (foo) ;\r\n"
        )
        self.assertEqual(
            fields,
            b'NIL (("Real Name" NIL "user" "domain")) (("Real Name" NIL "user" "domain")) (("Real Name" NIL "user" "domain")) '
            b'((NIL NIL "group" NIL) (NIL NIL "g1" "d1.org") (NIL NIL "g2" "d2.org") (NIL NIL NIL NIL) '
            b'(NIL NIL "group2" NIL) (NIL NIL "g3" "d3.org") (NIL NIL NIL NIL)) '
            b'((NIL NIL "group" NIL) (NIL NIL NIL NIL) (NIL NIL "group2" NIL) (NIL NIL NIL NIL)) NIL NIL NIL',
        )

    def test_envelope_sends_an_empty_undisclosed_recipients_group(self) -> None:
        fields = self.envelope(b"From: a@b.test\r\nTo: undisclosed-recipients:;\r\n")
        self.assertIn(b' ((NIL NIL "undisclosed-recipients" NIL) (NIL NIL NIL NIL)) NIL NIL', fields)

    def test_envelope_puts_a_source_route_in_the_adl_field(self) -> None:
        fields = self.envelope(b"From: <@route1,@route2:user@host>\r\n")
        self.assertTrue(fields.startswith(b'NIL ((NIL "@route1,@route2" "user" "host")) '), fields)

    def test_envelope_sender_and_reply_to_that_are_empty_fall_back_to_from(self) -> None:
        fields = self.envelope(b"From: user@domain (Real Name)\r\nSender: \r\nReply-To: \r\n")
        self.assertEqual(fields, b'NIL' + b' (("Real Name" NIL "user" "domain"))' * 3 + b" NIL NIL NIL NIL NIL")

    def test_envelope_address_without_a_domain_is_not_sent_as_a_group_start(self) -> None:
        fields = self.envelope(b"From: user\r\n")
        self.assertTrue(fields.startswith(b'NIL ((NIL NIL "user" "MISSING_DOMAIN")) '), fields)

    # -- 5. address searches (imaptest search-addresses) --------------------------------------

    def test_from_to_cc_bcc_searches_match_parsed_names_and_addresses_not_raw_header_text(self) -> None:
        for headers in SEARCH_ADDRESSES:
            self.successResultOf(self.inbox.append(headers + b"\r\nbody\r\n"))
        client = self.client()
        # imaptest's expectations for its search-addresses.mbox, key by key.
        for key, wanted in [
            (b"FROM user-from@domain.org", b"1 2 3 4 6 7"),
            (b"TO user-to@domain.org", b"1 2 3 4"),
            (b"CC user-cc@domain.org", b"1 2 3 4 5"),
            (b"FROM realfrom", b"2 4 6 7"),
            (b"BCC realbcc", b"2 4"),
            (b'HEADER FROM ""', b"1 2 3 4 5 6 7"),
            (b'HEADER TO ""', b"1 2 3 4 6 7"),
            (b"FROM ser-fro", b"1 2 3 4 5 6 7"),
            (b"CC ealc", b"2 4"),
            (b"FROM user-from2", b"5"),
            (b"TO groupname", b"6 7"),
            (b"TO groupname2", b"6"),
            (b"TO groupuser3", b"6"),
            (b"TO groupuser4", b""),
            (b"FROM comment", b""),
        ]:
            reply = client.ok(b"SEARCH " + key)
            self.assertIn(b"* SEARCH" + (b" " + wanted if wanted else b"") + b"\r\n", reply, key)

    def test_from_search_matches_a_decoded_encoded_word_display_name(self) -> None:
        self.successResultOf(self.inbox.append(b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <j@x.test>\r\n\r\nbody\r\n"))
        client = self.client()
        name = "müller".encode()
        self.assertIn(b"* SEARCH 1\r\n", client.ok(b"SEARCH CHARSET UTF-8 FROM {%d}\r\n" % len(name) + name))
        self.assertIn(b"* SEARCH\r\n", client.ok(b"SEARCH FROM =?utf-8?q?"))

    # -- 3. atoms (imaptest atoms) ----------------------------------------------------------------

    def test_select_of_a_name_with_an_unbalanced_bracket_is_no_such_mailbox_not_bad(self) -> None:
        client = self.client(select=None)
        reply = client.command(b"SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}")
        self.assertTrue(reply.startswith(b"t2 NO "), reply)
        self.assertTrue(client.command(b"SELECT ~foo").startswith(b"t3 NO "))
        self.assertTrue(client.command(b'LIST "" ~foo').endswith(b"t4 OK LIST completed\r\n"))
        reply = client.command(b"LIST \"\" !#$&'+,-.0123456789:;<=>?@^_`|[}%*")
        self.assertTrue(reply.endswith(b"t5 OK LIST completed\r\n"), reply)

    def test_fetch_sections_with_spaces_inside_brackets_still_parse(self) -> None:
        self.successResultOf(self.inbox.append(b"From: a@b.test\r\nSubject: s\r\nTo: c@d.test\r\n\r\nbody\r\n"))
        reply = self.client().ok(b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.14>)")
        self.assertEqual(literal(reply, b"BODY[HEADER.FIELDS (FROM TO)]<0>"), b"From: a@b.test")
    # -- 4. ID before login (imaptest id) --------------------------------------------------------

    def test_id_with_rfc_2971s_largest_parameter_list_before_login_is_answered(self) -> None:
        client = Client(self, self.factory)
        pairs = b" ".join(b'"%s" "%s"' % ((b"%02d" % n) * 15, b"1234567890" * 102 + b"1234") for n in range(30))
        self.assertGreater(len(pairs), 31_000)
        reply = client.command(b"ID (" + pairs + b")")
        self.assertTrue(reply.startswith(b'* ID ("name" "mailapp"'), reply[:200])
        self.assertTrue(reply.endswith(b"t1 OK ID completed\r\n"), reply)
        self.assertTrue(client.ok(b"NOOP"))
        self.assertFalse(client.transport.disconnecting)

    def test_a_line_over_the_limit_before_login_is_answered_bad_in_pieces_or_whole(self) -> None:
        for chunks in ([b"a ID (" + b"x" * 40_000 + b")\r\n"], [b"a ID (", b"x" * 20_000, b"x" * 20_000]):
            client = Client(self, self.factory)
            for chunk in chunks:
                client.protocol.dataReceived(chunk)
            self.assertEqual(client.transport.value(), b"* BAD Line too long; closing connection\r\n")
            self.assertTrue(client.transport.disconnecting)
    # -- 6. subscriptions (imaptest subscribe) -----------------------------------------------------

    def lsub(self, client: Client, pattern: bytes) -> list[bytes]:
        reply = client.ok(b'LSUB "" ' + pattern)
        return [line for line in reply.split(b"\r\n") if line.startswith(b"* LSUB")]

    def test_create_does_not_subscribe_the_new_folder(self) -> None:
        client = self.client(select=None)
        client.ok(b"CREATE box/new")
        self.assertEqual(self.lsub(client, b"box/*"), [])
        self.assertEqual(self.lsub(client, b"INBOX"), [b'* LSUB () "/" "INBOX"'])

    def test_lsub_lists_an_unsubscribed_parent_of_a_subscribed_child_as_noselect(self) -> None:
        client = self.client(select=None)
        for name in (b"box/test", b"box/test2/test", b"box/test3/test3", b"box/test2"):
            client.command(b"CREATE " + name)
        for name in (b"box/test", b"box/test2/test", b"box/test3/test3"):
            client.ok(b"SUBSCRIBE " + name)
        self.assertEqual(
            self.lsub(client, b"box/%"),
            [b'* LSUB () "/" "box/test"', b'* LSUB (\\Noselect) "/" "box/test2"', b'* LSUB (\\Noselect) "/" "box/test3"'],
        )
        self.assertEqual(self.lsub(client, b"*test"), [b'* LSUB () "/" "box/test"', b'* LSUB () "/" "box/test2/test"'])
        client.ok(b"UNSUBSCRIBE box/test2/test")
        self.assertEqual(self.lsub(client, b"box/*"), [b'* LSUB () "/" "box/test"', b'* LSUB () "/" "box/test3/test3"'])

    def test_list_with_the_subscribed_selection_option_lists_only_subscribed_folders(self) -> None:
        client = self.client(select=None)
        client.ok(b"CREATE box/a")
        client.ok(b"CREATE box/b")
        client.ok(b"SUBSCRIBE box/b")
        reply = client.ok(b'LIST (SUBSCRIBED) "" box/*')
        self.assertEqual([line for line in reply.split(b"\r\n") if line.startswith(b"* LIST")],
                         [b'* LIST (\\HasNoChildren \\Subscribed) "/" "box/b"'])
        reply = client.ok(b'LIST "" box/* RETURN (SUBSCRIBED)')
        self.assertIn(b'* LIST (\\HasNoChildren) "/" "box/a"\r\n* LIST (\\HasNoChildren \\Subscribed) "/" "box/b"\r\n', reply)
    # -- 7. new keywords (imaptest stress: "Keyword used without being in FLAGS")

    def test_store_of_a_new_keyword_sends_flags_and_permanentflags_before_its_fetch(self) -> None:
        self.successResultOf(self.inbox.append(b"Subject: a\r\n\r\nbody\r\n"))
        client = self.client()
        reply = client.ok(b"STORE 1 +FLAGS (newkw)")
        self.assertEqual(
            reply,
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft newkw)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft newkw \\*)] Flags permitted\r\n"
            b"* 1 FETCH (FLAGS (\\Recent newkw))\r\nt3 OK STORE completed\r\n",
        )
        self.assertEqual(client.ok(b"STORE 1 +FLAGS (newkw)"), b"* 1 FETCH (FLAGS (\\Recent newkw))\r\nt4 OK STORE completed\r\n")

    def test_a_keyword_another_session_sets_is_announced_before_the_fetch_that_shows_it(self) -> None:
        self.successResultOf(self.inbox.append(b"Subject: a\r\n\r\nbody\r\n"))
        watcher, other = self.client(), self.client()
        other.ok(b"STORE 1 +FLAGS.SILENT (otherkw)")
        reply = watcher.ok(b"NOOP")
        flags = reply.index(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft otherkw)\r\n")
        permanent = reply.index(b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft otherkw \\*)]")
        self.assertLess(flags, permanent)
        self.assertLess(permanent, reply.index(b"* 1 FETCH (FLAGS (\\Recent otherkw))\r\n"))

    def test_mail_arriving_with_a_new_keyword_announces_it_before_exists(self) -> None:
        client = self.client()
        self.successResultOf(self.inbox.append(b"Subject: a\r\n\r\nbody\r\n", ["$Junk"]))
        reply = client.ok(b"NOOP")
        self.assertLess(reply.index(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Junk)\r\n"), reply.index(b"* 1 EXISTS\r\n"))
        self.assertIn(b"$Junk", client.ok(b"FETCH 1 FLAGS"))
    # -- 8. fetching what another session expunged (imaptest stress: FETCH failed: NO [EXPUNGEISSUED])

    def test_fetch_of_a_message_another_session_expunged_answers_its_data_and_ok(self) -> None:
        self.successResultOf(self.inbox.append(b"Subject: going\r\n\r\nbody\r\n"))
        self.successResultOf(self.inbox.append(b"Subject: staying\r\n\r\nbody\r\n"))
        reader, expunger = self.client(), self.client()
        expunger.ok(b"STORE 1 +FLAGS.SILENT (\\Deleted)")
        expunger.ok(b"EXPUNGE")
        reply = reader.command(b"FETCH 1:2 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)] ENVELOPE)")
        self.assertIn(b"* 1 FETCH (FLAGS (\\Recent) BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: going\r\n\r\n ENVELOPE (NIL", reply)
        self.assertIn(b"* 2 FETCH (", reply)
        self.assertNotIn(b"EXPUNGE", reply)  # not during FETCH (RFC 3501 7.4.1)
        self.assertTrue(reply.endswith(b"t3 OK FETCH completed\r\n"), reply)
        self.assertIn(b"* 1 EXPUNGE\r\n", reader.ok(b"NOOP"))

    def test_fetch_of_a_message_whose_data_is_gone_is_skipped_with_ok_expungeissued(self) -> None:
        self.successResultOf(self.inbox.append(b"Subject: going\r\n\r\nbody\r\n"))
        self.successResultOf(self.inbox.append(b"Subject: staying\r\n\r\nbody\r\n"))
        reader, expunger = self.client(), self.client()
        expunger.ok(b"STORE 1 +FLAGS.SILENT (\\Deleted)")
        expunger.ok(b"EXPUNGE")
        self.store._mailboxes[USER.decode()]["INBOX"].expunged.clear()  # held past the store's while
        reply = reader.command(b"FETCH 1:2 BODY.PEEK[]")
        self.assertNotIn(b"* 1 FETCH", reply)
        self.assertIn(b"* 2 FETCH (BODY[] ", reply)
        self.assertTrue(reply.endswith(b"t3 OK [EXPUNGEISSUED] Some messages were already expunged\r\n"), reply)
        self.assertNotIn(b" NO ", reply)

#: imaptest's search-addresses.mbox, the header blocks of its seven messages.
SEARCH_ADDRESSES = [
    b"From: user-from@domain.org\r\nTo: user-to@domain.org\r\nCc: user-cc@domain.org\r\nBcc: user-bcc@domain.org\r\n",
    b"From: RealFrom <user-from@domain.org>\r\nTo: RealTo <user-to@domain.org>\r\nCc: RealCc <user-cc@domain.org>\r\n"
    b"Bcc: RealBcc <user-bcc@domain.org>\r\n",
    b"From: <user-from (comment)@ (comment) domain.org>\r\nTo: <user-to@domain.org>\r\nCc: <user-cc@domain.org>\r\n"
    b"Bcc: <user-bcc@domain.org>\r\n",
    b"From: user-from@domain.org (RealFrom)\r\nTo: user-to@domain.org (RealTo)\r\nCc: user-cc@domain.org (RealCc)\r\n"
    b"Bcc: user-bcc@domain.org (RealBcc)\r\n",
    b"From: user-from1@domain.org, user-from2@domain.org\r\nCc: user-cc@domain.org\r\n",
    b"From: RealFrom <user-from@domain.org>\r\nTo: groupname: groupuser1@domain.org, groupuser2@domain.org;,\r\n"
    b"  groupname2: groupuser3@domain.org;\r\n",
    b"From: RealFrom <user-from@domain.org>\r\nTo: groupname:;\r\n",
]
