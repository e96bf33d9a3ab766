"""
The README's quick start, run as a newcomer would: the shipped development
config (``etc/mailapp.toml``) started with the command ``make run`` runs, a
user added with the README's own command, the README's own client snippets
(smtplib, imaplib, poplib) run as written, and the README's webmail URL
opened in Chromium.

The shipped config binds its fixed development ports on 127.0.0.1, so this
test needs them free: on a developer's machine with ``make run`` going it is
skipped with that reason; under CI it fails instead.

These lived where only a newcomer looked: a webmail port that browsers
refuse (``ERR_UNSAFE_PORT`` for 10080), a start-up hint naming a command a
fresh clone does not have on its PATH.

The README's claims are checked against the repository too: the status
paragraph, ``make run CONFIG=``, the port-change example.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailapp.config import load, parse
from tests.needs import unavailable
from tests.web_helpers import CHROMIUM_ARGS, chromium_path
from tests.paths import REPOSITORY

README = (REPOSITORY / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent

playwright_api = pytest.importorskip("playwright.sync_api")


def _shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)


def _block_with(text: str) -> str:
    [block] = [block for block in _shell_blocks() if text in block]
    return block


def _make_run_command() -> list[str]:
    """``make run``'s recipe from the Makefile, with its variables filled in."""
    makefile = (REPOSITORY / "Makefile").read_text(encoding="utf-8")
    [recipe] = re.findall(r"^run:.*\n\t(.*)$", makefile, flags=re.MULTILINE)
    recipe = recipe.replace("$(BIN)", str(BIN)).replace("$(CONFIG)", "etc/mailapp.toml")
    return recipe.split()


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory laid out like a fresh clone after ``make run``: etc/ and .venv, the server running."""
    root = tmp_path_factory.mktemp("clone")
    shutil.copytree(REPOSITORY / "etc", root / "etc")
    os.symlink(BIN.parent, root / ".venv")
    config = load(root / "etc" / "mailapp.toml", base_dir=root)
    ports = [int(re.search(r"tcp:(\d+)", listener.endpoint).group(1)) for listener in config.listeners]  # type: ignore[union-attr]
    busy = [port for port in ports if not _free(port)]
    if busy:
        unavailable(f"the shipped config's ports are in use ({', '.join(map(str, busy))}): is 'make run' going?")
    log = open(root / "make-run.log", "wb")
    process = subprocess.Popen(
        _make_run_command(),
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
    )
    try:
        deadline = time.monotonic() + 30
        # Listening, and the first-start hint written (it follows a count of the users, in a thread).
        while not all(not _free(port) for port in ports) or "no users yet" not in (root / "make-run.log").read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("make run's server did not start:\n" + (root / "make-run.log").read_text())
            time.sleep(0.2)
        yield root
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def _run_block(block: str, root: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
    )
    assert result.returncode == 0, f"README block failed:\n{block}\n{result.stdout}\n{result.stderr}"
    return result


def test_readme_quick_start_commands_urls_and_webmail_work_on_the_shipped_config(newcomer: Path) -> None:
    log = (newcomer / "make-run.log").read_text()
    [hint] = re.findall(r"no users yet: add one with: (.*)$", log, flags=re.MULTILINE)
    program = hint.split()[0]
    assert program == "mailapp" and shutil.which("mailapp") or os.access(newcomer / program, os.X_OK), hint

    add_user = _block_with("user add")
    password, account = re.search(r"printf '([^']*)\\n' \| .* user add (\S+)", add_user).groups()  # type: ignore[union-attr]
    _run_block(add_user, newcomer)
    sent = _run_block(_block_with("smtplib.SMTP"), newcomer)
    assert len(sent.stdout.split()) == 2, sent.stdout  # the README's `ls` lists the two messages it sent
    read = _run_block(_block_with("imaplib.IMAP4"), newcomer)
    assert "OK" in read.stdout and "(2," in read.stdout, read.stdout

    [url] = set(re.findall(r"<(http://127\.0\.0\.1:\d+/)>", README))
    assert f"`{url}`" in README, "the status line and the reading section name different webmail URLs"
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            response = page.goto(url)  # Chromium refuses blocked ports (10080) with net::ERR_UNSAFE_PORT
            assert response is not None and response.status == 200
            page.get_by_label("Email address").fill(account)
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url("**/list?f=INBOX")
            assert page.locator("tr", has_text="note").count() == 1
        finally:
            browser.close()


def _status_paragraph() -> str:
    return README.split("**Status.**", 1)[1].split("\n\n", 1)[0]


def test_the_status_paragraph_calls_nothing_built_in_progress() -> None:
    status = " ".join(_status_paragraph().split())
    assert "in progress" not in status
    for built in ("bans", "reload", "metrics"):
        assert built in status


def test_make_run_with_another_config_is_documented_as_the_makefile_spells_it() -> None:
    makefile = (REPOSITORY / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^CONFIG \?= etc/mailapp\.toml$", makefile, re.M)
    assert "--config $(CONFIG)" in makefile
    assert "make run CONFIG=path/to/my.toml" in README


def test_the_readme_port_change_example_is_a_valid_listener() -> None:
    endpoint = re.search(r'`endpoint = "(tcp:[^"]+)"` under `\[listeners\.smtp\]`', README)
    assert endpoint is not None
    text = (REPOSITORY / "etc" / "mailapp.toml").read_text(encoding="utf-8")
    changed = re.sub(r'(\[listeners\.smtp\][^\[]*?endpoint = )"[^"]+"', rf'\1"{endpoint.group(1)}"', text, count=1)
    assert changed != text
    config = parse(changed, REPOSITORY / "etc" / "mailapp.toml")
    [smtp] = [listener for listener in config.listeners if listener.name == "smtp"]
    assert smtp.endpoint == endpoint.group(1)
