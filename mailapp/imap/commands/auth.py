"""
The commands of any state and of login (RFC 3501 6.1, 6.2): CAPABILITY,
NOOP, LOGOUT, ID (RFC 2971), STARTTLS, LOGIN, AUTHENTICATE PLAIN (with
SASL-IR, RFC 4959; decoded by L{mailapp.sasl}, as SMTP's and POP3's are),
and ENABLE (RFC 5161: UTF8=ACCEPT, RFC 6855).

The mechanisms behind them are the session's line base's
(L{mailapp.linesession.LineSession}: logins through the abuse guard and
budgets, STARTTLS's buffer drop); here is what each command takes and
answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailapp import sasl
from mailapp.imap.policy import VERSION
from mailapp.imap.state import State
from mailapp.imap.wire import Atom, BadCommand, Token, as_string, expect_count

if TYPE_CHECKING:
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


def login(session: IMAPServer, tag: bytes, arguments: list[Token]) -> None:
    expect_count(arguments, 2, "LOGIN")
    if not session.loginAllowed():
        session.tagged(tag, b"NO", b"[PRIVACYREQUIRED] Use STARTTLS first")
        return
    username = as_string(arguments[0], "user name")
    password = as_string(arguments[1], "password")
    session.login(tag, username, password)


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
        session.loginPlain(tag, credentials)

    if len(arguments) == 2:
        response(as_string(arguments[1], "initial response"))
    else:
        # SASL-IR not used: ask for the response; the reader hands the next line to it.
        session.write(b"+ \r\n")
        session.reader.takeNextLine(response)


def enable(session: IMAPServer, tag: bytes, arguments: list[Token]) -> None:
    if not arguments:
        raise BadCommand("ENABLE needs a capability")
    enabled = []
    for argument in arguments:
        name = as_string(argument, "capability").upper()
        # RFC 6855 3: UTF8=ACCEPT; UTF8=ONLY is not offered, so not enabled.
        if name == b"UTF8=ACCEPT" and not session.utf8:
            session.utf8 = True
            enabled.append(name)
    session.untagged(b" ".join([b"ENABLED", *enabled]))
    session.tagged(tag, b"OK", b"ENABLE completed")
