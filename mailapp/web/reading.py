"""
Reading one message: its page, its HTML in a sandboxed frame, and its
attachments.

HTML mail is sanitised (L{mailapp.web.sanitize}) and shown only inside a
frame under a strict Content-Security-Policy, with remote images loaded only
when the reader asks for them for that message; an attachment is served
with a content type that cannot run in the page, as a download.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from mailapp.web import messages, pages
from mailapp.web.base import WebmailBase, app
from mailapp.web.forms import content_disposition, query_arg, query_int
from mailapp.web.sanitize import clean_html, frame_policy

__all__ = ["ReadingRoutes"]


class ReadingRoutes(WebmailBase):
    """C{/read}, C{/frame} (the HTML part) and C{/part} (an attachment)."""

    @app.route("/read", methods=["GET", "HEAD"])
    async def read(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        folder, uid, parsed = await self._requested(request, session)
        if parsed is None:
            return self._not_found(request, session, "message")
        remote = query_arg(request, "remote") == "1"
        view = await self._thread(messages.view, parsed)
        show_html = view.html is not None and query_arg(request, "view") != "text"
        remote_found = False
        if show_html:
            images = await self._thread(messages.inline_images, parsed, view.inline)
            _, remote_found = await self._thread(clean_html, view.html, images, False)
        flags = await folder.setFlags([uid], ["\\Seen"], "add")
        nav, folders = await self._nav(session, folder.name)
        body = pages.read_page(
            session.account,
            session.csrf,
            nav,
            folder.name,
            [entry[0] for entry in folders],
            uid,
            view,
            flags.get(uid, frozenset()),
            show_html,
            remote_found,
            remote,
            query_arg(request, "notice") or None,
        )
        return self._page(request, body)

    @app.route("/frame", methods=["GET", "HEAD"])
    async def frame(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        folder, uid, parsed = await self._requested(request, session)
        if parsed is None:
            return self._not_found(request, session, "message")
        remote = query_arg(request, "remote") == "1"
        view = await self._thread(messages.view, parsed)
        images = await self._thread(messages.inline_images, parsed, view.inline)
        cleaned, _ = await self._thread(clean_html, view.html or "", images, remote)
        request.setResponseCode(200)
        self._headers(request, frame_policy(remote), frame=True)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        document = (
            '<!DOCTYPE html><html><head><meta charset="utf-8"><base target="_blank">'
            "<style>body{font-family:system-ui,sans-serif;margin:.6em;overflow-wrap:anywhere}img{max-width:100%;height:auto}</style>"
            f"</head><body>{cleaned}</body></html>"
        )
        return document.encode("utf-8")

    @app.route("/part", methods=["GET", "HEAD"])
    async def part(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        folder, uid, parsed = await self._requested(request, session)
        found = messages.find_part(parsed, query_int(request, "n", -1)) if parsed is not None else None
        if found is None:
            return self._not_found(request, session, "attachment")
        data: bytes = await self._thread(messages._bytes_of, found)
        content_type = messages.safe_content_type(found)
        charset = found.get_content_charset()
        if content_type.startswith("text/") and charset and messages._TOKEN.match("x/" + charset):
            content_type += f"; charset={charset}"
        self._headers(request, "default-src 'none'; sandbox")
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"content-disposition", content_disposition(messages.attachment_name(found, query_int(request, "n"))).encode("ascii"))
        request.setHeader(b"content-length", str(len(data)).encode())
        return data
