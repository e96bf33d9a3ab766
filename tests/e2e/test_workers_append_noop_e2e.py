"""
``[server] workers = 2``: an APPEND answered OK on one worker is in the
EXISTS of a NOOP sent right after on the other (imaptest's ``append``
group expects it; RFC 3501 6.1.2 has NOOP report mailbox changes).

The sessions are imaplib's, each put on a chosen worker (the harness of
L{tests.e2e.test_workers_e2e}, which reads ``/proc`` to know).
"""

from __future__ import annotations

import imaplib
import time


from tests.e2e.test_workers_e2e import Workers, imap_on, pytestmark  # noqa: F401  (the Linux-only mark; the workers fixture is in conftest.py)


def test_a_noop_on_one_worker_right_after_an_append_on_the_other_reports_its_exists(workers: Workers) -> None:
    first, second = workers.pids()
    appender, looker = imap_on(workers, first), imap_on(workers, second)
    try:
        assert appender.select("INBOX")[0] == "OK" and looker.select("INBOX")[0] == "OK"
        missed = []
        for count in range(1, 41):  # bounded: 40 APPEND + NOOP pairs
            typ, data = appender.append("INBOX", r"(\Seen \Flagged)", None, b"Subject: %d\r\n\r\nbody\r\n" % count)
            assert typ == "OK", data
            looker.noop()
            exists = looker.response("EXISTS")[1]
            if not exists or exists[-1] is None or int(exists[-1]) != count:
                missed.append(count)
                looker.noop()  # catch up before the next round
                looker.response("EXISTS")
        assert missed == [], missed
    finally:
        appender.logout()
        looker.logout()


def _status_uidvalidity(client: imaplib.IMAP4, name: str) -> bytes:
    typ, data = client.status(name, "(UIDVALIDITY)")
    assert typ == "OK", data
    return bytes(data[0])


def test_a_folder_made_again_by_the_other_worker_shows_only_its_own_mail_on_select_and_noop(workers: Workers) -> None:
    # imaptest's append group with workers = 2: a folder deleted and made again by one worker within
    # the second the other made it could get its UIDVALIDITY (each process counted its own); the
    # other's kept listing of the old folder then came back at SELECT, and a NOOP answered the new
    # message 1 with FETCH FLAGS instead of EXISTS. Each round starts a second afresh, so that
    # neither worker's old count runs ahead of the clock (the default folders pushed one's ahead).
    first, second = workers.pids()
    maker, looker = imap_on(workers, first), imap_on(workers, second)
    try:
        # The index, made at the first use, gives the default folders UIDVALIDITYs seconds ahead: wait them out.
        assert maker.create("Warm")[0] == "OK" and looker.status("Warm", "(MESSAGES)")[0] == "OK"
        time.sleep(8)
        for round_ in range(3):  # bounded: 3 rounds, each within one second
            time.sleep(1 - time.time() % 1)
            assert maker.create("Box")[0] == "OK"
            for n in range(2):
                assert maker.append("Box", None, None, b"Subject: old %d\r\n\r\nold\r\n" % n)[0] == "OK"
            typ, data = looker.select("Box")
            assert (typ, int(data[0])) == ("OK", 2), (typ, data)
            assert looker.close()[0] == "OK"
            old = _status_uidvalidity(maker, "Box")
            assert maker.delete("Box")[0] == "OK" and looker.create("Box")[0] == "OK"
            assert _status_uidvalidity(looker, "Box") != old, round_
            typ, data = looker.select("Box")
            assert (typ, int(data[0])) == ("OK", 0), (round_, typ, data)
            looker.response("EXISTS")  # imaplib keeps SELECT's untagged responses: only the NOOP's below
            looker.response("FETCH")
            assert maker.append("Box", r"(\Seen \Flagged)", None, b"Subject: new\r\n\r\nnew\r\n")[0] == "OK"
            looker.noop()
            assert looker.response("FETCH")[1] == [None], round_
            assert looker.response("EXISTS")[1] == [b"1"], round_
            assert looker.close()[0] == "OK" and looker.delete("Box")[0] == "OK"
    finally:
        maker.logout()
        looker.logout()
