"""
Making a message's HTML part safe to show, with nh3 (the Python binding of
the maintained Rust sanitiser ammonia).

The sanitiser is the first wall: no script, no event handler, no
``javascript:`` URL, no form, no ``<style>``/``<link>``/``<meta>``, and no
remote load unless the user asked for it for this message. The page that
shows the result is the second: a sandboxed frame (no scripts, no same
origin) served with a Content-Security-Policy that allows only ``data:``
images and inline styles (see L{frame_policy}).
"""

from __future__ import annotations

import html as html_module
import re
from typing import Mapping

import nh3

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "center", "code", "col", "colgroup", "dd", "del", "div",
    "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "ol",
    "p", "pre", "q", "s", "small", "span", "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot",
    "th", "thead", "tr", "tt", "u", "ul",
}  # fmt: skip

_ATTRIBUTES = {
    "*": {"style", "title", "lang", "dir", "align", "valign", "width", "height", "bgcolor", "color"},
    "a": {"href"},
    "img": {"src", "alt", "border"},
    "font": {"face", "size"},
    "td": {"colspan", "rowspan", "nowrap"},
    "th": {"colspan", "rowspan", "nowrap"},
    "table": {"border", "cellpadding", "cellspacing"},
    "ol": {"start", "type"},
}

#: CSS properties that change the look of text and boxes and cannot load anything.
_STYLE_PROPERTIES = {
    "background-color", "border", "border-bottom", "border-collapse", "border-color", "border-left",
    "border-radius", "border-right", "border-spacing", "border-style", "border-top", "border-width", "color",
    "display", "font", "font-family", "font-size", "font-style", "font-weight", "height", "letter-spacing",
    "line-height", "list-style-type", "margin", "margin-bottom", "margin-left", "margin-right", "margin-top",
    "max-width", "min-width", "padding", "padding-bottom", "padding-left", "padding-right", "padding-top",
    "text-align", "text-decoration", "text-indent", "text-transform", "vertical-align", "white-space",
    "width", "word-break", "word-wrap",
}  # fmt: skip

_DANGEROUS_CSS = re.compile(r"url\s*\(|expression\s*\(|@import|\\|javascript:|behavior|-moz-binding", re.I)
_REMOTE = re.compile(r"^\s*https?://", re.I)


def clean_html(html: str, inline_images: Mapping[str, str], allow_remote: bool) -> tuple[str, bool]:
    """
    Return the sanitised HTML and whether it referred to remote content (so
    the page can offer 'show remote content'). C{inline_images} maps a
    Content-ID to the ``data:`` URI that replaces ``cid:`` references to it.
    """
    found_remote = False

    def attribute(tag: str, name: str, value: str) -> str | None:
        nonlocal found_remote
        if name == "style":
            return None if _DANGEROUS_CSS.search(value) else value
        if tag == "img" and name == "src":
            stripped = value.strip()
            if stripped.lower().startswith("cid:"):
                return inline_images.get(stripped[4:].strip("<>"))
            if _REMOTE.match(stripped):
                found_remote = True
                return stripped if allow_remote else None
            return None
        if tag == "a" and name == "href":
            stripped = value.strip()
            if re.match(r"^(https?:|mailto:)", stripped, re.I):
                return stripped
            return None
        if name in ("background",):
            return None
        return value

    cleaned = nh3.clean(
        html,
        tags=_TAGS,
        clean_content_tags={"script", "style", "title", "head", "noscript", "template", "svg", "math", "object"},
        attributes=_ATTRIBUTES,
        attribute_filter=attribute,
        url_schemes={"http", "https", "mailto", "data", "cid"},
        filter_style_properties=_STYLE_PROPERTIES,
        set_tag_attribute_values={"a": {"target": "_blank"}},
        link_rel="noopener noreferrer",
        strip_comments=True,
    )
    return cleaned, found_remote


def frame_policy(allow_remote: bool) -> str:
    """The Content-Security-Policy of the frame that shows a message's HTML."""
    remote = " https: http:" if allow_remote else ""
    return (
        "default-src 'none'; "
        f"img-src data:{remote}; "
        f"style-src 'unsafe-inline'{remote}; "
        f"font-src{remote or ' ' + chr(39) + 'none' + chr(39)}; "
        "form-action 'none'; base-uri 'none'; frame-ancestors 'self'; "
        "sandbox allow-popups allow-popups-to-escape-sandbox"
    )


def html_to_text(html: str) -> str:
    """
    The text of an HTML part, for quoting it in a reply or a forward and for
    searching it: every tag dropped, with what script, style, head and title
    hold, and entities decoded.
    """
    return html_module.unescape(nh3.clean(html, tags=set(), clean_content_tags={"script", "style", "head", "title"}))
