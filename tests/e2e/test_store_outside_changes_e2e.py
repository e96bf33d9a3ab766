"""
Changes other tools make to a Maildir, seen through IMAP with the real
service: a file copied into ``new/`` is announced (``* N EXISTS``), also to
a session in IDLE, and a file deleted behind the server is expunged
(``* N EXPUNGE``) instead of staying a ghost that FETCH cannot read.
"""

from __future__ import annotations

import os
import shutil
import smtplib
from pathlib import Path

from tests.imap_helpers import PASSWORD, Raw
from tests.service_runner import TIMEOUT, ServiceProcess, listener

USER = "alice@example.test"
LISTENERS = listener("smtp", "smtp") + listener("imap", "imap", allow_plaintext_auth=True)


def login(server: ServiceProcess) -> Raw:
    raw = Raw(server.port("imap"))
    assert raw.command(b"l", b"LOGIN %s %s" % (USER.encode(), PASSWORD.encode()))[-1].startswith(b"l OK")
    return raw


def test_files_added_and_deleted_by_other_tools_are_announced_to_selected_and_idle_sessions(tmp_path: Path) -> None:
    server = ServiceProcess(tmp_path, LISTENERS)
    server.add_users({USER: PASSWORD})
    server.start()
    try:
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as smtp:
            for number in (1, 2):
                smtp.sendmail("someone@remote.test", [USER], b"Subject: m%d\r\n\r\nbody %d\r\n" % (number, number))
        maildir = server.maildir(USER)
        idler, other = login(server), login(server)
        assert b"* 2 EXISTS" in idler.command(b"s", b"SELECT INBOX")
        assert b"* 2 EXISTS" in other.command(b"s", b"SELECT INBOX")
        idler.send(b"i IDLE\r\n")
        assert idler.line().startswith(b"+ ")

        # Another MDA delivers (tmp/, then a rename into new/); the other session's NOOP looks.
        dropped = maildir / "tmp" / "1733000000.M1P2Q3.procmail"
        dropped.write_bytes(b"Subject: from procmail\n\ndropped in\n")
        os.rename(dropped, maildir / "new" / dropped.name)
        lines = other.command(b"n", b"NOOP")
        assert b"* 3 EXISTS" in lines, lines
        assert idler.line() == b"* 3 EXISTS"
        assert idler.line().endswith(b" RECENT")
        fetched = other.command(b"f", b"UID FETCH 3 BODY.PEEK[]")
        assert b"Subject: from procmail\r\n\r\ndropped in\r\n" in fetched[0], fetched

        # A file removed behind the server: expunged, not a ghost.
        [first] = [name for name in os.listdir(maildir / "new") if ",U=1" in name]
        (maildir / "new" / first).unlink()
        fetched = other.command(b"f", b"FETCH 1 BODY.PEEK[]")
        assert fetched == [b"f OK [EXPUNGEISSUED] Some messages were already expunged"], fetched
        lines = other.command(b"n", b"NOOP")
        assert b"* 1 EXPUNGE" in lines, lines
        assert idler.line() == b"* 1 EXPUNGE"
        idler.send(b"DONE\r\n")
        assert idler.until(b"i")[-1].startswith(b"i OK")
        search = other.command(b"u", b"UID SEARCH ALL")
        assert b"* SEARCH 2 3" in search, search

        # A cp into new/ seen at SELECT and STATUS too, by a session that was not there.
        shutil.copy(maildir / "new" / [n for n in os.listdir(maildir / "new") if ",U=2" in n][0], maildir / "new" / "1733000009.M5P5Q5.cp")
        late = login(server)
        status = late.command(b"t", b"STATUS INBOX (MESSAGES UIDNEXT)")
        assert b"* STATUS \"INBOX\" (MESSAGES 3 UIDNEXT 5)" in status, status
        for raw in (idler, other, late):
            raw.close()
    finally:
        server.terminate()
