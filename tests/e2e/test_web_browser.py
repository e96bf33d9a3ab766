"""
The webmail in a real browser: Debian's headless chromium driven by
Playwright (``executable_path``; Playwright's own browser download is never
used), against the real service in a subprocess, with mail arriving by SMTP.

Every request the browser makes is recorded; any to an address other than
the webmail's own origin is recorded and aborted, so a test can prove the
page asked for nothing elsewhere. Screenshots go to the test's tmp dir and
are copied to ``bench-results/screenshots/``.
"""

from __future__ import annotations

import importlib.util
import imaplib
import os
import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailapp.config import parse
from tests.service_runner import ServiceProcess, listener
from tests.web_helpers import (
    CHROMIUM_ARGS,
    attachment_bytes,
    chromium_path,
    folder_messages,
    keep_screenshot,
    wait_for_message,
)

playwright_api = pytest.importorskip("playwright.sync_api")

ALICE, BOB, CAROL, DAVE, FRANK, GRACE = (f"{name}@example.test" for name in ("alice", "bob", "carol", "dave", "frank", "grace"))
REMOTE = "erin@b.test"
PASSWORDS = {ALICE: "alice-pw-1", BOB: "bob-pw-1", CAROL: "carol-pw-1", DAVE: "dave-pw-1", FRANK: "frank-pw-1", GRACE: "grace-pw-1"}
ATTACHMENT = bytes(range(256)) * 400 + os.urandom(1000)
HAS_RELAY = importlib.util.find_spec("mailapp.relay") is not None

HOSTILE_HTML = """<html><head>
<meta http-equiv="refresh" content="0;url=http://evil.test/refresh">
<link rel="stylesheet" href="http://evil.test/link.css">
<style>@import url(http://evil.test/import.css); body { background: url(http://evil.test/bg.png) }
@font-face { font-family: x; src: url(http://evil.test/font.woff) }</style>
<base href="http://evil.test/">
</head>
<body onload="fetch('http://evil.test/onload'); console.log('HOSTILE onload ran')">
<script>fetch('http://evil.test/script'); console.log('HOSTILE script ran'); alert('script')</script>
<img src="x" onerror="fetch('http://evil.test/onerror'); console.log('HOSTILE onerror ran')">
<img src="http://evil.test/pixel.png" alt="tracker">
<p><a href="javascript:console.log('HOSTILE javascript link ran')">click the javascript link</a></p>
<div style="width: expression(alert('css')); background-image: url(http://evil.test/css-bg.png)">css expression</div>
<svg xmlns="http://www.w3.org/2000/svg" onload="console.log('HOSTILE svg onload ran')">
<script>console.log('HOSTILE svg script ran')</script><image href="http://evil.test/svg.png"/></svg>
<iframe src="http://evil.test/frame"></iframe>
<object data="http://evil.test/object"></object>
<form action="http://evil.test/form"><input name="q"><button>Go</button></form>
<p id="visible">Hostile message body text</p>
</body></html>"""


# -- the servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess | None]:
    """A second mailapp for the domain b.test: where mail to a remote user goes."""
    if not HAS_RELAY:
        yield None
        return
    server = ServiceProcess(tmp_path_factory.mktemp("remote"), listener("mx", "smtp"))
    text = server.config_path.read_text().replace('local = ["example.test"]', 'local = ["b.test"]')
    text = text.replace('hostname = "mail.example.test"', 'hostname = "mail.b.test"')
    server.config_path.write_text(text)
    server.config = parse(text, server.config_path)
    server.add_users({REMOTE: "erin-pw-1"})
    server.start()
    yield server
    server.terminate()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, remote_server: ServiceProcess | None) -> Iterator[ServiceProcess]:
    from mailapp.service import PROTOCOL_BUILDERS

    listeners = listener("web", "webmail") + listener("mx", "smtp")
    if "imap" in PROTOCOL_BUILDERS:
        listeners += listener("imap", "imap", allow_plaintext_auth=True)
    # The tests hand mail "from" local users (Bob, Carol) to the MX, as their own
    # server would after they sent it: the MX's forgery check must let it in.
    extra = "[security]\nmx_refuse_local_senders = false\n"
    if remote_server is not None:
        extra += f'[relay]\ntransports = {{ "b.test" = "127.0.0.1:{remote_server.port("mx")}" }}\n'
    server = ServiceProcess(tmp_path_factory.mktemp("webmail"), listeners, extra)
    server.add_users(PASSWORDS)
    server.start()
    yield server
    server.terminate()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    with playwright_api.sync_playwright() as playwright:
        # launch() gives every run a fresh, temporary user-data-dir of its own.
        instance = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


