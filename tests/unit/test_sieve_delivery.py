"""
Sieve at local delivery: an MX session over StringTransport on the fakes,
with users' scripts in a temporary state directory, checked where each
message landed (folder, flags), what SMTP answered, and what was sent.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mailapp.sieve.filter import SieveFilter
from mailapp.sieve.scripts import ScriptStore
from mailapp.testing import MINIMAL_CONFIG, RecordingStore, build_factory
from tests.protocol.context import server_context
from tests.protocol.smtp_client import Session

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"


class SieveDeliveryTestCase(TestCase):
    def setUp(self) -> None:
        self.store = RecordingStore()
        limits = {"mx_messages_per_minute": 0, "mx_bytes_per_minute": 0}
        self.context = server_context(self.store, limits=limits)
        self.scripts = ScriptStore(Path(self.mktemp()))
        pools = self.context.pools
        self.context.router.sieve = SieveFilter(
            self.scripts,
            lambda function, *args: pools.run(pools.filtering, function, *args),
            self.context.reactor,
        )
        self.factory = build_factory(self.context, "smtp")
        self.sessions: list[Session] = []

    def tearDown(self) -> None:
        for session in self.sessions:
            session.proto.connectionLost(None)

    def script(self, account: str, text: str) -> None:
        self.scripts.put(account, "main", text)
        self.scripts.activate(account, "main")

    def send(self, sender: str, recipients: list[str], message: bytes) -> list[bytes]:
        session = Session(self.factory)
        self.sessions.append(session)
        session.send(b"EHLO client.example.net\r\n")
        session.send(f"MAIL FROM:<{sender}>\r\n".encode())
        for recipient in recipients:
            session.send(f"RCPT TO:<{recipient}>\r\n".encode())
        session.clear()
        session.send(b"DATA\r\n")
        session.send(message + b".\r\n")
        return session.replies()

    def commit(self, sender: str, recipients: list[str], message: bytes) -> None:
        """Through the Router as the MX hands it a message (an MX client may not use our domain's sender)."""
        transaction = self.context.router.start(sender, relay_allowed=False)
        for recipient in recipients:
            transaction.addRecipient(recipient)
        transaction.open().write(message)
        transaction.commit()

    def where(self, account: str) -> list[tuple[str, frozenset[str]]]:
        return [
            (d.folder, d.flags) for d in self.store.delivered if account in d.accounts
        ]


MESSAGE = b"From: Dave <dave@example.net>\r\nTo: alice@example.test\r\nSubject: [dev] build\r\nMessage-ID: <d1@example.net>\r\n\r\nhello\r\n"


class FilingTests(SieveDeliveryTestCase):
    def test_fileinto_with_flags_files_the_copy_in_its_folder(self) -> None:
        self.script(
            ALICE,
            'require ["fileinto", "imap4flags"]; if header :contains "subject" "[dev]" { fileinto :flags "\\\\Seen $Dev" "Archive"; }',
        )
        replies = self.send("dave@example.net", [ALICE], MESSAGE)
        self.assertEqual(replies[-1][:3], b"250")
        self.assertEqual(
            self.where(ALICE), [("Archive", frozenset({"\\Seen", "$Dev"}))]
        )

    def test_fileinto_a_missing_folder_keeps_in_inbox(self) -> None:
        self.script(ALICE, 'require "fileinto"; fileinto "Nowhere";')
        self.send("dave@example.net", [ALICE], MESSAGE)
        self.assertEqual(self.where(ALICE), [("INBOX", frozenset())])

    @inlineCallbacks
    def test_fileinto_create_makes_the_folder(self):
        self.script(
            ALICE, 'require ["fileinto", "mailbox"]; fileinto :create "Lists/dev";'
        )
        self.send("dave@example.net", [ALICE], MESSAGE)
        self.assertEqual(self.where(ALICE), [("Lists/dev", frozenset())])
        names = [info.name for info in (yield self.store.mailbox(ALICE).listFolders())]
        self.assertIn("Lists/dev", names)

    def test_discard_answers_250_and_stores_nothing(self) -> None:
        self.script(ALICE, "discard;")
        self.assertEqual(
            self.send("dave@example.net", [ALICE], MESSAGE)[-1][:3], b"250"
        )
        self.assertEqual(self.where(ALICE), [])

    def test_each_recipient_gets_its_own_placement(self) -> None:
        self.script(ALICE, 'require "fileinto"; fileinto "Archive";')
        self.send("dave@example.net", [ALICE, BOB], MESSAGE)
        self.assertEqual(self.where(ALICE), [("Archive", frozenset())])
        self.assertEqual(self.where(BOB), [("INBOX", frozenset())])

    def test_a_runtime_error_keeps_the_message(self) -> None:
        self.script(ALICE, 'require "include"; include "missing"; discard;')
        self.send("dave@example.net", [ALICE], MESSAGE)
        self.assertEqual(self.where(ALICE), [("INBOX", frozenset())])

    def test_a_failure_to_run_the_scripts_delivers_unfiltered(self) -> None:
        self.script(ALICE, "discard;")

        def broken(account: str) -> None:
            raise OSError("unreadable")

        self.scripts.active = broken  # type: ignore[method-assign]
        self.assertEqual(
            self.send("dave@example.net", [ALICE], MESSAGE)[-1][:3], b"250"
        )
        self.assertEqual(self.where(ALICE), [("INBOX", frozenset())])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_a_global_before_script_runs_for_every_account_before_its_own(self) -> None:
        self.scripts.put_global("before", 'require "fileinto"; if header :contains "subject" "[dev]" { fileinto "Archive"; stop; }')
        self.script(BOB, "discard;")
        self.send("dave@example.net", [ALICE, BOB], MESSAGE)
        self.assertEqual(self.where(ALICE), [("Archive", frozenset())])
        self.assertEqual(self.where(BOB), [("Archive", frozenset())])

    def test_include_global(self) -> None:
        self.scripts.put_global("lists", 'require "fileinto"; fileinto "Archive";')
        self.script(ALICE, 'require "include"; include :global "lists";')
        self.send("dave@example.net", [ALICE], MESSAGE)
        self.assertEqual(self.where(ALICE), [("Archive", frozenset())])

    def test_envelope_detail_of_the_rcpt(self) -> None:
        self.script(
            ALICE,
            'require ["fileinto", "envelope", "subaddress"]; if envelope :detail "to" "shop" { fileinto "Archive"; }',
        )
        self.send("dave@example.net", ["alice+shop@example.test"], MESSAGE)
        self.assertEqual(self.where(ALICE), [("Archive", frozenset())])


class ReloadTests(SieveDeliveryTestCase):
    def test_reconfigure_applies_new_sieve_limits(self) -> None:
        from mailapp.testing import fake_config

        config = fake_config(MINIMAL_CONFIG + "[limits]\nsieve_max_redirects = 1\nsieve_max_script_size = 100\n")
        sieve = self.context.router.sieve
        assert sieve is not None
        sieve.reconfigure(config)
        self.assertEqual((sieve.limits.max_redirects, self.scripts.max_script_size), (1, 100))
        self.script(ALICE, f'redirect "{BOB}"; redirect "{CAROL}";')
        self.send("dave@example.net", [ALICE], MESSAGE)
        self.assertEqual(self.where(ALICE), [("INBOX", frozenset())])


class JunkTests(SieveDeliveryTestCase):
    @inlineCallbacks
    def test_a_script_moves_a_junk_message_back_to_inbox(self):
        self.script(
            ALICE,
            'require "fileinto"; if address :is "from" "dave@example.net" { fileinto "INBOX"; }',
        )
        router = self.context.router
        transaction = router.start("dave@example.net", relay_allowed=False)
        yield transaction.addRecipient(ALICE)
        transaction.folder = "Junk"
        transaction.open().write(MESSAGE)
        yield transaction.commit()
        self.assertEqual(self.where(ALICE), [("INBOX", frozenset())])

    @inlineCallbacks
    def test_the_implicit_keep_follows_the_mx_folder(self):
        self.script(ALICE, 'require "imap4flags"; addflag "$Checked";')
        router = self.context.router
        transaction = router.start("dave@example.net", relay_allowed=False)
        yield transaction.addRecipient(ALICE)
        transaction.folder = "Junk"
        transaction.open().write(MESSAGE)
        yield transaction.commit()
        self.assertEqual(self.where(ALICE), [("Junk", frozenset({"$Checked"}))])


class RejectTests(SieveDeliveryTestCase):
    def test_reject_with_one_recipient_is_550_at_data_with_the_reason(self) -> None:
        self.script(ALICE, 'require "reject"; reject "I do not want mail from you";')
        replies = self.send("dave@example.net", [ALICE], MESSAGE)
        self.assertEqual(replies[-1], b"550 5.7.1 I do not want mail from you")
        self.assertEqual(self.store.delivered, [])

    def test_reject_of_a_bounce_is_550_too_never_a_dsn(self) -> None:
        self.script(ALICE, 'require "reject"; reject "no bounces";')
        self.assertEqual(self.send("", [ALICE], MESSAGE)[-1], b"550 5.7.1 no bounces")
        self.assertEqual(self.store.delivered, [])

    def test_ereject_is_550_too(self) -> None:
        self.script(ALICE, 'require "ereject"; ereject "no";')
        self.assertEqual(
            self.send("dave@example.net", [ALICE], MESSAGE)[-1], b"550 5.7.1 no"
        )

    def test_reject_by_one_of_two_recipients_delivers_to_the_other(self) -> None:
        self.script(ALICE, 'require "reject"; reject "no";')
        replies = self.send("dave@example.net", [ALICE, BOB], MESSAGE)
        self.assertEqual(replies[-1][:3], b"250")
        self.assertEqual(self.where(ALICE), [])
        self.assertEqual(self.where(BOB), [("INBOX", frozenset())])

    def test_reject_from_a_local_user_to_two_recipients_sends_a_dsn(self) -> None:
        # A trusted (relay-allowed) sender: the DSN cannot be backscatter (RFC 5429 2.1.2).
        self.script(ALICE, 'require "reject"; reject "not today";')
        router = self.context.router
        transaction = router.start(CAROL, relay_allowed=True)
        transaction.addRecipient(ALICE)
        transaction.addRecipient(BOB)
        transaction.open().write(MESSAGE)
        transaction.commit()
        dsns = [d for d in self.store.delivered if CAROL in d.accounts]
        self.assertEqual(len(dsns), 1)
        self.assertIn(b"Action: failed", dsns[0].data)
        self.assertIn(b"not today", dsns[0].data)


class RedirectTests(SieveDeliveryTestCase):
    def test_redirect_to_a_local_user_lands_there_marked(self) -> None:
        self.script(ALICE, f'redirect "{CAROL}";')
        self.assertEqual(
            self.send("dave@example.net", [ALICE], MESSAGE)[-1][:3], b"250"
        )
        self.assertEqual(self.where(ALICE), [])
        [copy] = self.store.inbox(CAROL)
        self.assertTrue(
            copy.startswith(
                b"Return-Path: <dave@example.net>\r\nDelivered-To: carol@example.test\r\nX-Sieve-Redirected-By: alice@example.test\r\n"
            )
        )

    def test_redirect_copy_keeps_a_copy_too(self) -> None:
        self.script(ALICE, f'require "copy"; redirect :copy "{CAROL}";')
        self.send("dave@example.net", [ALICE], MESSAGE)
        self.assertEqual(len(self.store.inbox(ALICE)), 1)
        self.assertEqual(len(self.store.inbox(CAROL)), 1)

    def test_a_redirect_loop_ends_with_a_kept_copy(self) -> None:
        self.script(ALICE, f'redirect "{BOB}";')
        self.script(BOB, f'redirect "{ALICE}";')
        self.assertEqual(
            self.send("dave@example.net", [ALICE], MESSAGE)[-1][:3], b"250"
        )
        delivered = self.store.inbox(ALICE) + self.store.inbox(BOB)
        self.assertEqual(len(delivered), 1)
        self.assertIn(b"X-Sieve-Redirected-By: alice@example.test", delivered[0])


class VacationTests(SieveDeliveryTestCase):
    SCRIPT = 'require "vacation"; vacation :days 2 :subject "Away" "Back on Monday.";'

    def replies_to(self, account: str) -> list[bytes]:
        return [
            data
            for data in self.store.inbox(account)
            if b"Auto-Submitted: auto-replied" in data
        ]

    def message_from_carol(self, extra: bytes = b"") -> bytes:
        return (
            b"From: carol@example.test\r\nTo: alice@example.test\r\nSubject: lunch?\r\nMessage-ID: <c1@example.test>\r\n"
            + extra
            + b"\r\nhi\r\n"
        )

    def test_vacation_answers_once_per_sender_per_days(self) -> None:
        self.script(ALICE, self.SCRIPT)
        self.commit(CAROL, [ALICE], self.message_from_carol())
        self.commit(CAROL, [ALICE], self.message_from_carol())
        [reply] = self.replies_to(CAROL)
        self.assertIn(b"Return-Path: <>", reply)
        self.assertIn(b"Subject: Away", reply)
        self.assertIn(b"In-Reply-To: <c1@example.test>", reply)
        self.assertIn(b"Back on Monday.", reply)
        self.context.reactor.advance(2 * 86400 + 1)
        self.commit(CAROL, [ALICE], self.message_from_carol())
        self.assertEqual(len(self.replies_to(CAROL)), 2)

    def test_vacation_from_and_mime(self) -> None:
        script = (
            'require "vacation"; vacation :from "Alice <alice@example.test>" :mime '
            '"Content-Type: text/html; charset=utf-8\r\n\r\n<p>Away</p>";'
        )
        self.script(ALICE, script)
        self.commit(CAROL, [ALICE], self.message_from_carol())
        [reply] = self.replies_to(CAROL)
        head, _, body = reply.partition(b"\r\n\r\n")
        self.assertIn(b"\r\nFrom: Alice <alice@example.test>\r\n", head)
        self.assertIn(b"\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8", head)
        self.assertIn(b"Subject: Auto: lunch?", head)
        self.assertEqual(body, b"<p>Away</p>")

    def test_vacation_never_answers_a_list_message(self) -> None:
        self.script(ALICE, self.SCRIPT)
        self.commit(
            CAROL, [ALICE], self.message_from_carol(b"List-Id: <dev.example.test>\r\n")
        )
        self.commit(CAROL, [ALICE], self.message_from_carol(b"Precedence: bulk\r\n"))
        self.commit(
            CAROL,
            [ALICE],
            self.message_from_carol(b"Auto-Submitted: auto-generated\r\n"),
        )
        self.assertEqual(self.replies_to(CAROL), [])

    def test_vacation_never_answers_the_null_sender_or_ourselves(self) -> None:
        self.script(ALICE, self.SCRIPT)
        self.commit("", [ALICE], self.message_from_carol())
        self.commit(ALICE, [ALICE], self.message_from_carol())
        self.assertEqual(self.replies_to(CAROL) + self.replies_to(ALICE), [])

    def test_vacation_needs_us_among_the_recipients(self) -> None:
        self.script(ALICE, self.SCRIPT)
        self.commit(
            CAROL,
            [ALICE],
            b"From: carol@example.test\r\nTo: someone@example.net\r\nSubject: x\r\n\r\nhi\r\n",
        )
        self.assertEqual(self.replies_to(CAROL), [])
