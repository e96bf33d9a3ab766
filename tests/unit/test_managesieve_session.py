"""
The ManageSieve session (RFC 5804) over StringTransport with a fake clock,
on the fakes' accounts and a temporary script directory: every reply as
the client reads it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.trial.unittest import TestCase
from zope.interface import directlyProvides

from mailapp.sieve.filter import SieveFilter
from mailapp.sieve.scripts import ScriptStore
from mailapp.testing import RecordingStore, build_factory
from tests.protocol.context import server_context
from tests.protocol.smtp_client import Session

ALICE = "alice@example.test"


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def literal(text: str) -> bytes:
    data = text.encode()
    return b"{%d+}\r\n" % len(data) + data


class ManageSieveTestCase(TestCase):
    tls: Any = None
    plaintext = True

    def setUp(self) -> None:
        self.context = server_context(
            RecordingStore(), tls=self.tls, security={"auth_failure_delay": 0.5}
        )
        self.scripts = ScriptStore(
            Path(self.mktemp()), max_scripts=3, max_script_size=200
        )
        pools = self.context.pools
        self.context.router.sieve = SieveFilter(
            self.scripts,
            lambda f, *a: pools.run(pools.filtering, f, *a),
            self.context.reactor,
        )
        factory = build_factory(
            self.context,
            "managesieve",
            tls="starttls" if self.tls is not None else "none",
            allow_plaintext_auth=self.plaintext,
        )
        self.session = Session(factory)

    def tearDown(self) -> None:
        self.session.proto.connectionLost(None)

    def say(self, data: bytes) -> list[bytes]:
        self.session.clear()
        self.session.send(data)
        return self.session.replies()

    def login(self) -> None:
        self.assertEqual(
            self.say(
                b'AUTHENTICATE "PLAIN" "' + plain(ALICE, "alice-secret") + b'"\r\n'
            ),
            [b'OK "Logged in"'],
        )


class GreetingTests(ManageSieveTestCase):
    tls = object()
    plaintext = False

    def test_greeting_lists_capabilities_with_starttls_and_no_sasl_before_tls(
        self,
    ) -> None:
        replies = self.session.replies()
        self.assertEqual(replies[0], b'"IMPLEMENTATION" "mailapp"')
        self.assertIn(b'"SASL" ""', replies)
        self.assertIn(b'"STARTTLS"', replies)
        self.assertIn(b'"VERSION" "1.0"', replies)
        sieve = [line for line in replies if line.startswith(b'"SIEVE"')][0]
        for extension in (
            b"fileinto",
            b"vacation",
            b"imap4flags",
            b"include",
            b"relational",
        ):
            self.assertIn(extension, sieve)
        self.assertTrue(replies[-1].startswith(b"OK "))

    def test_authenticate_before_starttls_is_refused(self) -> None:
        reply = self.say(
            b'AUTHENTICATE "PLAIN" "' + plain(ALICE, "alice-secret") + b'"\r\n'
        )
        self.assertEqual(
            reply,
            [
                b'NO (ENCRYPT-NEEDED) "Authentication is not allowed without TLS; use STARTTLS first"'
            ],
        )

    def test_starttls_then_capabilities_again(self) -> None:
        transport = self.session.transport
        started = transport.startTLS

        def startTLS(context: Any) -> None:
            # As Twisted's TCP transport does once TLS is started.
            started(context)
            directlyProvides(transport, ISSLTransport)

        transport.startTLS = startTLS
        replies = self.say(b"STARTTLS\r\n")
        self.assertEqual(replies[0], b'OK "Begin TLS negotiation now"')
        self.assertEqual(len(self.session.tls_started), 1)
        self.assertIn(b'"SASL" "PLAIN"', replies)
        self.assertNotIn(b'"STARTTLS"', replies)

    def test_commands_after_login_need_a_login(self) -> None:
        self.assertEqual(self.say(b"LISTSCRIPTS\r\n"), [b'NO "Authenticate first"'])


class LoginTests(ManageSieveTestCase):
    def test_authenticate_plain_with_a_continuation(self) -> None:
        self.assertEqual(self.say(b'AUTHENTICATE "PLAIN"\r\n'), [b'""'])
        self.assertEqual(
            self.say(b'"' + plain(ALICE, "alice-secret") + b'"\r\n'),
            [b'OK "Logged in"'],
        )

    def test_a_failed_login_is_answered_after_the_delay(self) -> None:
        self.assertEqual(
            self.say(b'AUTHENTICATE "PLAIN" "' + plain(ALICE, "wrong") + b'"\r\n'), []
        )
        self.context.reactor.advance(0.6)
        self.assertEqual(self.session.replies(), [b'NO "Authentication failed"'])

    def test_too_many_commands_before_login_close_the_session(self) -> None:
        replies = self.say(b"NOOP\r\n" * 21)
        self.assertEqual(replies[-1], b'BYE "Too many commands before login; closing connection"')
        self.assertTrue(self.session.transport.disconnecting)

    def test_logout(self) -> None:
        self.assertEqual(self.say(b"LOGOUT\r\n"), [b'OK "Logout completed"'])

    def test_noop_with_a_tag(self) -> None:
        self.assertEqual(self.say(b'NOOP "abc"\r\n'), [b'OK (TAG "abc") "Done"'])


class ScriptTests(ManageSieveTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.login()

    def test_putscript_then_listscripts_setactive_getscript(self) -> None:
        script = 'require "fileinto";\r\nfileinto "Archive";\r\n'
        self.assertEqual(
            self.say(b'PUTSCRIPT "main" ' + literal(script) + b"\r\n"),
            [b'OK "Script stored"'],
        )
        self.assertEqual(
            self.say(b"LISTSCRIPTS\r\n"), [b'"main"', b'OK "Listscripts completed"']
        )
        self.assertEqual(self.say(b'SETACTIVE "main"\r\n'), [b'OK "Active script set"'])
        self.assertEqual(
            self.say(b"LISTSCRIPTS\r\n"),
            [b'"main" ACTIVE', b'OK "Listscripts completed"'],
        )
        self.session.clear()
        self.session.send(b'GETSCRIPT "main"\r\n')
        self.assertEqual(
            self.session.transport.value(),
            b"{%d}\r\n" % len(script)
            + script.encode()
            + b'\r\nOK "Getscript completed"\r\n',
        )
        self.assertEqual(self.scripts.active_name(ALICE), "main")

    def test_putscript_refuses_a_broken_script_with_its_line(self) -> None:
        reply = self.say(
            b'PUTSCRIPT "bad" '
            + literal('require "fileinto";\r\nfileinto "x"\r\n')
            + b"\r\n"
        )
        self.assertEqual(
            reply,
            [
                b"NO \"line 3, column 1: expected ';' after 'fileinto', found the end of the script\""
            ],
        )
        self.assertEqual(self.scripts.listing(ALICE), [])

    def test_checkscript(self) -> None:
        self.assertEqual(
            self.say(b"CHECKSCRIPT " + literal("keep;") + b"\r\n"),
            [b'OK "Script is valid"'],
        )
        self.assertEqual(
            self.say(b"CHECKSCRIPT " + literal("frob;") + b"\r\n"),
            [b"NO \"line 1, column 1: unknown command 'frob'\""],
        )

    def test_deletescript_refuses_the_active_one(self) -> None:
        self.say(b'PUTSCRIPT "main" ' + literal("keep;") + b"\r\n")
        self.say(b'SETACTIVE "main"\r\n')
        self.assertEqual(
            self.say(b'DELETESCRIPT "main"\r\n'),
            [b'NO (ACTIVE) "the active script cannot be deleted; deactivate it first"'],
        )
        self.say(b'SETACTIVE ""\r\n')
        self.assertEqual(self.say(b'DELETESCRIPT "main"\r\n'), [b'OK "Script deleted"'])
        self.assertEqual(
            self.say(b'DELETESCRIPT "main"\r\n'),
            [b"NO (NONEXISTENT) \"no script named 'main'\""],
        )

    def test_renamescript_keeps_it_active(self) -> None:
        self.say(b'PUTSCRIPT "a" ' + literal("keep;") + b"\r\n")
        self.say(b'SETACTIVE "a"\r\n')
        self.assertEqual(
            self.say(b'RENAMESCRIPT "a" "b"\r\n'), [b'OK "Script renamed"']
        )
        self.assertEqual(self.scripts.active_name(ALICE), "b")

    def test_havespace(self) -> None:
        self.assertEqual(
            self.say(b'HAVESPACE "x" 100\r\n'), [b'OK "Putscript would succeed"']
        )
        self.assertEqual(
            self.say(b'HAVESPACE "x" 1000\r\n'),
            [b'NO (QUOTA/MAXSIZE) "a script may be at most 200 bytes"'],
        )

    def test_a_script_over_the_size_limit_is_refused_and_its_bytes_skipped(
        self,
    ) -> None:
        reply = self.say(b'PUTSCRIPT "big" ' + literal("#" * 300) + b"\r\nNOOP\r\n")
        self.assertEqual(
            reply, [b'NO (QUOTA/MAXSIZE) "Script too large"', b'OK "Done"']
        )

    def test_unknown_command(self) -> None:
        self.assertEqual(self.say(b"FROB\r\n"), [b'NO "Unknown command"'])
