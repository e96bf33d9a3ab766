"""
Writing mail: the compose form (new, reply, reply-all, forward, a draft
again), saving a draft, and sending.

Sending goes through the Router exactly like authenticated submission: the
envelope sender is the signed-in account, local recipients are delivered
locally, remote ones go to the relay queue, under the same per-account
sending rate as SMTP; the copy handed to the Router never carries a Bcc
header (the copy stored in Sent does).
"""

from __future__ import annotations

import email.utils
from typing import Any

from twisted.web.iweb import IRequest

from mailapp import logevents
from mailapp.accounts import Profile
from mailapp.errors import AccountError, MailError
from mailapp.web import messages, pages
from mailapp.web.base import DRAFTS, SENT, Forbidden, WebmailBase, app, log
from mailapp.web.forms import form_field, parse_multipart, query_arg, query_int
from mailapp.web.sanitize import html_to_text
from mailapp.web.sessions import Session

__all__ = ["ComposeRoutes"]


class ComposeRoutes(WebmailBase):
    """C{/compose}: the form (GET) and sending or saving a draft (POST)."""

    @app.route("/compose", methods=["GET", "HEAD"])
    async def compose_form(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        values: dict[str, str] = {}
        forwarded: list[str] = []
        profile = await self._profile(session)
        mode = query_arg(request, "mode")
        draft_uid = query_int(request, "draft")
        if draft_uid:
            folder = await self._folder(session, DRAFTS)
            parsed = await self._message(folder, draft_uid) if folder is not None else None
            if parsed is None:
                return self._not_found(request, session, "draft")
            view = await self._thread(messages.view, parsed)
            values = {
                "to": view.to,
                "cc": view.cc,
                "bcc": view.bcc,
                "subject": view.subject,
                "body": view.text or "",
                "in_reply_to": _header_text(parsed, "In-Reply-To"),
                "references": view.references,
                "draft_uid": str(draft_uid),
            }
            if view.attachments:
                values.update(forward_f=DRAFTS, forward_uid=str(draft_uid))
                forwarded = [a.filename for a in view.attachments]
        elif mode in ("reply", "replyall", "forward"):
            folder, uid, parsed = await self._requested(request, session)
            if parsed is None:
                return self._not_found(request, session, "message")
            view = await self._thread(messages.view, parsed)
            values, forwarded = _prefill(mode, view, session.account, folder.name, uid)
        if not draft_uid and profile.signature:
            # Below the part the user writes, above a quote: "-- " and the signature (RFC 3676 4.3).
            values["body"] = "\n\n-- \n" + profile.signature + "\n" + values.get("body", "")
        nav, _ = await self._nav(session, None)
        sender = messages.from_header(session.account, profile.display_name)
        return self._page(
            request,
            pages.compose_page(session.account, session.csrf, nav, values, forwarded=forwarded, max_size=self.policy.max_message_size, sender=sender),
        )

    async def _profile(self, session: Session) -> Profile:
        """The user's display name and signature (none when the accounts cannot say)."""
        try:
            profile: Profile = await self.router.accounts.profile(session.account)
        except AccountError:
            return Profile()
        return profile

    @app.route("/compose", methods=["POST"])
    async def compose(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        if getattr(request, "body_too_big", False):
            return self._too_big(request, session)
        content_type = request.getHeader(b"content-type") or b""
        if content_type.split(b";")[0].strip().lower() == b"multipart/form-data":
            form, files = await self._thread(parse_multipart, content_type, request.content)
        else:
            form, files = self._form(request), []
        try:
            self._check(request, session, form)
        except Forbidden:
            return self._forbidden(request, session)
        values = {name: form_field(form, name) for name in ("to", "cc", "bcc", "subject", "body", "in_reply_to", "references", "forward_f", "forward_uid", "draft_uid")}
        values["body"] = values["body"].replace("\r\n", "\n")
        errors: list[str] = []
        draft = None
        try:
            draft = messages.Draft(
                to=messages.parse_addresses("To", values["to"]),
                cc=messages.parse_addresses("Cc", values["cc"]),
                bcc=messages.parse_addresses("Bcc", values["bcc"]),
                subject=values["subject"],
                body=values["body"],
                attachments=list(files),
                in_reply_to=values["in_reply_to"],
                references=values["references"],
            )
            if messages.has_line_break(values["subject"]):
                raise messages.ComposeError("Subject: line breaks are not allowed")
        except messages.ComposeError as error:
            errors.append(str(error))
        sending = form_field(form, "action", "send") != "draft"
        if draft is not None and sending and not draft.recipients():
            errors.append("Add at least one recipient in To, Cc or Bcc.")
        if draft is not None and not errors and values["forward_uid"]:
            source = await self._folder(session, values["forward_f"])
            parsed = await self._message(source, int(values["forward_uid"])) if source is not None and values["forward_uid"].isdigit() else None
            if parsed is not None:
                draft.attachments = (await self._thread(messages.attachments_of, parsed)) + draft.attachments
        if draft is not None and not errors:
            size = sum(len(data) for _, _, data in draft.attachments) * 4 // 3 + len(draft.body)
            if size > self.policy.max_message_size:
                errors.append(f"The message is larger than the limit of {pages.human_size(self.policy.max_message_size)}.")
        if errors or draft is None:
            return await self._compose_again(request, session, values, errors)
        profile = await self._profile(session)
        if not sending:
            data = await self._thread(messages.build, draft, session.account, self.policy.hostname, True, self.clock(), profile.display_name)
            drafts = await self._folder(session, DRAFTS)
            if drafts is None:
                return self._not_found(request, session, "folder")
            await drafts.append(data, ["\\Draft", "\\Seen"])
            await self._drop_draft(session, values["draft_uid"])
            return self._redirect(request, "/list?f=Drafts&notice=draft")
        problems = await self._send(request, session, draft, profile)
        if problems:
            return await self._compose_again(request, session, values, problems)
        await self._drop_draft(session, values["draft_uid"])
        return self._redirect(request, "/list?f=INBOX&notice=sent")

    async def _compose_again(self, request: IRequest, session: Session, values: dict[str, str], errors: list[str]) -> bytes:
        nav, _ = await self._nav(session, None)
        errors = errors + ["Nothing was sent. Files you attached must be attached again."] if errors else errors
        profile = await self._profile(session)
        sender = messages.from_header(session.account, profile.display_name)
        body = pages.compose_page(session.account, session.csrf, nav, values, errors, max_size=self.policy.max_message_size, sender=sender)
        return self._page(request, body, 400)

    async def _drop_draft(self, session: Session, draft_uid: str) -> None:
        if draft_uid.isdigit():
            drafts = await self._folder(session, DRAFTS)
            if drafts is not None:
                await drafts.expunge([int(draft_uid)])

    async def _send(self, request: IRequest, session: Session, draft: messages.Draft, profile: Profile) -> list[str]:
        """Hand the message to the Router like authenticated submission; the problems to show, if any."""
        outgoing = await self._thread(messages.build, draft, session.account, self.policy.hostname, False, self.clock(), profile.display_name)
        if len(outgoing) > self.policy.max_message_size:
            return [f"The message is larger than the limit of {pages.human_size(self.policy.max_message_size)}."]
        if not self.guard.mayAcceptMessage(session.account):
            log.info(
                "sending rate limited account={account} client={client}",
                log_event=logevents.SEND_RATE_LIMITED,
                account=session.account,
                client=getattr(request.getClientAddress(), "host", "unknown"),
            )
            limit = self.guard.max_messages_per_hour
            return [f"You have sent {limit} messages in the last hour, the most allowed. Try again later."]
        transaction = self.router.start(session.account, True, session.account)
        problems = []
        for address in draft.recipients():
            try:
                await transaction.addRecipient(address)
            except MailError as error:
                problems.append(f"{address}: {error.text} ({error.code} {error.enhanced})")
        if problems:
            transaction.abort()
            return problems
        client = getattr(request.getClientAddress(), "host", "unknown")
        received = (
            f"Received: from [{client}]\r\n"
            f"\tby {self.policy.hostname} (mailapp webmail) with {'HTTPS' if self.policy.secure else 'HTTP'} id {transaction.queue_id};\r\n"
            f"\t{email.utils.formatdate(self.clock(), localtime=False)}\r\n"
        ).encode("utf-8")
        writer = transaction.open()
        await writer.write(received + outgoing)
        try:
            queue_id = await transaction.commit()
        except MailError as error:
            transaction.abort()
            return [f"The message could not be sent: {error.text} ({error.code} {error.enhanced})"]
        except Exception:
            log.failure("webmail send failed", log_event=logevents.WEBMAIL_SEND_FAILED)
            transaction.abort()
            return ["The message could not be sent because of a server error. Try again later."]
        self.guard.messageAccepted(session.account)
        log.info(
            "webmail sent {queue_id} from=<{sender}> rcpts={count} size={size}",
            log_event=logevents.WEBMAIL_SENT,
            queue_id=queue_id,
            sender=session.account,
            count=len(transaction.recipients),
            size=len(outgoing),
        )
        copy = await self._thread(messages.build, draft, session.account, self.policy.hostname, True, self.clock(), profile.display_name)
        sent = await self._folder(session, SENT)
        if sent is not None:
            try:
                await sent.append(copy, ["\\Seen"])
            except Exception:
                log.failure("webmail could not store the Sent copy", log_event=logevents.WEBMAIL_SEND_FAILED)
        return []


def _header_text(message: Any, name: str) -> str:
    value = message.get(name)
    return " ".join(str(value).split()) if value is not None else ""


def _prefill(mode: str, view: messages.MessageView, account: str, folder: str, uid: int) -> tuple[dict[str, str], list[str]]:
    text = view.text if view.text is not None else html_to_text(view.html or "")
    if mode == "forward":
        lines = ["", "", "---------- Forwarded message ----------", f"From: {view.sender}", f"Date: {view.date}", f"Subject: {view.subject}", f"To: {view.to}"]
        if view.cc:
            lines.append(f"Cc: {view.cc}")
        values = {
            "subject": messages.subject_with("Fwd:", view.subject),
            "body": "\n".join(lines) + "\n\n" + text,
            "forward_f": folder if view.attachments else "",
            "forward_uid": str(uid) if view.attachments else "",
        }
        return values, [a.filename for a in view.attachments]
    target = view.reply_to or view.sender
    to = [pair for pair in email.utils.getaddresses([target]) if pair[1]]
    cc: list[tuple[str, str]] = []
    if mode == "replyall":
        taken = {account.lower(), *(address.lower() for _, address in to)}
        for name, address in email.utils.getaddresses([view.to, view.cc]):
            if address and address.lower() not in taken:
                taken.add(address.lower())
                cc.append((name, address))
    references = " ".join(part for part in (view.references, view.message_id) if part)
    body = f"\n\nOn {view.date}, {messages.display_sender(view.sender)} wrote:\n" + messages.quote(text)
    return (
        {
            "to": messages.format_addresses(to),
            "cc": messages.format_addresses(cc),
            "subject": messages.subject_with("Re:", view.subject),
            "body": body,
            "in_reply_to": view.message_id,
            "references": references,
        },
        [],
    )
