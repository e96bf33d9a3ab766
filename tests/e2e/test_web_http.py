"""
The webmail over HTTP, without a browser: the real Klein resource on a real
loopback socket in this process (a real Maildir store, fake accounts), with
the session clock injected so that timeouts are tested without waiting.

The HTTP client (http.client) blocks, so each request runs on a thread
while the reactor serves it.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import http.client
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mailapp.auth import makePortal
from mailapp.delivery import Router
from mailapp.store import MaildirStore
from mailapp.testing import FakeAccounts
from mailapp.web import Webmail, WebmailPolicy
from mailapp.web.messages import parse_addresses, ComposeError
from mailapp.web.sessions import Sessions
from tests.hostile_messages import nested_multiparts, sibling_parts
from tests.service_runner import REPOSITORY

ALICE, BOB = "alice@example.test", "bob@example.test"
PASSWORDS = {ALICE: "alice-pw-1", BOB: "bob-pw-1"}
IDLE, ABSOLUTE = 600.0, 3600.0


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Client:
    """One browser's cookies against the webmail on C{port}."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = dict(headers)
            if self.cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            result = Response(response.status, response.getheaders(), response.read())
        finally:
            connection.close()
        for cookie in result.all("set-cookie"):
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in cookie:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return result

    def get(self, path: str) -> Any:
        return deferToThread(self._request, "GET", path, None, {})

    def post(self, path: str, fields: dict[str, Any] | list[tuple[str, str]], headers: dict[str, str] | None = None) -> Any:
        body = urlencode(fields, doseq=True).encode()
        return deferToThread(self._request, "POST", path, body, {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})

    def post_multipart(self, path: str, fields: dict[str, str], files: list[tuple[str, str, bytes]] = ()) -> Any:  # type: ignore[assignment]
        boundary = "----mailapptestboundary7MA4YWxkTrZu0gW"
        parts = []
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n")
        for filename, kind, data in files:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="attachment"; filename="{filename}"\r\nContent-Type: {kind}\r\n\r\n'.encode()
                + data
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return deferToThread(self._request, "POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    @inlineCallbacks
    def sign_in(self, account: str, password: str | None = None) -> Any:
        page = yield self.get("/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        response = yield self.post("/login", {"login_token": token, "username": account, "password": password or PASSWORDS[account]})
        return response


def csrf_of(response: Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', response.text)
    assert found is not None, response.text[:500]
    return found.group(1)


class WebmailHTTPTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.now = [1_000_000.0]
        root = Path(self.mktemp())
        self.store = MaildirStore(root / "mail", reactor=reactor)
        self.accounts = FakeAccounts(["example.test"])
        for account, password in PASSWORDS.items():
            self.accounts.add_user(account, password)
        self.router = Router(self.accounts, self.store)
        self.policy = WebmailPolicy(
            hostname="mail.example.test",
            max_message_size=200_000,
            idle_timeout=IDLE,
            absolute_timeout=ABSOLUTE,
            login_failure_delay=0.2,
            login_failure_limit=3,
        )
        self.webmail = Webmail(self.router, makePortal(self.accounts, self.store), self.policy, reactor, clock=lambda: self.now[0])
        self.port = reactor.listenTCP(0, self.webmail.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def client(self) -> Client:
        return Client(self.port.getHost().port)

    @inlineCallbacks
    def deliver(self, account: str, subject: str, body: str = "hello", folder: str = "INBOX", raw: bytes | None = None) -> Any:
        target = yield self.store.mailbox(account).folder(folder)
        data = raw or f"From: someone@example.test\r\nTo: {account}\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode()
        uid = yield target.append(data)
        return uid

    @inlineCallbacks
    def stored(self, account: str, folder: str = "INBOX") -> Any:
        source = yield self.store.mailbox(account).folder(folder)
        found = []
        for info in (yield source.messages()):
            handle = yield source.openMessage(info.uid)
            with handle:
                message = email.message_from_bytes(handle.read(), policy=email.policy.default)
            found.append((info, message))
        return found

    # -- cookies and sign-in ------------------------------------------------------------------

    @inlineCallbacks
    def test_session_cookie_is_httponly_and_samesite_strict(self) -> None:
        response = yield self.client().sign_in(ALICE)
        self.assertEqual(response.status, 303)
        cookie = [c for c in response.all("set-cookie") if c.startswith("mailapp_session=")][0]
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)
        self.assertIn("Path=/", cookie)
        self.assertNotIn("Secure", cookie)

    @inlineCallbacks
    def test_session_cookie_is_secure_and_host_prefixed_under_tls(self) -> None:
        policy = WebmailPolicy(hostname="mail.example.test", secure=True, login_failure_delay=0.01)
        webmail = Webmail(self.router, makePortal(self.accounts, self.store), policy, reactor)
        port = reactor.listenTCP(0, webmail.site(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Client(port.getHost().port)
        page = yield client.get("/login")
        self.assertIn("Secure", page.header("set-cookie") or "")
        self.assertIn("max-age", page.header("strict-transport-security") or "")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        response = yield client.post("/login", {"login_token": token, "username": ALICE, "password": PASSWORDS[ALICE]})
        cookie = [c for c in response.all("set-cookie") if c.startswith("__Host-mailapp_session=")][0]
        self.assertIn("Secure", cookie)
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)

    @inlineCallbacks
    def test_pages_carry_a_strict_content_security_policy_and_no_script(self) -> None:
        client = self.client()
        yield client.sign_in(ALICE)
        page = yield client.get("/list?f=INBOX")
        policy = page.header("content-security-policy") or ""
        self.assertIn("default-src 'none'", policy)
        self.assertNotIn("script-src", policy)
        self.assertEqual(page.header("x-frame-options"), "DENY")
        self.assertEqual(page.header("x-content-type-options"), "nosniff")
        self.assertNotIn("<script", page.text)

    @inlineCallbacks
    def test_sign_in_without_the_form_token_is_refused(self) -> None:
        client = self.client()
        response = yield client.post("/login", {"username": ALICE, "password": PASSWORDS[ALICE]})
        self.assertEqual(response.status, 403)
        self.assertNotIn("mailapp_session", client.cookies)

    @inlineCallbacks
    def test_wrong_password_is_answered_after_a_delay(self) -> None:
        started = time.monotonic()
        response = yield self.client().sign_in(ALICE, "wrong")
        self.assertEqual(response.status, 401)
        self.assertGreaterEqual(time.monotonic() - started, self.policy.login_failure_delay)
        self.assertIn("Wrong email address or password.", response.text)

    @inlineCallbacks
    def test_repeated_login_failures_ban_the_address_even_with_the_right_password(self) -> None:
        for _ in range(self.policy.login_failure_limit):
            response = yield self.client().sign_in(ALICE, "wrong")
            self.assertEqual(response.status, 401)
        response = yield self.client().sign_in(ALICE)
        self.assertEqual(response.status, 429)
        self.assertIn("Too many failed sign-ins", response.text)
        self.now[0] += self.policy.login_failure_window + 1
        response = yield self.client().sign_in(ALICE)
        self.assertEqual(response.status, 303)

    # -- CSRF -----------------------------------------------------------------------------------

    @inlineCallbacks
    def test_state_changes_without_a_valid_csrf_token_are_refused_and_change_nothing(self) -> None:
        uid = yield self.deliver(ALICE, "Keep me unread")
        client = self.client()
        yield client.sign_in(ALICE)
        page = yield client.get("/list?f=INBOX")
        token = csrf_of(page)
        for fields in (
            {"f": "INBOX", "uid": str(uid), "do": "read"},
            {"f": "INBOX", "uid": str(uid), "do": "read", "csrf": "forged"},
            {"f": "INBOX", "uid": str(uid), "do": "delete", "csrf": ""},
        ):
            response = yield client.post("/action", fields)
            self.assertEqual(response.status, 403, fields)
        for path, fields in (("/empty-trash", {}), ("/folders/create", {"name": "X"}), ("/logout", {})):
            response = yield client.post(path, fields)
            self.assertEqual(response.status, 403, path)
        response = yield client.post_multipart("/compose", {"to": BOB, "subject": "forged", "body": "x", "action": "send"})
        self.assertEqual(response.status, 403)
        [(info, _)] = yield self.stored(ALICE)
        self.assertNotIn("\\Seen", info.flags)
        self.assertEqual((yield self.stored(BOB)), [])
        response = yield client.post("/action", {"f": "INBOX", "uid": str(uid), "do": "read", "csrf": token})
        self.assertEqual(response.status, 303)
        [(info, _)] = yield self.stored(ALICE)
        self.assertIn("\\Seen", info.flags)

    @inlineCallbacks
    def test_a_cross_site_post_with_the_right_token_is_still_refused(self) -> None:
        uid = yield self.deliver(ALICE, "Cross site")
        client = self.client()
        yield client.sign_in(ALICE)
        token = csrf_of((yield client.get("/list?f=INBOX")))
        fields = {"f": "INBOX", "uid": str(uid), "do": "read", "csrf": token}
        response = yield client.post("/action", fields, {"Origin": "http://evil.test"})
        self.assertEqual(response.status, 403)
        response = yield client.post("/action", fields, {"Sec-Fetch-Site": "cross-site"})
        self.assertEqual(response.status, 403)
        [(info, _)] = yield self.stored(ALICE)
        self.assertNotIn("\\Seen", info.flags)

    @inlineCallbacks
    def test_one_sessions_token_does_not_work_for_another(self) -> None:
        uid = yield self.deliver(ALICE, "Token")
        alice, bob = self.client(), self.client()
        yield alice.sign_in(ALICE)
        yield bob.sign_in(BOB)
        bob_token = csrf_of((yield bob.get("/list?f=INBOX")))
        response = yield alice.post("/action", {"f": "INBOX", "uid": str(uid), "do": "read", "csrf": bob_token})
        self.assertEqual(response.status, 403)

    # -- session lifetime -------------------------------------------------------------------

    @inlineCallbacks
    def test_logout_ends_the_session(self) -> None:
        client = self.client()
        yield client.sign_in(ALICE)
        session = client.cookies["mailapp_session"]
        token = csrf_of((yield client.get("/list?f=INBOX")))
        response = yield client.post("/logout", {"csrf": token})
        self.assertEqual(response.header("location"), "/login?notice=loggedout")
        client.cookies["mailapp_session"] = session  # a copy of the cookie is worth nothing now
        response = yield client.get("/list?f=INBOX")
        self.assertEqual(response.status, 303)
        self.assertTrue((response.header("location") or "").startswith("/login"))

    @inlineCallbacks
    def test_an_idle_session_expires(self) -> None:
        client = self.client()
        yield client.sign_in(ALICE)
        token = csrf_of((yield client.get("/list?f=INBOX")))
        self.now[0] += IDLE - 1
        self.assertEqual((yield client.get("/list?f=INBOX")).status, 200)
        self.now[0] += IDLE + 1
        response = yield client.get("/list?f=INBOX")
        self.assertEqual((response.status, response.header("location")), (303, "/login?notice=expired"))
        response = yield client.post("/folders/create", {"name": "Late", "csrf": token})
        self.assertEqual(response.status, 403)
        names = [info.name for info in (yield self.store.mailbox(ALICE).listFolders())]
        self.assertNotIn("Late", names)

    @inlineCallbacks
    def test_a_busy_session_still_ends_at_the_absolute_timeout(self) -> None:
        client = self.client()
        yield client.sign_in(ALICE)
        while self.now[0] < 1_000_000.0 + ABSOLUTE - IDLE / 2:
            self.now[0] += IDLE / 2
            self.assertEqual((yield client.get("/list?f=INBOX")).status, 200)
        self.now[0] += IDLE / 2 + 1
        response = yield client.get("/list?f=INBOX")
        self.assertEqual(response.status, 303)

    # -- one user cannot reach another's mail ------------------------------------------------

    @inlineCallbacks
    def test_another_users_messages_cannot_be_read_changed_or_downloaded(self) -> None:
        raw = (
            b"From: x@example.test\r\nTo: alice@example.test\r\nSubject: Alice secret\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsecret text\r\n'
            b'--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="s.bin"\r\n\r\nSECRETBYTES\r\n--b--\r\n'
        )
        uid = yield self.deliver(ALICE, "", raw=raw)
        bob = self.client()
        yield bob.sign_in(BOB)
        token = csrf_of((yield bob.get("/list?f=INBOX")))
        for path in (
            f"/read?f=INBOX&uid={uid}",
            f"/frame?f=INBOX&uid={uid}",
            f"/part?f=INBOX&uid={uid}&n=2",
            f"/compose?mode=forward&f=INBOX&uid={uid}",
            f"/read?f=../alice&uid={uid}",
            f"/read?f=..%2F..%2Fexample.test%2Falice&uid={uid}",
            "/list?f=../alice",
        ):
            response = yield bob.get(path)
            self.assertEqual(response.status, 404, path)
            self.assertNotIn("secret", response.text.lower(), path)
        listing = yield bob.get("/list?f=INBOX")
        self.assertNotIn("Alice secret", listing.text)
        yield bob.post("/action", {"f": "INBOX", "uid": str(uid), "do": "delete", "csrf": token})
        yield bob.post_multipart("/compose", {"csrf": token, "to": BOB, "subject": "fw", "body": "", "forward_f": "INBOX", "forward_uid": str(uid), "action": "send"})
        [(info, message)] = yield self.stored(ALICE)
        self.assertEqual(message["Subject"], "Alice secret")
        for _, message in (yield self.stored(BOB)):
            self.assertNotIn(b"SECRETBYTES", message.as_bytes())

    # -- hostile structures (mailapp.imap.mime bounds) -----------------------------------------

    @inlineCallbacks
    def test_messages_of_10000_nested_or_50000_sibling_parts_are_read_with_200_quickly(self) -> None:
        nested = yield self.deliver(ALICE, "", raw=nested_multiparts(10_000))
        siblings = yield self.deliver(ALICE, "", raw=sibling_parts(50_000))
        client = self.client()
        yield client.sign_in(ALICE)
        for path in (
            f"/read?f=INBOX&uid={nested}",
            f"/read?f=INBOX&uid={siblings}",
            f"/frame?f=INBOX&uid={siblings}",
            f"/part?f=INBOX&uid={siblings}&n=2",
            f"/compose?mode=forward&f=INBOX&uid={siblings}",
        ):
            started = time.monotonic()
            response = yield client.get(path)
            # A RecursionError (500) for the nested one; 25 s of parsing for the siblings.
            self.assertEqual(response.status, 200, path)
            self.assertLess(time.monotonic() - started, 5.0, path)
        page = yield client.get(f"/read?f=INBOX&uid={nested}")
        self.assertIn("nested", page.text)
        self.assertIn("--b19", page.text)  # below the depth bound the rest is shown as the text it is

    @inlineCallbacks
    def test_body_search_finds_ordinary_messages_beside_a_hostile_one(self) -> None:
        yield self.deliver(ALICE, "ordinary one", body="some deepest words here")
        yield self.deliver(ALICE, "", raw=nested_multiparts(10_000))
        yield self.deliver(ALICE, "ordinary two", body="more deepest words")
        client = self.client()
        yield client.sign_in(ALICE)
        listing = yield client.get("/list?f=INBOX&field=body&q=deepest+words")
        self.assertEqual(listing.status, 200)
        for subject in ("ordinary one", "ordinary two", "nested"):
            self.assertIn(subject, listing.text)

    @inlineCallbacks
    def test_search_answers_from_the_full_text_index_and_reads_what_it_has_not_indexed(self) -> None:
        self.store.fulltext.delay = self.store.fulltext.quiet = 0
        yield self.deliver(ALICE, "", raw=b"From: x@example.test\r\nSubject: menu\r\nContent-Type: text/html\r\n\r\n<p class=fish>Fish &amp; Chips</p>\r\n")
        yield self.deliver(
            ALICE,
            "",
            raw=b"From: x@example.test\r\nSubject: notes\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nsee file\r\n"
            b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=l.txt\r\n\r\nthe ledger total\r\n--b--\r\n",
        )
        yield self.deliver(ALICE, "class notes", body="nothing here")
        yield self.store.fulltext.caughtUp()
        self.patch(self.store.fulltext, "changed", lambda mailbox_dir: None)
        yield self.deliver(ALICE, "late delivery", body="fish & chips again")
        client = self.client()
        yield client.sign_in(ALICE)
        listing = yield client.get("/list?f=INBOX&field=body&q=fish+%26+chips")
        self.assertIn("menu", listing.text)
        self.assertIn("late delivery", listing.text)  # not indexed yet: read
        listing = yield client.get("/list?f=INBOX&field=body&q=class")
        self.assertNotIn("menu", listing.text)  # HTML is searched as the reader sees it, not its tags
        listing = yield client.get("/list?f=INBOX&field=all&q=ledger")
        self.assertIn("notes", listing.text)  # a text attachment counts
        listing = yield client.get("/list?f=INBOX&field=subject&q=NOTES")
        self.assertIn("class notes", listing.text)
        self.assertNotIn("menu", listing.text)

    # -- header injection --------------------------------------------------------------------

    @inlineCallbacks
    def test_line_breaks_in_headers_are_refused_and_nothing_is_sent(self) -> None:
        client = self.client()
        yield client.sign_in(ALICE)
        token = csrf_of((yield client.get("/compose")))
        for fields in (
            {"to": f"{BOB}\r\nBcc: evil@example.test", "subject": "hi"},
            {"to": BOB, "subject": "hi\r\nBcc: evil@example.test"},
            {"to": BOB, "cc": "x@example.test\nX-Injected: 1", "subject": "hi"},
        ):
            response = yield client.post_multipart("/compose", {"csrf": token, "body": "b", "action": "send", **fields})
            self.assertEqual(response.status, 400, fields)
            self.assertIn("line breaks are not allowed", response.text)
        self.assertEqual((yield self.stored(BOB)), [])

    @inlineCallbacks
    def test_reply_headers_with_line_breaks_are_dropped_not_injected(self) -> None:
        client = self.client()
        yield client.sign_in(ALICE)
        token = csrf_of((yield client.get("/compose")))
        response = yield client.post_multipart(
            "/compose",
            {"csrf": token, "to": BOB, "subject": "clean", "body": "b", "action": "send", "in_reply_to": "<a@b>\r\nX-Injected: yes", "references": "<c@d>"},
        )
        self.assertEqual(response.status, 303)
        [(_, message)] = yield self.stored(BOB)
        self.assertIsNone(message["X-Injected"])
        self.assertIsNone(message["In-Reply-To"])
        self.assertEqual(message["References"], "<c@d>")

    @inlineCallbacks
    def test_attachment_names_and_types_are_made_safe_for_download(self) -> None:
        raw = (
            b"From: x@example.test\r\nTo: alice@example.test\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee\r\n'
            b"--b\r\nContent-Type: text/html\r\nContent-Disposition: attachment;\r\n filename*=UTF-8''..%2F..%2Fevil%22%0D%0AX-Evil%3A%201.html\r\n\r\n"
            b"<script>alert(1)</script>\r\n--b--\r\n"
        )
        uid = yield self.deliver(ALICE, "", raw=raw)
        client = self.client()
        yield client.sign_in(ALICE)
        response = yield client.get(f"/part?f=INBOX&uid={uid}&n=2")
        self.assertEqual(response.status, 200)
        disposition = response.header("content-disposition") or ""
        self.assertTrue(disposition.startswith('attachment; filename="'), disposition)
        self.assertNotIn("\r", disposition)
        self.assertNotIn("\n", disposition)
        self.assertNotIn("/", disposition.split("filename*=")[0])
        self.assertIsNone(response.header("x-evil"))
        self.assertEqual(response.header("content-type"), "text/html")
        self.assertEqual(response.header("x-content-type-options"), "nosniff")
        self.assertIn("sandbox", response.header("content-security-policy") or "")

    @inlineCallbacks
    def test_redirects_after_an_action_stay_on_this_site(self) -> None:
        uid = yield self.deliver(ALICE, "Redirect")
        client = self.client()
        yield client.sign_in(ALICE)
        token = csrf_of((yield client.get("/list?f=INBOX")))
        for back in ("//evil.test/x", "http://evil.test/", "/\\evil.test", "javascript:alert(1)"):
            response = yield client.post("/action", {"f": "INBOX", "uid": str(uid), "do": "flag", "csrf": token, "back": back})
            self.assertEqual(response.status, 303)
            self.assertTrue((response.header("location") or "").startswith("/list?"), back)

    # -- limits --------------------------------------------------------------------------------

    @inlineCallbacks
    def test_an_upload_over_the_size_limit_is_refused_with_413(self) -> None:
        client = self.client()
        yield client.sign_in(ALICE)
        token = csrf_of((yield client.get("/compose")))
        response = yield client.post_multipart(
            "/compose", {"csrf": token, "to": BOB, "subject": "big", "body": "", "action": "send"}, [("big.bin", "application/octet-stream", b"x" * 2_000_000)]
        )
        self.assertEqual(response.status, 413)
        self.assertEqual((yield self.stored(BOB)), [])

    @inlineCallbacks
    def test_remote_recipients_without_a_relay_queue_get_a_clear_error(self) -> None:
        client = self.client()
        yield client.sign_in(ALICE)
        token = csrf_of((yield client.get("/compose")))
        response = yield client.post_multipart("/compose", {"csrf": token, "to": f"{BOB}, erin@b.test", "subject": "s", "body": "", "action": "send"})
        self.assertEqual(response.status, 400)
        self.assertIn("erin@b.test: Remote delivery is not available yet; try again later (451 4.4.0)", response.text)
        self.assertIn("Nothing was sent.", response.text)
        self.assertEqual((yield self.stored(BOB)), [])

    @inlineCallbacks
    def test_a_recipient_over_quota_is_named_with_the_reason_and_nothing_is_sent(self) -> None:
        from mailapp.accounts import QuotaOverride
        from mailapp.quota import Quota, Quotas

        self.router.quotas = Quotas(self.accounts, self.store, Quota(0, 0))
        self.accounts.set_quota(BOB, QuotaOverride(bytes=1, messages=None))
        yield self.deliver(BOB, "fills it")
        client = self.client()
        yield client.sign_in(ALICE)
        token = csrf_of((yield client.get("/compose")))
        response = yield client.post_multipart("/compose", {"csrf": token, "to": BOB, "subject": "s", "body": "", "action": "send"})
        self.assertEqual(response.status, 400)
        self.assertIn(f"{BOB}: Mailbox full (552 5.2.2)", response.text)
        self.assertEqual(len((yield self.stored(BOB))), 1)

    @inlineCallbacks
    def test_a_sent_message_is_dated_by_the_webmails_clock(self) -> None:
        client = self.client()
        yield client.sign_in(ALICE)
        token = csrf_of((yield client.get("/compose")))
        response = yield client.post_multipart("/compose", {"csrf": token, "to": BOB, "subject": "dated", "body": "b", "action": "send"})
        self.assertEqual(response.status, 303)
        [(_, message)] = yield self.stored(BOB)
        date = email.utils.formatdate(1_000_000.0, localtime=False)
        self.assertEqual(message["Date"], date)
        self.assertTrue(str(message["Received"]).endswith(date), message["Received"])

    @inlineCallbacks
    def test_save_draft_then_send_it_removes_the_draft(self) -> None:
        client = self.client()
        yield client.sign_in(ALICE)
        token = csrf_of((yield client.get("/compose")))
        response = yield client.post_multipart("/compose", {"csrf": token, "to": BOB, "bcc": "", "subject": "Draft one", "body": "later", "action": "draft"}, [("n.txt", "text/plain", b"note")])
        self.assertEqual(response.header("location"), "/list?f=Drafts&notice=draft")
        [(info, draft)] = yield self.stored(ALICE, "Drafts")
        self.assertIn("\\Draft", info.flags)
        page = yield client.get(f"/compose?draft={info.uid}")
        self.assertIn('value="Draft one"', page.text)
        self.assertIn("n.txt", page.text)
        response = yield client.post_multipart(
            "/compose", {"csrf": token, "to": BOB, "subject": "Draft one", "body": "now", "action": "send", "draft_uid": str(info.uid), "forward_f": "Drafts", "forward_uid": str(info.uid)}
        )
        self.assertEqual(response.status, 303)
        self.assertEqual((yield self.stored(ALICE, "Drafts")), [])
        [(_, sent)] = yield self.stored(BOB)
        self.assertEqual([part.get_filename() for part in sent.iter_attachments()], ["n.txt"])

    # -- scale ---------------------------------------------------------------------------------

    @inlineCallbacks
    def test_first_page_of_a_10000_message_folder(self) -> None:
        """Measures the first (cold) and a second render; the numbers go to bench-results/."""
        mailbox = self.store.mailbox(ALICE)
        yield mailbox.createFolder("Big")
        big = yield mailbox.folder("Big")
        for start in range(0, 10_000, 1000):
            yield gatherResults(
                [
                    big.append(f"From: Sender {n} <s{n}@example.test>\r\nSubject: Message number {n}\r\nDate: Fri, 28 Nov 2025 10:00:00 +0000\r\n\r\nbody {n}\r\n".encode())
                    for n in range(start, start + 1000)
                ]
            )
        client = self.client()
        yield client.sign_in(ALICE)
        timings = []
        for _ in range(2):
            started = time.perf_counter()
            page = yield client.get("/list?f=Big")
            timings.append(time.perf_counter() - started)
            self.assertEqual(page.status, 200)
        self.assertIn("Message number 9999", page.text)
        self.assertIn("10000 messages", page.text)
        self.assertIn("Page 1 of 200", page.text)
        started = time.perf_counter()
        last = yield client.get("/list?f=Big&page=200")
        timings.append(time.perf_counter() - started)
        self.assertIn("Message number 0<", last.text)
        report = REPOSITORY / "bench-results" / "webmail-first-page.txt"
        report.parent.mkdir(exist_ok=True)
        report.write_text(
            f"10,000-message folder, page size {self.policy.page_size}: first page cold {timings[0] * 1000:.0f} ms, "
            f"again {timings[1] * 1000:.0f} ms, last page cold {timings[2] * 1000:.0f} ms\n"
        )
        self.assertLess(timings[0], 5.0)


    @inlineCallbacks
    def test_creating_a_folder_with_a_non_ascii_name_works(self) -> None:
        client = self.client()
        yield client.sign_in(ALICE)
        page = yield client.get("/folders")
        response = yield client.post("/folders/create", {"name": "Entwürfe/日本語", "csrf": csrf_of(page)})
        self.assertEqual(response.status, 303, response.text[:300])
        folders = {info.name: info for info in (yield self.store.mailbox(ALICE).listFolders())}
        self.assertIn("Entwürfe/日本語", folders)
        self.assertTrue(folders["Entwürfe/日本語"].subscribed, "the webmail subscribes what it creates")
        listing = yield client.get("/folders")
        self.assertIn("Entwürfe", listing.text)


    @inlineCallbacks
    def test_an_unexpected_error_is_a_500_page_with_every_security_header(self) -> None:
        client = self.client()
        yield client.sign_in(ALICE)

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        self.patch(self.webmail, "_nav", broken)
        response = yield client.get("/folders")
        self.assertEqual(response.status, 500)
        self.assertIn("Something went wrong", response.text)
        self.assertNotIn("a bug", response.text)
        for header in ("content-security-policy", "x-content-type-options", "x-frame-options", "cache-control", "referrer-policy"):
            self.assertIsNotNone(response.header(header), header)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class SessionAndThrottleTests(TestCase):
    def test_sessions_expire_when_idle_or_too_old(self) -> None:
        now = [0.0]
        sessions = Sessions(lambda: now[0], idle=10, absolute=25)
        session = sessions.create(ALICE, object())
        now[0] = 9
        self.assertIs(sessions.get(session.token), session)
        now[0] = 18
        self.assertIs(sessions.get(session.token), session)
        now[0] = 26
        self.assertIsNone(sessions.get(session.token))
        other = sessions.create(ALICE, object())
        now[0] = 37
        self.assertIsNone(sessions.get(other.token))
        self.assertIsNone(sessions.get(None))

    def test_address_fields_explain_what_is_wrong(self) -> None:
        self.assertEqual(parse_addresses("To", 'Bob <bob@example.test>, "Smith, C" <c@example.test>; d@example.test'), [("Bob", BOB), ("Smith, C", "c@example.test"), ("", "d@example.test")])
        for value, text in (("bob@", "To: "), ("no-at-sign", "no-at-sign"), ("a@b@c", "a@b@c"), ("x@example.test\r\nBcc: y", "line breaks")):
            with self.assertRaises(ComposeError) as caught:
                parse_addresses("To", value)
            self.assertIn(text, str(caught.exception))
