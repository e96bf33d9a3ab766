"""
The ManageSieve session (RFC 5804) on the shared L{LineSession}: the base
owns admission, the command loop, STARTTLS's buffer drop, logins and their
delays, deadlines and shutdown; this module is the protocol's words.

Commands: CAPABILITY, STARTTLS, AUTHENTICATE PLAIN (only over TLS, unless
the listener allows plaintext on loopback), LOGOUT, NOOP, and once logged
in HAVESPACE, PUTSCRIPT, CHECKSCRIPT, LISTSCRIPTS, SETACTIVE, GETSCRIPT,
DELETESCRIPT, RENAMESCRIPT. Arguments are atoms, quoted strings and
literals (C{{n+}}, as clients send them; C{{n}} too); a literal's bytes
are read raw (L{consumeRaw}), bounded by the largest script we store.
A script is checked before it is stored: PUTSCRIPT and CHECKSCRIPT answer
NO with the parser's "line L, column C: ..." (RFC 5804 2.6).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailapp import logevents, sasl
from mailapp.linesession import LineSession
from mailapp.sessions import BANNED, AuthOutcome, Overrun
from mailapp.sieve import EXTENSIONS, SieveSyntaxError, compile
from mailapp.sieve.scripts import ScriptError

if TYPE_CHECKING:
    from mailapp.managesieve.factory import ManageSieveFactory, ManageSievePolicy

__all__ = ["ManageSieveServer"]

_log = Logger()

MAX_LINE = 8192
_LITERAL = re.compile(rb"\{(\d{1,9})(\+?)\}$")
_ANONYMOUS = ("CAPABILITY", "STARTTLS", "AUTHENTICATE", "LOGOUT", "NOOP")
_AUTHENTICATED = (
    "HAVESPACE",
    "PUTSCRIPT",
    "CHECKSCRIPT",
    "LISTSCRIPTS",
    "SETACTIVE",
    "GETSCRIPT",
    "DELETESCRIPT",
    "RENAMESCRIPT",
)
_CHANGES = ("PUTSCRIPT", "SETACTIVE", "DELETESCRIPT", "RENAMESCRIPT")


class _BadSyntax(Exception):
    pass


def quoted(text: str) -> bytes:
    """A string as RFC 5804 4 writes it: quoted when it can be, else a literal."""
    data = text.encode("utf-8")
    if (
        len(data) < 1024
        and b"\r" not in data
        and b"\n" not in data
        and b"\x00" not in data
    ):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def _tokens(line: bytes) -> list[bytes | str]:
    """A line's atoms (bytes) and strings (str); a trailing literal marker is left to the caller."""
    out: list[bytes | str] = []
    at = 0
    while at < len(line):
        char = line[at : at + 1]
        if char == b" ":
            at += 1
        elif char == b'"':
            at += 1
            value = bytearray()
            while True:
                if at >= len(line):
                    raise _BadSyntax("unterminated string")
                c = line[at : at + 1]
                if c == b"\\" and at + 1 < len(line):
                    value += line[at + 1 : at + 2]
                    at += 2
                elif c == b'"':
                    at += 1
                    break
                else:
                    value += c
                    at += 1
            try:
                out.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                raise _BadSyntax("a string must be UTF-8") from None
        else:
            end = line.find(b" ", at)
            end = len(line) if end < 0 else end
            out.append(line[at:end])
            at = end
    return out


