"""
Reading what a request sends: query arguments, urlencoded and multipart
form fields, and the few values that go back out in headers.

Forms are parsed here rather than by twisted.web (the site is built with
C{parsePOSTFormSubmission=False}): a multipart upload is parsed on a worker
thread, and a value that names where to go next (C{back}) is only ever a
path on this site.
"""

from __future__ import annotations

import email.policy
from email.parser import BytesParser
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.web.iweb import IRequest

from mailapp.web import messages

__all__ = [
    "content_disposition",
    "form_field",
    "parse_multipart",
    "query_arg",
    "query_int",
    "safe_back",
    "with_notice",
]


def form_field(form: dict[str, list[str]], name: str, default: str = "") -> str:
    values = form.get(name)
    return values[0] if values else default


def query_arg(request: IRequest, name: str, default: str = "") -> str:
    values: list[bytes] | None = request.args.get(name.encode())
    if not values:
        return default
    return values[0].decode("utf-8", "replace")


def query_int(request: IRequest, name: str, default: int = 0) -> int:
    try:
        return int(query_arg(request, name, str(default)))
    except ValueError:
        return default


def safe_back(value: str, default: str) -> str:
    """Only a path on this site: never another origin (``//host``, ``\\``, a scheme)."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value or any(ord(ch) < 32 for ch in value):
        return default
    return value


def with_notice(location: str, notice: str) -> str:
    parts = urlsplit(location)
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("notice="))
    query = (query + "&" if query else "") + "notice=" + notice
    return parts.path + "?" + query


def content_disposition(filename: str) -> str:
    ascii_name = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\;%' else "_" for ch in filename) or "attachment"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def parse_multipart(content_type: bytes, content: Any) -> tuple[dict[str, list[str]], list[tuple[str, str, bytes]]]:
    """Worker thread: the fields and uploaded files of a multipart/form-data body."""
    content.seek(0)
    data = content.read()
    message = BytesParser(policy=email.policy.HTTP).parsebytes(b"Content-Type: " + content_type + b"\r\n\r\n" + data)
    fields: dict[str, list[str]] = {}
    files: list[tuple[str, str, bytes]] = []
    if not message.is_multipart():
        return fields, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        decoded = part.get_payload(decode=True)  # bytes, or None for a nested multipart
        payload = decoded if isinstance(decoded, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            if name == "attachment" and (filename or payload):
                kind = part.get_content_type()
                files.append((messages.attachment_name(part, len(files) + 1), kind, payload))
            continue
        fields.setdefault(str(name), []).append(payload.decode("utf-8", "replace"))
    return fields, files
