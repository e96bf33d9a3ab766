"""
NOTIFY's parser and mailbox filters (RFC 5465 6), without a session: which
folder each filter names, the order of event groups, and what is BAD.
"""

from __future__ import annotations

import pytest

from mailapp.imap.commands.notify import parse_notify
from mailapp.imap.notify import FLAG_CHANGE, MAILBOX_NAME, MESSAGE_NEW, NotifySpec
from mailapp.imap.wire import BadCommand, parse_arguments


def spec(text: bytes) -> NotifySpec:
    parsed = parse_notify(parse_arguments([text]))
    assert parsed is not None
    return parsed


def test_notify_none_is_no_spec() -> None:
    assert parse_notify(parse_arguments([b"NONE"])) is None


def test_event_and_filter_names_are_case_insensitive_and_inbox_is_normalized() -> None:
    parsed = spec(b"set status (mailboxes (inbox Work) (messagenew messageexpunge flagchange))")
    assert parsed.status
    assert parsed.wants("INBOX", FLAG_CHANGE, set())
    assert parsed.wants("Work", MESSAGE_NEW, set())
    assert not parsed.wants("work", MESSAGE_NEW, set())  # other folder names are case-sensitive


def test_inboxes_is_inbox_the_folders_below_it_and_junk() -> None:
    parsed = spec(b"SET (INBOXES (MessageNew MessageExpunge))")
    assert [n for n in ("INBOX", "INBOX/lists", "Junk", "Sent", "INBOXy") if parsed.wants(n, MESSAGE_NEW, set())] == [
        "INBOX",
        "INBOX/lists",
        "Junk",
    ]


def test_subtree_is_the_mailbox_and_its_descendants_only() -> None:
    parsed = spec(b'SET (SUBTREE (Lists "Work/2026") (MessageNew MessageExpunge))')
    names = ["Lists", "Lists/a/b", "Listsx", "Work", "Work/2026", "Work/2026/q1", "Work/2025"]
    assert [n for n in names if parsed.wants(n, MESSAGE_NEW, set())] == ["Lists", "Lists/a/b", "Work/2026", "Work/2026/q1"]


def test_subscribed_follows_the_set_it_is_given() -> None:
    parsed = spec(b"SET (SUBSCRIBED (MessageNew MessageExpunge))")
    assert parsed.wants("Lists", MESSAGE_NEW, {"Lists"})
    assert not parsed.wants("Lists", MESSAGE_NEW, set())


def test_the_first_matching_group_with_none_excludes_and_others_add_up() -> None:
    parsed = spec(b"SET (MAILBOXES Spam NONE) (SUBTREE Lists (MailboxName)) (PERSONAL (MessageNew MessageExpunge))")
    assert not parsed.wants("Spam", MESSAGE_NEW, set())
    assert parsed.wants("Lists/a", MAILBOX_NAME, set()) and parsed.wants("Lists/a", MESSAGE_NEW, set())
    assert not parsed.wants("Sent", MAILBOX_NAME, set())


def test_the_selected_group_never_matches_by_name() -> None:
    parsed = spec(b"SET (SELECTED-DELAYED (MessageNew (UID BODY.PEEK[HEADER.FIELDS (Subject)]) MessageExpunge))")
    assert parsed.selected is not None and parsed.selected.filter == "SELECTED-DELAYED"
    assert [item.kind for item in parsed.selected.fetch] == ["UID", "SECTION"]
    assert not parsed.wants("INBOX", MESSAGE_NEW, set())


@pytest.mark.parametrize(
    "text",
    [
        b"SET (MAILBOXES () (MessageNew MessageExpunge))",  # no mailbox
        b"SET (SUBTREE (MessageNew MessageExpunge))",  # no mailbox at all
        b"SET (PERSONAL ())",  # an empty event list
        b"SET (PERSONAL (MessageNew MessageExpunge) extra)",
        b"SET (SELECTED (MessageExpunge (UID) MessageNew))",  # fetch-atts after another event
        b'SET (MAILBOXES "../x" (MessageNew MessageExpunge))',  # a name the store refuses
        b"SET STATUS",
    ],
)
def test_malformed_notify_is_bad(text: bytes) -> None:
    with pytest.raises(BadCommand):
        parse_notify(parse_arguments([text]))
