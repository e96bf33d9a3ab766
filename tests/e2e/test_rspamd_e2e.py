"""
The content scanner against a real rspamd (Debian's, started on loopback
by L{tests.rspamd_runner}, with its Bayes classifier on a redis of its
own): GTUBE is refused with 554 at the end of DATA, a spam-scored message
lands in Junk with its X-Spam-* fields, rspamd stopped gets the configured
fail mode (and a SIGHUP changes it), and a user moving a message to Junk
over imaplib makes rspamd's learned count go up. One rspamd and one
mailapp server for the module (rspamd takes a second or more to start).
"""

from __future__ import annotations

import imaplib
import os
import signal
import smtplib
import time
from collections.abc import Iterator

import pytest

from tests.rspamd_runner import GTUBE, PASSWORD, RspamdProcess
from tests.service_runner import TIMEOUT, ServiceProcess, listener

ALICE = "alice@example.test"
SECRET = "alice-secret"


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RspamdProcess]:
    running = RspamdProcess(tmp_path_factory.mktemp("rspamd"))
    running.start()
    yield running
    running.stop()


def spam_section(rspamd: RspamdProcess, fail: str) -> str:
    return (
        f'\n[spam]\nrspamd_url = "{rspamd.url}"\ncontroller_url = "{rspamd.controller_url}"\n'
        f'controller_password = "{PASSWORD}"\ntimeout = 5\nfail = "{fail}"\n'
    )


@pytest.fixture(scope="module")
def server(rspamd: RspamdProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = ServiceProcess(
        tmp_path_factory.mktemp("mailapp"),
        listener("smtp", "smtp") + listener("imap", "imap", allow_plaintext_auth=True),
        spam_section(rspamd, "closed"),
    )
    running.add_users({ALICE: SECRET})
    running.start()
    yield running
    running.terminate()


def send(server: ServiceProcess, subject: str, body: str) -> None:
    message = f"From: bob@elsewhere.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}@elsewhere.test>\r\n\r\n{body}\r\n"
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as client:
        client.sendmail("bob@elsewhere.test", [ALICE], message.encode())


def imap(server: ServiceProcess) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=TIMEOUT)
    client.login(ALICE, SECRET)
    return client


def headers_in(server: ServiceProcess, folder: str) -> list[bytes]:
    client = imap(server)
    try:
        client.select(folder, readonly=True)
        _, data = client.fetch("1:*", "(BODY.PEEK[HEADER])")
        return [item[1] for item in data if isinstance(item, tuple)]
    finally:
        client.logout()


def test_gtube_is_refused_with_554_at_the_end_of_data(server: ServiceProcess) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(server, "gtube", GTUBE)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (554, b"5.7.1 Message rejected as spam")
    assert all(b"Subject: gtube" not in header for header in headers_in(server, "INBOX") + headers_in(server, "Junk"))


def test_a_spam_scored_message_lands_in_junk_with_its_headers(server: ServiceProcess) -> None:
    send(server, "scored", "Y" + GTUBE[1:])  # rspamd's add-header test pattern
    [header] = [h for h in headers_in(server, "Junk") if b"Subject: scored" in h]
    assert b"\r\nX-Spam-Action: add header\r\n" in header
    assert b"\r\nX-Spam-Status: Yes, score=" in header and b"\r\nX-Spam-Score: " in header


def test_rewrite_subject_lands_in_junk_with_rspamds_subject(server: ServiceProcess) -> None:
    send(server, "rewritten", "Z" + GTUBE[1:])
    [header] = [h for h in headers_in(server, "Junk") if b"rewritten" in h]
    assert b"\r\nSubject: *** SPAM *** rewritten\r\n" in header
    assert b"X-Spam-Action: rewrite subject" in header


def test_ordinary_mail_goes_to_the_inbox(server: ServiceProcess) -> None:
    send(server, "lunch", "Lunch tomorrow at noon? Regards, Bob")
    [header] = [h for h in headers_in(server, "INBOX") if b"Subject: lunch" in h]
    assert b"X-Spam-Status: No, score=" in header


def test_moving_a_message_to_junk_over_imap_teaches_rspamd(server: ServiceProcess, rspamd: RspamdProcess) -> None:
    send(server, "replica watches", "Buy cheap replica watches today, the best prices on the internet for luxury brands, limited offer, click now")
    before = rspamd.stat()["learned"]
    client = imap(server)
    try:
        client.select("INBOX")
        _, found = client.search(None, '(SUBJECT "replica watches")')
        [number] = found[0].split()
        typ, _ = client.uid("MOVE", client.fetch(number, "(UID)")[1][0].split()[2].rstrip(b")").decode(), "Junk")
        assert typ == "OK"
    finally:
        client.logout()
    deadline = time.monotonic() + TIMEOUT
    while rspamd.stat()["learned"] <= before:
        assert time.monotonic() < deadline, f"rspamd learned nothing\n{server.log()[-3000:]}"
        time.sleep(0.1)
    assert f"learned {ALICE} Junk" in server.log()


def test_rspamd_stopped_gets_the_fail_mode_and_sighup_changes_it(server: ServiceProcess, rspamd: RspamdProcess) -> None:
    rspamd.stop_rspamd()
    try:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(server, "while down", "rspamd is down")
        assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (451, b"4.7.1")
        text = server.config_path.read_text(encoding="utf-8").replace('fail = "closed"', 'fail = "open"')
        server.config_path.write_text(text, encoding="utf-8")
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        while "applied:" not in server.log() or "spam" not in server.log().rsplit("applied:", 1)[1][:200]:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.1)
        send(server, "open now", "rspamd is still down")
        [header] = [h for h in headers_in(server, "INBOX") if b"Subject: open now" in h]
        assert b"X-Spam" not in header
    finally:
        rspamd.start()
