"""
Sender authentication between servers on the rig's small internet, with
the shipped defaults: B's MX asks the rig's name server (through
resolv.conf) for SPF, DKIM keys and DMARC policies, as it would on the
internet.

A (mailapp for a.test) publishes SPF for its own addresses, a DKIM key
and ``p=reject``. Alice's message, signed in the test with dkimpy (the
signing of mailapp's own is another part of the work), goes through A's
submission and relay to B's MX: B's stored copy carries B's
Authentication-Results with spf, dkim and dmarc ``pass``. Host C forges
``From: someone@a.test`` without a signature, straight to B's MX: B
answers 550 at the end of DATA and stores nothing.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.rig.clients import imap_messages, submit
from tests.rig.dns import mail_domain
from tests.rig.network import Internet
from tests.rig.servers import MailServer
from tests.e2e.test_rig_relay import wait_for

ALICE, ALICE_PASSWORD = "alice@a.test", "alice-secret"
BOB, BOB_PASSWORD = "bob@b.test", "bob-secret"


def _key() -> tuple[bytes, list[str]]:
    """A 2048-bit RSA key (PEM) and its DKIM record, as TXT strings of at most 255 bytes."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    record = "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()
    return pem, [record[i : i + 255] for i in range(0, len(record), 255)]


class World:
    def __init__(self, internet: Internet) -> None:
        self.internet = internet
        a = self.a = internet.add_host("a", "mail.a.test")
        b = self.b = internet.add_host("b", "mx.b.test")
        self.c = internet.add_host("c", "c.rig.test")
        self.client = internet.add_host("client", "client.rig.test")
        self.private, record = _key()
        internet.dns.serve(
            {
                "a.test": [
                    *mail_domain("a.test", a),
                    ("a.test", "TXT", f"v=spf1 ip4:{a.ipv4} ip6:{a.ipv6} -all"),
                    ("sel._domainkey.a.test", "TXT", *record),
                    ("_dmarc.a.test", "TXT", "v=DMARC1; p=reject"),
                ],
                "b.test": mail_domain("b.test", b),
            }
        )
        self.server_a = MailServer(a, "a.test")
        self.server_a.add_user(ALICE, ALICE_PASSWORD)
        self.server_b = MailServer(b, "b.test")
        self.server_b.add_user(BOB, BOB_PASSWORD)
        self.server_a.start()
        self.server_b.start()

    def bobs_messages(self) -> list[bytes]:
        return imap_messages(self.client, self.b.ipv4, BOB, BOB_PASSWORD)


@pytest.fixture(scope="module")
def world(module_internet: Internet) -> Iterator[World]:
    yield World(module_internet)


def _signed(private: bytes) -> str:
    text = (
        f"From: Alice <{ALICE}>\r\nTo: {BOB}\r\nSubject: signed at a.test\r\n"
        "Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nMessage-ID: <rig-1@a.test>\r\n\r\nHello from a.test.\r\n"
    ).encode()
    signature = dkim.sign(text, b"sel", b"a.test", private, include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return (signature + text).decode()


def test_a_signed_message_from_a_reaches_b_with_spf_dkim_and_dmarc_pass(world: World) -> None:
    assert submit(world.client, world.a.ipv4, ALICE, ALICE_PASSWORD, [BOB], _signed(world.private)) == {}
    wait_for(lambda: len(world.bobs_messages()) == 1, "the message in Bob's INBOX on B", 45, world.internet.log_report)
    [stored] = world.bobs_messages()
    header = stored.split(b"\r\nReceived: ", 1)[0].decode()
    assert "Authentication-Results: mx.b.test;" in header, stored[:600]
    assert "spf=pass smtp.mailfrom=a.test" in header, header
    assert "dkim=pass header.d=a.test header.s=sel header.a=rsa-sha256" in header, header
    assert "dmarc=pass header.from=a.test policy.dmarc=reject" in header, header
    assert stored.count(b"Authentication-Results:") == 1


_FORGE = r"""
import json, smtplib, sys
a = json.loads(sys.argv[1])
client = smtplib.SMTP(a["address"], 25, local_hostname="c.rig.test", timeout=30)
client.ehlo()
client.mail("billing@c.rig.test")
client.rcpt(a["recipient"])
code, reply = client.data(a["message"].encode())
client.quit()
print(json.dumps([code, reply.decode()]))
"""


def test_a_forged_from_a_without_a_signature_is_refused_with_550_at_the_end_of_data(world: World) -> None:
    before = len(world.bobs_messages())
    message = f"From: someone@a.test\r\nTo: {BOB}\r\nSubject: urgent invoice\r\n\r\nPay now.\r\n"
    started = time.monotonic()
    code, reply = world.c.python(_FORGE, {"address": world.b.ipv4, "recipient": BOB, "message": message})
    assert (code, reply) == (550, "5.7.1 Message rejected: it fails the DMARC policy of its From: domain")
    assert time.monotonic() - started < 10
    assert len(world.bobs_messages()) == before
    assert "authentication.checked" in world.server_b.log() or "action=reject" in world.server_b.log()

