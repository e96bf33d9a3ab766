"""
Sieve at local delivery: what the Router (L{mailapp.delivery.Transaction.commit})
asks for each local account before the message is made durable.

L{SieveFilter.filter} reads the message once, runs every recipient
account's active script (with the admin's global before/after scripts) on
a worker thread, and fires with a L{Filtered}: one L{Outcome} per account
that has a script. The Router carries the outcomes out: its placements in
the store's one batch, redirects as new transactions before the 250,
rejects in protocol or as DSNs, and after the commit
L{SieveFilter.vacation_reply} for the auto-replies.

The rules of RFC 5230 for not answering (lists, bulk, automatic mail,
<>, ourselves, once per sender per :days) and our daily bound live here.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses
from typing import Any

from twisted.internet.defer import Deferred, succeed

from mailapp.sieve import (
    Envelope,
    MessageView,
    Outcome,
    SieveLimits,
    SieveRuntimeError,
    Vacation,
    run,
)
from mailapp.sieve.parser import Command
from mailapp.sieve.scripts import ScriptError, ScriptStore, SieveMemory
from mailapp.store import messagefile

__all__ = ["Filtered", "SieveFilter", "REDIRECT_HEADER"]

#: Added to a redirected copy, and counted: a loop between redirecting accounts stops here.
REDIRECT_HEADER = "X-Sieve-Redirected-By"
#: A message that already went through this many redirects is kept, not redirected again.
MAX_REDIRECT_HOPS = 4
#: RFC 5230 4.6's addresses that are never answered, by local part.
_NEVER_ANSWERED = ("mailer-daemon", "listserv", "majordomo", "postmaster")
_LIST_HEADERS = (
    "list-id",
    "list-help",
    "list-subscribe",
    "list-unsubscribe",
    "list-post",
    "list-owner",
    "list-archive",
)


@dataclass
class Filtered:
    """The message as the scripts saw it, and each filtered account's outcome."""

    view: MessageView
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    envelopes: dict[str, Envelope] = field(default_factory=dict)


class SieveFilter:
    """
    C{run_blocking(function, *args)} runs on a worker thread (the parsing
    pool: the sender controls what a script reads); C{clock} is the reactor.
    """

    def __init__(
        self,
        scripts: ScriptStore,
        run_blocking: Callable[..., Deferred[Any]],
        clock: Any,
        limits: SieveLimits = SieveLimits(),
        max_vacation_per_day: int = 100,
        presence: Any = None,
    ) -> None:
        self.scripts = scripts
        #: A L{mailapp.sieve.presence.ScriptPresence}: deliveries whose recipients
        #: have no script are answered without a thread trip. None: every one takes it.
        self.presence = presence
        self.run_blocking = run_blocking
        self.clock = clock
        self.limits = limits
        self.max_vacation_per_day = max_vacation_per_day

    def reconfigure(self, config: Any) -> None:
        """SIGHUP (L{mailapp.reload}): the new [limits] sieve_* apply from the next delivery."""
        limits = config.limits
        self.limits = SieveLimits(max_steps=limits.sieve_max_steps, max_redirects=limits.sieve_max_redirects)
        self.max_vacation_per_day = limits.sieve_max_vacation_replies_per_day
        self.scripts.max_scripts = limits.sieve_max_scripts
        self.scripts.max_script_size = limits.sieve_max_script_size

    def filter(
        self,
        accounts: list[str],
        envelopes: dict[str, Envelope],
        message: Any,
        default_folders: dict[str, str],
    ) -> Deferred[Filtered | None]:
        """Fire with the outcomes of C{accounts}' scripts (None when no account has one: nothing was read)."""
        if self.presence is not None and not self.presence.may_filter(accounts):
            return succeed(None)
        held = messagefile.held_bytes(message)
        if held is None:
            path_reader: Callable[[], bytes] = lambda: messagefile.wire_bytes(message)
        else:
            path_reader = lambda: held  # noqa: E731
        now = self.clock.seconds()
        return self.run_blocking(
            self._filter, accounts, envelopes, path_reader, default_folders, now
        )

    def _scripts_of(self, account: str) -> list[list[Command]]:
        user = self.scripts.active(account)
        before = self.scripts.global_script("before")
        after = self.scripts.global_script("after")
        if user is None and before is None and after is None:
            return []
        return [script for script in (before, user, after) if script is not None]

    def _filter(
        self,
        accounts: list[str],
        envelopes: dict[str, Envelope],
        read: Callable[[], bytes],
        default_folders: dict[str, str],
        now: float,
    ) -> Filtered | None:
        scripts = {account: self._scripts_of(account) for account in accounts}
        scripts = {account: found for account, found in scripts.items() if found}
        if not scripts:
            return None
        view = MessageView.from_bytes(read())
        filtered = Filtered(view)
        moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        for account, found in scripts.items():
            memory = SieveMemory(self.scripts, account)

            def loader(kind: str, name: str, account: str = account) -> list[Command]:
                try:
                    script = (
                        self.scripts.global_script(name)
                        if kind == "global"
                        else self.scripts.personal(account, name)
                    )
                except ScriptError:
                    script = None
                if script is None:
                    raise SieveRuntimeError(f"no {kind} script named {name!r}")
                return script

            def seen(
                handle: str, unique: str, seconds: int, memory: SieveMemory = memory
            ) -> bool:
                return memory.seen("duplicate", f"{handle}\0{unique}", now)

            envelope = envelopes[account]
            filtered.envelopes[account] = envelope
            filtered.outcomes[account] = run(
                found,
                view,
                envelope,
                default_folders[account],
                self.limits,
                loader,
                seen,
                moment,
            )
        return filtered

    def remember_duplicates(self, account: str, outcome: Outcome) -> Deferred[None]:
        """After the delivery is durable: the ids the duplicate test saw (RFC 7352 3: tracked once delivered)."""
        if not outcome.duplicates:
            return succeed(None)
        now = self.clock.seconds()

        def remember() -> None:
            memory = SieveMemory(self.scripts, account)
            for handle, unique, seconds in outcome.duplicates:
                memory.remember("duplicate", f"{handle}\0{unique}", now + seconds, now)

        return self.run_blocking(remember)

    # -- vacation (RFC 5230) ------------------------------------------------

    def vacation_reply(
        self,
        account: str,
        vacation: Vacation,
        view: MessageView,
        envelope: Envelope,
        hostname: str,
    ) -> Deferred[tuple[bytes | None, str]]:
        """
        Fire with (the reply to send, "") or (None, why not). Once a reply is
        decided it is remembered at once: a failed send is not retried (a
        missed auto-reply is better than two).
        """
        now = self.clock.seconds()
        return self.run_blocking(
            self._vacation, account, vacation, view, envelope, hostname, now
        )

    def _vacation(
        self,
        account: str,
        vacation: Vacation,
        view: MessageView,
        envelope: Envelope,
        hostname: str,
        now: float,
    ) -> tuple[bytes | None, str]:
        sender = envelope.sender
        why = self._never(account, vacation, view, envelope)
        if why:
            return None, why
        memory = SieveMemory(self.scripts, account)
        key = f"{vacation.handle}\0{sender.lower()}"
        if memory.seen("vacation", key, now):
            return None, "already answered"
        if memory.replies_today(now) >= self.max_vacation_per_day:
            return None, "daily bound"
        memory.remember("vacation", key, now + vacation.days * 86400, now)
        return _reply(account, vacation, view, envelope, hostname, now), ""

    def _never(
        self, account: str, vacation: Vacation, view: MessageView, envelope: Envelope
    ) -> str:
        sender = envelope.sender
        if not sender:
            return "null sender"
        ours = {
            account.lower(),
            envelope.recipient.lower(),
            *(a.lower() for a in vacation.addresses),
        }
        if vacation.from_address:
            ours.update(
                address.lower() for _, address in getaddresses([vacation.from_address])
            )
        if sender.lower() in ours:
            return "ourselves"
        local = sender.rpartition("@")[0].lower()
        if (
            local in _NEVER_ANSWERED
            or local.startswith("owner-")
            or local.endswith("-request")
        ):
            return "automatic sender"
        auto = (view.first("auto-submitted") or "no").split(";")[0].strip().lower()
        if auto != "no":
            return "auto-submitted"
        if any(view.header(name) for name in _LIST_HEADERS):
            return "list"
        if (view.first("precedence") or "").strip().lower() in ("bulk", "list", "junk"):
            return "bulk"
        # RFC 5230 4.5: answer only mail addressed to us, not a Bcc through a list or alias.
        named = {
            address.lower()
            for name in ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
            for _, address in getaddresses(view.header(name))
        }
        user_part = {
            a.partition("+")[0] + "@" + a.rpartition("@")[2] for a in named if "@" in a
        }
        if not (ours & (named | user_part)):
            return "not addressed to us"
        return ""


