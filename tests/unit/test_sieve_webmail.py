"""
The webmail's generated Sieve script (L{mailapp.sieve.webmail}): every rule
kind, vacation and forwarding, run through our own compiler and interpreter
on a message; hostile text escaped so that it stays one string; and storing
it beside scripts uploaded elsewhere.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from mailapp.sieve import Envelope, MessageView, Placement, SieveSyntaxError, compile, run
from mailapp.sieve.interpreter import Outcome
from mailapp.sieve.parser import StringList, parse
from mailapp.sieve.scripts import ScriptStore
from mailapp.sieve.webmail import (
    SCRIPT_NAME,
    ForeignScript,
    Forwarding,
    Rule,
    VacationSettings,
    WebmailFilters,
    check_forwarding,
    check_rule,
    check_vacation,
    generate,
    load,
    save_settings,
    save_text,
    sieve_multiline,
    sieve_string,
)

MESSAGE = (
    b"From: Alice Example <alice@example.org>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: [dev] weekly report\r\n"
    b"X-Mailing-List: dev@lists.example.org\r\n"
    b"\r\n"
    b"Hello.\r\n"
)

HOSTILE = [
    'say "hi"',
    "back\\slash\\",
    '"; discard; stop; if true { fileinto "x',
    "\\\"",
    "${variable}",
    "text:",
    "caf\u00e9 \u2603",
    "#not a comment */ /* neither",
]


def outcome_of(filters: WebmailFilters, message: bytes = MESSAGE, now: datetime.datetime | None = None) -> Outcome:
    return run([compile(generate(filters))], MessageView.from_bytes(message), Envelope("alice@example.org", "bob@example.test"), now=now)


def rules(*rules: Rule) -> WebmailFilters:
    return WebmailFilters(tuple(check_rule(rule) for rule in rules))


def test_no_settings_is_a_script_that_keeps_everything() -> None:
    result = outcome_of(WebmailFilters())
    assert result.placements == [Placement("INBOX")]


@pytest.mark.parametrize(
    "rule",
    [
        Rule("subject", "weekly", "contains"),
        Rule("subject", "[dev] weekly report", "is"),
        Rule("subject", "*weekly*", "matches"),
        Rule("from", "Alice Example", "contains"),
        Rule("from", "ALICE@example.org", "is"),
        Rule("from", "*@example.org", "matches"),
        Rule("to", "bob@", "contains"),
        Rule("to", "bob@example.test", "is"),
        Rule("header", "dev@lists", "contains", header="X-Mailing-List"),
        Rule("header", "dev@lists.example.org", "is", header="x-mailing-list"),
    ],
)
def test_each_field_and_comparison_moves_a_matching_message(rule: Rule) -> None:
    moved = Rule(**{**rule.__dict__, "action": "move", "folder": "Lists/dev"})
    assert outcome_of(rules(moved)).placements == [Placement("Lists/dev", create=True)]


@pytest.mark.parametrize(
    "rule",
    [
        Rule("subject", "monthly", "contains"),
        Rule("subject", "weekly", "is"),
        Rule("from", "Alice Example", "is"),
        Rule("header", "dev", "contains", header="List-Id"),
    ],
)
def test_a_message_that_does_not_match_is_kept(rule: Rule) -> None:
    moved = Rule(**{**rule.__dict__, "action": "move", "folder": "Lists"})
    assert outcome_of(rules(moved)).placements == [Placement("INBOX")]


def test_flag_rules_set_flagged_and_seen_on_the_kept_message() -> None:
    result = outcome_of(rules(Rule("subject", "weekly", action="flag", flag="\\Flagged"), Rule("subject", "report", action="flag", flag="\\Seen")))
    assert result.placements == [Placement("INBOX", frozenset({"\\Flagged", "\\Seen"}))]


def test_forward_rule_with_and_without_a_copy() -> None:
    kept = outcome_of(rules(Rule("subject", "weekly", action="forward", address="carol@example.net", keep_copy=True)))
    assert (kept.redirects, kept.placements) == (["carol@example.net"], [Placement("INBOX")])
    gone = outcome_of(rules(Rule("subject", "weekly", action="forward", address="carol@example.net", keep_copy=False)))
    assert (gone.redirects, gone.placements) == (["carol@example.net"], [])


def test_discard_rule() -> None:
    assert outcome_of(rules(Rule("subject", "weekly", action="discard"))).discarded


def test_rules_run_in_order_and_stop_ends_the_script() -> None:
    first = Rule("subject", "weekly", action="move", folder="Reports", stop=True)
    second = Rule("from", "alice", action="move", folder="Alice")
    assert outcome_of(rules(first, second)).placements == [Placement("Reports", create=True)]
    assert outcome_of(rules(Rule(**{**first.__dict__, "stop": False}), second)).placements == [
        Placement("Reports", create=True),
        Placement("Alice", create=True),
    ]


def test_only_the_extensions_used_are_required() -> None:
    assert "require" not in generate(rules(Rule("subject", "x", action="discard")))
    text = generate(rules(Rule("subject", "x", action="move", folder="A"), Rule("subject", "y", action="flag")))
    assert 'require ["fileinto", "imap4flags", "mailbox"];' in text
    assert "variables" not in generate(WebmailFilters(tuple(check_rule(Rule("subject", text, action="discard")) for text in HOSTILE)))


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_is_one_sieve_string_with_the_same_value(text: str) -> None:
    parsed = parse(f"keep :flags {sieve_string(text)};")
    assert parsed[0].arguments[1] == StringList((text,), True)
    filters = rules(
        Rule("subject", text, action="move", folder=f"In {text}".replace("/", "_")),
        Rule("header", text, header="X-Test", action="forward", address="carol@example.net"),
    )
    script = compile(generate(filters))
    assert len(script) == 3  # require, and one if per rule: nothing the text said became a command
    message = MESSAGE.replace(b"Subject: [dev] weekly report", b"Subject: " + text.encode("utf-8"))
    result = outcome_of(filters, message)
    assert result.placements == [Placement(f"In {text}".replace("/", "_"), create=True)]


def test_line_breaks_in_a_quoted_string_survive_escaping() -> None:
    text = 'one\r\ntwo\n"three"\\'
    assert parse(f"keep :flags {sieve_string(text)};")[0].arguments[1] == StringList((text,), True)


@pytest.mark.parametrize("text", ["Away.\n.\n..two dots\n.bye", "one line", "ends with newline\n", 'quote " and \\ backslash'])
def test_vacation_text_is_a_dot_stuffed_multiline_string(text: str) -> None:
    value = parse("vacation " + sieve_multiline(text) + ";")[0].arguments[0]
    assert isinstance(value, StringList)
    assert value.values[0] == text.replace("\n", "\r\n") + "\r\n"


def test_vacation_between_dates_replies_only_inside_them() -> None:
    vacation = check_vacation(VacationSettings(True, "2026-12-01", "2026-12-20", 'Away "till" \\ 21st', "I am away.\n.\nBack soon.", 3))
    filters = WebmailFilters(vacation=vacation)
    inside = outcome_of(filters, now=datetime.datetime(2026, 12, 20, 23, 0, tzinfo=datetime.timezone.utc))
    assert inside.vacation is not None
    assert (inside.vacation.days, inside.vacation.subject) == (3, 'Away "till" \\ 21st')
    assert inside.vacation.reason == "I am away.\r\n.\r\nBack soon.\r\n"
    assert inside.placements == [Placement("INBOX")]
    for day in (datetime.datetime(2026, 11, 30, 23, 59, tzinfo=datetime.timezone.utc), datetime.datetime(2026, 12, 21, tzinfo=datetime.timezone.utc)):
        assert outcome_of(filters, now=day).vacation is None
    always = outcome_of(WebmailFilters(vacation=VacationSettings(True, text="Away.")))
    assert always.vacation is not None and "date" not in generate(WebmailFilters(vacation=VacationSettings(True, text="Away.")))


def test_forwarding_keeps_a_copy_or_ends_the_script() -> None:
    move = check_rule(Rule("subject", "weekly", action="move", folder="Reports"))
    kept = outcome_of(WebmailFilters((move,), forwarding=check_forwarding(Forwarding("carol@example.net", True))))
    assert (kept.redirects, kept.placements) == (["carol@example.net"], [Placement("Reports", create=True)])
    gone = outcome_of(WebmailFilters((move,), forwarding=check_forwarding(Forwarding("carol@example.net", False))))
    assert (gone.redirects, gone.placements) == (["carol@example.net"], [])


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        (Rule("subject", ""), "empty"),
        (Rule("subject", "a\nb"), "one line"),
        (Rule("header", "x", header="Bad Name:"), "header name"),
        (Rule("subject", "x", action="move", folder=""), "folder"),
        (Rule("subject", "x", action="move", folder="a/../b"), "folder"),
        (Rule("subject", "x", action="forward", address="not an address"), "forwarding address"),
        (Rule("subject", "x", action="forward", address='a"b@example.org\n'), "forwarding address"),
        (Rule("subject", "x", action="flag", flag="\\Deleted"), "flag"),
        (Rule("body", "x"), "choose"),
    ],
)
def test_a_bad_rule_is_refused_saying_why(rule: Rule, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_rule(rule)


@pytest.mark.parametrize(
    ("vacation", "words"),
    [
        (VacationSettings(True, "2026-13-01", text="x"), "not a date"),
        (VacationSettings(True, "2026-12-02", "2026-12-01", text="x"), "before"),
        (VacationSettings(True, text=" "), "empty"),
        (VacationSettings(True, subject="a\r\nBcc: x", text="x"), "one line"),
        (VacationSettings(True, text="x", days=0), "days"),
    ],
)
def test_a_bad_vacation_is_refused_saying_why(vacation: VacationSettings, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_vacation(vacation)


# -- storing beside other scripts ---------------------------------------------------------

ACCOUNT = "bob@example.test"


def test_saving_stores_the_script_activates_it_and_loads_the_form_back(tmp_path: Path) -> None:
    scripts = ScriptStore(tmp_path)
    filters = rules(Rule("subject", "weekly", action="move", folder="Reports", stop=True))
    text = save_settings(scripts, ACCOUNT, filters, False)
    assert scripts.active_name(ACCOUNT) == SCRIPT_NAME
    assert scripts.get(ACCOUNT, SCRIPT_NAME) == text
    state = load(scripts, ACCOUNT)
    assert (state.filters, state.generated, state.foreign) == (filters, True, False)


def test_an_active_script_uploaded_elsewhere_is_replaced_only_when_asked(tmp_path: Path) -> None:
    scripts = ScriptStore(tmp_path)
    scripts.put(ACCOUNT, "mine", 'require "fileinto"; fileinto "Mine";')
    scripts.activate(ACCOUNT, "mine")
    state = load(scripts, ACCOUNT)
    assert (state.foreign, state.active_name, state.active_text) == (True, "mine", 'require "fileinto"; fileinto "Mine";')
    with pytest.raises(ForeignScript):
        save_settings(scripts, ACCOUNT, rules(Rule("subject", "x", action="discard")), False)
    assert scripts.active_name(ACCOUNT) == "mine"
    save_settings(scripts, ACCOUNT, rules(Rule("subject", "x", action="discard")), True)
    assert scripts.active_name(ACCOUNT) == SCRIPT_NAME
    assert [info.name for info in scripts.listing(ACCOUNT)] == ["mine", SCRIPT_NAME]


def test_the_webmail_script_changed_by_managesieve_counts_as_foreign(tmp_path: Path) -> None:
    scripts = ScriptStore(tmp_path)
    save_settings(scripts, ACCOUNT, WebmailFilters(), False)
    scripts.put(ACCOUNT, SCRIPT_NAME, "discard;")
    assert load(scripts, ACCOUNT).foreign
    with pytest.raises(ForeignScript):
        save_settings(scripts, ACCOUNT, WebmailFilters(), False)


def test_a_script_edited_as_text_is_checked_and_a_broken_one_never_stored(tmp_path: Path) -> None:
    scripts = ScriptStore(tmp_path)
    save_settings(scripts, ACCOUNT, WebmailFilters(), False)
    before = scripts.get(ACCOUNT, SCRIPT_NAME)
    with pytest.raises(SieveSyntaxError) as caught:
        save_text(scripts, ACCOUNT, 'require "fileinto";\nfileinto "x";\n  frobnicate;\n')
    assert (caught.value.line, caught.value.column) == (3, 3)
    assert scripts.get(ACCOUNT, SCRIPT_NAME) == before
    save_text(scripts, ACCOUNT, 'require "fileinto";\nfileinto "Edited";\n')
    assert scripts.active_name(ACCOUNT) == SCRIPT_NAME
    assert load(scripts, ACCOUNT).foreign  # the form no longer describes it: saving the form asks first


def test_the_readmes_example_script_is_what_the_page_makes() -> None:
    import re

    readme = (Path(__file__).parents[2] / "README.md").read_text("utf-8")
    shown = re.search(r"```sieve\n(.*?)```", readme, re.S)
    assert shown is not None
    filters = WebmailFilters(
        (check_rule(Rule("subject", "invoice", action="move", folder="Invoices", stop=True)),),
        VacationSettings(True, subject="Away this week", text="I am away until Monday."),
    )
    assert generate(filters) == shown.group(1)


def test_a_script_over_the_quota_is_refused_before_the_form_is_written(tmp_path: Path) -> None:
    from mailapp.sieve.scripts import ScriptError

    scripts = ScriptStore(tmp_path, max_script_size=400)
    saved = rules(Rule("subject", "x", action="discard"))
    save_settings(scripts, ACCOUNT, saved, False)
    too_big = rules(*(Rule("subject", f"rule {n}", action="discard") for n in range(20)))
    with pytest.raises(ScriptError, match="at most 400 bytes"):
        save_settings(scripts, ACCOUNT, too_big, False)
    state = load(scripts, ACCOUNT)
    assert (state.filters, state.generated) == (saved, True)
