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


class LoginsBusy(MailError):
    """
    Too many password checks are waiting for the hashing threads: this
    login is refused at once, as a temporary failure (IMAP ``NO
    [UNAVAILABLE]``, POP3 ``-ERR [SYS/TEMP]``, SMTP ``454 4.7.0``, webmail
    503), rather than queued while memory grows. Not a failed login: it is
    not counted towards a ban.
    """

    code, enhanced, text = 454, "4.7.0", "Too many logins at once; try again later"


class AddressLoginsBusy(LoginsBusy):
    """
    The client's address already has as many logins in progress as it has
    failures left before a ban (L{mailapp.abuse.AbuseGuard.attemptStarted}):
    this password is not tried. A temporary failure, not a failed login, so
    that an office behind one NAT address, or one client opening a dozen
    connections at once, is asked to retry instead of being banned for
    logins nobody got wrong; guesses sent in parallel still never outrun the
    ban, since the ones refused here are not tried.
    """

    text = "Too many logins in progress from your address; try again in a moment"


class NoSuchUser(MailError):
    code, enhanced, text = 550, "5.1.1", "No such user here"


class SenderBlocked(MailError):
    """The recipient's (or its domain's) block list names the sender; refused for that recipient only."""

    code, enhanced, text = 550, "5.7.1", "Sender blocked by the recipient"


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


class OverQuota(MailError):
    """
    A mailbox's quota (bytes or messages, L{mailapp.quota}) has no room for
    this message. IMAP answers every kind ``NO [OVERQUOTA]`` (RFC 5530).
    """

    code, enhanced, text = 552, "5.2.2", "Mailbox full"


class MailboxFull(OverQuota):
    """
    The mailbox is at or over its quota already, or the message is larger
    than the whole quota: permanent (RFC 3463 5.2.2), as Dovecot's LMTP and
    Postfix answer it. At RCPT, RFC 5321 4.5.3.1.10 has clients treat 552
    as 452 anyway, so a sender still retries a mailbox that is only full.
    """


class MailboxWouldOverflow(OverQuota):
    """
    The mailbox has room, but not for this message (its declared C{SIZE=}
    or its data): temporary (RFC 1870 6.1 asks for 452 when the storage
    available now is too small), so the sender keeps it and tries again
    after the owner has made room.
    """

    code, enhanced, text = 452, "4.2.2", "Mailbox full: not enough room for this message; try again later"


class TooMuchMail(MailError):
    """An MX client address (an IPv6 /64) past its messages or bytes per minute (L{mailapp.abuse.MXRateLimiter})."""

    code, enhanced, text = 451, "4.7.1", "Too much mail from your address; try again later"
class ForwardingRateExceeded(MailError):
    """An alias has forwarded as much as its rate allows for now (a loop or a flood); the sender retries."""

    code, enhanced, text = 451, "4.7.1", "Too much mail forwarded through this address; try again later"


class BinaryNotRelayed(MailError):
    """A BODY=BINARYMIME message (RFC 3030) for a remote recipient: the relay sends with DATA, which cannot carry it."""

    code, enhanced, text = 554, "5.6.3", "Conversion required but not supported: BINARYMIME is delivered to local mailboxes only"


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


class KeywordLimit(FolderError):
    """
    A flag change would give a message more than L{MAX_KEYWORDS_PER_MESSAGE}
    keywords, or a folder more than L{MAX_KEYWORDS_PER_FOLDER} distinct
    ones (IMAP answers ``NO [LIMIT]``). Every reader of the folder lists
    them (FLAGS, PERMANENTFLAGS) and every file name may carry them.
    """


#: Keywords (non-system flags) one message may carry.
MAX_KEYWORDS_PER_MESSAGE = 64
#: Distinct keywords in one folder.
MAX_KEYWORDS_PER_FOLDER = 256


class SieveRejected(MailError):
    """
    The recipient's Sieve script said C{reject} or C{ereject} (RFC 5429),
    answered in protocol at the end of DATA: the text is the script's
    reason, made one printable ASCII line (it is the user's, not ours).
    """

    code, enhanced, text = 550, "5.7.1", "Message rejected by the recipient"

    def __init__(self, reason: str = "") -> None:
        line = "".join(c if " " <= c <= "~" else " " for c in " ".join(reason.split()))[:200].strip()
        super().__init__(line or None)
