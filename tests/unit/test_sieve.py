"""The Sieve language: parsing with line and column, checking, and our interpreter with its bounds."""

from __future__ import annotations

import datetime

import pytest

from mailapp.sieve import (
    Envelope,
    MessageView,
    Placement,
    SieveLimits,
    SieveSyntaxError,
    compile,
    run,
)
from mailapp.sieve.interpreter import Outcome

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob+lists@example.test, carol@example.test\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= [dev] weekly\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0100\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"Received: one\r\n"
    b"Received: two\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello, the build is green.\r\n"
)


def outcome(
    script: str,
    message: bytes = MESSAGE,
    recipient: str = "bob+lists@example.test",
    **kwargs: object,
) -> Outcome:
    return run(
        [compile(script)],
        MessageView.from_bytes(message),
        Envelope("alice@example.org", recipient),
        **kwargs,
    )  # type: ignore[arg-type]


def folders(result: Outcome) -> list[str]:
    return [placement.folder for placement in result.placements]


def error_of(script: str) -> SieveSyntaxError:
    with pytest.raises(SieveSyntaxError) as caught:
        compile(script)
    return caught.value


def test_empty_script_keeps_in_the_default_folder() -> None:
    assert outcome("").placements == [Placement("INBOX")]


def test_syntax_error_has_line_and_column() -> None:
    error = error_of('require "fileinto";\n\nif true {\n  fileinto "a"\n}\n')
    assert (error.line, error.column) == (5, 1)
    assert "expected ';'" in error.message


def test_unknown_command_is_refused_where_it_stands() -> None:
    error = error_of("keep;\n   frobnicate;\n")
    assert (error.line, error.column, error.message) == (
        2,
        4,
        "unknown command 'frobnicate'",
    )


def test_extension_without_require_is_refused() -> None:
    assert error_of('fileinto "x";').message == 'fileinto needs require "fileinto"'


def test_unsupported_extension_is_refused() -> None:
    assert error_of('require "enotify";').message == "unsupported extension 'enotify'"


def test_require_after_a_command_is_refused() -> None:
    assert "require must come before" in error_of('keep; require "fileinto";').message


def test_unterminated_string_is_refused_at_its_start() -> None:
    error = error_of('keep;\nif header :is "subject" "abc {\n')
    assert (error.line, error.column) == (2, 25)


def test_multiline_string_and_comments() -> None:
    script = 'require "vacation"; # a comment\n/* block\ncomment */ vacation text:\nline one\n..dot\n.\n;\n'
    result = outcome(script)
    assert result.vacation is not None
    assert result.vacation.reason == "line one\r\n.dot\r\n"


def test_compiled_scripts_are_cached_by_content() -> None:
    assert compile("keep;\n") is compile("keep;\n")


def test_fileinto_cancels_implicit_keep() -> None:
    assert folders(
        outcome(
            'require "fileinto"; if header :contains "subject" "[dev]" { fileinto "Dev"; }'
        )
    ) == ["Dev"]


def test_fileinto_copy_keeps_too() -> None:
    assert folders(outcome('require ["fileinto", "copy"]; fileinto :copy "Dev";')) == [
        "Dev",
        "INBOX",
    ]


def test_fileinto_create_is_marked() -> None:
    assert outcome(
        'require ["fileinto", "mailbox"]; fileinto :create "New";'
    ).placements == [Placement("New", create=True)]


def test_discard_leaves_no_copy() -> None:
    assert outcome("discard;").discarded


def test_stop_ends_the_script() -> None:
    assert folders(outcome('require "fileinto"; stop; fileinto "Never";')) == ["INBOX"]


def test_elsif_and_else_chain() -> None:
    script = 'require "fileinto"; if false { fileinto "A"; } elsif header :is "x-none" "" { fileinto "B"; } else { fileinto "C"; }'
    assert folders(outcome(script)) == ["C"]


def test_header_is_case_insensitive_by_default_and_octet_is_not() -> None:
    assert folders(
        outcome(
            'require "fileinto"; if header :is "from" "ALICE <alice@example.org>" { fileinto "A"; }'
        )
    ) == ["A"]
    script = 'require "fileinto"; if header :comparator "i;octet" :is "from" "ALICE <alice@example.org>" { fileinto "A"; }'
    assert folders(outcome(script)) == ["INBOX"]


def test_header_values_are_decoded() -> None:
    assert folders(
        outcome(
            'require "fileinto"; if header :contains "subject" "café" { fileinto "A"; }'
        )
    ) == ["A"]


