"""
Folders and what is done to messages in them: the folder page (create,
rename, delete), the list's actions (read, flag, move, delete) and emptying
the Trash.

Every change is a POST checked for its CSRF token and origin, and goes
through the store's interfaces in one change (a move is one transfer); the
standard folders can be neither renamed nor deleted.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from mailapp.errors import BadFolderName, FolderError, FolderExists
from mailapp.store import INBOX, SPECIAL_FOLDERS
from mailapp.web import pages
from mailapp.web.base import TRASH, Forbidden, WebmailBase, app
from mailapp.web.forms import form_field, query_arg, safe_back, with_notice

__all__ = ["FolderRoutes"]


class FolderRoutes(WebmailBase):
    """C{/folders} (and its changes), C{/action} and C{/empty-trash}."""

    @app.route("/folders", methods=["GET", "HEAD"])
    async def folders(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        nav, folders = await self._nav(session, None)
        return self._page(request, pages.folders_page(session.account, session.csrf, nav, folders, query_arg(request, "notice") or None))

    @app.route("/folders/<string:change>", methods=["POST"])
    async def change_folder(self, request: IRequest, change: str) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        form = self._form(request)
        try:
            self._check(request, session, form)
        except Forbidden:
            return self._forbidden(request, session)
        name = form_field(form, "name").strip()
        new = form_field(form, "new").strip()
        fixed = {INBOX.lower(), *(special.lower() for special in SPECIAL_FOLDERS)}
        error = None
        try:
            if change == "create":
                if not name:
                    raise BadFolderName("A folder needs a name.")
                await session.mailbox.createFolder(name)
                # The webmail subscribes what it creates, as IMAP clients do after CREATE
                # (which subscribes nothing), so clients that show subscribed folders only see it.
                await session.mailbox.setSubscribed(name, True)
                notice = "created"
            elif change in ("rename", "delete"):
                if name.lower() in fixed or name.split("/")[0].lower() == INBOX.lower():
                    raise BadFolderName(f"{name} is a standard folder and cannot be renamed or deleted.")
                if change == "rename":
                    if not new:
                        raise BadFolderName("The new name is empty.")
                    if new.lower() in fixed:
                        raise FolderExists(f"folder exists: {new}")
                    await session.mailbox.renameFolder(name, new)
                    notice = "renamed"
                else:
                    await session.mailbox.deleteFolder(name)
                    notice = "removed"
            else:
                return self._not_found(request, session, "page")
        except (FolderError, BadFolderName) as e:
            error = str(e) or "That folder name cannot be used."
        if error is not None:
            nav, folders = await self._nav(session, None)
            body = pages.folders_page(session.account, session.csrf, nav, folders, None, [_folder_error_text(error)])
            return self._page(request, body, 400)
        return self._redirect(request, "/folders?notice=" + notice)

    @app.route("/action", methods=["POST"])
    async def action(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        form = self._form(request)
        try:
            self._check(request, session, form)
        except Forbidden:
            return self._forbidden(request, session)
        name = form_field(form, "f", INBOX)
        folder = await self._folder(session, name)
        if folder is None:
            return self._not_found(request, session, "folder")
        back = safe_back(form_field(form, "back"), pages.url("/list", f=folder.name))
        try:
            uids = sorted({int(value) for value in form.get("uid", [])})
        except ValueError:
            uids = []
        what = form_field(form, "do")
        if not uids:
            return self._redirect(request, with_notice(back, "none"))
        notice = "updated"
        if what in ("read", "unread", "flag", "unflag"):
            flag = "\\Seen" if what in ("read", "unread") else "\\Flagged"
            await folder.setFlags(uids, [flag], "add" if what in ("read", "flag") else "remove")
        elif what == "delete" and folder.name == TRASH:
            await folder.expunge(uids)
            notice = "expunged"
            back = pages.url("/list", f=folder.name)
        elif what in ("delete", "move"):
            target_name = TRASH if what == "delete" else form_field(form, "target")
            target = await self._folder(session, target_name)
            if target is None:
                return self._not_found(request, session, "folder")
            if target.name != folder.name:
                await folder.moveTo(uids, target)
            notice = "deleted" if what == "delete" else "moved"
            if back.startswith("/read"):
                back = pages.url("/list", f=folder.name)
        else:
            return self._forbidden(request, session)
        return self._redirect(request, with_notice(back, notice))

    @app.route("/empty-trash", methods=["POST"])
    async def empty_trash(self, request: IRequest) -> bytes:
        session = self._session(request)
        if session is None:
            return self._signed_out(request)
        try:
            self._check(request, session, self._form(request))
        except Forbidden:
            return self._forbidden(request, session)
        trash = await self._folder(session, TRASH)
        if trash is not None:
            await trash.expunge([info.uid for info in await trash.messages()])
        return self._redirect(request, "/list?f=Trash&notice=emptied")


def _folder_error_text(error: str) -> str:
    if error.startswith("folder exists: "):
        return f"A folder called {error[len('folder exists: '):]} already exists."
    if error.startswith("no such folder: "):
        return f"There is no folder called {error[len('no such folder: '):]}."
    return error
