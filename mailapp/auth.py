"""
twisted.cred glue: one checker and one realm for every protocol.

POP3, IMAP, SMTP AUTH and the webmail all log in through the same
L{Portal}: the L{AccountsChecker} turns a username and password into the
canonical account name, and the L{MailRealm} turns that name into the avatar
the protocol asked for. The realm knows only the store's
L{mailapp.interfaces.IMailbox}; each protocol's own avatar (a POP3 mailbox,
an IMAP account) is registered from the composition root with
L{MailRealm.registerAvatarFactory}, so that this module never imports a
protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer
from zope.interface.interface import InterfaceClass

from mailapp.interfaces import IAccounts, IMailbox, IMessageStore

__all__ = ["AccountsChecker", "AvatarFactory", "MailRealm", "makePortal"]

log = Logger()

#: Builds one protocol's avatar from the canonical account name and the
#: store. It may return the avatar or a Deferred that fires with it.
AvatarFactory = Callable[[str, IMessageStore], Any]


def _text(value: str | bytes) -> str:
    """
    Protocols hand over bytes (POP3, IMAP) or text (webmail). A name that is
    not UTF-8 cannot be a user; U+FFFD keeps it a lookup that simply fails,
    through the same code path and in the same time as any unknown user.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


@implementer(ICredentialsChecker)
class AccountsChecker:
    """
    Checks C{IUsernamePassword} credentials against L{IAccounts}.

    The constant-time promise (an unknown user and a wrong password fail
    alike) is kept by L{IAccounts.authenticate}; this class only adapts the
    credentials. Failures are logged by L{mailapp.abuse.AbuseGuard}.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, accounts: IAccounts) -> None:
        self._accounts = accounts

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[str]:
        """Fire with the canonical account, or fail with L{UnauthorizedLogin}."""
        username = _text(credentials.username)
        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        # Not logged here: the protocol reports the failure to the AbuseGuard,
        # which logs it once, with the client's address (what fail2ban needs).
        return self._accounts.authenticate(username, password)


def _noLogout() -> None:
    """The store's avatars hold nothing that needs releasing."""


@implementer(IRealm)
class MailRealm:
    """
    Hands out per-protocol avatars for an authenticated account.

    @param store: the L{IMessageStore} every avatar is built over.
    @param avatarFactories: interface -> factory, added to (and overriding)
        the built-in one for L{IMailbox}.
    """

    def __init__(
        self,
        store: IMessageStore,
        avatarFactories: Mapping[InterfaceClass, AvatarFactory] | None = None,
    ) -> None:
        self._store = store
        self._factories: dict[InterfaceClass, AvatarFactory] = {
            IMailbox: lambda account, store: store.mailbox(account),
        }
        if avatarFactories:
            self._factories.update(avatarFactories)

    def registerAvatarFactory(self, interface: InterfaceClass, factory: AvatarFactory) -> None:
        """Teach the realm one more kind of avatar (called from the composition root)."""
        self._factories[interface] = factory

    def requestAvatar(
        self, avatarId: str | bytes, mind: object, *interfaces: InterfaceClass
    ) -> tuple[InterfaceClass, Any, Callable[[], None]] | Deferred[tuple[InterfaceClass, Any, Callable[[], None]]]:
        """
        Build the avatar for the first of C{interfaces} that has a factory,
        in the caller's order of preference.

        If the avatar has a callable C{logout} attribute, that is what the
        protocol calls when the session ends; otherwise logout does nothing.

        @raise NotImplementedError: no requested interface is known (what
            L{Portal} expects of a realm).
        """
        account = _text(avatarId)
        for interface in interfaces:
            factory = self._factories.get(interface)
            if factory is None:
                continue
            avatar = factory(account, self._store)
            if isinstance(avatar, Deferred):
                pending: Deferred[Any] = avatar

                def built(result: Any, interface: InterfaceClass = interface) -> tuple[InterfaceClass, Any, Callable[[], None]]:
                    return _result(interface, result)

                return pending.addCallback(built)
            return _result(interface, avatar)
        names = ", ".join(interface.__identifier__ for interface in interfaces) or "none"
        raise NotImplementedError(f"MailRealm has no avatar for any of: {names}")


def _result(interface: InterfaceClass, avatar: Any) -> tuple[InterfaceClass, Any, Callable[[], None]]:
    logout = getattr(avatar, "logout", None)
    return interface, avatar, logout if callable(logout) else _noLogout


def makePortal(
    accounts: IAccounts,
    store: IMessageStore,
    avatarFactories: Mapping[InterfaceClass, AvatarFactory] | None = None,
) -> Portal:
    """The one L{Portal} every protocol logs in through."""
    return Portal(MailRealm(store, avatarFactories), [AccountsChecker(accounts)])
