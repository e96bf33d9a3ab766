"""
Sieve end to end: the real service in a subprocess, scripts uploaded with
sievelib's ManageSieve client (a client nobody here wrote) over STARTTLS,
real messages sent with smtplib, and where they landed read back with
imaplib: fileinto, discard, reject (550 at DATA), imap4flags, redirect,
vacation once per sender per :days and never to a list message.
"""

from __future__ import annotations

import imaplib
import os
import re
import smtplib
import ssl
import subprocess
import time
import types
from collections.abc import Iterator

import pytest
from sievelib import managesieve

from tests import needs
from tests.service_runner import TIMEOUT, ServiceProcess, listener, unverified_tls

PASSWORD = "sieve-secret"
LISTENERS = (
    listener("smtp", "smtp")
    + listener("submission", "submission", tls="none", allow_plaintext_auth=True)
    + listener("imap", "imap", tls="none", allow_plaintext_auth=True)
    + listener("sieve", "managesieve", tls="starttls")
)
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = ServiceProcess(tmp_path_factory.mktemp("sieve-e2e"), LISTENERS)
    running.add_users({f"{name}@example.test": PASSWORD for name in USERS})
    running.start()
    yield running
    running.terminate()


@pytest.fixture(autouse=True)
def self_signed_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    """sievelib verifies the server's certificate; the test server's is self-signed."""
    shim = types.SimpleNamespace(
        create_default_context=unverified_tls,
        SSLError=ssl.SSLError,
        SSLSocket=ssl.SSLSocket,
    )
    monkeypatch.setattr(managesieve, "ssllib", shim)


def upload(
    server: ServiceProcess, user: str, script: str, name: str = "main"
) -> managesieve.Client:
    client = managesieve.Client(
        "127.0.0.1", server.port("sieve"), srvhostname="mail.example.test"
    )
    assert client.connect(user, PASSWORD, starttls=True, authmech="PLAIN")
    if client.putscript(name, script):
        assert client.setactive(name)
    return client


def install(server: ServiceProcess, user: str, script: str) -> None:
    client = upload(server, user, script)
    assert client.errmsg == b"", client.errmsg
    client.logout()


def mx_send(
    server: ServiceProcess, sender: str, recipients: list[str], message: str
) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as smtp:
        smtp.sendmail(sender, recipients, message.encode())


def submit(
    server: ServiceProcess, user: str, recipients: list[str], message: str
) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=TIMEOUT) as smtp:
        smtp.login(user, PASSWORD)
        smtp.sendmail(user, recipients, message.encode())


