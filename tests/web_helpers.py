"""
Helpers for the webmail tests: reading what the store holds (through the
store API in another process) and finding Debian's chromium.
"""

from __future__ import annotations

import email
import email.policy
import shutil
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any


from tests.needs import command
from tests.service_runner import REPOSITORY, run_with_store

#: Where the browser tests leave copies of their screenshots for people to look at (git-ignored).
SCREENSHOTS = REPOSITORY / "bench-results" / "screenshots"

#: Chromium flags for a headless run as root that talks to nothing but loopback.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

_READ_FOLDER = """
async def run(store, argument):
    mailbox = store.mailbox(argument["account"])
    folder = await mailbox.folder(argument["folder"])
    found = []
    for info in await folder.messages():
        handle = await folder.openMessage(info.uid)
        with handle:
            data = handle.read()
        found.append({"uid": info.uid, "flags": sorted(info.flags), "raw": data.decode("latin-1")})
    return found
"""


def chromium_path() -> str:
    """Debian's chromium, which ``make install`` installs (see L{tests.needs})."""
    return command("chromium", "chromium-browser")


def folder_messages(state_dir: Path, account: str, folder: str = "INBOX") -> list[dict[str, Any]]:
    """Every message of C{folder}: uid, flags and the parsed message (``message``)."""
    found = run_with_store(state_dir, _READ_FOLDER, {"account": account, "folder": folder})
    for entry in found:
        entry["message"] = email.message_from_bytes(entry["raw"].encode("latin-1"), policy=email.policy.default)
    return found


def wait_for_message(state_dir: Path, account: str, subject: str, folder: str = "INBOX", timeout: float = 30.0) -> dict[str, Any]:
    """The first message of C{folder} whose Subject is C{subject}, polling until C{timeout}."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in folder_messages(state_dir, account, folder):
            message: EmailMessage = entry["message"]
            if message["Subject"] == subject:
                return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"no message {subject!r} in {account}'s {folder} after {timeout} s")
        time.sleep(0.3)


def attachment_bytes(message: EmailMessage) -> dict[str, bytes]:
    """File name -> decoded bytes of each attachment."""
    return {part.get_filename(): part.get_payload(decode=True) for part in message.iter_attachments()}  # type: ignore[misc]


def keep_screenshot(path: Path) -> None:
    """Copy a screenshot where the lead can look at it."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / path.name)