def test_address_parts() -> None:
    base = 'require ["fileinto", "subaddress"]; if address {part} "to" "{key}" {{ fileinto "Hit"; }}'
    for part, key in (
        (":localpart", "carol"),
        (":domain", "example.test"),
        (":all", "carol@example.test"),
        (":user", "bob"),
        (":detail", "lists"),
    ):
        assert folders(outcome(base.format(part=part, key=key))) == ["Hit"], part


def test_detail_without_separator_does_not_match_empty() -> None:
    assert folders(
        outcome(
            'require ["fileinto", "subaddress"]; if address :detail "from" "" { fileinto "Hit"; }'
        )
    ) == ["INBOX"]


def test_envelope_to_detail() -> None:
    script = 'require ["fileinto", "envelope", "subaddress"]; if envelope :detail "to" "lists" { fileinto "Lists"; }'
    assert folders(outcome(script)) == ["Lists"]


def test_exists_and_size() -> None:
    assert folders(
        outcome(
            'require "fileinto"; if allof (exists ["from", "date"], size :under 10K) { fileinto "A"; }'
        )
    ) == ["A"]
    assert folders(
        outcome(
            'require "fileinto"; if anyof (exists "x-spam", size :over 1M) { fileinto "A"; }'
        )
    ) == ["INBOX"]


def test_not_true_false() -> None:
    assert folders(
        outcome('require "fileinto"; if not anyof (false, not true) { fileinto "A"; }')
    ) == ["A"]


def test_matches_sets_match_variables() -> None:
    script = 'require ["fileinto", "variables"]; if header :matches "subject" "* [*] *" { fileinto "Lists/${2}"; }'
    assert folders(outcome(script)) == ["Lists/dev"]


def test_set_modifiers_and_string_test() -> None:
    script = 'require ["fileinto", "variables"]; set :upperfirst "f" "archive"; if string :is "${f}" "Archive" { fileinto "${f}"; }'
    assert folders(outcome(script)) == ["Archive"]


def test_relational_count_and_value() -> None:
    script = (
        'require ["fileinto", "relational", "comparator-i;ascii-numeric"];'
        'if header :count "eq" :comparator "i;ascii-numeric" "received" "2" { fileinto "Two"; }'
    )
    assert folders(outcome(script)) == ["Two"]
    script = 'require ["fileinto", "relational"]; if header :value "gt" "subject" "a" { fileinto "After"; }'
    assert folders(outcome(script)) == ["After"]


def test_imap4flags_on_keep_and_implicit_keep() -> None:
    assert outcome(
        'require "imap4flags"; addflag ["\\\\seen", "$Work"]; removeflag "$Work";'
    ).placements == [Placement("INBOX", frozenset({"\\Seen"}))]
    assert outcome('require "imap4flags"; keep :flags "\\\\Flagged";').placements == [
        Placement("INBOX", frozenset({"\\Flagged"}))
    ]


def test_hasflag() -> None:
    script = 'require ["imap4flags", "fileinto"]; setflag "a b"; if hasflag "b" { fileinto "B"; }'
    assert folders(outcome(script)) == ["B"]


def test_body_text_and_raw() -> None:
    assert folders(
        outcome(
            'require ["body", "fileinto"]; if body :contains "build is green" { fileinto "CI"; }'
        )
    ) == ["CI"]
    assert folders(
        outcome(
            'require ["body", "fileinto"]; if body :raw :contains "Hello" { fileinto "CI"; }'
        )
    ) == ["CI"]
    assert folders(
        outcome(
            'require ["body", "fileinto"]; if body :content "image" :contains "Hello" { fileinto "CI"; }'
        )
    ) == ["INBOX"]


def test_redirect_cancels_keep_and_copy_does_not() -> None:
    result = outcome('redirect "x@example.net";')
    assert (result.redirects, result.placements) == (["x@example.net"], [])
    assert folders(outcome('require "copy"; redirect :copy "x@example.net";')) == [
        "INBOX"
    ]


def test_too_many_redirects_falls_back_to_keep() -> None:
    script = "".join(f'redirect "r{n}@example.net";' for n in range(5))
    result = outcome(script, limits=SieveLimits(max_redirects=4))
    assert result.placements == [Placement("INBOX")] and result.redirects == []
    assert "redirects" in result.errors[0]


def test_step_limit_falls_back_to_keep() -> None:
    script = (
        'require "fileinto";'
        + 'if header :contains "subject" "zzz" { fileinto "x"; }' * 50
        + 'fileinto "Last";'
    )
    result = outcome(script, limits=SieveLimits(max_steps=40))
    assert result.placements == [Placement("INBOX")] and "steps" in result.errors[0]


