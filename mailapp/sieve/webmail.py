"""
The webmail's Sieve script: filter rules, vacation and forwarding as the
settings page edits them, turned into one script (L{generate}), stored and
made active through L{mailapp.sieve.scripts.ScriptStore} like any upload.

The form's values are kept beside the scripts, in
C{sieve/<account>/webmail.json}, with the SHA-256 of the text the webmail
last stored: when the active script is not that text (uploaded by
ManageSieve or ``mailapp sieve``, or edited as text) the page says so, and
saving the form replaces it only when the user ticks the box
(L{ForeignScript} otherwise). A script edited as text is checked by the
same compiler as every upload, so a broken one is never stored or activated.

User text reaches the script only through L{sieve_string} and
L{sieve_multiline}, and the script never requires "variables", so a
C{${...}} typed into a rule stays literal.

Every function that touches files blocks: call it on a worker thread.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mailapp.accounts.addresses import check_address
from mailapp.errors import AccountError, BadFolderName
from mailapp.sieve import compile
from mailapp.sieve.scripts import ScriptError, ScriptStore, write_atomically
from mailapp.store.names import normalize_folder

__all__ = [
    "ACTIONS",
    "SCRIPT_NAME",
    "FIELDS",
    "FLAGS",
    "ForeignScript",
    "Forwarding",
    "MATCHES",
    "Rule",
    "VacationSettings",
    "WebmailFilters",
    "WebmailState",
    "check_forwarding",
    "check_rule",
    "check_vacation",
    "generate",
    "load",
    "save_settings",
    "save_text",
    "sieve_multiline",
    "sieve_string",
]

#: The name the webmail stores its script under (what ManageSieve's LISTSCRIPTS shows).
SCRIPT_NAME = "webmail"
_SETTINGS_FILE = "webmail.json"

#: What a rule can look at: the form's value -> its label.
FIELDS = {"from": "From", "to": "To", "subject": "Subject", "header": "Header named"}
MATCHES = {"contains": "contains", "is": "is", "matches": "matches (* and ?)"}
ACTIONS = {"move": "Move to folder", "flag": "Flag", "forward": "Forward to", "discard": "Discard"}
FLAGS = {"\\Flagged": "Flagged", "\\Seen": "Seen"}
#: RFC 5322 2.2: a field name is printable ASCII but the colon.
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MAX_TEXT = 1000
_MAX_REASON = 8000
MAX_RULES = 50


class ForeignScript(Exception):
    """Saving the form would replace an active script the webmail did not generate (ask first)."""


@dataclass(frozen=True)
class Rule:
    """When C{field} (C{header}: the named one) C{match}es C{text}, then C{action}; C{stop}: no rule after it runs."""

    field: str = "subject"
    text: str = ""
    match: str = "contains"
    header: str = ""
    action: str = "move"
    folder: str = ""
    flag: str = "\\Flagged"
    address: str = ""
    keep_copy: bool = True
    stop: bool = False


@dataclass(frozen=True)
class VacationSettings:
    """An auto-reply; C{start} and C{end} are ISO dates (UTC, both days included), empty for no bound."""

    enabled: bool = False
    start: str = ""
    end: str = ""
    subject: str = ""
    text: str = ""
    days: int = 7


@dataclass(frozen=True)
class Forwarding:
    """Every message forwarded to C{address} (empty: none), and kept here too when C{keep_copy}."""

    address: str = ""
    keep_copy: bool = True


@dataclass(frozen=True)
class WebmailFilters:
    rules: tuple[Rule, ...] = ()
    vacation: VacationSettings = field(default_factory=VacationSettings)
    forwarding: Forwarding = field(default_factory=Forwarding)


@dataclass(frozen=True)
class WebmailState:
    """What the settings page shows: the form's values and the active script, whoever wrote it."""

    filters: WebmailFilters
    #: The active script's name and text, or None when there is none.
    active_name: str | None
    active_text: str | None
    #: The active script is exactly what the webmail's form last generated (saving the form replaces nothing else).
    generated: bool

    @property
    def foreign(self) -> bool:
        """An active script that saving the form would replace: uploaded elsewhere, or edited as text."""
        return self.active_name is not None and not self.generated


# -- quoting -------------------------------------------------------------------


def sieve_string(text: str) -> str:
    """C{text} as a Sieve quoted string (RFC 5228 2.4.2): backslash and quote escaped, nothing else changes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sieve_multiline(text: str) -> str:
    """
    C{text} as a Sieve multi-line string (RFC 5228 2.4.2: C{text:}, lines
    with a leading dot doubled, a lone dot ends it), for the vacation text:
    it reads as written in the script. Ends with its line break.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    stuffed = ["." + line if line.startswith(".") else line for line in lines]
    return "text:\n" + "\n".join(stuffed) + "\n.\n"


