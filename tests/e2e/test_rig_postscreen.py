"""
The MX's checks before DATA on the rig's small internet, with the real
service and real clients (smtplib, a raw socket): B's MX asks the rig's
name server (through resolv.conf) about a blocklist zone, ``bl.rig.test``,
that lists host C's address.

  - C, on a listed address, is refused ``554 5.7.1`` before DATA;
  - D, a real client, is greylisted (a short delay): ``451 4.7.1``, then its
    retry after the delay is accepted and the message stored;
  - E talks before the (delayed) greeting: ``554 5.5.1``, and the connection closes;
  - D's message linking a domain that a domain zone, ``dbl.rig.test``, lists
    is refused ``554 5.7.1`` at the end of DATA.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_rig_relay import wait_for
from tests.rig.clients import imap_messages
from tests.rig.dns import mail_domain
from tests.rig.network import Host, Internet
from tests.rig.servers import MailServer

BOB, BOB_PASSWORD = "bob@b.test", "bob-secret"
GREETING_DELAY = 2
GREYLIST_DELAY = 3

_EXTRA = f"""
[dnsbl.lists."bl.rig.test"]
codes = ["127.0.0.2"]

[dnsbl.lists."dbl.rig.test"]
kind = "domain"

[greylisting]
enabled = true
delay = {GREYLIST_DELAY}

[postscreen]
greeting_delay = {GREETING_DELAY}
"""


def _reversed(ipv4: str) -> str:
    return ".".join(reversed(ipv4.split(".")))


class World:
    def __init__(self, internet: Internet) -> None:
        self.internet = internet
        b = self.b = internet.add_host("b", "mx.b.test")
        self.c = internet.add_host("c", "listed.rig.test")
        self.d = internet.add_host("d", "mail.d.test")
        self.e = internet.add_host("e", "talker.rig.test")
        self.client = internet.add_host("client", "client.rig.test")
        internet.dns.serve(
            {
                "b.test": mail_domain("b.test", b),
                "bl.rig.test": [(f"{_reversed(self.c.ipv4)}.bl.rig.test", "A", "127.0.0.2")],
                "dbl.rig.test": [("listed-url.test.dbl.rig.test", "A", "127.0.1.2")],
            }
        )
        self.server_b = MailServer(b, "b.test", extra=_EXTRA)
        self.server_b.add_user(BOB, BOB_PASSWORD)
        self.server_b.start()

    def bobs_messages(self) -> list[bytes]:
        return imap_messages(self.client, self.b.ipv4, BOB, BOB_PASSWORD)


@pytest.fixture(scope="module")
def world(module_internet: Internet) -> Iterator[World]:
    yield World(module_internet)


#: One transaction with smtplib; every reply code on the way, and the time the greeting took.
#: The greeting is timed with C{time.time()}, the clock the server's reactor holds the 220 by
#: (C{reactor.seconds()}), not C{time.monotonic()}: CI once measured a 2 s delay as 1.9988 s
#: on the monotonic clock, which is adjusted apart from the wall clock. Timed on the server's
#: own clock, from before the connection exists, the wait can only be longer than the delay.
_SEND = r"""
import json, smtplib, sys, time
a = json.loads(sys.argv[1])
started = time.time()
client = smtplib.SMTP(a["address"], 25, local_hostname=a["helo"], timeout=30)
greeted = time.time() - started
codes = [client.ehlo()[0]]
code, reply = client.mail(a["sender"])
codes.append(code)
if code == 250:
    code, reply = client.rcpt(a["recipient"])
    codes.append(code)
if code == 250:
    code, reply = client.data(a["message"].encode())
    codes.append(code)
client.quit()
print(json.dumps({"codes": codes, "reply": reply.decode(), "greeted": greeted}))
"""


def _send(world: World, host: Host, sender: str, text: str = "Hello.") -> dict[str, Any]:
    message = f"From: {sender}\r\nTo: {BOB}\r\nSubject: hello from {sender}\r\n\r\n{text}\r\n"
    result: dict[str, Any] = host.python(
        _SEND, {"address": world.b.ipv4, "helo": host.hostname, "sender": sender, "recipient": BOB, "message": message}
    )
    return result


def test_a_client_on_a_listed_address_is_refused_before_data(world: World) -> None:
    result = _send(world, world.c, "spammer@listed.rig.test")
    # Its address was looked up during the greeting delay: refused at MAIL FROM already.
    assert result["codes"] == [250, 554], result
    assert result["reply"] == f"5.7.1 Service unavailable; client [{world.c.ipv4}] blocked using bl.rig.test", result
    assert f"client {world.c.ipv4} refused at mail: listed by bl.rig.test" in world.server_b.log()


def test_greylisting_gives_451_and_accepts_the_retry_after_the_delay(world: World) -> None:
    before = len(world.bobs_messages())
    first = _send(world, world.d, "alice@d.test")
    assert first["codes"] == [250, 250, 451], first
    assert float(first["greeted"]) >= GREETING_DELAY, first
    assert first["reply"] == "4.7.1 Greylisted: please try again later"
    # The first session passed the greeting delay: D is greeted at once now.
    time.sleep(GREYLIST_DELAY + 0.5)
    retry = _send(world, world.d, "alice@d.test")
    assert retry["codes"] == [250, 250, 250, 250], retry
    assert float(retry["greeted"]) < GREETING_DELAY, retry
    wait_for(lambda: len(world.bobs_messages()) == before + 1, "the retried message in Bob's INBOX", 30, world.internet.log_report)


_TALK_EARLY = r"""
import json, socket, sys
a = json.loads(sys.argv[1])
s = socket.create_connection((a["address"], 25), timeout=30)
s.sendall(b"EHLO talker.rig.test\r\n")
received = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    received += chunk
print(json.dumps(received.decode()))
"""


def test_an_early_talker_is_refused_and_disconnected(world: World) -> None:
    started = time.monotonic()
    received = world.e.python(_TALK_EARLY, {"address": world.b.ipv4})
    assert received == "554 5.5.1 Protocol error: talked before the greeting\r\n"
    assert time.monotonic() - started < 15
    # A worker's log line reaches the log through the parent, a moment after the reply.
    wait_for(lambda: "talked" in world.server_b.log(), "the early talker's log line", 5, world.server_b.log)


def test_a_message_linking_a_listed_domain_is_refused_at_the_end_of_data(world: World) -> None:
    text = "Cheap offer: https://www.offer.listed-url.test/buy?now=1"
    result = _send(world, world.d, "alice@d.test", text)
    if result["codes"] == [250, 250, 451]:  # run alone: D's network is greylisted first
        time.sleep(GREYLIST_DELAY + 0.5)
        result = _send(world, world.d, "alice@d.test", text)
    assert result["codes"] == [250, 250, 250, 554], result
    assert result["reply"] == "5.7.1 Service unavailable; URL domain listed-url.test blocked using dbl.rig.test", result
    assert "refused at end of data: URL domain listed-url.test listed by dbl.rig.test" in world.server_b.log()
