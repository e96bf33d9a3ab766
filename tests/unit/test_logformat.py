"""The log file twistd is handed (mailapp.logformat.file_observer): what it writes, in each format."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.logger import Logger, LogPublisher

from mailapp import logevents, logformat


@pytest.fixture
def log_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "mailapp.log"
    monkeypatch.setattr(logformat, "_file", logformat._FileSettings(path=str(path)))
    handler = signal.getsignal(signal.SIGUSR1)
    yield path
    signal.signal(signal.SIGUSR1, handler)  # file_observer's rotation on SIGUSR1: not this process's after the test


def _emit_one_of_each(observer: object) -> None:
    publisher = LogPublisher(observer)  # type: ignore[arg-type]
    log = Logger(observer=publisher)
    log.debug("{log_event} q1 local=1", log_event=logevents.DELIVERY_STORED)
    log.info("accepted q1", log_event=logevents.SMTP_ACCEPTED)
    log.warn("a warning")
    publisher({"log_format": "an event without a level", "log_time": 0.0, "log_namespace": "raw"})


def test_the_text_log_file_leaves_out_debug_events_and_keeps_every_other(log_file: Path):
    observer = logformat.file_observer()
    _emit_one_of_each(observer)
    text = log_file.read_text()
    assert "accepted q1" in text and "a warning" in text and "an event without a level" in text
    assert "delivery.stored" not in text


def test_the_json_log_file_keeps_debug_events(log_file: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(logformat._file, "log_format", "json")
    observer = logformat.file_observer()
    _emit_one_of_each(observer)
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [event.get("log_event") for event in events][:2] == [logevents.DELIVERY_STORED, logevents.SMTP_ACCEPTED]


def test_the_text_log_file_writes_the_lines_twisteds_text_observer_writes():
    from io import StringIO

    from twisted.logger import LogLevel, textFileLogObserver

    events = [
        {"log_format": "accepted {queue_id}", "queue_id": "q1", "log_time": when, "log_namespace": "mailapp.smtp", "log_level": LogLevel.info}
        for when in (1764623853.0, 1764623853.25, 1764623853.999, 1764623854.001, 1764623853.5, 1751362800.5)
    ]
    events += [{"log_format": "no time", "log_namespace": "x", "log_level": LogLevel.warn}, {"log_format": "system", "log_system": "s", "log_time": 1.5}]
    ours, twisteds = StringIO(), StringIO()
    observer, reference = logformat.text_file_observer(ours), textFileLogObserver(twisteds)
    for event in events:
        observer(dict(event))
        reference(dict(event))
    assert ours.getvalue() == twisteds.getvalue()
    assert ours.getvalue().count("\n") == len(events)
