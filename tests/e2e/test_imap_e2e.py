"""
End-to-end IMAP: the real service in a subprocess (:mod:`tests.service_runner`),
mail sent with :mod:`smtplib`, read with :mod:`imaplib`, :mod:`imapclient`
and raw sockets (for input no library sends), over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import time
from collections.abc import Iterator
from email.message import EmailMessage

import imapclient
import pytest

from mailapp.store import open_message_file
from tests.imap_helpers import PASSWORD, Raw, Users, deliver, login, message, start_server
from tests.service_runner import TIMEOUT, ServiceProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = start_server(tmp_path_factory.mktemp("imap-e2e"))
    yield running
    running.terminate()


_users = Users()


@pytest.fixture
def user(server: ServiceProcess) -> str:
    """An account of its own, so each test starts from an empty mailbox."""
    return _users.take()


def client(server: ServiceProcess, user: str, ssl: bool = False) -> imapclient.IMAPClient:
    if ssl:
        from tests.service_runner import unverified_tls

        c = imapclient.IMAPClient("127.0.0.1", port=server.port("imaps"), ssl=True, ssl_context=unverified_tls(), timeout=TIMEOUT)
    else:
        c = imapclient.IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False, timeout=TIMEOUT)
    c.login(user, PASSWORD)
    return c


def stored_file(server: ServiceProcess, user: str, uid: int) -> bytes:
    directory = server.maildir(user)
    for sub in ("new", "cur"):
        for path in (directory / sub).iterdir():
            if f",U={uid}" in path.name and re.search(rf",U={uid}(?::|$)", path.name):
                with open_message_file(path) as handle:
                    return handle.read()
    raise AssertionError(f"no file for UID {uid}")


def multipart_with_attachment() -> bytes:
    mail = EmailMessage()
    mail["From"] = "Sender <sender@remote.test>"
    mail["To"] = "someone@example.test"
    mail["Subject"] = "report"
    mail.set_content("See the attached report.\n")
    mail.add_attachment(b"%PDF-1.4 fake" * 50, maintype="application", subtype="pdf", filename="Report.pdf")
    return mail.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# -- greeting, capabilities, login ------------------------------------------------------------------------


def test_strict_listener_advertises_starttls_and_logindisabled_and_refuses_login_in_clear(server, user):
    raw = Raw(server.port("imapstrict"))
    assert raw.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    [caps, ok] = raw.command(b"a", b"CAPABILITY")
    assert b" STARTTLS" in caps and b" LOGINDISABLED" in caps and b"AUTH=PLAIN" not in caps
    assert ok.startswith(b"a OK")
    [no] = raw.command(b"b", b'LOGIN "' + user.encode() + b'" "' + PASSWORD.encode() + b'"')
    assert no.startswith(b"b NO [PRIVACYREQUIRED]")
    raw.close()


def test_starttls_then_login_works_on_the_strict_listener(server, user):
    c = imaplib.IMAP4("127.0.0.1", server.port("imapstrict"), timeout=TIMEOUT)
    from tests.service_runner import unverified_tls

    c.starttls(unverified_tls())
    assert "AUTH=PLAIN" in c.capabilities and "LOGINDISABLED" not in c.capabilities
    assert c.login(user, PASSWORD)[0] == "OK"
    c.logout()


def test_implicit_tls_listener_logs_in(server, user):
    c = client(server, user, ssl=True)
    assert c.select_folder("INBOX")[b"EXISTS"] == 0
    c.logout()


def test_authenticate_plain_with_and_without_initial_response(server, user):
    import base64

    token = base64.b64encode(b"\0" + user.encode() + b"\0" + PASSWORD.encode())
    raw = Raw(server.port("imap"))
    [ok] = raw.command(b"a", b"AUTHENTICATE PLAIN " + token)
    assert ok.startswith(b"a OK [CAPABILITY")
    raw.close()
    c = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=TIMEOUT)
    typ, _ = c.authenticate("PLAIN", lambda _: b"\0" + user.encode() + b"\0" + PASSWORD.encode())
    assert typ == "OK"
    c.logout()


def test_wrong_password_gets_authenticationfailed(server, user):
    raw = Raw(server.port("imap"))
    [no] = raw.command(b"a", b"LOGIN " + user.encode() + b" wrong")
    assert no.startswith(b"a NO [AUTHENTICATIONFAILED]")
    raw.close()


def test_id_namespace_enable_and_logout(server, user):
    raw = Raw(server.port("imap"))
    raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
    assert raw.command(b"b", b'ID ("name" "test")')[0].startswith(b'* ID ("name" "mailapp"')
    assert raw.command(b"c", b"NAMESPACE")[0] == b'* NAMESPACE (("" "/")) NIL NIL'
    assert raw.command(b"d", b"ENABLE CONDSTORE")[0] == b"* ENABLED CONDSTORE"
    assert raw.command(b"e", b"LOGOUT")[0].startswith(b"* BYE")
    assert raw.closed()


# -- folders ----------------------------------------------------------------------------------------------


def test_special_folders_exist_with_special_use_attributes(server, user):
    c = client(server, user)
    folders = {name: flags for flags, _, name in c.list_folders()}
    assert set(folders) >= {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert ("\\" + name).encode() in folders[name]
    special = {name for _, _, name in c.list_folders(directory="", pattern="*")}
    assert "INBOX" in special
    raw_special = c._imap._simple_command("LIST", "(SPECIAL-USE)", '""', '"*"')
    assert raw_special[0] == "OK"
    c.logout()


def test_create_rename_delete_are_visible_from_a_second_client(server, user):
    first, second = client(server, user), client(server, user)
    first.create_folder("Projects/2024/Q1")
    assert {"Projects", "Projects/2024", "Projects/2024/Q1"} <= {n for _, _, n in second.list_folders()}
    first.rename_folder("Projects/2024", "Projects/Archive2024")
    names = {n for _, _, n in second.list_folders()}
    assert "Projects/Archive2024/Q1" in names and "Projects/2024" not in names
    first.delete_folder("Projects/Archive2024/Q1")
    assert "Projects/Archive2024/Q1" not in {n for _, _, n in second.list_folders()}
    with pytest.raises(imapclient.exceptions.IMAPClientError):
        first.create_folder("Projects")
    first.logout(), second.logout()


def test_list_patterns_and_children_attributes(server, user):
    c = client(server, user)
    c.create_folder("a/b/c")
    c.create_folder("a/d")
    top = {n: f for f, _, n in c.list_folders("", "%")}
    assert "a" in top and "a/b" not in top and b"\\HasChildren" in top["a"]
    under = {n for _, _, n in c.list_folders("a/", "%")}
    assert under == {"a/b", "a/d"}
    every = {n for _, _, n in c.list_folders("", "a/*")}
    assert every == {"a/b", "a/b/c", "a/d"}
    leaf = {n: f for f, _, n in c.list_folders("", "a/d")}
    assert b"\\HasNoChildren" in leaf["a/d"]
    assert {n for _, _, n in c.list_folders("", "inbox")} == {"INBOX"}
    c.logout()


def test_non_ascii_folder_names_round_trip_in_modified_utf7(server, user):
    c = client(server, user)
    c.create_folder("Entwürfe/日本語")
    names = {n for _, _, n in c.list_folders()}
    assert "Entwürfe/日本語" in names
    raw = Raw(server.port("imap"))
    raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
    lines = raw.command(b"b", b'LIST "" "Entw*"')
    assert b'* LIST (\\HasChildren) "/" "Entw&APw-rfe"' in lines
    assert b'* LIST (\\HasNoChildren) "/" "Entw&APw-rfe/&ZeVnLIqe-"' in lines
    raw.close()
    c.logout()


def test_subscribe_unsubscribe_and_lsub(server, user):
    c = client(server, user)
    c.create_folder("News")
    c.unsubscribe_folder("News")
    assert "News" not in {n for _, _, n in c.list_sub_folders()}
    c.subscribe_folder("News")
    assert "News" in {n for _, _, n in c.list_sub_folders()}
    with pytest.raises(imapclient.exceptions.IMAPClientError):
        c.subscribe_folder("Missing")
    c.logout()


def test_rename_inbox_moves_its_messages_and_leaves_it_empty(server, user):
    deliver(server, user, message("one"))
    deliver(server, user, message("two"))
    c = client(server, user)
    c.rename_folder("INBOX", "Old Inbox")
    assert c.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"] == 0
    assert c.folder_status("Old Inbox", ["MESSAGES"])[b"MESSAGES"] == 2
    c.logout()


def test_delete_inbox_is_refused(server, user):
    c = client(server, user)
    with pytest.raises(imapclient.exceptions.IMAPClientError):
        c.delete_folder("INBOX")
    c.logout()


def test_status_reports_every_item(server, user):
    deliver(server, user, message("one"))
    deliver(server, user, message("two"))
    c = client(server, user)
    status = c.folder_status("INBOX", ["MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN"])
    assert (status[b"MESSAGES"], status[b"RECENT"], status[b"UIDNEXT"], status[b"UNSEEN"]) == (2, 2, 3, 2)
    assert status[b"UIDVALIDITY"] > 0
    c.logout()


# -- select and fetch --------------------------------------------------------------------------------------


def test_select_and_examine_report_the_mailbox(server, user):
    deliver(server, user, message("one"))
    raw = Raw(server.port("imap"))
    raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
    lines = raw.command(b"b", b"SELECT INBOX")
    text = b"\n".join(lines)
    for expected in (
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)]",
        b"* 1 EXISTS",
        b"* 1 RECENT",
        b"* OK [UNSEEN 1]",
        b"* OK [UIDVALIDITY ",
        b"* OK [UIDNEXT 2]",
        b"b OK [READ-WRITE]",
    ):
        assert expected in text
    lines = raw.command(b"c", b"EXAMINE INBOX")
    assert lines[-1].startswith(b"c OK [READ-ONLY]")
    assert raw.command(b"d", b"STORE 1 +FLAGS (\\Seen)")[-1].startswith(b"d NO [READ-ONLY]")
    raw.close()


def test_message_sent_by_smtp_is_fetched_byte_identical(server, user):
    original = message("identical", body="line one\r\nline two \xe9\r\n")
    deliver(server, user, original)
    c = client(server, user)
    c.select_folder("INBOX")
    [uid] = c.search()
    fetched = c.fetch([uid], ["BODY[]", "RFC822.SIZE"])[uid]
    assert fetched[b"BODY[]"] == stored_file(server, user, uid)
    assert fetched[b"BODY[]"].endswith(original)
    assert fetched[b"RFC822.SIZE"] == len(fetched[b"BODY[]"])
    c.logout()


def test_fetch_bodystructure_of_a_multipart_message_with_an_attachment(server, user):
    deliver(server, user, multipart_with_attachment())
    c = client(server, user)
    c.select_folder("INBOX")
    data = c.fetch([1], ["BODYSTRUCTURE", "BODY", "ENVELOPE"])[1]
    structure = data[b"BODYSTRUCTURE"]
    assert structure.is_multipart
    text, attachment = structure[0]
    assert (text[0], text[1]) == (b"text", b"plain") or (text[0], text[1]) == (b"TEXT", b"PLAIN")
    assert attachment[0].upper() == b"APPLICATION" and attachment[1].upper() == b"PDF"
    assert attachment[5].upper() == b"BASE64"
    assert attachment[8][0].upper() == b"ATTACHMENT"
    assert (b"filename", b"Report.pdf") in list(zip(*[iter([x.lower() if i % 2 == 0 else x for i, x in enumerate(attachment[8][1])])] * 2))
    assert structure[1].upper() == b"MIXED"
    assert data[b"ENVELOPE"].subject == b"report"
    assert data[b"ENVELOPE"].from_[0].mailbox == b"sender"
    # The attachment's bytes are part 2, exactly.
    part = c.fetch([1], ["BODY.PEEK[2]", "BODY.PEEK[2.MIME]", "BODY.PEEK[1]"])[1]
    import base64

    assert base64.b64decode(part[b"BODY[2]"]) == b"%PDF-1.4 fake" * 50
    assert part[b"BODY[2.MIME]"].startswith(b"Content-Type: application/pdf")
    assert part[b"BODY[1]"] == b"See the attached report.\r\n"
    c.logout()


def test_fetch_sections_partials_and_rfc822_forms(server, user):
    deliver(server, user, message("sections", body="0123456789\r\n"))
    c = client(server, user)
    c.select_folder("INBOX")
    whole = c.fetch([1], ["BODY.PEEK[]"])[1][b"BODY[]"]
    header, _, text = whole.partition(b"\r\n\r\n")
    data = c.fetch(
        [1],
        ["BODY.PEEK[HEADER]", "BODY.PEEK[TEXT]", "BODY.PEEK[]<2.5>", "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]",
         "BODY.PEEK[HEADER.FIELDS.NOT (RECEIVED)]", "RFC822.HEADER", "BODY.PEEK[1]"],
    )[1]
    assert data[b"BODY[HEADER]"] == header + b"\r\n\r\n"
    assert data[b"BODY[TEXT]"] == text == b"0123456789\r\n"
    assert data[b"BODY[]<2>"] == whole[2:7]
    assert data[b'BODY[HEADER.FIELDS (SUBJECT FROM)]'] == b"From: Sender <sender@remote.test>\r\nSubject: sections\r\n\r\n"
    assert b"Received:" not in data[b"BODY[HEADER.FIELDS.NOT (RECEIVED)]"]
    assert data[b"RFC822.HEADER"] == header + b"\r\n\r\n"
    assert data[b"BODY[1]"] == text
    assert b"\\Seen" not in c.get_flags([1])[1]
    rfc = c.fetch([1], ["RFC822", "RFC822.TEXT"])[1]
    assert rfc[b"RFC822"] == whole and rfc[b"RFC822.TEXT"] == text
    assert b"\\Seen" in c.get_flags([1])[1]
    c.logout()


def test_fetch_body_sets_seen_but_peek_does_not(server, user):
    deliver(server, user, message("seen"))
    c = client(server, user)
    c.select_folder("INBOX")
    c.fetch([1], ["BODY.PEEK[]"])
    assert b"\\Seen" not in c.get_flags([1])[1]
    result = c.fetch([1], ["BODY[TEXT]"])[1]
    assert b"\\Seen" in result[b"FLAGS"]
    c.logout()


def test_fetch_fast_all_full_macros_and_internaldate(server, user):
    deliver(server, user, message("macro"))
    raw = Raw(server.port("imap"))
    raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
    raw.command(b"b", b"SELECT INBOX")
    fast = raw.command(b"c", b"FETCH 1 FAST")[0]
    assert re.match(rb'^\* 1 FETCH \(FLAGS \(\\Recent\) INTERNALDATE "[ 0-9]{2}-[A-Z][a-z]{2}-[0-9]{4} [0-9:]{8} \+0000" RFC822.SIZE [0-9]+\)$', fast)
    full = raw.command(b"d", b"FETCH 1 FULL")[0]
    assert b" ENVELOPE (" in full and b" BODY (" in full
    raw.close()


def test_store_forms_and_silent(server, user):
    deliver(server, user, message("store"))
    raw = Raw(server.port("imap"))
    raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
    raw.command(b"b", b"SELECT INBOX")
    # A keyword new to the folder is announced first (FLAGS, PERMANENTFLAGS), then the FETCH that shows it.
    flags, permanent, fetch, ok = raw.command(b"c", b"STORE 1 +FLAGS (\\Flagged $Important)")
    assert flags.startswith(b"* FLAGS (") and b" $Important)" in flags and permanent.startswith(b"* OK [PERMANENTFLAGS (")
    assert fetch == b"* 1 FETCH (FLAGS ($Important \\Flagged \\Recent))"
    assert raw.command(b"d", b"STORE 1 -FLAGS (\\Flagged)")[0] == b"* 1 FETCH (FLAGS ($Important \\Recent))"
    assert raw.command(b"e", b"STORE 1 FLAGS.SILENT (\\Seen)") == [b"e OK STORE completed"]
    assert raw.command(b"f", b"UID STORE 1 +FLAGS.SILENT \\Answered") == [b"f OK STORE completed"]
    assert raw.command(b"g", b"FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Answered \\Recent \\Seen))"
    assert raw.command(b"h", b"STORE 1 +FLAGS (\\Bogus)")[-1].startswith(b"h BAD")
    raw.close()


def test_uids_and_uidvalidity_persist_across_a_restart(tmp_path, server):
    own = start_server(tmp_path / "restart")
    try:
        user = "user1@example.test"
        for n in range(3):
            deliver(own, user, message(f"m{n}"))
        c = client(own, user)
        c.select_folder("INBOX")
        c.delete_messages([1])
        c.expunge()
        before = c.folder_status("INBOX", ["UIDVALIDITY", "UIDNEXT"])
        uids = c.search()
        c.logout()
        own.terminate()
        own.start()
        c = client(own, user)
        c.select_folder("INBOX")
        assert c.folder_status("INBOX", ["UIDVALIDITY", "UIDNEXT"]) == before
        assert c.search() == uids == [2, 3]
        c.logout()
    finally:
        own.terminate()


# -- append, copy, move, expunge -------------------------------------------------------------------------------


def test_append_with_flags_and_date_returns_appenduid(server, user):
    raw = Raw(server.port("imap"))
    raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
    body = b"Subject: appended\r\n\r\nhi\r\n"
    raw.send(b'b APPEND Drafts (\\Draft \\Seen) "05-Mar-2021 10:11:12 +0100" {%d}\r\n' % len(body))
    assert raw.line().startswith(b"+ ")
    raw.send(body + b"\r\n")
    ok = raw.until(b"b")[-1]
    match = re.match(rb"^b OK \[APPENDUID ([0-9]+) 1\]", ok)
    assert match
    raw.command(b"c", b"SELECT Drafts")
    fetched = raw.command(b"d", b"FETCH 1 (FLAGS INTERNALDATE BODY.PEEK[])")[0]
    assert b"FLAGS (\\Draft \\Recent \\Seen)" in fetched
    assert b'INTERNALDATE " 5-Mar-2021 09:11:12 +0000"' in fetched
    assert fetched.endswith(body + b")")
    # LITERAL+: no continuation request.
    raw.send(b"e APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
    assert raw.until(b"e")[-1].startswith(b"e OK [APPENDUID")
    raw.command(b"f", b"LOGOUT")
    raw.close()


def test_append_to_a_missing_mailbox_says_trycreate(server, user):
    c = login(server, user)
    typ, data = c.append("Nowhere", None, None, b"Subject: x\r\n\r\ny\r\n")
    assert typ == "NO" and b"[TRYCREATE]" in data[0]
    c.logout()


def test_copy_returns_copyuid_and_keeps_flags(server, user):
    deliver(server, user, message("one"))
    deliver(server, user, message("two"))
    c = login(server, user)
    c.select("INBOX")
    c.store("2", "+FLAGS", "(\\Flagged)")
    typ, data = c.copy("1:2", "Archive")
    assert typ == "OK"
    validity = c.status("Archive", "(UIDVALIDITY)")[1][0].split()[-1].rstrip(b")")
    assert data[0].startswith(b"[COPYUID " + validity + b" 1:2 1:2]")
    c.select("Archive")
    typ, data = c.fetch("1:2", "(FLAGS)")
    assert b"\\Flagged" in data[1] and b"\\Flagged" not in data[0]
    c.logout()


def test_move_returns_copyuid_and_expunges_in_the_source(server, user):
    for n in range(3):
        deliver(server, user, message(f"m{n}"))
    raw = Raw(server.port("imap"))
    raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
    raw.command(b"b", b"SELECT INBOX")
    lines = raw.command(b"c", b"MOVE 2:3 Trash")
    assert re.match(rb"^\* OK \[COPYUID [0-9]+ 2:3 1:2\]", lines[0])
    assert lines[1:3] == [b"* 3 EXPUNGE", b"* 2 EXPUNGE"]
    assert lines[-1].startswith(b"c OK")
    lines = raw.command(b"d", b"UID MOVE 1 Junk")
    assert re.match(rb"^\* OK \[COPYUID [0-9]+ 1 1\]", lines[0]) and lines[1] == b"* 1 EXPUNGE"
    assert raw.command(b"e", b"STATUS Trash (MESSAGES)")[0] == b'* STATUS "Trash" (MESSAGES 2)'
    raw.close()


def test_expunge_uid_expunge_and_close(server, user):
    for n in range(4):
        deliver(server, user, message(f"m{n}"))
    raw = Raw(server.port("imap"))
    raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
    raw.command(b"b", b"SELECT INBOX")
    raw.command(b"c", b"STORE 1:4 +FLAGS.SILENT (\\Deleted)")
    assert raw.command(b"d", b"UID EXPUNGE 2:3") == [b"* 3 EXPUNGE", b"* 2 EXPUNGE", b"d OK EXPUNGE completed"]
    assert raw.command(b"e", b"CLOSE") == [b"e OK CLOSE completed"]
    raw.command(b"f", b"SELECT INBOX")
    assert raw.command(b"g", b"SEARCH ALL") == [b"* SEARCH", b"g OK SEARCH completed"]
    deliver(server, user, message("later"))
    raw.command(b"h", b"NOOP")
    raw.command(b"i", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert raw.command(b"j", b"EXPUNGE") == [b"* 1 EXPUNGE", b"j OK EXPUNGE completed"]
    assert raw.command(b"k", b"UNSELECT") == [b"k OK UNSELECT completed"]
    assert raw.command(b"l", b"CHECK")[-1].startswith(b"l BAD")
    raw.close()


# -- search -----------------------------------------------------------------------------------------------------


def test_search_keys(server, user):
    deliver(server, user, message("Quarterly report", body="numbers inside\r\n", sender="Alice <alice@remote.test>"))
    deliver(server, user, message("Lunch", body="pizza? caf\u00e9\r\n", sender="Bob <bob@remote.test>"))
    deliver(server, user, message("=?utf-8?q?Gr=C3=BC=C3=9Fe?=", body="hallo\r\n"))
    c = client(server, user)
    c.select_folder("INBOX")
    c.add_flags([1], [b"\\Flagged", b"$Work"])
    c.add_flags([2], [b"\\Seen", b"\\Answered"])
    assert c.search(["ALL"]) == [1, 2, 3]
    assert c.search(["FLAGGED"]) == [1]
    assert c.search(["UNFLAGGED"]) == [2, 3]
    assert c.search(["SEEN"]) == [2] and c.search(["UNSEEN"]) == [1, 3]
    assert c.search(["ANSWERED"]) == [2] and c.search(["UNANSWERED"]) == [1, 3]
    assert c.search(["KEYWORD", "$Work"]) == [1] and c.search(["UNKEYWORD", "$Work"]) == [2, 3]
    assert c.search(["DELETED"]) == [] and c.search(["UNDELETED"]) == [1, 2, 3]
    assert c.search(["DRAFT"]) == [] and c.search(["UNDRAFT"]) == [1, 2, 3]
    assert c.search(["RECENT"]) == [1, 2, 3] and c.search(["OLD"]) == []
    assert c.search(["NEW"]) == [1, 3]
    assert c.search(["FROM", "alice"]) == [1]
    assert c.search(["TO", "someone@example"]) == [1, 2, 3]
    assert c.search(["CC", "x"]) == [] and c.search(["BCC", "x"]) == []
    assert c.search(["SUBJECT", "quarterly"]) == [1]
    assert c.search(["SUBJECT", "Grüße"], charset="UTF-8") == [3]
    assert c.search(["BODY", "café"], charset="UTF-8") == [2]
    assert c.search(["TEXT", "pizza"]) == [2] and c.search(["TEXT", "Lunch"]) == [2]
    assert c.search(["HEADER", "Message-ID", "Lunch@remote"]) == [2]
    assert c.search(["LARGER", "10"]) == [1, 2, 3] and c.search(["SMALLER", "10"]) == []
    assert c.search(["NOT", "FLAGGED"]) == [2, 3]
    assert c.search(["OR", "FLAGGED", "SEEN"]) == [1, 2]
    assert c.search(["UID", "2:*"]) == [2, 3] and c.search(["2:3"]) == [2, 3]
    assert c.search(["SENTON", "7-Feb-1994"]) == [1, 2, 3]
    assert c.search(["SENTBEFORE", "1-Jan-1994"]) == [] and c.search(["SENTSINCE", "1-Jan-1994"]) == [1, 2, 3]
    assert c.search(["SINCE", "1-Jan-2000"]) == [1, 2, 3] and c.search(["BEFORE", "1-Jan-2000"]) == []
    today = time.strftime("%d-%b-%Y", time.gmtime())
    assert c.search(["ON", today]) == [1, 2, 3]
    assert c._imap.uid("SEARCH", "UID", "2:3")[1] == [b"2 3"]
    typ, data = c._imap._simple_command("SEARCH", "CHARSET", "KOI8-R", "ALL")
    assert typ == "NO" and b"BADCHARSET" in data[0]
    c.logout()


# -- push and concurrency ---------------------------------------------------------------------------------------------


def test_idle_sees_mail_delivered_by_smtp_within_a_second(server, user):
    c = client(server, user)
    c.select_folder("INBOX")
    c.idle()
    started = time.monotonic()
    deliver(server, user, message("pushed"))
    responses = c.idle_check(timeout=5)
    elapsed = time.monotonic() - started
    c.idle_done()
    assert (1, b"EXISTS") in responses
    assert elapsed < 1.0
    c.logout()


def test_two_sessions_see_each_others_flag_changes_and_expunges(server, user):
    for n in range(3):
        deliver(server, user, message(f"m{n}"))
    one, two = Raw(server.port("imap")), Raw(server.port("imap"))
    for raw in (one, two):
        raw.command(b"a", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
        raw.command(b"b", b"SELECT INBOX")
    one.command(b"c", b"STORE 2 +FLAGS.SILENT (\\Flagged)")
    lines = two.command(b"c", b"NOOP")
    assert b"* 2 FETCH (FLAGS (\\Flagged))" in lines or any(l.startswith(b"* 2 FETCH (FLAGS (\\Flagged") for l in lines)
    one.command(b"d", b"STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    one.command(b"e", b"EXPUNGE")
    # A FETCH must not renumber: the expunges wait for a command that allows them.
    fetch = two.command(b"d", b"FETCH 1:3 (FLAGS)")
    assert not any(l.endswith(b"EXPUNGE") for l in fetch)
    lines = two.command(b"e", b"NOOP")
    assert [l for l in lines if l.endswith(b"EXPUNGE")] == [b"* 3 EXPUNGE", b"* 1 EXPUNGE"]
    assert two.command(b"f", b"FETCH 1 (UID)")[0] == b"* 1 FETCH (UID 2)"
    # And during IDLE.
    two.send(b"g IDLE\r\n")
    assert two.line().startswith(b"+ ")
    one.command(b"f", b"STORE 1 -FLAGS.SILENT (\\Flagged)")
    assert two.line() == b"* 1 FETCH (FLAGS ())"
    one.command(b"g", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    one.command(b"h", b"EXPUNGE")
    pushed = [two.line()]
    while not pushed[-1].endswith(b"EXPUNGE"):
        pushed.append(two.line())
    # The flag change may or may not be seen before the expunge; the expunge always is.
    assert pushed[-1] == b"* 1 EXPUNGE" and all(l.startswith(b"* 1 FETCH (FLAGS (") for l in pushed[:-1])
    two.send(b"DONE\r\n")
    assert two.until(b"g")[-1] == b"g OK IDLE terminated"
    one.close(), two.close()


def test_imapclient_two_clients_agree_on_the_mailbox(server, user):
    for n in range(5):
        deliver(server, user, message(f"m{n}"))
    a, b = client(server, user), client(server, user)
    a.select_folder("INBOX"), b.select_folder("INBOX")
    a.add_flags([2, 4], [b"\\Seen"])
    a.delete_messages([3])
    a.expunge()
    b.noop()
    assert a.search() == b.search() == [1, 2, 4, 5]
    def without_recent(flags):
        return {uid: set(f) - {b"\\Recent"} for uid, f in flags.items()}

    assert without_recent(a.get_flags([2, 4])) == without_recent(b.get_flags([2, 4])) == {2: {b"\\Seen"}, 4: {b"\\Seen"}}
    a.logout(), b.logout()


# -- cross-protocol -----------------------------------------------------------------------------------------------------


def test_smtp_imap_and_pop3_agree_on_a_mailbox(server, user):
    for n in range(3):
        deliver(server, user, message(f"cross{n}", body=f"body {n}\r\n"))
    c = client(server, user)
    c.select_folder("INBOX")
    validity = c.folder_status("INBOX", ["UIDVALIDITY"])[b"UIDVALIDITY"]
    c.add_flags([1], [b"\\Seen"])
    c.delete_messages([2])
    c.expunge()
    bodies = {uid: data[b"BODY[]"] for uid, data in c.fetch([1, 3], ["BODY.PEEK[]"]).items()}
    c.logout()
    pop = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=TIMEOUT)
    pop.user(user)
    pop.pass_(PASSWORD)
    count, _ = pop.stat()
    assert count == 2
    uidl = [line.split()[1] for line in pop.uidl()[1]]
    assert uidl == [f"{validity}.1".encode(), f"{validity}.3".encode()]
    for number, uid in ((1, 1), (2, 3)):
        lines = pop.retr(number)[1]
        assert b"\r\n".join(lines) + b"\r\n" == bodies[uid]
    pop.quit()
