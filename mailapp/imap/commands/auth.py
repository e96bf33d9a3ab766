"""
The commands of any state and of login (RFC 3501 6.1, 6.2): CAPABILITY,
NOOP, LOGOUT, ID (RFC 2971), STARTTLS, LOGIN, AUTHENTICATE PLAIN (with
SASL-IR, RFC 4959; decoded by L{mailapp.sasl}, as SMTP's and POP3's are),
and ENABLE (RFC 5161).

The mechanisms behind them are the session's (L{IMAPServer.login}, its
abuse guard and budgets, L{IMAPServer.startTLS}'s buffer drop); here is what
each command takes and answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailapp import sasl
from mailapp.imap.policy import VERSION
from mailapp.imap.state import State
from mailapp.imap.wire import Atom, BadCommand, Token, as_string, expect_count

if TYPE_CHECKING:
    from twisted.internet import defer

    from mailapp.imap.session import IMAPServer

__all__ = ["authenticate", "capability", "enable", "id_", "login", "logout", "noop", "starttls"]


def capability(session: IMAPServer, tag: bytes, arguments: list[Token]) -> None:
    expect_count(arguments, 0, "CAPABILITY")
    session.untagged(b"CAPABILITY " + session.capabilityText())
    session.tagged(tag, b"OK", b"CAPABILITY completed")


def noop(session: IMAPServer, tag: bytes, arguments: list[Token]) -> Any:
    expect_count(arguments, 0, "NOOP")
    return session.complete(tag, b"NOOP completed", force=True)


def logout(session: IMAPServer, tag: bytes, arguments: list[Token]) -> None:
    session.untagged(b"BYE Logging out")
    session.tagged(tag, b"OK", b"LOGOUT completed")
    session.state = State.LOGOUT
    session.close()


def id_(session: IMAPServer, tag: bytes, arguments: list[Token]) -> None:
    expect_count(arguments, 1, "ID")
    session.untagged(b'ID ("name" "mailapp" "version" "' + VERSION + b'")')
    session.tagged(tag, b"OK", b"ID completed")


def starttls(session: IMAPServer, tag: bytes, arguments: list[Token]) -> None:
    expect_count(arguments, 0, "STARTTLS")
    if session.factory.tls is None or session.secure:
        session.bad(tag, b"STARTTLS not available")
        return
    session.startTLS(tag)


def login(session: IMAPServer, tag: bytes, arguments: list[Token]) -> defer.Deferred[None] | None:
    expect_count(arguments, 2, "LOGIN")
    if not session.loginAllowed():
        session.tagged(tag, b"NO", b"[PRIVACYREQUIRED] Use STARTTLS first")
        return None
    username = as_string(arguments[0], "user name")
    password = as_string(arguments[1], "password")
    return session.login(tag, username, password)


def authenticate(session: IMAPServer, tag: bytes, arguments: list[Token]) -> None:
    if not arguments or len(arguments) > 2 or not isinstance(arguments[0], Atom):
        raise BadCommand("AUTHENTICATE mechanism [initial-response]")
    if arguments[0].upper() != b"PLAIN":
        session.tagged(tag, b"NO", b"Unsupported authentication mechanism")
        return
    if not session.loginAllowed():
        session.tagged(tag, b"NO", b"[PRIVACYREQUIRED] Use STARTTLS first")
        return

    def response(line: bytes) -> None:
        try:
            credentials = sasl.decode_plain(line)
        except sasl.Cancelled:
            session.bad(tag, b"Authentication cancelled")
            return
        except sasl.BadBase64:
            session.bad(tag, b"Invalid base64")
            return
        except sasl.MalformedPlain:
            session.bad(tag, b"Malformed PLAIN response")
            return
        if credentials.actsForAnother:
            session.hold(session.authFailed(tag, credentials.authcid), tag)
            return
        session.hold(session.login(tag, credentials.authcid, credentials.password), tag)

    if len(arguments) == 2:
        response(as_string(arguments[1], "initial response"))
    else:
        # SASL-IR not used: ask for the response; the reader hands the next line to it.
        session.write(b"+ \r\n")
        session.reader.takeNextLine(response)


def enable(session: IMAPServer, tag: bytes, arguments: list[Token]) -> None:
    if not arguments:
        raise BadCommand("ENABLE needs a capability")
    # None of our extensions needs enabling (no CONDSTORE, QRESYNC, UTF8=ACCEPT yet).
    session.untagged(b"ENABLED")
    session.tagged(tag, b"OK", b"ENABLE completed")