class ManageSieveServer(LineSession):
    """One ManageSieve session; see the module docstring."""

    protocolName = "managesieve"
    maxUnterminated = MAX_LINE
    maxLine = MAX_LINE

    factory: ManageSieveFactory
    policy: ManageSievePolicy

    def __init__(self, factory: ManageSieveFactory) -> None:
        super().__init__(factory)
        self.maxAuthFailures = self.policy.max_auth_failures
        self.account: str | None = None
        self._logout: Callable[[], None] | None = None
        #: The command being read across literals: its words so far.
        self._words: list[bytes | str] = []
        self._literal: int | None = None
        self._literalData = bytearray()
        self._literalTooBig = False

    # -- replies ------------------------------------------------------------------

    def _reply(self, status: bytes, text: str = "", code: bytes = b"") -> None:
        line = status
        if code:
            line += b" (" + code + b")"
        if text:
            line += b" " + quoted(text)
        self._write(line + b"\r\n")

    def _ok(self, text: str = "", code: bytes = b"") -> None:
        self._reply(b"OK", text, code)

    def _no(self, text: str, code: bytes = b"") -> None:
        self._reply(b"NO", text, code)

    def _loginAllowed(self) -> bool:
        return self.secure or self.policy.allow_plaintext_auth

    def _capabilities(self) -> None:
        lines = [b'"IMPLEMENTATION" "mailapp"']
        if self.account is None and self._loginAllowed():
            lines.append(b'"SASL" "PLAIN"')
        else:
            lines.append(b'"SASL" ""')
        lines.append(b'"SIEVE" ' + quoted(" ".join(EXTENSIONS)))
        if self.factory.tls is not None and not self.secure:
            lines.append(b'"STARTTLS"')
        lines.append(b'"MAXREDIRECTS" "%d"' % self.policy.max_redirects)
        if self.account is not None:
            lines.append(b'"OWNER" ' + quoted(self.account))
        lines.append(b'"VERSION" "1.0"')
        self._write(b"".join(line + b"\r\n" for line in lines))

    # -- the line session's hooks ---------------------------------------------------

    def greet(self) -> None:
        self._capabilities()
        self._ok(f"{self.policy.hostname} ManageSieve ready")
        self.setTimeout(self.policy.login_timeout)

    def refuse(self, text: bytes, banned: bool) -> None:
        self._reply(b"BYE", text.decode("ascii", "replace"), b"TRYLATER")

    def sessionEnded(self) -> None:
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    def timeoutConnection(self) -> None:
        _log.info(
            "managesieve idle timeout client={client}",
            log_event=logevents.MANAGESIEVE_TIMEOUT,
            client=self._peerIP,
            account=self.account,
        )
        self._reply(b"BYE", "Idle timeout; closing connection")
        self._close()

    def deadlineExpired(self, overrun: Overrun) -> None:
        self.setTimeout(None)
        self._reply(b"BYE", overrun.value.decode("ascii", "replace"))
        self._close()

    def goodbye(self) -> None:
        self._reply(b"BYE", "Server shutting down", b"TRYLATER")

    def lineTooLong(self) -> None:
        self._reply(b"BYE", "Line too long; closing connection")
        self._close()

    def tooManyCommands(self) -> None:
        self._reply(b"BYE", "Too many commands before login; closing connection")

    def commandFailed(self, reason: Failure) -> bool:
        _log.failure(
            "managesieve internal error client={client}",
            reason,
            log_event=logevents.MANAGESIEVE_INTERNAL_ERROR,
            client=self._peerIP,
        )
        self._no("Internal error; try again later", b"TRYLATER")
        return True

    # -- reading commands, literals included ----------------------------------------

    def consumeRaw(self) -> bool | None:
        if self._literal is None:
            return None
        take = min(self._literal, len(self._buffer))
        if not self._literalTooBig:
            self._literalData += self._buffer[:take]
        self._buffer = self._buffer[take:]
        self._literal -= take
        if self._literal:
            return False
        self._literal = None
        data, self._literalData = bytes(self._literalData), bytearray()
        try:
            self._words.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            self._words.append("\ufffd")
            self._literalTooBig = True
        return True

    def lineReceived(self, line: bytes) -> None:
        first = not self._words and not self._literalTooBig
        if (
            first
            and self.account is None
            and not self._commandBeforeLogin(self.policy.max_commands_before_auth)
        ):
            return
        literal = _LITERAL.search(line)
        try:
            self._words.extend(_tokens(line[: literal.start()] if literal else line))
        except _BadSyntax as error:
            self._words = []
            self._no(f"Syntax error: {error}")
            return
        if literal:
            size = int(literal.group(1))
            if not literal.group(2):
                # A synchronising literal: the client waits for our go-ahead (RFC 5804 4 allows it only server to client, but be kind).
                self._write(b"OK\r\n")
            limit = (
                self.factory.scripts.max_script_size
                if self.account is not None
                else 1024
            )
            self._literalTooBig = self._literalTooBig or size > limit
            self._literal = size
            return
        words, self._words = self._words, []
        too_big, self._literalTooBig = self._literalTooBig, False
        if not words or not isinstance(words[0], bytes):
            self._no("Syntax error: expected a command")
            return
        name = words[0].decode("ascii", "replace").upper()
        arguments = words[1:]
        if name not in _ANONYMOUS and name not in _AUTHENTICATED:
            self._no("Unknown command")
            return
        if name in _AUTHENTICATED and self.account is None:
            self._no("Authenticate first")
            return
        if too_big:
            self._no(
                "Script too large" if self.account is not None else "Literal too large",
                b"QUOTA/MAXSIZE",
            )
            return
        handler: Callable[[list[bytes | str]], None] = getattr(self, "do_" + name)
        self._command(name, lambda: self._run(handler, arguments))

    def _run(
        self, handler: Callable[[list[bytes | str]], None], arguments: list[bytes | str]
    ) -> None:
        try:
            handler(arguments)
        except _BadSyntax as error:
            self._no(f"Syntax error: {error}")

    @staticmethod
    def _strings(arguments: list[bytes | str], count: int, usage: str) -> list[str]:
        if len(arguments) != count or not all(isinstance(a, str) for a in arguments):
            raise _BadSyntax(usage)
        return [str(a) for a in arguments]

    # -- the commands before login ------------------------------------------------------

    def do_CAPABILITY(self, arguments: list[bytes | str]) -> None:
        self._capabilities()
        self._ok("Capability completed")

    def do_NOOP(self, arguments: list[bytes | str]) -> None:
        if arguments and isinstance(arguments[0], str):
            self._ok("Done", b"TAG " + quoted(arguments[0]))
        else:
            self._ok("Done")

    def do_LOGOUT(self, arguments: list[bytes | str]) -> None:
        self._ok("Logout completed")
        self._close()

    def do_STARTTLS(self, arguments: list[bytes | str]) -> None:
        if self.factory.tls is None or self.secure:
            self._no(
                "Already using TLS"
                if self.secure
                else "STARTTLS is not available on this port"
            )
            return
        self._startTLS(b'OK "Begin TLS negotiation now"\r\n', self.factory.tls)
        # RFC 5804 2.2: after the negotiation the server sends its capabilities again (written into the TLS session).
        self._capabilities()
        self._ok("TLS negotiation successful")

    def do_AUTHENTICATE(self, arguments: list[bytes | str]) -> None:
        if self.account is not None:
            self._no("Already authenticated")
            return
        if not arguments or not isinstance(arguments[0], str) or len(arguments) > 2:
            raise _BadSyntax('AUTHENTICATE "PLAIN" ["initial response"]')
        if not self._loginAllowed():
            self._no(
                "Authentication is not allowed without TLS; use STARTTLS first",
                b"ENCRYPT-NEEDED",
            )
            return
        if arguments[0].upper() != "PLAIN":
            self._no("Unsupported authentication mechanism")
            return
        if len(arguments) == 2:
            self._authPlain(str(arguments[1]).encode("ascii", "replace"))
        else:
            self._write(b'""\r\n')
            self._continuation = self._authResponse

    def _authResponse(self, line: bytes) -> None:
        try:
            words = _tokens(line)
        except _BadSyntax:
            words = []
        if len(words) != 1:
            self._no("Malformed SASL response")
            return
        word = words[0]
        self._authPlain(
            word if isinstance(word, bytes) else word.encode("ascii", "replace")
        )

    def _authPlain(self, response: bytes) -> None:
        try:
            credentials = sasl.decode_plain(response)
        except sasl.Cancelled:
            self._no("Authentication cancelled")
            return
        except sasl.SASLError:
            self._no("Malformed PLAIN response")
            return
        self._loginPlain(credentials)

    def loginSucceeded(
        self, avatar: Any, logout: Callable[[], None]
    ) -> defer.Deferred[None] | None:
        self.factory.guard.succeeded(self._peerIP, avatar.account)
        self.account = avatar.account
        self._logout = logout
        self.factory.loggedIn(self)
        self.setTimeout(self.policy.timeout)
        _log.info(
            "managesieve login {account} client={client}",
            log_event=logevents.MANAGESIEVE_LOGIN,
            account=self.account,
            client=self._peerIP,
        )
        self._ok("Logged in")
        return None

    def loginsBusy(self) -> None:
        self._no("Too many logins at once; try again later", b"TRYLATER")

    def answerAuthFailure(self, outcome: AuthOutcome) -> None:
        if outcome is AuthOutcome.RETRY:
            self._no("Authentication failed")
        elif outcome is AuthOutcome.BANNED:
            self._reply(b"BYE", BANNED.decode("ascii", "replace"), b"TRYLATER")
        else:
            _log.info(
                "managesieve closing after {failures} failed logins client={client}",
                log_event=logevents.MANAGESIEVE_AUTH_FAILURES_EXCEEDED,
                failures=self._authFailures,
                client=self._peerIP,
            )
            self._reply(b"BYE", "Too many authentication failures; closing connection")

    # -- the commands after login -------------------------------------------------------

    def _answer(
        self,
        d: defer.Deferred[Any],
        text: str,
        answer: Callable[[Any], None] | None = None,
    ) -> None:
        """Hold the next command until C{d} (an L{_op}) has answered: C{answer}'s lines and OK, or its refusal."""

        def succeeded(result: Any) -> None:
            if result is _REFUSED:
                return
            if answer is not None:
                answer(result)
            self._ok(text)

        self._wait(d.addCallback(succeeded))

    def _op(
        self, command: str, function: Callable[..., Any], *args: Any, name: str = ""
    ) -> defer.Deferred[Any]:
        """Run a script operation off the reactor; a refusal is answered NO with its code, a broken script with its line."""
        account = self.account
        assert account is not None

        def refused(reason: Failure) -> object:
            reason.trap(ScriptError, SieveSyntaxError)
            value = reason.value
            if isinstance(value, ScriptError):
                self._no(value.text, value.code.encode("ascii"))
            else:
                self._no(str(value))
            return _REFUSED

        def done(result: Any) -> Any:
            if command in _CHANGES:
                _log.info(
                    "managesieve {command} {name} account={account}",
                    log_event=logevents.MANAGESIEVE_CHANGED,
                    command=command,
                    name=name,
                    account=account,
                    client=self._peerIP,
                )
            return result

        d: defer.Deferred[Any] = self.factory.run(function, account, *args)
        return d.addCallbacks(done, refused)

    def do_HAVESPACE(self, arguments: list[bytes | str]) -> None:
        if (
            len(arguments) != 2
            or not isinstance(arguments[0], str)
            or not isinstance(arguments[1], bytes)
            or not arguments[1].isdigit()
        ):
            raise _BadSyntax('HAVESPACE "name" size')
        self._answer(
            self._op(
                "HAVESPACE", self.factory.scripts.space, arguments[0], int(arguments[1])
            ),
            "Putscript would succeed",
        )

    def do_PUTSCRIPT(self, arguments: list[bytes | str]) -> None:
        name, text = self._strings(arguments, 2, 'PUTSCRIPT "name" {size+} script')
        self._answer(
            self._op("PUTSCRIPT", self.factory.scripts.put, name, text, name=name),
            "Script stored",
        )

    def do_CHECKSCRIPT(self, arguments: list[bytes | str]) -> None:
        (text,) = self._strings(arguments, 1, "CHECKSCRIPT {size+} script")

        def check(account: str, text: str) -> None:
            compile(text)

        self._answer(self._op("CHECKSCRIPT", check, text), "Script is valid")

    def do_LISTSCRIPTS(self, arguments: list[bytes | str]) -> None:
        if arguments:
            raise _BadSyntax("LISTSCRIPTS")

        def listed(listing: Any) -> None:
            self._write(
                b"".join(
                    quoted(info.name) + (b" ACTIVE" if info.active else b"") + b"\r\n"
                    for info in listing
                )
            )

        self._answer(
            self._op("LISTSCRIPTS", self.factory.scripts.listing),
            "Listscripts completed",
            listed,
        )

    def do_SETACTIVE(self, arguments: list[bytes | str]) -> None:
        (name,) = self._strings(arguments, 1, 'SETACTIVE "name"')
        self._answer(
            self._op(
                "SETACTIVE", self.factory.scripts.activate, name or None, name=name
            ),
            "Active script set",
        )

    def do_GETSCRIPT(self, arguments: list[bytes | str]) -> None:
        (name,) = self._strings(arguments, 1, 'GETSCRIPT "name"')

        def got(text: str) -> None:
            data = text.encode("utf-8")
            self._write(b"{%d}\r\n" % len(data) + data + b"\r\n")

        self._answer(
            self._op("GETSCRIPT", self.factory.scripts.get, name),
            "Getscript completed",
            got,
        )

    def do_DELETESCRIPT(self, arguments: list[bytes | str]) -> None:
        (name,) = self._strings(arguments, 1, 'DELETESCRIPT "name"')
        self._answer(
            self._op("DELETESCRIPT", self.factory.scripts.delete, name, name=name),
            "Script deleted",
        )

    def do_RENAMESCRIPT(self, arguments: list[bytes | str]) -> None:
        old, new = self._strings(arguments, 2, 'RENAMESCRIPT "old" "new"')
        self._answer(
            self._op(
                "RENAMESCRIPT",
                self.factory.scripts.rename,
                old,
                new,
                name=f"{old} -> {new}",
            ),
            "Script renamed",
        )


#: What an operation fires with once its refusal has been answered.
_REFUSED = object()
