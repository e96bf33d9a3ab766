"""What rspamd's answer means for a message (L{mailapp.spam.decisions}), and what a transfer teaches."""

from __future__ import annotations

from typing import Any

import pytest

from mailapp.records import ADDED, EXPUNGED, FolderEvent
from mailapp.spam.decisions import SpamRejected, SpamTempfail, SpamVerdict, ScannerUnavailable, decide, mark, unavailable
from mailapp.spam.learning import lesson


def answer(action: str, **extra: Any) -> dict[str, Any]:
    return {"action": action, "score": 8.0, "required_score": 15.0, **extra}


@pytest.mark.parametrize(
    ("action", "ours", "folder", "refusal"),
    [
        ("reject", "reject", None, SpamRejected),
        ("soft reject", "tempfail", None, SpamTempfail),
        ("greylist", "tempfail", None, SpamTempfail),
        ("add header", "junk", "Junk", None),
        ("rewrite subject", "junk", "Junk", None),
        ("no action", "accept", None, None),
    ],
)
def test_each_rspamd_action_on_the_mx(action: str, ours: str, folder: str | None, refusal: type | None) -> None:
    verdict = decide(answer(action))
    assert (verdict.action, verdict.folder) == (ours, folder)
    assert verdict.reason == "rspamd_" + action.replace(" ", "_")
    assert (type(verdict.refusal) if verdict.refusal else None) is refusal


def test_the_refusals_carry_their_replies() -> None:
    assert SpamRejected().reply() == b"554 5.7.1 Message rejected as spam"
    assert (SpamTempfail().code, SpamTempfail().enhanced) == (451, "4.7.1")
    assert (ScannerUnavailable().code, ScannerUnavailable().enhanced) == (451, "4.7.1")


def test_outbound_only_a_reject_is_refused() -> None:
    assert decide(answer("reject"), outbound=True).action == "reject"
    for action in ("soft reject", "greylist", "add header", "rewrite subject", "no action"):
        verdict = decide(answer(action), outbound=True)
        assert (verdict.action, verdict.refusal, verdict.fields) == ("accept", None, b"")


def test_an_allowed_sender_skips_junk_but_not_a_reject() -> None:
    assert decide(answer("add header"), allowed_sender=True).action == "accept"
    assert decide(answer("add header"), allowed_sender=True).reason == "allowed_sender"
    assert decide(answer("reject"), allowed_sender=True).action == "reject"


def test_an_unknown_action_is_no_spam() -> None:
    assert decide({"action": "frobnicate"}).action == "accept"


def test_the_fail_mode_when_rspamd_does_not_answer() -> None:
    assert unavailable("open") == SpamVerdict("accept", "unavailable")
    closed = unavailable("closed")
    assert closed.action == "tempfail" and isinstance(closed.refusal, ScannerUnavailable)


def test_mark_adds_the_fields_and_removes_received_copies_with_their_continuations() -> None:
    message = b"From: a@b\r\nX-Spam-Status: No,\r\n\tscore=-100\r\nSubject: hi\r\nx-spam-score: -9\r\n\r\nX-Spam-Status: in the body\r\n"
    marked = mark(message, decide(answer("add header")))
    assert marked == (
        b"X-Spam-Status: Yes, score=8.00 required=15.00\r\nX-Spam-Score: 8.00\r\nX-Spam-Action: add header\r\n"
        b"From: a@b\r\nSubject: hi\r\n\r\nX-Spam-Status: in the body\r\n"
    )


def test_mark_rewrites_the_subject_and_encodes_non_ascii() -> None:
    marked = mark(b"Subject: hi\r\n\r\nbody\r\n", decide(answer("rewrite subject", subject="*** SPAM *** h\u00e9")))
    assert b"\r\nSubject: =?utf-8?" in marked and b"Subject: hi" not in marked
    assert mark(b"From: a\r\n\r\nbody", decide(answer("rewrite subject", subject="*** SPAM ***"))).endswith(
        b"From: a\r\nSubject: *** SPAM ***\r\n\r\nbody"
    )


@pytest.mark.parametrize(
    ("source", "folder", "taught"),
    [
        ("INBOX", "Junk", True),
        ("Archive", "Junk", True),
        ("Junk", "INBOX", False),
        ("Junk", "Archive", False),
        ("Junk", "Trash", None),
        ("Junk", "Junk", None),
        ("INBOX", "Archive", None),
        (None, "Junk", None),
    ],
)
def test_what_a_transfer_teaches(source: str | None, folder: str, taught: bool | None) -> None:
    assert lesson(FolderEvent(ADDED, "alice@example.test", folder, (1,), source)) is taught


def test_an_expunge_teaches_nothing() -> None:
    assert lesson(FolderEvent(EXPUNGED, "alice@example.test", "Junk", (1,), "INBOX")) is None