def _reply(
    account: str,
    vacation: Vacation,
    view: MessageView,
    envelope: Envelope,
    hostname: str,
    now: float,
) -> bytes:
    """The reply (RFC 5230 5): from :from or the account, to the envelope sender, Auto-Submitted: auto-replied."""
    reply = EmailMessage(policy=SMTP)
    reply["From"] = vacation.from_address or account
    reply["To"] = envelope.sender
    original_subject = view.first("subject") or ""
    reply["Subject"] = (
        vacation.subject
        if vacation.subject is not None
        else f"Auto: {original_subject}".strip()
    )
    reply["Date"] = format_datetime(
        datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    )
    reply["Message-ID"] = f"<{secrets.token_hex(12)}@{hostname}>"
    message_id = (view.first("message-id") or "").strip()
    if message_id:
        reply["In-Reply-To"] = message_id
        references = " ".join((view.first("references") or "").split() + [message_id])
        reply["References"] = references
    reply["Auto-Submitted"] = "auto-replied"
    if vacation.mime:
        # :mime: the reason is a MIME part, headers and all (RFC 5230 4.3).
        reason = vacation.reason.replace("\r\n", "\n")
        head, _, body = reason.partition("\n\n")
        data = reply.as_bytes().rstrip(b"\r\n") + b"\r\nMIME-Version: 1.0\r\n"
        for line in head.split("\n"):
            if line.strip():
                data += line.encode("utf-8") + b"\r\n"
        return data + b"\r\n" + body.replace("\n", "\r\n").encode("utf-8")
    # Quoted-printable, not 8bit: the reply may relay to a server without 8BITMIME.
    reply.set_content(vacation.reason, charset="utf-8", cte=None if vacation.reason.isascii() else "quoted-printable")
    return reply.as_bytes()


def redirect_copy(view: MessageView, account: str) -> bytes | None:
    """
    The bytes to send on for a redirect by C{account}: our X-Sieve-Redirected-By
    on top, our Return-Path off; None when the message has been redirected
    too often or by this account already (a loop).
    """
    marks = [value.strip().lower() for value in view.header(REDIRECT_HEADER.lower())]
    if len(marks) >= MAX_REDIRECT_HOPS or account.lower() in marks:
        return None
    raw = view.raw
    if raw[:12].lower() == b"return-path:":
        end = raw.find(b"\r\n")
        raw = raw[end + 2 :] if end >= 0 else raw
    return f"{REDIRECT_HEADER}: {account}\r\n".encode() + raw
