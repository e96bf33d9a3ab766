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
from mailapp.interfaces import IMessageSigner
from mailapp import dsn as bounce
from mailapp.relay.notify import notify_sender
from mailapp.relay.queue import Envelope, Recipient
from mailapp.testing import SynchronousThreadPool
from mailapp.relay.client import strip_return_path
from tests.relay_helpers import B_HOP, OK, Harness, raise_if_failed

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


# -- signed by the relay as it leaves (mailapp.relay.signing) -------------------------


@pytest.fixture
def harness(tmp_path: Path, store: KeyStore) -> Harness:
    built = Harness(tmp_path / "relay")
    built.router.signer = DkimSigner(store, built.reactor, SynchronousThreadPool())
    built.network.servers[B_HOP] = lambda recipient: OK
    return built


def queued_messages(harness: Harness) -> list[bytes]:
    return [path.read_bytes() for path in sorted((harness.root / "queue" / "messages").iterdir())]


def queued_envelopes(harness: Harness) -> list[Envelope]:
    return [Envelope.from_bytes(path.read_bytes()) for path in sorted(harness.queue.layout.envelopes.iterdir())]


def sent(harness: Harness) -> list[bytes]:
    """What the relay sent, once it has had its turn (without our Return-Path, which the real client strips)."""
    harness.start()
    harness.clock.advance(0)
    return [strip_return_path(data) for data in harness.network.delivered_to("bob@b.test")]


def test_the_signer_provides_its_interface(store: KeyStore) -> None:
    assert verifyObject(IMessageSigner, DkimSigner(store, None, SynchronousThreadPool()))


def test_submitted_mail_is_queued_as_it_came_and_marked_to_be_signed(harness: Harness) -> None:
    harness.submit("alice@a.test", ["bob@b.test"], MESSAGE)
    [queued] = queued_messages(harness)
    # The 250 waited for no signature: the queue's copy is the message under our Return-Path.
    assert queued == b"Return-Path: <alice@a.test>\r\n" + MESSAGE
    [envelope] = queued_envelopes(harness)
    assert envelope.sign and envelope.size == len(queued)


def test_what_the_relay_sends_starts_with_both_signatures_that_verify(harness: Harness, keys: SigningKeys) -> None:
    harness.submit("alice@a.test", ["bob@b.test"], MESSAGE)
    [message] = sent(harness)
    # Our Return-Path was stripped (RFC 5321 4.4); the signatures are on top of what went out.
    assert message.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;") and b"Return-Path:" not in message
    assert message.endswith(MESSAGE) and message.count(b"DKIM-Signature:") == 2
    assert dkim.DKIM(message).verify(idx=0, dnsfunc=dns_for(keys))
    assert dkim.DKIM(message).verify(idx=1, dnsfunc=dns_for(keys))


def test_a_rotation_signs_mail_already_queued_with_the_new_selector(harness: Harness, store: KeyStore) -> None:
    harness.submit("alice@a.test", ["bob@b.test"], MESSAGE)
    store.rotate("a.test", "two")
    [message] = sent(harness)
    assert dkim.DKIM(message).verify(idx=0, dnsfunc=dns_for(store.signing_keys("a.test")))  # type: ignore[arg-type]
    assert b"s=two-rsa;" in message.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ")


def test_8bit_mail_of_ours_is_converted_then_signed_instead_of_bounced(harness: Harness, keys: SigningKeys) -> None:
    # The fake next hop offers no 8BITMIME: the relay converts to quoted-printable
    # (mailapp.relay.downgrade) and signs what it sends, so the signature holds.
    eight_bit = MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + "Grüße\r\n".encode()
    harness.submit("alice@a.test", ["bob@b.test"], eight_bit)
    [message] = sent(harness)
    assert message.isascii() and b"Content-Transfer-Encoding: quoted-printable" in message
    assert dkim.DKIM(message).verify(idx=0, dnsfunc=dns_for(keys))
    assert dkim.DKIM(message).verify(idx=1, dnsfunc=dns_for(keys))


