"""
The webmail's pages, as L{twisted.web.template} tag trees: every string put
into a tag or an attribute is escaped by the flattener, so no page builds
HTML by concatenating text.

The pages need no JavaScript: links, buttons and forms carry every action,
and each state-changing form carries the session's CSRF token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Iterable, Sequence
from urllib.parse import urlencode

from twisted.web.template import Tag, flattenString

from mailapp.sieve.webmail import ACTIONS, FIELDS, FLAGS, MATCHES, Rule, generate
from mailapp.store import INBOX, SPECIAL_FOLDERS
from mailapp.web.messages import Attachment, MessageView, Summary



class _Tags:
    """Like L{twisted.web.template.tags}, which predates HTML5 and lacks C{main}, C{nav}, C{time}..."""

    def __getattr__(self, name: str) -> Tag:
        return Tag(name)


tags = _Tags()

PAGE_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

#: Fixed notices a redirect may name (never text from the query string itself).
NOTICES = {
    "sent": "Message sent.",
    "draft": "Draft saved in Drafts.",
    "moved": "Messages moved.",
    "deleted": "Messages moved to Trash.",
    "expunged": "Messages deleted.",
    "emptied": "Trash emptied.",
    "updated": "Messages updated.",
    "created": "Folder created.",
    "renamed": "Folder renamed.",
    "removed": "Folder deleted.",
    "expired": "Your session ended; please sign in again.",
    "loggedout": "You are signed out.",
    "none": "Select one or more messages first.",
    "allowed": "Sender allowed.",
    "blocked": "Sender blocked.",
    "unlisted": "Sender removed from your lists.",
}


def url(path: str, **query: Any) -> str:
    pairs = [(k, v) for k, v in query.items() if v is not None and v != ""]
    return path + ("?" + urlencode(pairs) if pairs else "")


def render(tag: Tag) -> bytes:
    """Flatten a page synchronously (our tags hold no Deferreds)."""
    result: list[bytes] = []
    flattenString(None, tag).addCallback(result.append)
    return b"<!DOCTYPE html>\n" + result[0]


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def short_date(timestamp: float, now: float | None = None) -> str:
    now = time.time() if now is None else now
    moment = time.localtime(timestamp)
    if time.localtime(now)[:3] == moment[:3]:
        return time.strftime("%H:%M", moment)
    if time.localtime(now).tm_year == moment.tm_year:
        return time.strftime("%d %b", moment)
    return time.strftime("%d %b %Y", moment)


def _csrf(token: str) -> Tag:
    return tags.input(type="hidden", name="csrf", value=token)


def _page(title: str, body: Iterable[Any], account: str | None = None, csrf: str = "", nav: Any = None) -> bytes:
    header: list[Any] = [tags.a("mailapp", href="/", class_="brand")]
    if account:
        header += [
            tags.a("Compose", href="/compose", class_="button primary", accesskey="c"),
            tags.span(account, class_="account"),
            tags.a("Settings", href="/settings", class_="settings"),
            tags.form(_csrf(csrf), tags.button("Sign out", type="submit"), method="post", action="/logout", class_="inline"),
        ]
    content = [tags.main(*body, id="main")]
    if nav is not None:
        content.insert(0, nav)
    return render(
        tags.html(
            tags.head(
                tags.meta(charset="utf-8"),
                tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
                tags.title(f"{title} - mailapp"),
                tags.link(rel="stylesheet", href="/static/style.css"),
                tags.link(rel="icon", href="data:,"),
            ),
            tags.body(
                tags.a("Skip to content", href="#main", class_="skip"),
                tags.header(*header, class_="top"),
                tags.div(*content, class_="layout"),
            ),
            lang="en",
        )
    )


def _notice(notice: str | None, errors: Sequence[str] = ()) -> list[Tag]:
    out = []
    if notice and notice in NOTICES:
        out.append(tags.p(NOTICES[notice], class_="notice", role="status"))
    if errors:
        out.append(tags.div(tags.ul(*[tags.li(e) for e in errors]), class_="error", role="alert"))
    return out


def folder_nav(folders: Sequence[tuple[str, int, int]], current: str | None) -> Tag:
    """C{folders}: (name, unread, total) in display order."""
    items = []
    for name, unread, _ in folders:
        label: list[Any] = [name]
        if unread:
            label.append(tags.span(str(unread), class_="count", title=f"{unread} unread"))
        link = tags.a(*label, href=url("/list", f=name))
        if name == current:
            link(**{"aria-current": "page"})
        items.append(tags.li(link))
    items.append(tags.li(tags.a("Manage folders", href="/folders"), class_="manage"))
    return tags.nav(tags.h2("Folders", class_="visually-hidden"), tags.ul(*items), class_="folders", **{"aria-label": "Folders"})


def login_page(login_token: str, error: str | None = None, notice: str | None = None, username: str = "") -> bytes:
    form = tags.form(
        tags.h1("Sign in"),
        *_notice(notice, [error] if error else []),
        tags.input(type="hidden", name="login_token", value=login_token),
        tags.label("Email address", for_="username"),
        tags.input(id="username", name="username", type="email", value=username, autocomplete="username", required="", autofocus=""),
        tags.label("Password", for_="password"),
        tags.input(id="password", name="password", type="password", autocomplete="current-password", required=""),
        tags.button("Sign in", type="submit", class_="primary"),
        method="post",
        action="/login",
        class_="login",
    )
    return _page("Sign in", [form])


def list_page(
    account: str,
    csrf: str,
    nav: Tag,
    folder: str,
    folder_names: Sequence[str],
    rows: Sequence[Summary],
    page: int,
    pages: int,
    total: int,
    query: str,
    field: str,
    notice: str | None,
    now: float | None = None,
) -> bytes:
    here = url("/list", f=folder, page=page if page > 1 else None, q=query or None, field=field if query else None)
    search = tags.form(
        tags.input(type="hidden", name="f", value=folder),
        tags.label("Search", for_="q", class_="visually-hidden"),
        tags.input(id="q", name="q", type="search", value=query, placeholder="Search"),
        tags.label("in", for_="field", class_="visually-hidden"),
        tags.select(
            *[
                tags.option(label, value=value, **({"selected": ""} if value == field else {}))
                for value, label in (("all", "sender, subject and body"), ("from", "sender"), ("subject", "subject"), ("body", "body"))
            ],
            id="field",
            name="field",
        ),
        tags.button("Search", type="submit"),
        method="get",
        action="/list",
        class_="search",
        role="search",
    )
    heading = tags.h1(folder, tags.span(f" {total} message{'s' if total != 1 else ''}" + (f" matching {query!r}" if query else ""), class_="muted"))
    body_rows = []
    for row in rows:
        unread = "\\Seen" not in row.flags
        flagged = "\\Flagged" in row.flags
        marks = []
        if unread:
            marks.append(tags.span("\u25cf", class_="unread-mark", title="unread", **{"aria-label": "unread"}))
        if flagged:
            marks.append(tags.span("\u2691", class_="flag-mark", title="flagged", **{"aria-label": "flagged"}))
        if "\\Answered" in row.flags:
            marks.append(tags.span("\u21a9", class_="answered-mark", title="answered", **{"aria-label": "answered"}))
        clip = tags.span(tags.span("has attachments", class_="visually-hidden"), class_="clip", title="has attachments") if row.has_attachments else ""
        link = url("/compose", draft=row.uid) if folder == "Drafts" else url("/read", f=folder, uid=row.uid)
        box_id = f"m{row.uid}"
        body_rows.append(
            tags.tr(
                tags.td(
                    tags.input(type="checkbox", name="uid", value=str(row.uid), id=box_id),
                    tags.label(f"Select message from {row.sender}", for_=box_id, class_="visually-hidden"),
                    class_="select",
                ),
                tags.td(*marks, class_="marks"),
                tags.td(row.sender, class_="sender"),
                tags.td(tags.a(row.subject or "(no subject)", href=link), " ", clip, class_="subject"),
                tags.td(tags.time(short_date(row.date, now), datetime=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row.date))), class_="date"),
                tags.td(human_size(row.size), class_="size"),
                class_="unread" if unread else "read",
            )
        )
    table: Any = (
        tags.table(
            tags.thead(
                tags.tr(
                    tags.th(tags.span("Select", class_="visually-hidden"), scope="col"),
                    tags.th(tags.span("Status", class_="visually-hidden"), scope="col"),
                    tags.th("From", scope="col"),
                    tags.th("Subject", scope="col"),
                    tags.th("Date", scope="col"),
                    tags.th("Size", scope="col"),
                )
            ),
            tags.tbody(*body_rows),
            class_="messages",
        )
        if rows
        else tags.p("No messages." if not query else "No message matches.", class_="empty")
    )
    targets = [name for name in folder_names if name != folder]
    actions = tags.div(
        tags.button("Mark read", type="submit", name="do", value="read"),
        tags.button("Mark unread", type="submit", name="do", value="unread"),
        tags.button("Flag", type="submit", name="do", value="flag"),
        tags.button("Unflag", type="submit", name="do", value="unflag"),
        tags.button("Delete" if folder != "Trash" else "Delete for good", type="submit", name="do", value="delete"),
        tags.span(
            tags.label("Move to", for_="target"),
            tags.select(*[tags.option(name, value=name) for name in targets], id="target", name="target"),
            tags.button("Move", type="submit", name="do", value="move"),
            class_="move",
        ),
        class_="actions",
    )
    pager = []
    if pages > 1:
        if page > 1:
            pager.append(tags.a("\u2190 Newer", href=url("/list", f=folder, page=page - 1, q=query or None, field=field if query else None), rel="prev"))
        pager.append(tags.span(f"Page {page} of {pages}"))
        if page < pages:
            pager.append(tags.a("Older \u2192", href=url("/list", f=folder, page=page + 1, q=query or None, field=field if query else None), rel="next"))
    bulk = tags.form(
        _csrf(csrf),
        tags.input(type="hidden", name="f", value=folder),
        tags.input(type="hidden", name="back", value=here),
        actions,
        table,
        method="post",
        action="/action",
        class_="bulk",
    )
    extra = []
    if folder == "Trash" and total:
        extra.append(
            tags.form(_csrf(csrf), tags.button("Empty Trash", type="submit", class_="danger"), method="post", action="/empty-trash", class_="inline")
        )
    return _page(
        folder,
        [tags.div(heading, search, class_="list-head"), *_notice(notice), *extra, bulk, tags.nav(*pager, class_="pager", **{"aria-label": "Pages"})],
        account,
        csrf,
        nav,
    )


def _header_row(label: str, value: str) -> list[Tag]:
    return [tags.dt(label), tags.dd(value)] if value else []


def read_page(
    account: str,
    csrf: str,
    nav: Tag,
    folder: str,
    folder_names: Sequence[str],
    uid: int,
    message: MessageView,
    flags: frozenset[str],
    show_html: bool,
    remote_found: bool,
    remote: bool,
    notice: str | None = None,
) -> bytes:
    back = url("/read", f=folder, uid=uid)
    headers = tags.dl(
        *_header_row("From", message.sender),
        *_header_row("To", message.to),
        *_header_row("Cc", message.cc),
        *_header_row("Bcc", message.bcc),
        *_header_row("Reply-To", message.reply_to),
        *_header_row("Date", message.date),
        class_="headers",
    )
    replies = tags.div(
        tags.a("Reply", href=url("/compose", mode="reply", f=folder, uid=uid), class_="button"),
        tags.a("Reply all", href=url("/compose", mode="replyall", f=folder, uid=uid), class_="button"),
        tags.a("Forward", href=url("/compose", mode="forward", f=folder, uid=uid), class_="button"),
        class_="replies",
    )
    actions = tags.form(
        _csrf(csrf),
        tags.input(type="hidden", name="f", value=folder),
        tags.input(type="hidden", name="uid", value=str(uid)),
        tags.input(type="hidden", name="back", value=back),
        tags.button("Mark unread", type="submit", name="do", value="unread"),
        tags.button("Unflag" if "\\Flagged" in flags else "Flag", type="submit", name="do", value="unflag" if "\\Flagged" in flags else "flag"),
        tags.button("Delete", type="submit", name="do", value="delete"),
        tags.label("Move to", for_="target"),
        tags.select(*[tags.option(name, value=name) for name in folder_names if name != folder], id="target", name="target"),
        tags.button("Move", type="submit", name="do", value="move"),
        method="post",
        action="/action",
        class_="actions",
    )
    body: list[Any] = []
    if show_html:
        switches = []
        if message.text is not None:
            switches.append(tags.a("Plain text", href=url("/read", f=folder, uid=uid, view="text")))
        if remote_found and not remote:
            body.append(
                tags.p(
                    "Remote content in this message was blocked to protect your privacy. ",
                    tags.a("Show remote content", href=url("/read", f=folder, uid=uid, remote=1), class_="show-remote"),
                    class_="notice",
                )
            )
        body.append(
            tags.iframe(
                src=url("/frame", f=folder, uid=uid, remote=1 if remote else None),
                sandbox="allow-popups allow-popups-to-escape-sandbox",
                title="Message body",
                class_="message-frame",
                referrerpolicy="no-referrer",
            )
        )
        body.extend(tags.p(s, class_="switch") for s in switches)
    elif message.text is not None:
        body.append(tags.pre(message.text, class_="text-body"))
        if message.html is not None:
            body.append(tags.p(tags.a("Formatted view", href=url("/read", f=folder, uid=uid)), class_="switch"))
    else:
        body.append(tags.p("This message has no text.", class_="muted"))
    attachments = []
    if message.attachments:
        attachments.append(
            tags.section(
                tags.h2("Attachments"),
                tags.ul(*[_attachment_item(folder, uid, a) for a in message.attachments]),
                class_="attachments",
            )
        )
    return _page(
        message.subject or "(no subject)",
        [
            tags.article(
                tags.h1(message.subject or "(no subject)"),
                *_notice(notice),
                replies,
                headers,
                actions,
                *attachments,
                tags.div(*body, class_="body"),
            ),
            tags.p(tags.a("\u2190 Back to " + folder, href=url("/list", f=folder))),
        ],
        account,
        csrf,
        nav,
    )


def _attachment_item(folder: str, uid: int, attachment: Attachment) -> Tag:
    return tags.li(
        tags.a(attachment.filename, href=url("/part", f=folder, uid=uid, n=attachment.number), download=attachment.filename),
        tags.span(f" {attachment.content_type}, {human_size(attachment.size)}", class_="muted"),
    )


def compose_page(
    account: str,
    csrf: str,
    nav: Tag,
    values: dict[str, str],
    errors: Sequence[str] = (),
    forwarded: Sequence[str] = (),
    max_size: int = 0,
    sender: str = "",
) -> bytes:
    def field(label: str, name: str, kind: str = "text", hint: str = "") -> list[Any]:
        out: list[Any] = [tags.label(label, for_=name)]
        attributes: dict[str, str] = {}
        if hint:
            attributes["aria-describedby"] = name + "-hint"
        out.append(tags.input(id=name, name=name, type=kind, value=values.get(name, ""), **attributes))
        if hint:
            out.append(tags.small(hint, id=name + "-hint", class_="hint"))
        return out

    hidden = [tags.input(type="hidden", name=name, value=values.get(name, "")) for name in ("in_reply_to", "references", "forward_f", "forward_uid", "draft_uid")]
    carried = []
    if forwarded:
        carried.append(tags.p("Forwarded attachments: ", ", ".join(forwarded), class_="muted"))
    form = tags.form(
        _csrf(csrf),
        *hidden,
        tags.h1("New message" if not values.get("subject") else values.get("subject", "")),
        *_notice(None, errors),
        tags.p("From: ", tags.strong(sender or account), class_="from"),
        *field("To", "to", hint="Several addresses: separate them with commas."),
        *field("Cc", "cc"),
        *field("Bcc", "bcc", hint="Bcc recipients get the message; nobody sees them listed."),
        *field("Subject", "subject"),
        tags.label("Message", for_="body"),
        tags.textarea(values.get("body", ""), id="body", name="body", rows="16"),
        tags.label("Attachments", for_="attachments"),
        tags.input(id="attachments", name="attachment", type="file", multiple="", **{"aria-describedby": "attachments-hint"}),
        tags.small(f"Up to {human_size(max_size)} in all." if max_size else "", id="attachments-hint", class_="hint"),
        *carried,
        tags.div(
            tags.button("Send", type="submit", name="action", value="send", class_="primary"),
            tags.button("Save draft", type="submit", name="action", value="draft"),
            class_="actions",
        ),
        method="post",
        action="/compose",
        enctype="multipart/form-data",
        class_="compose",
    )
    return _page("Compose", [form], account, csrf, nav)


def folders_page(account: str, csrf: str, nav: Tag, folders: Sequence[tuple[str, int, int]], notice: str | None, errors: Sequence[str] = ()) -> bytes:
    rows = []
    for name, unread, total in folders:
        fixed = name == INBOX or name in SPECIAL_FOLDERS
        manage: list[Any] = []
        if not fixed:
            safe = "".join(ch if ch.isalnum() else "-" for ch in name)
            manage = [
                tags.form(
                    _csrf(csrf),
                    tags.input(type="hidden", name="name", value=name),
                    tags.label("New name", for_="rename-" + safe, class_="visually-hidden"),
                    tags.input(id="rename-" + safe, name="new", type="text", value=name),
                    tags.button("Rename", type="submit"),
                    method="post",
                    action="/folders/rename",
                    class_="inline",
                ),
                tags.form(
                    _csrf(csrf),
                    tags.input(type="hidden", name="name", value=name),
                    tags.button(f"Delete {name}", type="submit", class_="danger"),
                    method="post",
                    action="/folders/delete",
                    class_="inline",
                ),
            ]
        rows.append(
            tags.tr(
                tags.td(tags.a(name, href=url("/list", f=name))),
                tags.td(str(unread)),
                tags.td(str(total)),
                tags.td(*manage),
            )
        )
    create = tags.form(
        _csrf(csrf),
        tags.label("New folder", for_="new-folder"),
        tags.input(id="new-folder", name="name", type="text", required=""),
        tags.button("Create", type="submit", class_="primary"),
        method="post",
        action="/folders/create",
        class_="inline create",
    )
    table = tags.table(
        tags.thead(tags.tr(tags.th("Folder", scope="col"), tags.th("Unread", scope="col"), tags.th("Messages", scope="col"), tags.th("Change", scope="col"))),
        tags.tbody(*rows),
        class_="folder-table",
    )
    return _page("Folders", [tags.h1("Folders"), *_notice(notice, errors), create, table], account, csrf, nav)


@dataclass
class SettingsView:
    """
    Everything the settings page shows. Each part is its own form; a refused
    change comes back with C{errors[part]} and the values as entered.
    C{filters}/C{state} are None when the server runs no Sieve filtering.
    """

    account: str
    csrf: str
    sender_rules: Sequence[Any]
    notice: str | None = None
    errors: dict[str, list[str]] = dc_field(default_factory=dict)
    sender_entry: str = ""
    #: The rule rows shown (as entered when refused), a L{mailapp.sieve.webmail.WebmailFilters}.
    filters: Any = None
    #: The L{mailapp.sieve.webmail.WebmailState}: the active script and whether the page made it.
    state: Any = None
    folders: Sequence[str] = ()
    #: The script text in the editor (as entered when refused), or None for the active one.
    script: str | None = None
    #: The script the form would generate now (shown when no script is active).
    generated: str = ""
    profile: Any = None


SETTINGS_NOTICES = {
    "rules": "Filter rules saved; they apply to the next message.",
    "vacation": "Vacation reply saved.",
    "forwarding": "Forwarding saved.",
    "script": "Script saved and active; it applies to the next message.",
    "checked": "The script is valid. It was not saved.",
    "profile": "Display name and signature saved.",
    "password": "Password changed. Your other sessions were signed out.",
}


def _field(label: str, control: Tag, hint: str = "") -> Tag:
    parts: list[Any] = [tags.span(label, class_="label"), control]
    if hint:
        parts.append(tags.small(hint, class_="hint"))
    return tags.label(*parts, class_="field")


def _select(name: str, options: Any, selected: str, label: str = "", **attributes: str) -> Tag:
    choices = []
    for value, text in options:
        option = tags.option(text, value=value)
        if value == selected:
            option.attributes["selected"] = ""
        choices.append(option)
    if label:
        attributes["aria-label"] = label
    return tags.select(*choices, name=name, **attributes)


def _checkbox(name: str, checked: bool, text: str, **attributes: str) -> Tag:
    box = tags.input(type="checkbox", name=name, value="1", **attributes)
    if checked:
        box.attributes["checked"] = ""
    return tags.label(box, " ", text, class_="check")


def _part_errors(view: SettingsView, part: str) -> list[Tag]:
    errors = view.errors.get(part, [])
    if not errors:
        return []
    return [tags.div(tags.ul(*[tags.li(error) for error in errors]), class_="error", role="alert", id=f"{part}-errors")]


def _replace_box(view: SettingsView) -> list[Tag]:
    """The explicit consent to replace an active script this page did not make."""
    state = view.state
    if state is None or not state.foreign:
        return []
    return [
        tags.p(
            "Your active Sieve script ",
            tags.strong(f"\u201c{state.active_name}\u201d"),
            " was not made by this page (uploaded with ManageSieve or the mailapp command, or edited as text); it is shown under Script below. "
            "Saving here replaces it as your active script (it stays stored under its name).",
            class_="warning",
        ),
        _checkbox("replace", False, "Replace my active script with the one this page makes", class_="replace"),
    ]


def _rule_row(number: int, rule: Any, folders: Sequence[str], last: bool) -> Tag:
    prefix = f"r{number}_"
    folder_options = [("", "(a new folder:)")] + [(name, name) for name in folders]
    existing = rule.folder in folders
    controls: list[Any] = [
        tags.span("When", class_="word"),
        _select(prefix + "field", FIELDS.items(), rule.field, "What to look at"),
        tags.input(type="text", name=prefix + "header", value=rule.header, placeholder="Header name", size="14", **{"aria-label": "Header name"}),
        _select(prefix + "match", MATCHES.items(), rule.match, "How to compare"),
        tags.input(type="text", name=prefix + "text", value=rule.text, placeholder="text", **{"aria-label": "Text"}),
        tags.span("then", class_="word"),
        _select(prefix + "action", ACTIONS.items(), rule.action, "What to do"),
        _select(prefix + "folder", folder_options, rule.folder if existing else "", "Folder"),
        tags.input(type="text", name=prefix + "newfolder", value="" if existing else rule.folder, placeholder="New folder", size="14", **{"aria-label": "New folder"}),
        _select(prefix + "flag", FLAGS.items(), rule.flag, "Flag"),
        tags.input(type="email", name=prefix + "address", value=rule.address, placeholder="Forward to address", **{"aria-label": "Forward to address"}),
        _checkbox(prefix + "copy", rule.keep_copy, "keep a copy"),
        _checkbox(prefix + "stop", rule.stop, "then stop"),
    ]
    if not last:
        controls.append(_checkbox(prefix + "remove", False, "remove"))
        if number:
            controls.append(tags.button("Move up", type="submit", name="up", value=str(number)))
    heading = "New rule" if last else f"Rule {number + 1}"
    return tags.fieldset(tags.legend(heading), *controls, class_="rule", id=f"rule-{number}")


def _filters_part(view: SettingsView) -> list[Any]:
    filters = view.filters
    rows = list(filters.rules) + [Rule()]
    rules_form = tags.form(
        _csrf(view.csrf),
        tags.input(type="hidden", name="rules", value=str(len(rows))),
        # The form's default button (Enter in a field): first in the form, or a "Move up" would be.
        tags.button("Save rules", type="submit", class_="visually-hidden", tabindex="-1", **{"aria-hidden": "true"}),
        *_part_errors(view, "rules"),
        tags.p(
            "Each rule looks at one header of a new message. Rules run in order; "
            "\u201cthen stop\u201d skips the rules after it. From and To with \u201cis\u201d or "
            "\u201cmatches\u201d compare the address; \u201ccontains\u201d looks at the whole header. "
            "A flag applies to where the message is kept or moved by a later rule.",
            class_="hint",
        ),
        *[_rule_row(number, rule, view.folders, number == len(rows) - 1) for number, rule in enumerate(rows)],
        *_replace_box(view),
        tags.div(tags.button("Save rules", type="submit", class_="primary"), class_="actions"),
        method="post",
        action="/settings/filters",
        class_="settings-form",
        id="rules-form",
    )
    vacation = filters.vacation
    vacation_form = tags.form(
        _csrf(view.csrf),
        *_part_errors(view, "vacation"),
        _checkbox("enabled", vacation.enabled, "Send an automatic reply", id="vacation-enabled"),
        _field("First day", tags.input(type="date", name="start", value=vacation.start), "Empty: from now. Days are UTC."),
        _field("Last day", tags.input(type="date", name="end", value=vacation.end), "Empty: until you turn it off."),
        _field("Subject", tags.input(type="text", name="subject", value=vacation.subject, size="50"), "Empty: \u201cAuto: \u201d and the message's subject."),
        _field("Text", tags.textarea(vacation.text, name="text", rows="5", cols="60")),
        _field("Days between replies to one sender", tags.input(type="number", name="days", min="1", max="365", value=str(vacation.days))),
        tags.p("Lists, bulk mail and automatic messages are never answered.", class_="hint"),
        *_replace_box(view),
        tags.div(tags.button("Save vacation reply", type="submit", class_="primary"), class_="actions"),
        method="post",
        action="/settings/vacation",
        class_="settings-form",
        id="vacation-form",
    )
    forwarding = filters.forwarding
    forwarding_form = tags.form(
        _csrf(view.csrf),
        *_part_errors(view, "forwarding"),
        _field("Forward all mail to", tags.input(type="email", name="address", value=forwarding.address, size="40"), "Empty: no forwarding."),
        _checkbox("copy", forwarding.keep_copy, "Keep a copy here (without one, your rules and vacation reply do not run)"),
        *_replace_box(view),
        tags.div(tags.button("Save forwarding", type="submit", class_="primary"), class_="actions"),
        method="post",
        action="/settings/forwarding",
        class_="settings-form",
        id="forwarding-form",
    )
    state = view.state
    if view.script is not None:
        text = view.script
    elif state.active_text is not None:
        text = state.active_text
    else:
        text = view.generated or generate(filters)
    if state.active_name is None:
        status = tags.p("No script is active: the form above has not been saved yet.", class_="hint")
    elif state.generated:
        status = tags.p("Your active script, made by the form above (", tags.code(state.active_name), ").", class_="hint")
    else:
        status = tags.p("Your active script ", tags.code(state.active_name), ", not made by the form above.", class_="hint")
    script_form = tags.form(
        _csrf(view.csrf),
        status,
        *_part_errors(view, "script"),
        tags.textarea(text, name="script", rows="18", cols="80", spellcheck="false", class_="script", **{"aria-label": "Sieve script"}),
        tags.p("Saved as your webmail script and made active; a script with an error is never saved.", class_="hint"),
        tags.div(
            tags.button("Save script", type="submit", name="do", value="save", class_="primary"),
            tags.button("Check only", type="submit", name="do", value="check"),
            class_="actions",
        ),
        method="post",
        action="/settings/script",
        class_="settings-form",
        id="script-form",
    )
    return [
        tags.section(tags.h2("Filter rules"), rules_form, id="filters"),
        tags.section(tags.h2("Vacation reply"), vacation_form, id="vacation"),
        tags.section(tags.h2("Forwarding"), forwarding_form, id="forwarding"),
        tags.section(tags.h2("Script (Sieve)"), script_form, id="script"),
    ]


def _account_part(view: SettingsView) -> list[Any]:
    profile = view.profile
    profile_form = tags.form(
        _csrf(view.csrf),
        *_part_errors(view, "profile"),
        _field("Display name", tags.input(type="text", name="display_name", value=profile.display_name, size="40"), "Shown in the From of what you send."),
        _field("Signature", tags.textarea(profile.signature, name="signature", rows="4", cols="60"), "Added below \u201c-- \u201d in new messages."),
        tags.div(tags.button("Save", type="submit", class_="primary"), class_="actions"),
        method="post",
        action="/settings/profile",
        class_="settings-form",
        id="profile-form",
    )
    password_form = tags.form(
        _csrf(view.csrf),
        *_part_errors(view, "password"),
        _field("Current password", tags.input(type="password", name="current", autocomplete="current-password", required="")),
        _field("New password", tags.input(type="password", name="new", autocomplete="new-password", required="")),
        _field("New password again", tags.input(type="password", name="again", autocomplete="new-password", required="")),
        tags.div(tags.button("Change password", type="submit", class_="primary"), class_="actions"),
        method="post",
        action="/settings/password",
        class_="settings-form",
        id="password-form",
    )
    return [
        tags.section(tags.h2("Name and signature"), profile_form, id="profile"),
        tags.section(tags.h2("Password"), password_form, id="password"),
    ]


def settings_page(view: SettingsView) -> bytes:
    """
    The user's settings, each part its own form: filter rules, vacation,
    forwarding and the Sieve script they make; name, signature and password;
    the allow and block lists of senders (C{sender_rules}: L{mailapp.accounts.SenderRule}s).
    """
    account, csrf, rules = view.account, view.csrf, view.sender_rules
    sections = []
    for action, title, empty in (
        ("allow", "Allowed senders", "Mail from these senders skips greylisting and Junk."),
        ("block", "Blocked senders", "Mail from these senders is refused."),
    ):
        items = [
            tags.li(
                tags.span(rule.pattern, class_="entry"),
                tags.form(
                    _csrf(csrf),
                    tags.input(type="hidden", name="entry", value=rule.pattern),
                    tags.button(f"Remove {rule.pattern}", type="submit", class_="danger"),
                    method="post",
                    action="/settings/senders/remove",
                    class_="inline",
                ),
            )
            for rule in rules
            if rule.action == action
        ]
        sections.append(
            tags.section(
                tags.h2(title),
                tags.p(empty),
                tags.ul(*items, class_="sender-list", id=f"{action}-list") if items else tags.p("None yet.", class_="empty"),
            )
        )
    add = tags.form(
        _csrf(csrf),
        tags.label("Address or domain", for_="sender-entry"),
        tags.input(id="sender-entry", name="entry", type="text", required="", value=view.sender_entry, placeholder="friend@example.org, example.org or *.example.org"),
        tags.button("Allow", type="submit", name="do", value="allow", class_="primary"),
        tags.button("Block", type="submit", name="do", value="block", class_="danger"),
        method="post",
        action="/settings/senders/add",
        class_="inline create",
    )
    notices: list[Any] = []
    if view.notice in SETTINGS_NOTICES:
        notices.append(tags.p(SETTINGS_NOTICES[view.notice], class_="notice", role="status"))
    else:
        notices += _notice(view.notice)
    filters = _filters_part(view) if view.filters is not None else [tags.p("Filtering is not available on this server.", class_="hint")]
    body = [
        tags.h1("Settings"),
        *notices,
        *filters,
        *(_account_part(view) if view.profile is not None else []),
        tags.section(tags.h2("Senders"), *_part_errors(view, "senders"), add, *sections, id="senders"),
    ]
    return _page("Settings", body, account, csrf)


def message_page(title: str, text: str, account: str | None = None, csrf: str = "", link: tuple[str, str] | None = None) -> bytes:
    body: list[Any] = [tags.h1(title), tags.p(text)]
    if link:
        body.append(tags.p(tags.a(link[1], href=link[0])))
    return _page(title, body, account, csrf)
