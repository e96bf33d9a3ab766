"""``mailapp tls-report``: the RFC 8460 JSON of one day, from what the relay recorded."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.test_cli import config, mailapp  # noqa: F401  (fixtures)


def _record(config_path: Path, day: str, lines: list[dict[str, object]]) -> None:
    directory = config_path.parent / "var" / "tls-rpt"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{day}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json\n")


LINE = {
    "policy_domain": "b.test",
    "policy_type": "tlsa",
    "policy_strings": ["3 1 1 00"],
    "mx_patterns": [],
    "mx_host": "mx.b.test",
    "address": "192.0.2.5",
    "result_type": "validation-failure",
    "reason": "no TLSA record matches",
}


def test_tls_report_prints_one_rfc8460_report_per_policy_domain(mailapp, config) -> None:  # noqa: F811
    _record(config, "2026-11-30", [LINE, {**LINE, "result_type": None}])
    result = mailapp("tls-report", "--date", "2026-11-30")
    assert result.status == 0, result.err
    [report] = result.json
    assert report["organization-name"] == "mail.example.test"
    assert report["contact-info"] == "mailto:postmaster@mail.example.test"
    [policy] = report["policies"]
    assert policy["policy"]["policy-type"] == "tlsa"
    assert policy["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 1}


def test_tls_report_writes_files_named_as_rfc8460_asks(mailapp, config, tmp_path) -> None:  # noqa: F811
    _record(config, "2026-11-30", [LINE])
    result = mailapp("tls-report", "--date", "2026-11-30", "--output", str(tmp_path / "out"))
    assert result.status == 0, result.err
    [written] = list((tmp_path / "out").iterdir())
    assert written.name == "mail.example.test!b.test!1795996800!1796083200.json"
    assert json.loads(written.read_text())["policies"][0]["policy"]["policy-domain"] == "b.test"


def test_tls_report_with_a_bad_date_is_one_error_line(mailapp, config) -> None:  # noqa: F811
    result = mailapp("tls-report", "--date", "yesterday")
    assert result.status != 0 and "bad date" in result.err and "Traceback" not in result.err