def test_mail_from_a_domain_without_keys_is_sent_as_it_came(harness: Harness) -> None:
    message = MESSAGE.replace(b"alice@a.test", b"alice@elsewhere.test")
    harness.submit("alice@a.test", ["bob@b.test"], message)
    assert sent(harness) == [message]


def test_with_signing_off_nothing_is_signed(harness: Harness) -> None:
    assert harness.router.signer is not None
    harness.router.signer.enabled = False  # type: ignore[attr-defined]
    harness.submit("alice@a.test", ["bob@b.test"], MESSAGE)
    assert sent(harness) == [MESSAGE]


def test_only_mail_that_may_relay_is_signed(harness: Harness) -> None:
    assert harness.router.start("alice@a.test", relay_allowed=True).sign
    assert not harness.router.start("someone@b.test", relay_allowed=False).sign


def test_an_envelope_queued_before_signing_at_delivery_is_sent_as_it_was_queued() -> None:
    # Its copy was signed at ingest: an envelope without "sign" is never signed again.
    envelope = Envelope(id="ABCDEF123456", sender="alice@a.test", created=1.0, size=10, recipients=[Recipient("bob@b.test")])
    raw = envelope.to_bytes().replace(b'"sign": false,', b"")
    assert b'"sign"' not in raw and Envelope.from_bytes(raw).sign is False


class _BrokenSigner:
    def __init__(self) -> None:
        self.broken = True

    def sign(self, message: object, queue_id: str = "") -> defer.Deferred[bytes]:
        if self.broken:
            return defer.fail(OSError("key file unreadable"))
        return defer.succeed(b"DKIM-Signature: v=1; b=fixed\r\n")


def test_a_failed_signature_defers_the_message_and_never_sends_it_unsigned(harness: Harness) -> None:
    signer = _BrokenSigner()
    harness.router.signer = signer  # type: ignore[assignment]
    harness.submit("alice@a.test", ["bob@b.test"], MESSAGE)
    logged: list[dict[str, object]] = []
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(logged.append)
    try:
        assert sent(harness) == []
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert [e for e in logged if e.get("log_event") == logevents.DKIM_SIGN_FAILED]
    [envelope] = queued_envelopes(harness)
    [recipient] = envelope.recipients
    assert recipient.state == "pending" and recipient.last_reply.startswith("451 4.3.0")
    # Once signing works again, the retry goes out signed.
    signer.broken = False
    harness.clock.advance(envelope.next_attempt - harness.clock.seconds() + 1)
    [message] = harness.network.delivered_to("bob@b.test")
    assert strip_return_path(message) == b"DKIM-Signature: v=1; b=fixed\r\n" + MESSAGE


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
    assert [e.sign for e in queued_envelopes(harness)] == [True]
    harness.start()
    harness.clock.advance(0)
    [dsn] = [strip_return_path(data) for data in harness.network.delivered_to("zed@b.test")]
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

    harness.submit("alice@a.test", ["bob@b.test"], message)
    globalLogPublisher.addObserver(logged.append)
    try:
        assert sent(harness) == [message]
    finally:
        globalLogPublisher.removeObserver(logged.append)
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


@pytest.mark.parametrize("line_ends", [b"\r\n", b"\n"])
def test_a_large_spooled_message_is_signed_from_the_queues_copy(harness: Harness, keys: SigningKeys, line_ends: bytes) -> None:
    # Past the writer's in-memory threshold: the signer reads the queue's file
    # (in wire form even when the spool has LF line ends), not bytes in memory.
    large = MESSAGE + b"y" * 76 * 4000 + b"\r\n"
    transaction = harness.router.start("alice@a.test", relay_allowed=True)
    raise_if_failed(transaction.addRecipient("bob@b.test"), "addRecipient")
    writer = transaction.open()
    writer.write(large)
    raise_if_failed(transaction.commit(), "commit")
    [message] = sent(harness)
    assert message.endswith(large) and dkim.DKIM(message).verify(idx=1, dnsfunc=dns_for(keys))