# -- checking what the form sent ----------------------------------------------


def _one_line(text: str, what: str, limit: int = _MAX_TEXT) -> None:
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise ValueError(f"{what} must be one line, without control characters")
    if len(text) > limit:
        raise ValueError(f"{what} is longer than {limit} characters")


def _address(text: str, what: str) -> str:
    try:
        return check_address(text.strip())
    except AccountError as error:
        raise ValueError(f"{what}: {error}") from None


def check_rule(rule: Rule) -> Rule:
    """The rule with its names in canonical form, or ValueError saying what is wrong."""
    if rule.field not in FIELDS or rule.match not in MATCHES or rule.action not in ACTIONS:
        raise ValueError("choose what to look at, how to compare and what to do")
    if not rule.text:
        raise ValueError("the text to look for is empty")
    _one_line(rule.text, "the text to look for")
    header = ""
    if rule.field == "header":
        header = rule.header.strip()
        if not _HEADER_NAME.match(header):
            raise ValueError("a header name is letters, digits and punctuation without ':' or spaces")
    checked = replace(rule, header=header)
    if rule.action == "move":
        try:
            return replace(checked, folder=normalize_folder(rule.folder.strip()))
        except BadFolderName as error:
            raise ValueError(f"the folder: {error}") from None
    if rule.action == "flag":
        if rule.flag not in FLAGS:
            raise ValueError("choose a flag")
        return checked
    if rule.action == "forward":
        return replace(checked, address=_address(rule.address, "the forwarding address"))
    return checked


def check_vacation(vacation: VacationSettings) -> VacationSettings:
    if not vacation.enabled:
        return vacation
    for value, what in ((vacation.start, "the first day"), (vacation.end, "the last day")):
        if value:
            if not _DATE.match(value):
                raise ValueError(f"{what} is not a date (YYYY-MM-DD)")
            try:
                datetime.date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{what} is not a date (YYYY-MM-DD)") from None
    if vacation.start and vacation.end and vacation.end < vacation.start:
        raise ValueError("the last day is before the first")
    _one_line(vacation.subject, "the subject", 200)
    if not vacation.text.strip():
        raise ValueError("the reply's text is empty")
    if len(vacation.text) > _MAX_REASON or "\x00" in vacation.text:
        raise ValueError(f"the reply's text is longer than {_MAX_REASON} characters")
    if not 1 <= vacation.days <= 365:
        raise ValueError("days between replies to one sender: from 1 to 365")
    return vacation


def check_forwarding(forwarding: Forwarding) -> Forwarding:
    if not forwarding.address.strip():
        return Forwarding("", forwarding.keep_copy)
    return replace(forwarding, address=_address(forwarding.address, "the forwarding address"))


# -- the script ------------------------------------------------------------------


def _test(rule: Rule) -> str:
    match = ":" + rule.match
    if rule.field in ("from", "to") and rule.match != "contains":
        # "From is bob@example.org" means the address, whatever the display name says.
        return f"address {match} {sieve_string(rule.field)} {sieve_string(rule.text)}"
    name = rule.header if rule.field == "header" else rule.field
    return f"header {match} {sieve_string(name)} {sieve_string(rule.text)}"


def _action(rule: Rule) -> str:
    if rule.action == "move":
        return f"fileinto :create {sieve_string(rule.folder)};"
    if rule.action == "flag":
        return f"addflag {sieve_string(rule.flag)};"
    if rule.action == "forward":
        return f"redirect {':copy ' if rule.keep_copy else ''}{sieve_string(rule.address)};"
    return "discard;"


def _requires(filters: WebmailFilters) -> list[str]:
    needed: set[str] = set()
    for rule in filters.rules:
        if rule.action == "move":
            needed |= {"fileinto", "mailbox"}
        elif rule.action == "flag":
            needed.add("imap4flags")
        elif rule.action == "forward" and rule.keep_copy:
            needed.add("copy")
    if filters.forwarding.address and filters.forwarding.keep_copy:
        needed.add("copy")
    if filters.vacation.enabled:
        needed.add("vacation")
        if filters.vacation.start or filters.vacation.end:
            needed |= {"date", "relational"}
    return sorted(needed)


