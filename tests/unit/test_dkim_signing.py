"""
DKIM signing (L{mailapp.dkim}): the signatures made with our keys verify,
oversign what they promise, and are dkimpy's own (C{dkim.DKIM.sign}'s) byte
for byte, for both algorithms and messages of every shape; the Router signs the remote copies of mail from
one of ours (submission, DSNs) before the queue's copy is durable, and
refuses (451) rather than send unsigned when signing fails.
"""

from __future__ import annotations

from pathlib import Path

import dkim
import pytest
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from mailapp import logevents
from mailapp.dkim import DkimSigner, KeyStore
from mailapp.dkim.keys import ED25519, RSA, SigningKeys
from mailapp.dkim.signing import dkimpy_sign_one, from_domain, sign_message, sign_one
from mailapp.errors import MailError
from mailapp.interfaces import IMessageSigner
from mailapp import dsn as bounce
from mailapp.relay.notify import notify_sender
from mailapp.relay.queue import Envelope, Recipient
from mailapp.testing import SynchronousThreadPool
from mailapp.relay.client import strip_return_path
from tests.relay_helpers import Harness

MESSAGE = (
    b"From: Alice <alice@a.test>\r\n"
    b"To: bob@b.test\r\n"
    b"Subject: hello\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <1@a.test>\r\n"
    b"\r\n" + b"x" * 76 + b"\r\n" * 3
)


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    keys = KeyStore(tmp_path / "state")
    keys.generate("a.test", "one")
    return keys


@pytest.fixture
def keys(store: KeyStore) -> SigningKeys:
    found = store.signing_keys("a.test")
    assert found is not None
    return found


def dns_for(keys: SigningKeys) -> object:
    records = {f"{key.record_name}.".encode(): key.record_text.encode() for key in keys.keys}
    return lambda name, timeout=5: records.get(name)


def test_both_signatures_verify_with_dkimpy(keys: SigningKeys) -> None:
    signed = sign_message(MESSAGE, keys) + MESSAGE
    verifier = dkim.DKIM(signed)
    assert verifier.verify(idx=0, dnsfunc=dns_for(keys))
    assert verifier.signature_fields[b"a"] == b"rsa-sha256"
    assert verifier.verify(idx=1, dnsfunc=dns_for(keys))
    assert verifier.signature_fields[b"a"] == b"ed25519-sha256"
    assert verifier.signature_fields[b"c"] == b"relaxed/relaxed"
    assert b"t" in verifier.signature_fields


