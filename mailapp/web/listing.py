"""
A folder's message list: one page of rows, and the search that narrows it.

The store's index answers the list (UIDs, flags, sizes); a page of rows
reads only the header blocks of its messages, on worker threads, and the
summary cache keeps them, so the first page of a large folder opens as many
files as it shows. A search asks the folder's full-text index first
(L{mailapp.interfaces.IFolder.searchText}: subject, sender, the text of
text parts and attachments, HTML reduced to what a reader sees), and reads
only the messages it does not cover (delivered moments ago, or beyond its
bounds), and all of them for a string under three characters, in batches
of L{_SEARCH_BATCH}, so that a large folder never holds thousands of open
files at once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.web.iweb import IRequest

from mailapp.records import MIN_TEXT_NEEDLE, TextMatches
from mailapp.store import INBOX
from mailapp.web import messages, pages
from mailapp.web.base import WebmailBase, app
from mailapp.web.forms import query_arg, query_int
from mailapp.web.sanitize import html_to_text
from mailapp.web.sessions import Session

__all__ = ["ListingRoutes"]

#: Messages a search reads per round of worker-thread jobs.
_SEARCH_BATCH = 200
#: The full-text index's scope for each of the form's fields (L{mailapp.records.TEXT_SCOPES}).
_SCOPES = {"all": "shown", "body": "shown_body", "from": "from", "subject": "subject"}


class ListingRoutes(WebmailBase):
    """C{/list}: a page of a folder's messages, newest first, searched when asked."""

    @app.route("/list", methods=["GET", "HEAD"])
    async def message_list(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        name = query_arg(request, "f", INBOX)
        folder = await self._folder(session, name)
        if folder is None:
            return self._not_found(request, session, "folder")
        status = await folder.status()
        infos = list(reversed(await folder.messages()))
        query = query_arg(request, "q").strip()[:200]
        field = query_arg(request, "field", "all")
        if field not in ("all", "from", "subject", "body"):
            field = "all"
        if query:
            infos = await self._search(session, folder, status.uidvalidity, infos, query, field)
        size = self.policy.page_size
        pages_count = max(1, -(-len(infos) // size))
        page = min(max(1, query_int(request, "page", 1)), pages_count)
        shown = infos[(page - 1) * size : page * size]
        rows = await self._summaries(folder, status.uidvalidity, shown)
        nav, folders = await self._nav(session, folder.name)
        names = [entry[0] for entry in folders]
        body = pages.list_page(
            session.account, session.csrf, nav, folder.name, names, rows, page, pages_count, len(infos), query, field, query_arg(request, "notice") or None
        )
        return self._page(request, body)

    async def _summaries(self, folder: Any, uidvalidity: int, infos: list[Any]) -> list[messages.Summary]:
        account = folder.account.lower()
        found: dict[int, messages.Summary] = {}
        missing = []
        for info in infos:
            cached = self.summaries.get((account, folder.name, uidvalidity, info.uid))
            if cached is None:
                missing.append(info)
            else:
                found[info.uid] = cached
        for start in range(0, len(missing), _SEARCH_BATCH):
            batch = missing[start : start + _SEARCH_BATCH]
            handles = await gatherResults([self._open(folder, info.uid) for info in batch], consumeErrors=True)

            def read(pairs: list[tuple[Any, Any]] = list(zip(batch, handles))) -> list[messages.Summary]:
                rows = []
                for info, handle in pairs:
                    if handle is None:
                        continue
                    try:
                        rows.append(messages.read_summary(handle, info.uid, frozenset(), info.size, info.internaldate))
                    except Exception:
                        rows.append(messages.Summary(info.uid, "(unreadable)", "", info.internaldate, info.size, frozenset(), False))
                return rows

            for row in await self._thread(read):
                self.summaries.put((account, folder.name, uidvalidity, row.uid), row)
                found[row.uid] = row
        return [replace(found[info.uid], flags=info.flags) for info in infos if info.uid in found]

    async def _search(self, session: Session, folder: Any, uidvalidity: int, infos: list[Any], query: str, field: str) -> list[Any]:
        needle = query.casefold()
        text = await _ask_index(folder, _SCOPES[field], needle)
        if text is None:
            return await self._scan(session, folder, uidvalidity, infos, needle, field)
        found = text.found[(_SCOPES[field], needle)]
        unread = [info for info in infos if not text.covers(info.uid)]
        read = {info.uid for info in await self._scan(session, folder, uidvalidity, unread, needle, field)} if unread else set()
        return [info for info in infos if info.uid in read or (text.covers(info.uid) and info.uid in found)]

    async def _scan(self, session: Session, folder: Any, uidvalidity: int, infos: list[Any], needle: str, field: str) -> list[Any]:
        """The messages of C{infos} that mention C{needle} (case-folded), by reading them."""
        result = []
        if field in ("from", "subject"):
            for row, info in zip(await self._summaries(folder, uidvalidity, infos), infos):
                text = row.sender if field == "from" else row.subject
                if needle in text.casefold():
                    result.append(info)
            return result
        for start in range(0, len(infos), _SEARCH_BATCH):
            batch = infos[start : start + _SEARCH_BATCH]
            handles = await gatherResults([self._open(folder, info.uid) for info in batch], consumeErrors=True)

            def scan(pairs: list[tuple[Any, Any]] = list(zip(batch, handles))) -> list[Any]:
                hits = []
                for info, handle in pairs:
                    if handle is not None and _matches(handle, needle, field):
                        hits.append(info)
                return hits

            result.extend(await self._thread(scan))
        return result


async def _ask_index(folder: Any, scope: str, needle: str) -> TextMatches | None:
    """The full-text index's answer, or None (a string too short, no index, or it failed: every message is read)."""
    if len(needle) < MIN_TEXT_NEEDLE:
        return None
    try:
        result: TextMatches | None = await folder.searchText([(scope, needle)])
    except Exception:  # noqa: BLE001 - the index is an accelerator: reading the messages answers too
        return None
    return result


def _matches(handle: Any, needle: str, field: str) -> bool:
    """Worker thread: does the message mention C{needle} in its sender, subject or text?"""
    try:
        with handle:
            data = handle.read(2 * 1024 * 1024)
        message = messages.parse_bytes(data)
        if field == "all":
            for name in ("From", "Subject"):
                if needle in messages._header(message, name).casefold():
                    return True
        for part in message.walk():
            if part.get_content_maintype() == "text" and part.get_content_disposition() != "attachment":
                text = messages._text_of(part)
                if part.get_content_subtype() == "html":
                    text = html_to_text(text)
                if needle in text.casefold():
                    return True
    except Exception:
        return False
    return False