class Recorder:
    """Requests, console messages and dialogs of one browser context."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.requests: list[str] = []
        self.elsewhere: list[str] = []
        self.console: list[str] = []
        self.dialogs: list[str] = []

    def route(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(self.origin + "/") or url.startswith("data:"):
            route.continue_()
        else:
            self.elsewhere.append(url)
            route.abort()


@pytest.fixture
def session(browser: Any, server: ServiceProcess, request: pytest.FixtureRequest) -> Iterator[tuple[Any, Recorder]]:
    origin = f"http://127.0.0.1:{server.port('web')}"
    recorder = Recorder(origin)
    context = browser.new_context(base_url=origin, accept_downloads=True, viewport={"width": 1100, "height": 800})
    context.route("**/*", recorder.route)
    page = context.new_page()
    page.on("request", lambda r: recorder.requests.append(r.url))
    page.on("console", lambda m: recorder.console.append(f"{m.type}: {m.text}"))

    def dialog(d: Any) -> None:
        recorder.dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    page.set_default_timeout(15_000)
    yield page, recorder
    context.close()


def sign_in(page: Any, account: str) -> None:
    page.goto("/")
    page.get_by_label("Email address").fill(account)
    page.get_by_label("Password").fill(PASSWORDS[account])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/list?f=INBOX")


def shoot(page: Any, tmp_path: Path, name: str, full_page: bool = True) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    keep_screenshot(path)
    return path


def smtp_deliver(server: ServiceProcess, message: EmailMessage, recipients: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=10) as client:
        client.send_message(message, to_addrs=recipients)


def message_with_attachment(subject: str, sender: str = BOB) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"Bob Example <{sender}>"
    message["To"] = ALICE
    message["Cc"] = CAROL
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject.replace(' ', '-')}@example.test>"
    message.set_content("Hello Alice,\n\nthe quarterly numbers are attached.\n\nBob\n")
    message.add_attachment(ATTACHMENT, maintype="application", subtype="octet-stream", filename="numbers-Q3.bin")
    return message


# -- the tests -------------------------------------------------------------------------------


def test_sign_in_read_a_message_delivered_by_smtp_and_download_its_attachment(
    session: tuple[Any, Recorder], server: ServiceProcess, tmp_path: Path
) -> None:
    page, recorder = session
    smtp_deliver(server, message_with_attachment("Quarterly numbers"), [ALICE])
    page.goto("/")
    shoot(page, tmp_path, "01-sign-in")
    sign_in(page, ALICE)
    row = page.locator("tr", has_text="Quarterly numbers")
    assert "unread" in (row.get_attribute("class") or "")
    assert row.locator(".clip").count() == 1
    shoot(page, tmp_path, "02-inbox")

    page.get_by_role("link", name="Quarterly numbers").click()
    page.wait_for_url("**/read?**")
    assert page.locator("h1").inner_text() == "Quarterly numbers"
    assert "the quarterly numbers are attached." in page.locator("pre.text-body").inner_text()
    assert "Bob Example <bob@example.test>" in page.locator("dl.headers").inner_text()
    shoot(page, tmp_path, "03-read")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="numbers-Q3.bin").click()
    download = download_info.value
    assert download.suggested_filename == "numbers-Q3.bin"
    assert Path(download.path()).read_bytes() == ATTACHMENT

    # Opening it marked it \Seen in the store, so IMAP sees it at once.
    stored = [m for m in folder_messages(server.state_dir, ALICE) if m["message"]["Subject"] == "Quarterly numbers"]
    assert "\\Seen" in stored[0]["flags"]
    if "imap" in server.ports:
        imap = imaplib.IMAP4("127.0.0.1", server.port("imap"))
        try:
            imap.login(ALICE, PASSWORDS[ALICE])
            imap.select("INBOX", readonly=True)
            _, data = imap.uid("FETCH", str(stored[0]["uid"]), "(FLAGS)")
            assert b"\\Seen" in data[0]
        finally:
            imap.logout()
    assert recorder.elsewhere == []
    assert recorder.dialogs == []


def test_reply_reaches_the_sender_with_in_reply_to_and_a_copy_in_sent(
    session: tuple[Any, Recorder], server: ServiceProcess, tmp_path: Path
) -> None:
    page, recorder = session
    smtp_deliver(server, message_with_attachment("Lunch plans"), [ALICE])
    sign_in(page, ALICE)
    page.get_by_role("link", name="Lunch plans").click()
    page.get_by_role("link", name="Reply", exact=True).click()
    assert page.get_by_label("To", exact=True).input_value() == "Bob Example <bob@example.test>"
    assert page.get_by_label("Subject").input_value() == "Re: Lunch plans"
    body = page.get_by_label("Message")
    assert "> Hello Alice," in body.input_value()
    body.fill("Noon works for me.\n\n" + body.input_value())
    shoot(page, tmp_path, "04-reply")
    page.get_by_role("button", name="Send").click()
    page.wait_for_url("**notice=sent**")
    assert "Message sent." in page.locator(".notice").inner_text()

    reply = wait_for_message(server.state_dir, BOB, "Re: Lunch plans")["message"]
    assert reply["In-Reply-To"] == "<Lunch-plans@example.test>"
    assert reply["From"] == ALICE
    assert "Noon works for me." in reply.get_body(("plain",)).get_content()
    wait_for_message(server.state_dir, ALICE, "Re: Lunch plans", folder="Sent")
    assert recorder.elsewhere == []


def test_send_to_local_users_with_cc_bcc_and_attachments(
    session: tuple[Any, Recorder], server: ServiceProcess, tmp_path: Path
) -> None:
    page, recorder = session
    sign_in(page, ALICE)
    page.get_by_role("link", name="Compose").click()
    page.get_by_label("To", exact=True).fill(f"Bob <{BOB}>")
    page.get_by_label("Cc", exact=True).fill(CAROL)
    page.get_by_label("Bcc").fill(DAVE)
    page.get_by_label("Subject").fill("Team files")
    page.get_by_label("Message").fill("Both files attached.")
    page.get_by_label("Attachments").set_input_files(
        [
            {"name": "plan.txt", "mimeType": "text/plain", "buffer": b"step one\nstep two\n"},
            {"name": "photo.bin", "mimeType": "application/octet-stream", "buffer": ATTACHMENT},
        ]
    )
    shoot(page, tmp_path, "05-compose")
    page.get_by_role("button", name="Send").click()
    page.wait_for_url("**notice=sent**")

    for account in (BOB, CAROL, DAVE):
        received = wait_for_message(server.state_dir, account, "Team files")["message"]
        assert received["Bcc"] is None, account
        assert DAVE not in received.as_string(), account
        assert received["From"] == ALICE
        assert attachment_bytes(received) == {"plan.txt": b"step one\nstep two\n", "photo.bin": ATTACHMENT}
    sent = wait_for_message(server.state_dir, ALICE, "Team files", folder="Sent")
    assert sent["message"]["Bcc"] == DAVE
    assert "\\Seen" in sent["flags"]
    assert recorder.elsewhere == []


def test_bad_addresses_and_unknown_users_are_explained_and_nothing_is_sent(
    session: tuple[Any, Recorder], server: ServiceProcess, tmp_path: Path
) -> None:
    page, _ = session
    sign_in(page, ALICE)
    page.goto("/compose")
    page.get_by_label("To", exact=True).fill("bob@, nobody@example.test")
    page.get_by_label("Subject").fill("Oops")
    page.get_by_role("button", name="Send").click()
    error = page.locator(".error").inner_text()
    assert "To:" in error and "bob@" in error and "Nothing was sent." in error
    page.get_by_label("To", exact=True).fill("nobody@example.test")
    page.get_by_role("button", name="Send").click()
    error = page.locator(".error").inner_text()
    assert "nobody@example.test: No such user here (550 5.1.1)" in error
    shoot(page, tmp_path, "06-compose-errors")
    assert not [m for m in folder_messages(server.state_dir, ALICE, "Sent") if m["message"]["Subject"] == "Oops"]


@pytest.mark.skipif(not HAS_RELAY, reason="the relay queue (mailapp.relay) is not built yet")
def test_send_to_a_remote_user_arrives_on_the_second_instance(
    session: tuple[Any, Recorder], server: ServiceProcess, remote_server: ServiceProcess, tmp_path: Path
) -> None:
    page, recorder = session
    sign_in(page, ALICE)
    page.goto("/compose")
    page.get_by_label("To", exact=True).fill(REMOTE)
    page.get_by_label("Subject").fill("Across the wire")
    page.get_by_label("Message").fill("Hello from the other server.")
    page.get_by_role("button", name="Send").click()
    page.wait_for_url("**notice=sent**")
    arrived = wait_for_message(remote_server.state_dir, REMOTE, "Across the wire", timeout=60)["message"]
    assert arrived["From"] == ALICE
    assert "Hello from the other server." in arrived.get_body(("plain",)).get_content()
    wait_for_message(server.state_dir, ALICE, "Across the wire", folder="Sent")
    assert recorder.elsewhere == []


def test_a_message_delivered_by_smtp_appears_after_a_refresh(
    session: tuple[Any, Recorder], server: ServiceProcess, tmp_path: Path
) -> None:
    page, _ = session
    sign_in(page, ALICE)
    assert page.get_by_role("link", name="Fresh arrival").count() == 0
    message = EmailMessage()
    message["From"] = "Carol <carol@example.test>"
    message["To"] = ALICE
    message["Subject"] = "Fresh arrival"
    message.set_content("Just delivered.")
    smtp_deliver(server, message, [ALICE])
    page.reload()
    assert page.get_by_role("link", name="Fresh arrival").count() == 1
    assert page.locator("nav.folders a", has_text="INBOX").locator(".count").count() == 1


def test_hostile_html_executes_nothing_and_requests_nothing_from_another_origin(
    session: tuple[Any, Recorder], server: ServiceProcess, tmp_path: Path
) -> None:
    page, recorder = session
    message = EmailMessage()
    message["From"] = "Mallory <mallory@evil.test>"
    message["To"] = ALICE
    message["Subject"] = "Hostile HTML"
    message.set_content("plain fallback")
    message.add_alternative(HOSTILE_HTML, subtype="html")
    smtp_deliver(server, message, [ALICE])
    sign_in(page, ALICE)
    page.get_by_role("link", name="Hostile HTML").click()
    frame = page.frame_locator("iframe.message-frame")
    assert frame.locator("#visible, p", has_text="Hostile message body text").count() == 1
    frame.get_by_text("click the javascript link").click()
    page.wait_for_timeout(1500)  # time for a meta refresh, an onload or a timer to fire
    shoot(page, tmp_path, "07-hostile")

    assert recorder.elsewhere == []
    assert recorder.dialogs == []
    assert [line for line in recorder.console if "HOSTILE" in line] == []
    assert [line for line in recorder.console if "Refused" in line or "Blocked" in line] == []
    assert all(url.startswith(recorder.origin) or url.startswith("data:") for url in recorder.requests)
    assert "/frame?" in page.frames[1].url
    html = frame.locator("body").inner_html()
    for word in ("<script", "onerror", "onload", "javascript:", "expression(", "evil.test", "<form", "<svg", "<iframe", "<meta", "<style", "<link", "<object"):
        assert word not in html, word

    # Remote content loads only when the user asks, for this message.
    page.get_by_role("link", name="Show remote content").click()
    page.wait_for_timeout(500)
    assert "http://evil.test/pixel.png" in recorder.elsewhere
    assert [line for line in recorder.console if "HOSTILE" in line] == []
    assert recorder.dialogs == []


def test_inline_cid_images_are_shown(session: tuple[Any, Recorder], server: ServiceProcess, tmp_path: Path) -> None:
    page, recorder = session
    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cf000002030100c6c5a4c20000000049454e44ae426082"
    )
    message = EmailMessage()
    message["From"] = BOB
    message["To"] = ALICE
    message["Subject"] = "Inline picture"
    message.set_content("see the picture")
    message.add_alternative('<p>Picture: <img id="pic" src="cid:pic1@example.test" alt="pixel"></p>', subtype="html")
    message.get_payload()[1].add_related(png, maintype="image", subtype="png", cid="<pic1@example.test>")
    smtp_deliver(server, message, [ALICE])
    sign_in(page, ALICE)
    page.get_by_role("link", name="Inline picture").click()
    image = page.frame_locator("iframe.message-frame").get_by_alt_text("pixel")
    assert (image.get_attribute("src") or "").startswith("data:image/png;base64,")
    assert image.evaluate("img => img.naturalWidth") == 1
    assert recorder.elsewhere == []


def test_flag_move_delete_and_empty_trash_from_the_list(session: tuple[Any, Recorder], server: ServiceProcess, tmp_path: Path) -> None:
    page, _ = session
    for subject in ("Bulk one", "Bulk two"):
        message = EmailMessage()
        message["From"] = BOB
        message["To"] = ALICE
        message["Subject"] = subject
        message.set_content("bulk")
        smtp_deliver(server, message, [ALICE])
    sign_in(page, ALICE)
    for subject in ("Bulk one", "Bulk two"):
        page.locator("tr", has_text=subject).get_by_role("checkbox").check()
    page.get_by_role("button", name="Flag", exact=True).click()
    assert page.locator("tr", has_text="Bulk one").locator(".flag-mark").count() == 1
    page.locator("tr", has_text="Bulk one").get_by_role("checkbox").check()
    page.get_by_role("button", name="Delete", exact=True).click()
    assert page.get_by_role("link", name="Bulk one").count() == 0
    page.get_by_role("link", name="Trash").first.click()
    assert page.get_by_role("link", name="Bulk one").count() == 1
    page.get_by_role("button", name="Empty Trash").click()
    assert page.get_by_role("link", name="Bulk one").count() == 0
    assert "Trash emptied." in page.locator(".notice").inner_text()


def test_search_by_body_finds_the_message(session: tuple[Any, Recorder], server: ServiceProcess, tmp_path: Path) -> None:
    page, _ = session
    message = EmailMessage()
    message["From"] = CAROL
    message["To"] = ALICE
    message["Subject"] = "Garden notes"
    message.set_content("The zucchini harvest was enormous this year.")
    smtp_deliver(server, message, [ALICE])
    sign_in(page, ALICE)
    page.get_by_role("searchbox").fill("zucchini")
    page.get_by_role("button", name="Search").click()
    assert page.get_by_role("link", name="Garden notes").count() == 1
    assert page.locator("table.messages tbody tr").count() == 1


def test_phone_sized_screen_shows_the_list(browser: Any, server: ServiceProcess, tmp_path: Path) -> None:
    origin = f"http://127.0.0.1:{server.port('web')}"
    context = browser.new_context(base_url=origin, viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        sign_in(page, ALICE)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1
        shoot(page, tmp_path, "08-phone-inbox", full_page=False)
        page.goto("/compose")
        shoot(page, tmp_path, "09-phone-compose", full_page=False)
    finally:
        context.close()


def test_folders_page_creates_renames_and_deletes(session: tuple[Any, Recorder], server: ServiceProcess, tmp_path: Path) -> None:
    page, _ = session
    sign_in(page, ALICE)
    page.get_by_role("link", name="Manage folders").click()
    page.get_by_label("New folder").fill("Projects")
    page.get_by_role("button", name="Create").click()
    assert "Folder created." in page.locator(".notice").inner_text()
    page.get_by_label("New name").fill("Projects 2025")
    page.get_by_role("button", name="Rename").click()
    assert page.locator("nav.folders").get_by_role("link", name="Projects 2025").count() == 1
    shoot(page, tmp_path, "10-folders")
    page.get_by_role("button", name="Delete Projects 2025").click()
    assert page.locator("nav.folders").get_by_role("link", name="Projects 2025").count() == 0


def test_keyboard_alone_signs_in(browser: Any, server: ServiceProcess) -> None:
    origin = f"http://127.0.0.1:{server.port('web')}"
    context = browser.new_context(base_url=origin, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto("/login")
        expect = playwright_api.expect
        address, password = page.locator("#username"), page.locator("#password")
        # Chromium moves focus to an autofocus field at a rendering update after
        # the load event that goto() waits for; under load that comes later, and
        # keys pressed before it went to the page body (the address was lost, the
        # password landed in the address field). Wait for the focus itself.
        expect(address).to_be_focused()
        page.keyboard.type(ALICE)
        page.keyboard.press("Tab")
        expect(password).to_be_focused()
        page.keyboard.type(PASSWORDS[ALICE])
        expect(address).to_have_value(ALICE)
        with page.expect_navigation(url="**/list?f=INBOX"):
            page.keyboard.press("Enter")
        assert page.locator("h1").inner_text().startswith("INBOX")
    finally:
        context.close()



def test_a_sender_blocked_in_settings_is_refused_by_the_mx_until_removed(
    session: tuple[Any, Recorder], server: ServiceProcess, tmp_path: Path
) -> None:
    page, recorder = session
    sign_in(page, DAVE)
    page.get_by_role("link", name="Settings").click()
    page.wait_for_url("**/settings")
    page.get_by_label("Address or domain").fill("Spam.Example")
    page.get_by_role("button", name="Block").click()
    page.wait_for_url("**/settings?notice=blocked")
    assert page.locator("#block-list").inner_text().startswith("spam.example")
    shoot(page, tmp_path, "settings-blocked")

    spam = EmailMessage()
    spam["From"], spam["To"], spam["Subject"] = "x@spam.example", DAVE, "Buy now"
    spam.set_content("spam\n")
    with smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=10) as client:
        client.ehlo()
        client.mail("x@spam.example")
        assert client.rcpt(DAVE) == (550, b"5.7.1 Sender blocked by the recipient")
        assert client.rcpt(CAROL)[0] == 250  # only Dave's list blocks it

    page.get_by_role("button", name="Remove spam.example").click()
    page.wait_for_url("**/settings?notice=unlisted")
    assert page.locator("#block-list").count() == 0
    with smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=10) as client:
        client.ehlo()
        client.mail("x@spam.example")
        assert client.rcpt(DAVE)[0] == 250
    assert recorder.elsewhere == []


def test_a_rule_and_a_vacation_made_in_settings_sort_the_next_messages_and_reply_once(
    session: tuple[Any, Recorder], server: ServiceProcess, tmp_path: Path
) -> None:
    page, recorder = session
    sign_in(page, FRANK)
    page.get_by_role("link", name="Settings").click()
    page.wait_for_url("**/settings")
    rule = page.locator("#rule-0")
    rule.locator("[name=r0_field]").select_option("subject")
    rule.locator("[name=r0_match]").select_option("contains")
    rule.locator("[name=r0_text]").fill("invoice")
    rule.locator("[name=r0_action]").select_option("move")
    rule.locator("[name=r0_newfolder]").fill("Invoices")
    rule.get_by_label("then stop").check()
    page.get_by_role("button", name="Save rules").click()
    page.wait_for_url("**/settings?notice=rules**")
    assert "Filter rules saved" in page.locator(".notice").inner_text()
    assert 'fileinto :create "Invoices";' in page.get_by_label("Sieve script").input_value()

    page.get_by_label("Send an automatic reply").check()
    page.locator("#vacation-form [name=subject]").fill("Away this week")
    page.locator("#vacation-form [name=text]").fill("I am away until Monday.\n.\nFrank")
    page.get_by_role("button", name="Save vacation reply").click()
    page.wait_for_url("**/settings?notice=vacation**")
    script = page.get_by_label("Sieve script").input_value()
    assert 'require ["fileinto", "mailbox", "vacation"];' in script and "vacation :days 7" in script
    shoot(page, tmp_path, "settings-filters")

    def from_grace(subject: str) -> EmailMessage:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = f"Grace <{GRACE}>", FRANK, subject
        message["Message-ID"] = f"<{subject.replace(' ', '-')}@example.test>"
        message.set_content("Hello Frank.\n")
        return message

    smtp_deliver(server, from_grace("invoice 42"), [FRANK])
    reply = wait_for_message(server.state_dir, GRACE, "Away this week", timeout=10)["message"]
    assert reply["In-Reply-To"] == "<invoice-42@example.test>"
    assert "I am away until Monday.\n.\nFrank" in reply.get_content().replace("\r\n", "\n")
    smtp_deliver(server, from_grace("lunch"), [FRANK])

    # The folder view shows the moved message; the other one stayed in INBOX.
    page.goto("/list?f=Invoices")
    assert page.get_by_role("link", name="invoice 42").count() == 1
    page.goto("/list?f=INBOX")
    assert page.get_by_role("link", name="lunch").count() == 1
    assert page.get_by_role("link", name="invoice 42").count() == 0
    shoot(page, tmp_path, "settings-filtered-inbox")

    # The second message was not answered: the server says so, and Grace has one reply.
    deadline = time.monotonic() + 10
    while f"sieve vacation for {FRANK} not sent to <{GRACE}>" not in server.log():
        assert time.monotonic() < deadline, "no vacation decision for the second message"
        time.sleep(0.1)
    replies = [m for m in folder_messages(server.state_dir, GRACE) if m["message"]["Subject"] == "Away this week"]
    assert len(replies) == 1
    assert recorder.elsewhere == []
