"""
NOTIFY (RFC 5465) over L{StringTransport}: what a NOTIFY SET watches is
told between commands, without IDLE: STATUS for other mailboxes, LIST for
their names and subscriptions, EXISTS/FETCH/EXPUNGE for the selected one;
NOTIFY NONE and the refusals (BAD, BADEVENT, NOTIFICATIONOVERFLOW).
"""

from __future__ import annotations

import re

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from mailapp.imap import notify
from mailapp.testing import FakeStore, build_factory, service_context
from tests.protocol.accounts import make_accounts
from tests.protocol.test_imap_conformance import PASSWORD, USER, Client

MESSAGE = b"From: a@example.test\r\nSubject: one\r\n\r\nfirst body\r\n"


class NotifyTests(TestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.factory = build_factory(service_context(store=self.store, accounts=make_accounts()), "imap", allow_plaintext_auth=True)
        self.mailbox = self.store.mailbox(USER.decode())
        self.inbox = self.successResultOf(self.mailbox.folder("INBOX"))
        self.validity = self.successResultOf(self.inbox.status()).uidvalidity

    def client(self, select: bytes | None = b"Drafts") -> Client:
        """A logged-in session, with C{select} selected (by default not INBOX, where the mail comes)."""
        client = Client(self, self.factory)
        client.ok(b"LOGIN " + USER + b" " + PASSWORD)
        if select is not None:
            client.ok(b"SELECT " + select)
        return client

    def watching(self, notify_set: bytes, select: bytes | None = b"Drafts") -> Client:
        """A session with C{NOTIFY SET notify_set} in effect and its output cleared: what comes next is unsolicited."""
        client = self.client(select)
        client.ok(b"NOTIFY SET " + notify_set)
        client.transport.clear()
        return client

    def unsolicited(self, client: Client) -> bytes:
        """What the session wrote on its own since the last command."""
        return client.transport.value()

    def deliver(self) -> None:
        """New mail in INBOX, as the Router's delivery publishes it (the store's own event)."""
        self.successResultOf(self.inbox.append(MESSAGE))

    # -- capability and the STATUS of other mailboxes ---------------------------------------------

    def test_notify_is_announced(self) -> None:
        self.assertIn(b" NOTIFY ", Client(self, self.factory).ok(b"CAPABILITY"))

    def test_new_mail_in_a_watched_inbox_is_told_as_status_without_idle_or_a_command(self) -> None:
        client = self.watching(b"(INBOXES (MessageNew MessageExpunge))")
        self.deliver()
        self.assertEqual(
            self.unsolicited(client), b"* STATUS \"INBOX\" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1)\r\n" % self.validity
        )

    def test_several_deliveries_before_the_client_is_told_are_one_status(self) -> None:
        client = self.client(b"Drafts")
        client.ok(b"NOTIFY SET (INBOXES (MessageNew MessageExpunge))")
        client.protocol.flow.pauseProducing()  # the client stops reading: nothing can be written
        client.transport.clear()
        for _ in range(3):
            self.deliver()
        client.protocol.flow.resumeProducing()
        self.assertEqual(
            self.unsolicited(client), b"* STATUS \"INBOX\" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY %d UNSEEN 3)\r\n" % self.validity
        )

    def test_sessions_told_of_the_same_delivery_share_one_status_read_and_a_later_one_reads_again(self) -> None:
        watch = b"(INBOXES (MessageNew MessageExpunge))"
        first = [self.watching(watch) for _ in range(3)]
        real_status = type(self.inbox).status
        reads: list[Deferred[None]] = []

        def held_status(folder: object) -> Deferred[object]:
            now = self.successResultOf(real_status(folder))  # the counters when the read is made
            held: Deferred[None] = Deferred()
            reads.append(held)
            return held.addCallback(lambda _: now)

        self.patch(type(self.inbox), "status", held_status)
        self.deliver()
        self.assertEqual(len(reads), 1)  # three sessions, one read
        later = self.watching(watch)
        self.deliver()
        # The later session, told of the second delivery only, never joins the read made before it.
        self.assertEqual(len(reads), 2)
        for read in list(reads):
            read.callback(None)
        self.assertEqual(re.findall(rb"MESSAGES (\d)", self.unsolicited(later)), [b"2"])
        for client in first:
            self.assertEqual(re.findall(rb"MESSAGES (\d)", self.unsolicited(client)), [b"1", b"2"])
        self.assertEqual(len(reads), 2)  # then the first three joined the later session's read of the second delivery

    def test_a_folder_no_filter_matches_is_not_told(self) -> None:
        client = self.watching(b"(INBOXES (MessageNew MessageExpunge))")
        sent = self.successResultOf(self.mailbox.folder("Sent"))
        self.successResultOf(sent.append(MESSAGE))
        self.assertEqual(self.unsolicited(client), b"")

    def test_a_group_with_none_keeps_a_mailbox_out_of_later_groups(self) -> None:
        client = self.watching(b"(MAILBOXES INBOX NONE) (PERSONAL (MessageNew MessageExpunge))")
        self.deliver()
        self.assertEqual(self.unsolicited(client), b"")
        sent = self.successResultOf(self.mailbox.folder("Sent"))
        self.successResultOf(sent.append(MESSAGE))
        self.assertIn(b"* STATUS \"Sent\" (MESSAGES 1 ", self.unsolicited(client))

    def test_notify_set_status_sends_the_status_of_every_watched_mailbox_but_the_selected_one(self) -> None:
        self.deliver()
        client = self.client(b"Drafts")
        reply = client.ok(b"NOTIFY SET STATUS (PERSONAL (MessageNew MessageExpunge))")
        statuses = re.findall(rb"\* STATUS \"([^\"]+)\" ", reply)
        self.assertEqual(sorted(statuses), [b"Archive", b"INBOX", b"Junk", b"Sent", b"Trash"])
        self.assertIn(b"* STATUS \"INBOX\" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1)\r\n" % self.validity, reply)
        self.assertTrue(reply.endswith(b"t3 OK NOTIFY completed\r\n"), reply)

    def test_the_status_carries_highestmodseq_once_condstore_is_on(self) -> None:
        client = self.client(b"Drafts")
        client.ok(b"ENABLE CONDSTORE")
        client.ok(b"NOTIFY SET (INBOXES (MessageNew MessageExpunge))")
        client.transport.clear()
        self.deliver()
        self.assertRegex(self.unsolicited(client), rb"^\* STATUS \"INBOX\" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1 HIGHESTMODSEQ \d+\)\r\n$")

    def test_a_flag_change_in_another_mailbox_is_told_with_flagchange(self) -> None:
        self.deliver()
        client = self.watching(b"(INBOXES (MessageNew MessageExpunge FlagChange))")
        self.successResultOf(self.inbox.setFlags([1], ["\\Seen"], "add"))
        self.assertIn(b"* STATUS \"INBOX\" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 0)\r\n" % self.validity, self.unsolicited(client))

    def test_a_flag_change_is_not_told_without_flagchange(self) -> None:
        self.deliver()
        client = self.watching(b"(INBOXES (MessageNew MessageExpunge))")
        self.successResultOf(self.inbox.setFlags([1], ["\\Seen"], "add"))
        self.assertEqual(self.unsolicited(client), b"")

    def test_notify_none_stops_the_notifications(self) -> None:
        client = self.client(b"Drafts")
        client.ok(b"NOTIFY SET (INBOXES (MessageNew MessageExpunge))")
        client.ok(b"NOTIFY NONE")
        client.transport.clear()
        self.deliver()
        self.assertEqual(self.unsolicited(client), b"")

    def test_a_new_notify_set_replaces_the_one_before(self) -> None:
        client = self.client(b"Drafts")
        client.ok(b"NOTIFY SET (INBOXES (MessageNew MessageExpunge))")
        client.ok(b"NOTIFY SET (MAILBOXES Sent (MessageNew MessageExpunge))")
        client.transport.clear()
        self.deliver()
        self.assertEqual(self.unsolicited(client), b"")

    def test_the_watch_is_one_bus_subscription_whatever_the_number_of_folders(self) -> None:
        for n in range(40):
            self.successResultOf(self.mailbox.createFolder(f"Lists/{n}"))
        client = self.client(None)
        before = self.store.events.subscriberCount()
        client.ok(b"NOTIFY SET (PERSONAL (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange))")
        self.assertEqual(self.store.events.subscriberCount(), before + 1)
        client.protocol.connectionLost(None)  # the session's end is what unsubscribes
        self.assertEqual(self.store.events.subscriberCount(), before)

    def test_a_change_while_a_command_runs_is_told_after_its_tagged_reply(self) -> None:
        client = self.client(b"Drafts")
        client.ok(b"NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")
        reply = client.ok(b"APPEND INBOX {%d+}\r\n%s" % (len(MESSAGE), MESSAGE))
        self.assertRegex(reply, rb"^t4 OK \[APPENDUID \d+ 1\] APPEND completed\r\n\* STATUS \"INBOX\" \(MESSAGES 1 ")

    def test_a_command_sent_while_a_notification_is_read_waits_for_it(self) -> None:
        client = self.client(b"Drafts")
        client.ok(b"NOTIFY SET (INBOXES (MessageNew MessageExpunge))")
        session_mailbox = client.protocol.mailbox
        real_folder = session_mailbox.folder
        held: Deferred[None] = Deferred()
        session_mailbox.folder = lambda name: held.addCallback(lambda _: real_folder(name))
        self.deliver()
        reply = client.command(b"NOOP")
        self.assertEqual(reply, b"")  # the STATUS is being read: the NOOP waits behind it
        session_mailbox.folder = real_folder
        held.callback(None)
        self.assertRegex(client.transport.value(), rb'^\* STATUS "INBOX" \(MESSAGES 1 [^\r]*\)\r\nt4 OK NOOP completed\r\n$')

    def test_notifications_come_during_idle_too_and_done_is_answered_after_them(self) -> None:
        client = self.client(b"Drafts")
        client.ok(b"NOTIFY SET (INBOXES (MessageNew MessageExpunge))")
        self.assertEqual(client.command(b"IDLE"), b"+ idling\r\n")
        client.transport.clear()
        self.deliver()
        self.assertRegex(self.unsolicited(client), rb'^\* STATUS "INBOX" \(MESSAGES 1 [^\r]*\)\r\n$')
        client.transport.clear()
        client.protocol.dataReceived(b"DONE\r\n")
        self.assertEqual(client.transport.value(), b"t4 OK IDLE terminated\r\n")

    # -- the selected mailbox -----------------------------------------------------------------------

    def test_new_mail_in_the_selected_mailbox_is_exists_and_the_fetch_atts_asked_for(self) -> None:
        client = self.watching(b"(SELECTED (MessageNew (UID FLAGS) MessageExpunge))", b"INBOX")
        self.deliver()
        self.assertEqual(self.unsolicited(client), b"* 1 EXISTS\r\n* 1 RECENT\r\n* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n")

    def test_without_a_selected_filter_the_selected_mailbox_is_told_at_the_next_command_only(self) -> None:
        client = self.watching(b"(INBOXES (MessageNew MessageExpunge))", b"INBOX")
        self.deliver()
        self.assertEqual(self.unsolicited(client), b"")
        self.assertIn(b"* 1 EXISTS\r\n", client.ok(b"NOOP"))

    def test_selected_sends_an_expunge_at_once(self) -> None:
        self.deliver()
        self.deliver()
        client = self.watching(b"(SELECTED (MessageNew MessageExpunge))", b"INBOX")
        self.successResultOf(self.inbox.expunge([1]))
        self.assertEqual(self.unsolicited(client), b"* 1 EXPUNGE\r\n")

    def test_with_qresync_a_pushed_expunge_is_vanished(self) -> None:
        self.deliver()
        self.deliver()
        client = self.client(None)
        client.ok(b"ENABLE QRESYNC")
        client.ok(b"SELECT INBOX")
        client.ok(b"NOTIFY SET (SELECTED (MessageNew MessageExpunge FlagChange))")
        client.transport.clear()
        self.successResultOf(self.inbox.expunge([1]))
        self.assertEqual(self.unsolicited(client), b"* VANISHED 1\r\n")

    def test_selected_delayed_holds_an_expunge_until_a_command_that_may_tell_it(self) -> None:
        self.deliver()
        self.deliver()
        client = self.watching(b"(SELECTED-DELAYED (MessageNew MessageExpunge))", b"INBOX")
        self.successResultOf(self.inbox.expunge([1]))
        self.assertEqual(self.unsolicited(client), b"")
        self.assertNotIn(b"EXPUNGE", client.ok(b"FETCH 1:* FLAGS"))
        self.assertIn(b"* 1 EXPUNGE\r\n", client.ok(b"NOOP"))

    # -- mailbox names and subscriptions ------------------------------------------------------------

    def test_folders_created_renamed_and_deleted_elsewhere_are_told_as_list(self) -> None:
        client = self.client(b"INBOX")
        client.ok(b"NOTIFY SET (PERSONAL (MailboxName))")
        other = self.client(None)
        client.transport.clear()
        other.ok(b"CREATE Projects")
        self.assertEqual(self.unsolicited(client), b'* LIST () "/" "Projects"\r\n')
        client.transport.clear()
        other.ok(b"RENAME Projects Done")
        self.assertEqual(self.unsolicited(client), b'* LIST () "/" "Done" ("OLDNAME" ("Projects"))\r\n')
        client.transport.clear()
        other.ok(b"DELETE Done")
        self.assertEqual(self.unsolicited(client), b'* LIST (\\NonExistent) "/" "Done"\r\n')

    def test_a_subscription_change_elsewhere_is_told_as_list(self) -> None:
        client = self.client(None)
        client.ok(b"NOTIFY SET (PERSONAL (SubscriptionChange))")
        other = self.client(None)
        other.ok(b"CREATE Projects")
        client.transport.clear()
        other.ok(b"SUBSCRIBE Projects")
        self.assertEqual(self.unsolicited(client), b'* LIST (\\Subscribed) "/" "Projects"\r\n')
        client.transport.clear()
        other.ok(b"UNSUBSCRIBE Projects")
        self.assertEqual(self.unsolicited(client), b'* LIST () "/" "Projects"\r\n')

    def test_the_subscribed_filter_follows_subscriptions_made_since(self) -> None:
        self.successResultOf(self.mailbox.createFolder("Projects"))
        client = self.client(None)
        client.ok(b"NOTIFY SET (SUBSCRIBED (MessageNew MessageExpunge))")
        projects = self.successResultOf(self.mailbox.folder("Projects"))
        client.transport.clear()
        self.successResultOf(projects.append(MESSAGE))
        self.assertEqual(self.unsolicited(client), b"")
        self.successResultOf(self.mailbox.setSubscribed("Projects", True))
        self.successResultOf(projects.append(MESSAGE))
        self.assertIn(b"* STATUS \"Projects\" (MESSAGES 2 ", self.unsolicited(client))

    def test_subtree_watches_the_mailbox_and_those_below_it(self) -> None:
        for name in ("Lists", "Lists/a", "Listsx"):
            self.successResultOf(self.mailbox.createFolder(name))
        client = self.watching(b"(SUBTREE Lists (MessageNew MessageExpunge))", None)
        for name in ("Lists", "Lists/a", "Listsx"):
            self.successResultOf(self.successResultOf(self.mailbox.folder(name)).append(MESSAGE))
        self.assertEqual(re.findall(rb"\* STATUS \"([^\"]+)\" ", self.unsolicited(client)), [b"Lists", b"Lists/a"])

    # -- refusals -------------------------------------------------------------------------------------

    def test_annotationchange_is_refused_with_badevent_and_the_supported_list(self) -> None:
        reply = self.client(None).command(b"NOTIFY SET (SELECTED (MessageNew MessageExpunge AnnotationChange))")
        self.assertEqual(
            reply, b"t2 NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)] Event not supported\r\n"
        )

    def test_metadata_events_are_refused_with_badevent(self) -> None:
        client = self.client(None)
        for event in (b"MailboxMetadataChange", b"ServerMetadataChange", b"SomethingElse"):
            self.assertIn(b" NO [BADEVENT (", client.command(b"NOTIFY SET (PERSONAL (" + event + b"))"))

    def test_a_refused_notify_leaves_the_watch_before_it_in_effect(self) -> None:
        client = self.client(b"Drafts")
        client.ok(b"NOTIFY SET (INBOXES (MessageNew MessageExpunge))")
        client.command(b"NOTIFY SET (PERSONAL (AnnotationChange))")
        client.transport.clear()
        self.deliver()
        self.assertIn(b"* STATUS \"INBOX\" ", self.unsolicited(client))

    def test_rfc_5465_rules_are_bad(self) -> None:
        client = self.client(None)
        for arguments in (
            b"SET (INBOXES (MessageNew))",  # MessageNew without MessageExpunge
            b"SET (INBOXES (FlagChange))",  # FlagChange without them
            b"SET (SELECTED (MailboxName))",  # SELECTED takes message events only
            b"SET (SELECTED (MessageNew MessageExpunge)) (SELECTED-DELAYED (MessageNew MessageExpunge))",
            b"SET (INBOXES (MessageNew (UID) MessageExpunge))",  # fetch-atts for the selected mailbox only
            b"SET (ELSEWHERE (MessageNew MessageExpunge))",
            b"SET",
            b"NONE NOW",
            b"MAYBE",
        ):
            self.assertRegex(client.command(b"NOTIFY " + arguments), rb"^t\d+ BAD ")

    def test_more_mailboxes_than_the_bound_is_notificationoverflow(self) -> None:
        names = b" ".join(b"f%d" % n for n in range(notify.MAX_WATCHED + 1))
        reply = self.client(None).command(b"NOTIFY SET (MAILBOXES (" + names + b") (MessageNew MessageExpunge))")
        self.assertEqual(reply, b"t2 NO [NOTIFICATIONOVERFLOW] More than %d mailboxes\r\n" % notify.MAX_WATCHED)

    def test_a_personal_watch_over_more_folders_than_the_bound_is_notificationoverflow(self) -> None:
        for n in range(notify.MAX_WATCHED):
            self.successResultOf(self.mailbox.createFolder(f"f{n}"))
        reply = self.client(None).command(b"NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")
        self.assertEqual(reply, b"t2 NO [NOTIFICATIONOVERFLOW] More than %d mailboxes\r\n" % notify.MAX_WATCHED)

    def test_a_folder_created_past_the_bound_is_told_as_overflow_and_notify_turns_off(self) -> None:
        existing = len(self.successResultOf(self.mailbox.listFolders()))
        for n in range(notify.MAX_WATCHED - existing):
            self.successResultOf(self.mailbox.createFolder(f"f{n}"))
        client = self.client(None)
        client.ok(b"NOTIFY SET (PERSONAL (MessageNew MessageExpunge MailboxName))")  # exactly the bound
        client.transport.clear()
        self.successResultOf(self.mailbox.createFolder("one-more"))
        self.assertEqual(self.unsolicited(client), b"* OK [NOTIFICATIONOVERFLOW] Too many notifications; NOTIFY is now off\r\n")
        client.transport.clear()
        self.deliver()
        self.assertEqual(self.unsolicited(client), b"")

    def test_a_client_that_does_not_read_is_told_of_the_overflow_and_notify_turns_off(self) -> None:
        self.successResultOf(self.mailbox.createFolder("Projects"))
        client = self.client(b"Drafts")
        client.ok(b"NOTIFY SET (PERSONAL (SubscriptionChange MessageNew MessageExpunge))")
        client.protocol.flow.pauseProducing()
        client.transport.clear()
        for n in range(notify.MAX_PENDING + 1):
            self.successResultOf(self.mailbox.setSubscribed("Projects", n % 2 == 0))
        client.protocol.flow.resumeProducing()
        self.assertEqual(self.unsolicited(client), b"* OK [NOTIFICATIONOVERFLOW] Too many notifications; NOTIFY is now off\r\n")
        client.transport.clear()
        self.deliver()
        self.assertEqual(self.unsolicited(client), b"")