def test_reject_and_ereject() -> None:
    result = outcome('require "reject"; reject "no thanks";')
    assert (result.reject, result.ereject, result.placements) == (
        "no thanks",
        False,
        [],
    )
    assert outcome('require "ereject"; ereject "go away";').ereject


def test_reject_with_fileinto_is_a_runtime_error() -> None:
    result = outcome('require ["reject", "fileinto"]; fileinto "A"; reject "no";')
    assert result.reject is None and result.placements == [Placement("INBOX")]


def test_vacation_arguments() -> None:
    script = 'require "vacation"; vacation :days 3 :subject "Away" :addresses ["me@example.test"] :handle "h" "I am away";'
    vacation = outcome(script).vacation
    assert vacation is not None
    assert (
        vacation.days,
        vacation.subject,
        vacation.addresses,
        vacation.handle,
        vacation.reason,
    ) == (
        3,
        "Away",
        ("me@example.test",),
        "h",
        "I am away",
    )
    assert folders(outcome(script)) == ["INBOX"]


def test_vacation_days_zero_is_refused() -> None:
    assert ":days" in error_of('require "vacation"; vacation :days 0 "x";').message


def test_include_personal_and_return() -> None:
    scripts = {
        ("personal", "lists"): compile(
            'require ["fileinto", "include"]; fileinto "Lists"; return; fileinto "Never";'
        )
    }

    def loader(kind: str, name: str) -> list:  # type: ignore[type-arg]
        return scripts[(kind, name)]

    result = outcome('require "include"; include :personal "lists";', loader=loader)
    assert folders(result) == ["Lists"]


def test_include_missing_is_an_error_unless_optional() -> None:
    from mailapp.sieve import SieveRuntimeError

    def loader(kind: str, name: str) -> list:  # type: ignore[type-arg]
        raise SieveRuntimeError("no such script")

    assert outcome('require "include"; include "nope"; discard;', loader=loader).errors
    assert outcome(
        'require "include"; include :optional "nope"; discard;', loader=loader
    ).discarded


def test_global_before_script_runs_first_and_stop_ends_all() -> None:
    before = compile(
        'require "fileinto"; if header :contains "subject" "[dev]" { fileinto "Dev"; stop; }'
    )
    user = compile('require "fileinto"; fileinto "User";')
    result = run(
        [before, user],
        MessageView.from_bytes(MESSAGE),
        Envelope("a@b", "bob@example.test"),
    )
    assert folders(result) == ["Dev"]


def test_date_and_currentdate() -> None:
    script = 'require ["date", "fileinto"]; if date :originalzone "date" "hour" "10" { fileinto "Ten"; }'
    assert folders(outcome(script)) == ["Ten"]
    script = 'require ["date", "fileinto"]; if date :zone "+0000" "date" "hour" "09" { fileinto "Nine"; }'
    assert folders(outcome(script)) == ["Nine"]
    now = datetime.datetime(2026, 12, 24, 12, 0, tzinfo=datetime.timezone.utc)
    script = 'require ["date", "relational", "fileinto"]; if currentdate :value "ge" "date" "2026-12-24" { fileinto "Holiday"; }'
    assert folders(outcome(script, now=now)) == ["Holiday"]


def test_index_picks_one_occurrence() -> None:
    script = 'require ["index", "fileinto"]; if header :index 2 :is "received" "two" { fileinto "Second"; }'
    assert folders(outcome(script)) == ["Second"]
    script = 'require ["index", "fileinto"]; if header :index 1 :last :is "received" "two" { fileinto "Last"; }'
    assert folders(outcome(script)) == ["Last"]


def test_duplicate_asks_what_was_seen_and_notes_the_id() -> None:
    seen = {("", "<m1@example.org>")}
    result = outcome(
        'require "duplicate"; if duplicate { discard; }',
        seen=lambda handle, unique, seconds: (handle, unique) in seen,
    )
    assert result.discarded and result.duplicates == [
        ("", "<m1@example.org>", 7 * 86400)
    ]


def test_filing_twice_into_one_folder_is_one_copy_and_names_are_case_sensitive() -> None:
    script = 'require ["fileinto", "imap4flags"]; fileinto "A"; fileinto :flags "x" "A"; fileinto "a"; fileinto "inbox"; keep;'
    assert outcome(script).placements == [Placement("A", frozenset({"x"})), Placement("a"), Placement("inbox")]
