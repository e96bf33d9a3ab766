"""
One family of errors that carry their own SMTP reply.

The core raises these with a public text that never leaks internals; only the
SMTP layer (and the webmail, which shows the text) turns them into a reply.
"""

from __future__ import annotations


class MailError(Exception):
    """
    An error with its reply: basic code, enhanced status code, public text,
    and whether the client may try again later.
    """

    code = 451
    enhanced = "4.3.0"
    text = "Local error in processing"

    def __init__(self, text: str | None = None, *, code: int | None = None, enhanced: str | None = None) -> None:
        if text is not None:
            self.text = text
        if code is not None:
            self.code = code
        if enhanced is not None:
            self.enhanced = enhanced
        super().__init__(f"{self.code} {self.enhanced} {self.text}")

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def reply(self) -> bytes:
        """The reply line (without CRLF) as the SMTP server sends it."""
        return f"{self.code} {self.enhanced} {self.text}".encode("ascii", "replace")


class NoSuchUser(MailError):
    code, enhanced, text = 550, "5.1.1", "No such user here"


class RelayDenied(MailError):
    code, enhanced, text = 554, "5.7.1", "Relay access denied"


class SenderNotOwned(MailError):
    code, enhanced, text = 553, "5.7.1", "Sender address not owned by the authenticated user"


class HeaderSenderNotOwned(MailError):
    code, enhanced, text = 553, "5.7.1", "From: header address not owned by you"


class TooManyRecipients(MailError):
    code, enhanced, text = 452, "4.5.3", "Too many recipients"


class MessageTooBig(MailError):
    code, enhanced, text = 552, "5.3.4", "Message size exceeds fixed limit"


class TooManyHops(MailError):
    """RFC 5321 6.3: a message that has passed this many relays is in a loop."""

    code, enhanced, text = 554, "5.4.6", "Too many hops: mail loop detected"


class HeaderFieldTooLong(MailError):
    code, enhanced, text = 552, "5.6.0", "Message header field too long"


class MessageHasNul(MailError):
    """RFC 5322 2.3 forbids NUL; other servers and readers cut the message at one or choke."""

    code, enhanced, text = 554, "5.6.0", "Message contains NUL characters"


class ForwardingRateExceeded(MailError):
    """An alias has forwarded as much as its rate allows for now (a loop or a flood); the sender retries."""

    code, enhanced, text = 451, "4.7.1", "Too much mail forwarded through this address; try again later"


class RemoteDeliveryUnavailable(MailError):
    code, enhanced, text = 451, "4.4.0", "Remote delivery is not available yet; try again later"


class StoreError(MailError):
    """The store could not make a message durable; nothing was delivered."""

    code, enhanced, text = 451, "4.3.0", "Local error in processing; message not stored"


class StorageFull(StoreError):
    """
    The disk holding the store is full (ENOSPC, or SQLite's "database or disk
    is full"): nothing was changed, and the same request works once space is
    freed. RFC 3463 4.3.1 for SMTP; IMAP answers ``NO [UNAVAILABLE]``.
    """

    code, enhanced, text = 452, "4.3.1", "Insufficient system storage"


class FolderError(Exception):
    """Base of the folder errors a mailbox raises; the text is public."""


class NoSuchFolder(FolderError):
    pass


class FolderExists(FolderError):
    pass


class BadFolderName(FolderError):
    """A name that is empty, too long, or would reach outside the mailbox."""


class NoSuchMessage(FolderError):
    pass


class MailboxGone(NoSuchFolder):
    """
    The mailbox a session opened was deleted (its account removed) under it.
    A C{NoSuchFolder}, so every protocol already answers it as a folder that
    does not exist; the session must never reach whatever replaced it.
    """


class AccountError(Exception):
    """A mistake in an accounts change (unknown domain, duplicate user, bad address); the text is for the admin."""
