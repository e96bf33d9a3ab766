"""
International addresses end to end (RFC 6531): the admin command takes a
domain in U-labels and a UTF-8 user in it; the real service offers
SMTPUTF8, takes ``jörg@bücher.example`` (U-labels or A-labels alike) from
smtplib only in a SMTPUTF8 transaction, stores the message with its UTF-8
header fields as received and its Received: field saying UTF8SMTP; and
refuses a UTF-8 address without SMTPUTF8 with 553 5.6.7. The user then logs
in over POP3 with poplib (RFC 6856: UTF8, UTF-8 USER) and reads it, and in
the webmail, where the message is listed and a reply to a UTF-8 address is
sent and delivered.
"""

from __future__ import annotations

import poplib
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service_runner import ServiceProcess, listener

USER = "jörg@bücher.example"
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    listeners = (
        listener("mx", "smtp") + listener("pop3", "pop3", allow_plaintext_auth=True)
        + listener("webmail", "webmail", allow_plaintext_auth=True)
    )
    running = ServiceProcess(tmp_path_factory.mktemp("smtputf8"), listeners)
    mailapp = Path(sys.executable).parent / "mailapp"
    for arguments in (["domain", "add", "Bücher.example"], ["user", "add", USER, "--password", "jörg-password-1"]):
        done = subprocess.run(
            [str(mailapp), "--config", str(running.config_path), *arguments], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    running.start()
    yield running
    running.terminate()


def _stored(server: ServiceProcess) -> set[Path]:
    new = server.maildir("jörg@xn--bcher-kva.example") / "new"
    return set(new.iterdir()) if new.is_dir() else set()


@pytest.mark.parametrize("recipient", [USER, "Jörg@xn--bcher-kva.example"])
def test_a_utf8_address_is_delivered_with_its_utf8_header_fields_as_received(server: ServiceProcess, recipient: str) -> None:
    before = _stored(server)
    message = f"From: Zoë <zoe@remote.test>\r\nTo: {USER}\r\nSubject: Grüße, {recipient}\r\n\r\nHallo Jörg.\r\n".encode()
    with smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert client.has_extn("smtputf8")
        assert client.sendmail("zoë@remote.test", [recipient], message, mail_options=["SMTPUTF8"]) == {}
    [arrived] = _stored(server) - before
    copy = arrived.read_bytes()
    assert f"Subject: Grüße, {recipient}".encode() in copy and "Hallo Jörg.".encode() in copy
    assert "Return-Path: <zoë@remote.test>".encode() in copy
    assert b"with UTF8SMTP" in copy


def test_a_utf8_address_without_smtputf8_is_refused_with_553_5_6_7(server: ServiceProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port("mx")), timeout=TIMEOUT) as connection:
        stream = connection.makefile("rwb")
        stream.readline()
        stream.write(b"EHLO client.test\r\n")
        stream.flush()
        while not stream.readline().startswith(b"250 "):
            pass
        stream.write(b"MAIL FROM:<zoe@remote.test>\r\nRCPT TO:<" + USER.encode() + b">\r\nQUIT\r\n")
        stream.flush()
        assert stream.readline().startswith(b"250")
        assert stream.readline().startswith(b"553 5.6.7")


def test_the_utf8_user_logs_in_over_pop3_and_reads_the_message_as_it_arrived(server: ServiceProcess) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=TIMEOUT) as client:
        message = f"From: zoe@remote.test\r\nTo: {USER}\r\nSubject: für POP3\r\n\r\nHallo.\r\n".encode()
        client.sendmail("zoe@remote.test", [USER], message, mail_options=["SMTPUTF8"])
    pop = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=TIMEOUT)
    try:
        assert pop.capa()["UTF8"] == ["USER"]
        assert pop.utf8() == b"+OK UTF8 enabled"
        pop.user(USER)
        assert pop.pass_("jörg-password-1").startswith(b"+OK")
        count, _ = pop.stat()
        lines = [b"\r\n".join(pop.retr(n)[1]) for n in range(1, count + 1)]
        assert any("Subject: für POP3".encode() in text for text in lines)
    finally:
        pop.quit()


class _Browser:
    """The webmail over urllib, with its cookies, as a browser without JavaScript uses it."""

    def __init__(self, port: int) -> None:
        import http.cookiejar
        import urllib.request

        self.base = f"http://127.0.0.1:{port}"
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=TIMEOUT) as response:
            return str(response.read().decode("utf-8"))

    def post(self, path: str, fields: dict[str, str]) -> str:
        import urllib.parse
        import urllib.request

        request = urllib.request.Request(
            self.base + path, data=urllib.parse.urlencode(fields).encode(), headers={"Origin": self.base}, method="POST"
        )
        with self.opener.open(request, timeout=TIMEOUT) as response:
            return str(response.read().decode("utf-8"))


def test_the_utf8_user_reads_in_the_webmail_and_sends_to_a_utf8_address(server: ServiceProcess) -> None:
    import html
    import re

    with smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=TIMEOUT) as client:
        message = f"From: Zoë <zoë@remote.test>\r\nTo: {USER}\r\nSubject: Webmail grüßt\r\n\r\nHallo.\r\n".encode()
        client.sendmail("zoë@remote.test", [USER], message, mail_options=["SMTPUTF8"])
    browser = _Browser(server.port("webmail"))
    login = browser.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', login)
    assert token is not None
    inbox = browser.post("/login", {"login_token": token.group(1), "username": USER, "password": "jörg-password-1"})
    assert "Webmail grüßt" in html.unescape(inbox), inbox[:2000]
    compose = browser.get("/compose")
    csrf = re.search(r'name="csrf" value="([^"]+)"', compose)
    assert csrf is not None
    before = _stored(server)
    browser.post("/compose", {"csrf": csrf.group(1), "to": USER, "subject": "an mich, über UTF-8", "body": "Grüße", "action": "send"})
    deadline = time.monotonic() + TIMEOUT
    while not (_stored(server) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    [arrived] = _stored(server) - before
    copy = arrived.read_bytes().decode("utf-8")
    assert "an mich" in copy and ("jörg@" in copy or "=?utf-8?" in copy.lower())