#: Messages whose canonical forms differ from their raw ones in every way
#: relaxed/relaxed allows for: folded and repeated fields, runs of white
#: space, upper-case names, fields not signed, trailing white space and
#: empty lines, an empty body, no body at all, a long subject that folds.
SHAPES = {
    "plain": MESSAGE,
    "folded, repeated, spaced": (
        b"Received: from x by y; Tue, 01 Dec 2026 10:00:00 +0000\r\n"
        b"FROM:   Alice \t <alice@a.test>  \r\n"
        b"To: bob@b.test,\r\n\tcarol@c.test\r\n"
        b"Cc: dave@d.test\r\n"
        b"Reply-To: <alice@a.test>\r\n"
        b"X-Mailer: something not signed\r\n"
        b"Subject: " + b"a long subject " * 12 + b"\r\n"
        b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
        b"Message-ID: <2@a.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain;\r\n charset=utf-8\r\n"
        b"Received: from z by y; Tue, 01 Dec 2026 10:00:01 +0000\r\n"
        b"\r\n"
        b"line with trailing space   \r\n\tindented\t\ttabs \r\n\r\n"
        b"  \r\nlast\r\n\r\n\r\n \r\n"
    ),
    "empty body": b"From: alice@a.test\r\nSubject: empty\r\n\r\n",
    "no body": b"From: alice@a.test\r\nSubject: none\r\n",
    "no final CRLF": b"From: alice@a.test\r\n\r\nno line end",
    "4 KiB": b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: bench\r\n\r\n" + (b"y" * 76 + b"\r\n") * 52,
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("algorithm", [RSA, ED25519])
def test_each_signature_is_dkimpys_own_byte_for_byte(keys: SigningKeys, monkeypatch: pytest.MonkeyPatch, algorithm: str, shape: str) -> None:
    monkeypatch.setattr(dkim.time, "time", lambda: 1_796_126_620.7)
    [key] = [key for key in keys.keys if key.algorithm == algorithm]
    message = SHAPES[shape]
    assert sign_one(message, key) == dkimpy_sign_one(message, key)
    assert sign_one(message, key, now=1_796_126_620) == dkimpy_sign_one(message, key)


def test_a_message_signed_with_both_keys_at_once_is_signed_as_dkimpy_signs_each(keys: SigningKeys) -> None:
    now = 1_796_126_620.0
    message = SHAPES["folded, repeated, spaced"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dkim.time, "time", lambda: now)
        expected = b"".join(dkimpy_sign_one(message, key) for key in keys.keys)
    assert sign_message(message, keys, now=now) == expected


def test_a_header_line_without_a_colon_is_refused_as_dkimpy_refuses_it(keys: SigningKeys) -> None:
    broken = b"From: alice@a.test\r\nno colon here\r\n\r\nbody\r\n"
    with pytest.raises(dkim.MessageFormatError):
        dkimpy_sign_one(broken, keys.keys[0])
    with pytest.raises(dkim.MessageFormatError):
        sign_message(broken, keys)


def test_from_to_subject_date_and_message_id_are_oversigned(keys: SigningKeys) -> None:
    signed = sign_message(MESSAGE, keys) + MESSAGE
    verifier = dkim.DKIM(signed)
    verifier.verify(idx=0, dnsfunc=dns_for(keys))
    names = b"".join(verifier.signature_fields[b"h"].split()).split(b":")
    for name in (b"from", b"to", b"subject", b"date", b"message-id"):
        assert names.count(name) == 2
    # A second From: (shown by many clients instead of the signed one) breaks both signatures.
    forged = signed.replace(b"From: Alice", b"From: boss@a.test\r\nFrom: Alice", 1)
    assert not dkim.DKIM(forged).verify(idx=0, dnsfunc=dns_for(keys))
    assert not dkim.DKIM(forged).verify(idx=1, dnsfunc=dns_for(keys))


@pytest.mark.parametrize(
    ("head", "domain"),
    [
        (b"From: Alice <alice@A.Test>\r\n", "a.test"),
        (b"from:\r\n \"Alice, A.\" <alice@a.test>\r\n", "a.test"),
        (b"From: a@a.test, b@b.test\r\n", None),
        (b"To: a@a.test\r\n", None),
        (b"From: undisclosed\r\n", None),
    ],
)
def test_the_from_domain_is_the_one_domain_of_the_from_field(head: bytes, domain: str | None) -> None:
    assert from_domain(head + b"Subject: x\r\n\r\nbody\r\n") == domain


def test_a_subdomain_is_signed_with_its_parents_keys(store: KeyStore) -> None:
    found = store.signing_keys_for("mail.a.test")
    assert found is not None and found.domain == "a.test"
    assert store.signing_keys_for("b.test") is None


def test_a_rotation_reaches_a_reader_without_a_restart(store: KeyStore, tmp_path: Path) -> None:
    reader = KeyStore(tmp_path / "state")
    assert reader.signing_keys("a.test").selector == "one"  # type: ignore[union-attr]
    store.rotate("a.test", "two")
    assert reader.signing_keys("a.test").selector == "two"  # type: ignore[union-attr]
    assert [key.algorithm for key in reader.signing_keys("a.test").keys] == [RSA, ED25519]  # type: ignore[union-attr]


# -- the Router's hook ---------------------------------------------------------------


@pytest.fixture
def harness(tmp_path: Path, store: KeyStore) -> Harness:
    built = Harness(tmp_path / "relay")
    built.router.signer = DkimSigner(store, built.reactor, SynchronousThreadPool())
    return built


def queued_messages(harness: Harness) -> list[bytes]:
    return [path.read_bytes() for path in sorted((harness.root / "queue" / "messages").iterdir())]


def test_the_signer_provides_its_interface(store: KeyStore) -> None:
    assert verifyObject(IMessageSigner, DkimSigner(store, None, SynchronousThreadPool()))


def test_submitted_mail_is_queued_with_both_signatures_on_top(harness: Harness, keys: SigningKeys) -> None:
    harness.submit("alice@a.test", ["bob@b.test"], MESSAGE)
    [queued] = queued_messages(harness)
    # Our Return-Path stays first, where the relay client strips it (RFC 5321 4.4), and
    # the signatures come right below it: what is sent starts with them.
    trace = b"Return-Path: <alice@a.test>\r\n"
    assert queued.startswith(trace + b"DKIM-Signature: v=1; a=rsa-sha256;") and queued.endswith(MESSAGE)
    sent = strip_return_path(queued)
    assert sent.startswith(b"DKIM-Signature:") and b"Return-Path:" not in sent
    assert sent.count(b"DKIM-Signature:") == 2
    assert dkim.DKIM(sent).verify(idx=0, dnsfunc=dns_for(keys))
    assert dkim.DKIM(sent).verify(idx=1, dnsfunc=dns_for(keys))
    [entry] = harness.queue.layout.envelopes.iterdir()
    assert Envelope.from_bytes(entry.read_bytes()).size == len(queued)


def test_mail_from_a_domain_without_keys_is_queued_as_it_came(harness: Harness) -> None:
    message = MESSAGE.replace(b"alice@a.test", b"alice@elsewhere.test")
    harness.submit("alice@a.test", ["bob@b.test"], message)
    assert queued_messages(harness) == [b"Return-Path: <alice@a.test>\r\n" + message]


def test_with_signing_off_nothing_is_signed(harness: Harness) -> None:
    assert harness.router.signer is not None
    harness.router.signer.enabled = False  # type: ignore[attr-defined]
    harness.submit("alice@a.test", ["bob@b.test"], MESSAGE)
    assert queued_messages(harness) == [b"Return-Path: <alice@a.test>\r\n" + MESSAGE]


def test_only_mail_that_may_relay_is_signed(harness: Harness) -> None:
    assert harness.router.start("alice@a.test", relay_allowed=True).sign
    assert not harness.router.start("someone@b.test", relay_allowed=False).sign


class _BrokenSigner:
    def sign(self, message: object, queue_id: str = "") -> defer.Deferred[bytes]:
        return defer.fail(OSError("key file unreadable"))


def test_a_failed_signature_refuses_the_message_and_queues_nothing(harness: Harness) -> None:
    harness.router.signer = _BrokenSigner()  # type: ignore[assignment]
    logged: list[dict[str, object]] = []
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(logged.append)
    try:
        with pytest.raises(MailError) as refused:
            harness.submit("alice@a.test", ["bob@b.test"], MESSAGE)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert refused.value.code == 451
    assert queued_messages(harness) == []
    assert [e for e in logged if e.get("log_event") == logevents.DKIM_SIGN_FAILED]


def test_a_dsn_to_a_remote_sender_is_signed_for_the_servers_domain(harness: Harness, keys: SigningKeys) -> None:
    envelope = Envelope(
        id="ABCDEF123456", sender="zed@b.test", created=harness.clock.seconds(), size=10,
        recipients=[Recipient("nobody@c.test", last_reply="550 5.1.1 no such user")],
    )
    done = notify_sender(
        harness.router, harness.queue, envelope, envelope.recipients, bounce.FAILED,
        hostname="mail.a.test", clock=harness.clock, max_lifetime=3600,
    )
    assert done.called and not isinstance(done.result, Failure) and done.result is True
    [dsn] = queued_messages(harness)
    assert b"From: Mail Delivery System <MAILER-DAEMON@mail.a.test>" in dsn
    verifier = dkim.DKIM(dsn)
    assert verifier.verify(idx=0, dnsfunc=dns_for(keys)) and verifier.signature_fields[b"d"] == b"a.test"


def test_a_reload_turns_signing_off_and_on(store: KeyStore) -> None:
    from mailapp.config import parse

    signer = DkimSigner(store, None, SynchronousThreadPool())
    base = '[server]\nhostname = "mail.a.test"\n'
    signer.reconfigure(parse(base + "[dkim]\nsign = false\n", Path("etc/test.toml")))
    assert signer.enabled is False
    signer.reconfigure(parse(base, Path("etc/test.toml")))
    assert signer.enabled is True


def test_a_header_block_dkimpy_cannot_parse_is_sent_unsigned_not_refused(harness: Harness) -> None:
    message = MESSAGE.replace(b"Subject: hello\r\n", b"Subject: hello\r\na line without a colon\r\n")
    logged: list[dict[str, object]] = []
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(logged.append)
    try:
        harness.submit("alice@a.test", ["bob@b.test"], message)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert queued_messages(harness) == [b"Return-Path: <alice@a.test>\r\n" + message]
    [event] = [e for e in logged if e.get("log_event") == logevents.DKIM_UNSIGNED]
    assert "Unexpected characters" in str(event["reason"])


def test_a_selector_made_again_under_an_old_name_signs_with_its_new_key(store: KeyStore, tmp_path: Path) -> None:
    reader = KeyStore(tmp_path / "state")
    store.rotate("a.test", "two")
    old = reader.signing_keys("a.test")
    store.rotate("a.test", "one")
    store.remove("a.test", "two")
    store.generate("a.test", "two")
    store.rotate("a.test", "two")
    new = reader.signing_keys("a.test")
    assert old is not None and new is not None and new.selector == old.selector == "two"
    assert [k.public_key for k in new.keys] != [k.public_key for k in old.keys]


class _SpooledMessage:
    """A finished spool file as the Maildir store's writer leaves a large message: on disk, CRLF or LF."""

    def __init__(self, path: Path, wire: bytes, stored: bytes) -> None:
        path.write_bytes(stored)
        self.path, self.size, self.pending = path, len(wire), None
        self.stored_size = len(stored)


@pytest.mark.parametrize("line_ends", [b"\r\n", b"\n"])
def test_the_queue_puts_the_signatures_on_top_of_a_spooled_message(tmp_path: Path, line_ends: bytes) -> None:
    from twisted.internet.task import Clock

    from mailapp.relay.queue import Queue
    from mailapp.testing import SynchronousReactor

    queue = Queue(tmp_path / "queue", SynchronousReactor(Clock()), use_syncfs=False)
    wire = MESSAGE * 2000  # past the writer's in-memory threshold
    message = _SpooledMessage(tmp_path / "spooled", wire, wire.replace(b"\r\n", line_ends))
    header = b"DKIM-Signature: v=1; a=rsa-sha256; b=x\r\n"
    done = queue.prepare(message, "alice@a.test", ["bob@b.test"], "ABCDEF123456", header)
    assert done.called and not isinstance(done.result, Failure), done.result
    assert queue.message_path("ABCDEF123456").read_bytes() == header + wire
    assert done.result.envelope.size == len(header) + len(wire)
    assert (tmp_path / "spooled").read_bytes() == wire.replace(b"\r\n", line_ends)  # the spool file is untouched: a copy, not a link


@pytest.mark.parametrize("line_ends", [b"\r\n", b"\n"])
def test_the_queue_puts_the_signatures_below_the_return_path_the_relay_strips(tmp_path: Path, line_ends: bytes) -> None:
    from twisted.internet.task import Clock

    from mailapp.relay.queue import Queue
    from mailapp.testing import SynchronousReactor

    queue = Queue(tmp_path / "queue", SynchronousReactor(Clock()), use_syncfs=False)
    trace = b"Return-Path: <alice@a.test>\r\n"
    wire = trace + MESSAGE * 2000
    message = _SpooledMessage(tmp_path / "spooled", wire, wire.replace(b"\r\n", line_ends))
    header = b"DKIM-Signature: v=1; a=rsa-sha256; b=x\r\n"
    done = queue.prepare(message, "alice@a.test", ["bob@b.test"], "ABCDEF123456", header)
    assert done.called and not isinstance(done.result, Failure), done.result
    queued = queue.message_path("ABCDEF123456").read_bytes()
    assert queued == trace + header + MESSAGE * 2000
    assert strip_return_path(queued) == header + MESSAGE * 2000
