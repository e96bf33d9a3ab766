"""
Webmail sessions (failed sign-ins are counted by L{mailapp.abuse.AbuseGuard}).

A session is a random token in an ``HttpOnly``, ``SameSite=Strict`` cookie
(``Secure`` under TLS), kept in memory: a restart signs everyone out, which
is the safe direction. Each session has its own CSRF token, which every
state-changing form carries and the server compares in constant time. A
session ends at logout, after C{idle} seconds without a request, and
C{absolute} seconds after sign-in whatever happens.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable

#: Cookie names; the ``__Host-`` prefix (browser-enforced Secure, Path=/, no Domain) under TLS.
COOKIE = "mailapp_session"
SECURE_COOKIE = "__Host-mailapp_session"
#: Before sign-in: a double-submit token that ties the login form to the browser that loaded it.
LOGIN_COOKIE = "mailapp_login"
SECURE_LOGIN_COOKIE = "__Host-mailapp_login"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison; a missing token never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


@dataclass
class Session:
    token: str
    account: str
    mailbox: Any
    csrf: str
    created: float
    last_seen: float
    #: Messages whose remote content the user chose to show: (folder, uidvalidity, uid).
    remote_allowed: set[tuple[str, int, int]] = field(default_factory=set)


class Sessions:
    """The live sessions of one webmail listener; C{clock} returns seconds."""

    def __init__(self, clock: Callable[[], float], idle: float, absolute: float) -> None:
        self._clock = clock
        self.idle = idle
        self.absolute = absolute
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, account: str, mailbox: Any) -> Session:
        self._prune()
        now = self._clock()
        session = Session(new_token(), account, mailbox, new_token(), now, now)
        self._sessions[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session for C{token}, touched; C{None} when unknown or expired (and then forgotten)."""
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > self.idle or now - session.created > self.absolute:
            del self._sessions[token]
            return None
        session.last_seen = now
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)

    def end_others(self, account: str, keep: str) -> int:
        """End every session of C{account} but C{keep} (its password changed); how many ended."""
        others = [token for token, session in self._sessions.items() if session.account == account and token != keep]
        for token in others:
            del self._sessions[token]
        return len(others)

    def _prune(self) -> None:
        now = self._clock()
        for token, session in list(self._sessions.items()):
            if now - session.last_seen > self.idle or now - session.created > self.absolute:
                del self._sessions[token]