def generate(filters: WebmailFilters) -> str:
    """
    The script for C{filters} (already checked): forwarding first (without
    a copy kept, nothing else runs), then vacation, then the rules in their
    order, each an C{if} of its own, C{stop} ending the script after it.
    """
    out = [
        "# Made by the webmail's settings page; saving that page replaces this script.",
    ]
    requires = _requires(filters)
    if requires:
        out.append("require [" + ", ".join(sieve_string(name) for name in requires) + "];")
    forwarding = filters.forwarding
    if forwarding.address:
        out += ["", "# Forwarding"]
        if forwarding.keep_copy:
            out.append(f"redirect :copy {sieve_string(forwarding.address)};")
        else:
            out += [f"redirect {sieve_string(forwarding.address)};", "stop;"]
    vacation = filters.vacation
    if vacation.enabled:
        out += ["", "# Vacation"]
        reply = f"vacation :days {vacation.days}"
        if vacation.subject:
            reply += f" :subject {sieve_string(vacation.subject)}"
        reply += " " + sieve_multiline(vacation.text) + ";"
        bounds = [
            f"currentdate :value {sieve_string(relation)} \"date\" {sieve_string(day)}"
            for relation, day in (("ge", vacation.start), ("le", vacation.end))
            if day
        ]
        if bounds:
            test = bounds[0] if len(bounds) == 1 else "allof (" + ", ".join(bounds) + ")"
            # The text's lines are not indented: they are the reply as written.
            out += [f"if {test} {{", "    " + reply, "}"]
        else:
            out.append(reply)
    for number, rule in enumerate(filters.rules, 1):
        out += ["", f"# Rule {number}", f"if {_test(rule)} {{", f"    {_action(rule)}"]
        if rule.stop:
            out.append("    stop;")
        out.append("}")
    return "\n".join(out) + "\n"


# -- storing --------------------------------------------------------------------


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _from_json(data: dict[str, Any]) -> WebmailFilters:
    rules = tuple(Rule(**{k: v for k, v in rule.items() if k in Rule.__dataclass_fields__}) for rule in data.get("rules", []))
    vacation = VacationSettings(**{k: v for k, v in data.get("vacation", {}).items() if k in VacationSettings.__dataclass_fields__})
    forwarding = Forwarding(**{k: v for k, v in data.get("forwarding", {}).items() if k in Forwarding.__dataclass_fields__})
    return WebmailFilters(rules, vacation, forwarding)


def _read(scripts: ScriptStore, account: str) -> tuple[WebmailFilters, str]:
    try:
        data = json.loads((scripts.directory(account) / _SETTINGS_FILE).read_text("utf-8"))
        return _from_json(data["filters"]), str(data.get("script_sha256", ""))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return WebmailFilters(), ""


def load(scripts: ScriptStore, account: str) -> WebmailState:
    filters, generated_sha = _read(scripts, account)
    name = scripts.active_name(account)
    text = None
    if name is not None:
        try:
            text = scripts.get(account, name)
        except ScriptError:
            name = None
    generated = name == SCRIPT_NAME and text is not None and _sha(text) == generated_sha
    return WebmailState(filters, name, text, generated)


def save_settings(scripts: ScriptStore, account: str, filters: WebmailFilters, replace_foreign: bool) -> str:
    """
    Store C{filters} and their script, made active; the script's text.
    L{ForeignScript} when another active script would be replaced and
    C{replace_foreign} is false; L{ScriptError} (the quota) or
    L{mailapp.sieve.SieveSyntaxError} (never, for checked filters) from the store.
    """
    if load(scripts, account).foreign and not replace_foreign:
        raise ForeignScript()
    text = generate(filters)
    # Whatever the store would refuse (its quota), refused before anything is written.
    scripts.space(account, SCRIPT_NAME, len(text.encode("utf-8")))
    compile(text)
    # The settings first: a crash before the script is stored leaves a
    # mismatch the page reports as a foreign script, never a lost form.
    record = {"filters": asdict(filters), "script_sha256": _sha(text)}
    write_atomically(scripts.directory(account) / _SETTINGS_FILE, json.dumps(record, indent=1).encode())
    scripts.put(account, SCRIPT_NAME, text)
    scripts.activate(account, SCRIPT_NAME)
    return text


def save_text(scripts: ScriptStore, account: str, text: str) -> None:
    """
    Store C{text} as the webmail's script and make it active, or raise
    L{mailapp.sieve.SieveSyntaxError} (with line and column) and change
    nothing. The form's values are kept for later, but no longer describe
    the active script, so saving the form again asks first.
    """
    compile(text)
    scripts.put(account, SCRIPT_NAME, text)
    scripts.activate(account, SCRIPT_NAME)