def folder(
    server: ServiceProcess, user: str, name: str = "INBOX", wait_for: int = 0
) -> list[tuple[bytes, bytes]]:
    """(flags, message) of every message in C{name}; waits (bounded) until there are C{wait_for}."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        with imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=TIMEOUT) as imap:
            imap.login(user, PASSWORD)
            status, _ = imap.select(f'"{name}"', readonly=True)
            found: list[tuple[bytes, bytes]] = []
            if status == "OK":
                _, data = (
                    imap.fetch("1:*", "(FLAGS BODY.PEEK[])")
                    if imap.search(None, "ALL")[1][0]
                    else ("OK", [])
                )
                for item in data:
                    if isinstance(item, tuple):
                        flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                        found.append((flags.group(1) if flags else b"", item[1]))
        if len(found) >= wait_for or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def message(sender: str, to: str, subject: str, extra: str = "") -> str:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}@example.net>\r\n{extra}\r\nbody\r\n"


def test_a_script_uploaded_with_sievelib_files_the_next_message(
    server: ServiceProcess,
) -> None:
    install(
        server,
        "alice@example.test",
        'require ["fileinto", "mailbox"];\r\nif header :contains "subject" "[dev]" { fileinto :create "Dev"; }\r\n',
    )
    mx_send(
        server,
        "zed@example.net",
        ["alice@example.test"],
        message("zed@example.net", "alice@example.test", "[dev] build green"),
    )
    mx_send(
        server,
        "zed@example.net",
        ["alice@example.test"],
        message("zed@example.net", "alice@example.test", "lunch"),
    )
    [(_, filed)] = folder(server, "alice@example.test", "Dev", wait_for=1)
    assert b"Subject: [dev] build green" in filed
    [(_, kept)] = folder(server, "alice@example.test", "INBOX", wait_for=1)
    assert b"Subject: lunch" in kept


def test_a_broken_script_is_refused_with_its_line(server: ServiceProcess) -> None:
    client = upload(
        server,
        "bob@example.test",
        'require "fileinto";\r\n\r\nif true {\r\n  fileinto "x"\r\n}\r\n',
        name="broken",
    )
    assert (
        client.errmsg == b"line 5, column 1: expected ';' after 'fileinto', found '}'"
    )
    assert client.listscripts() == (None, [])
    client.logout()


def test_discard_stores_nothing(server: ServiceProcess) -> None:
    install(
        server,
        "carol@example.test",
        'if header :contains "subject" "spam" { discard; }',
    )
    mx_send(
        server,
        "zed@example.net",
        ["carol@example.test"],
        message("zed@example.net", "carol@example.test", "spam spam"),
    )
    mx_send(
        server,
        "zed@example.net",
        ["carol@example.test"],
        message("zed@example.net", "carol@example.test", "hello"),
    )
    messages = folder(server, "carol@example.test", wait_for=1)
    assert [b"Subject: hello" in data for _, data in messages] == [True]


def test_reject_is_550_at_data_with_the_reason(server: ServiceProcess) -> None:
    install(
        server,
        "dave@example.test",
        'require "reject"; if address :is "from" "zed@example.net" { reject "Not from you, Zed"; }',
    )
    with pytest.raises(smtplib.SMTPDataError) as refused:
        mx_send(
            server,
            "zed@example.net",
            ["dave@example.test"],
            message("zed@example.net", "dave@example.test", "hi"),
        )
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        550,
        b"5.7.1 Not from you, Zed",
    )
    assert folder(server, "dave@example.test") == []


def test_imap4flags_set_the_stored_flags(server: ServiceProcess) -> None:
    install(
        server,
        "erin@example.test",
        'require ["imap4flags"]; addflag ["\\\\Flagged", "$Important"];',
    )
    mx_send(
        server,
        "zed@example.net",
        ["erin@example.test"],
        message("zed@example.net", "erin@example.test", "flag me"),
    )
    [(flags, _)] = folder(server, "erin@example.test", wait_for=1)
    assert set(flags.split()) - {b"\\Recent"} == {b"\\Flagged", b"$Important"}


def test_redirect_delivers_once_to_the_target_marked(server: ServiceProcess) -> None:
    install(server, "frank@example.test", 'redirect "grace@example.test";')
    mx_send(
        server,
        "zed@example.net",
        ["frank@example.test"],
        message("zed@example.net", "frank@example.test", "forward me"),
    )
    [(_, redirected)] = folder(server, "grace@example.test", wait_for=1)
    assert b"X-Sieve-Redirected-By: frank@example.test" in redirected
    assert folder(server, "frank@example.test") == []


def test_vacation_once_per_sender_per_days_and_never_to_a_list(
    server: ServiceProcess,
) -> None:
    install(
        server,
        "heidi@example.test",
        'require "vacation"; vacation :days 1 :subject "Away" "Back on Monday.";',
    )
    submit(
        server,
        "ivan@example.test",
        ["heidi@example.test"],
        message("ivan@example.test", "heidi@example.test", "first"),
    )
    submit(
        server,
        "ivan@example.test",
        ["heidi@example.test"],
        message("ivan@example.test", "heidi@example.test", "second"),
    )
    list_mail = message(
        "ivan@example.test",
        "heidi@example.test",
        "list post",
        "List-Id: <dev.example.test>\r\n",
    )
    submit(server, "ivan@example.test", ["heidi@example.test"], list_mail)
    assert len(folder(server, "heidi@example.test", wait_for=3)) == 3
    folder(server, "ivan@example.test", wait_for=1)
    time.sleep(0.5)  # a second reply, if one were wrongly sent, would be there by now
    replies = folder(server, "ivan@example.test")
    assert len(replies) == 1
    [(_, reply)] = replies
    assert b"Return-Path: <>" in reply and b"Auto-Submitted: auto-replied" in reply
    assert b"Subject: Away" in reply and b"In-Reply-To: <first@example.net>" in reply


def test_redirect_arrives_at_a_second_instance_exactly_once(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from tests.e2e.test_relay_e2e import _config, _configure, _free_port, new_messages

    root = tmp_path_factory.mktemp("sieve-redirect")
    b_port = _free_port()
    b = ServiceProcess(root / "b", "")
    smtp_b = f'[listeners.smtp]\nprotocol = "smtp"\nendpoint = "tcp:{b_port}:interface=127.0.0.1"\ntls = "starttls"\n'
    _configure(b, _config(b.state_dir, "mx.b.test", "b.test", smtp_b))
    b.add_users({"bob@b.test": PASSWORD})
    relay = f'[relay]\nretry_schedule = [1]\ntransports = {{ "b.test" = "127.0.0.1:{b_port}" }}\n'
    a = ServiceProcess(root / "a", LISTENERS, relay)
    a.add_users({"alice@example.test": PASSWORD})
    b.start()
    try:
        a.start()
        try:
            install(a, "alice@example.test", 'redirect "bob@b.test";')
            mx_send(
                a,
                "zed@example.net",
                ["alice@example.test"],
                message("zed@example.net", "alice@example.test", "to bob"),
            )
            deadline = time.monotonic() + TIMEOUT
            while not new_messages(b, "bob@b.test") and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(
                1.5
            )  # past A's one-second retry: a second copy, if one were queued, would be here
            [arrived] = new_messages(b, "bob@b.test")
            assert (
                b"X-Sieve-Redirected-By: alice@example.test" in arrived
                and b"Subject: to bob" in arrived
            )
            assert folder(a, "alice@example.test") == []
        finally:
            a.terminate()
    finally:
        b.terminate()


def _sieve_connect(server: ServiceProcess, user: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Debian's sieve-connect (Perl, another client nobody here wrote), the password on a pipe, STARTTLS unverified."""
    program = needs.command("sieve-connect")
    read, write = os.pipe()
    os.write(write, (PASSWORD + "\n").encode())
    os.close(write)
    try:
        command = [program, "--server", "127.0.0.1", "--port", str(server.port("sieve")), "--user", user]
        command += ["--passwordfd", str(read), "--notlsverify", "--authmech", "PLAIN", *arguments]
        return subprocess.run(command, pass_fds=(read,), capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        os.close(read)


def test_sieve_connect_uploads_activates_and_lists(server: ServiceProcess, tmp_path_factory: pytest.TempPathFactory) -> None:
    script = tmp_path_factory.mktemp("sieve-connect") / "flags.sieve"
    script.write_text('require "imap4flags";\naddflag "$FromSieveConnect";\n')
    uploaded = _sieve_connect(server, "judy@example.test", "--upload", "--localsieve", str(script), "--remotesieve", "flags")
    assert uploaded.returncode == 0, uploaded.stderr
    activated = _sieve_connect(server, "judy@example.test", "--activate", "--remotesieve", "flags")
    assert activated.returncode == 0, activated.stderr
    listed = _sieve_connect(server, "judy@example.test", "--list")
    assert (listed.returncode, listed.stdout) == (0, '"flags" ACTIVE\n'), listed.stderr
    mx_send(server, "zed@example.net", ["judy@example.test"], message("zed@example.net", "judy@example.test", "sieve-connect"))
    flagged = [m for flags, m in folder(server, "judy@example.test", wait_for=1) if b"$FromSieveConnect" in flags]
    assert len(flagged) == 1 and b"Subject: sieve-connect" in flagged[0]
