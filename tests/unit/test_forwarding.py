"""
Forwarding through the Router: forwarded copies leave from an SRS address
of the alias's domain, bounces to our SRS addresses go back to the
original sender (and invalid ones get 550 5.1.1), and each alias forwards
at a bounded rate. The relay runs on the fake clock and network of
L{tests.relay_helpers}.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.python.failure import Failure

from mailapp.errors import ForwardingRateExceeded, NoSuchUser
from mailapp.forwarding import Forwarding, ForwardingRate
from mailapp.relay.client import Reply
from mailapp.srs import SRS
from tests.relay_helpers import B_HOP, C_HOP, OK, Harness

DAY = 86400
REFUSED = Reply(550, ("5.1.1 no such user",))


def harness(tmp_path: Path, burst: int = 30, per_hour: int = 300) -> Harness:
    h = Harness(tmp_path)
    h.router.forwarding = Forwarding(SRS(b"secret"), h.clock, ForwardingRate(h.clock, burst=burst, per_hour=per_hour))
    h.accounts.add_alias("fwd@a.test", ["bob@b.test"])
    h.accounts.add_alias("other@a.test", ["bob@b.test"])
    h.network.servers[B_HOP] = lambda r: OK
    h.network.servers[C_HOP] = lambda r: OK
    h.start()
    return h


def rcpt(h: Harness, address: str, sender: str = "") -> object:
    d = h.router.start(sender, relay_allowed=False).addRecipient(address)
    outcome: list[object] = []
    d.addBoth(outcome.append)
    assert outcome, "addRecipient did not fire"
    return outcome[0].value if isinstance(outcome[0], Failure) else outcome[0]


def test_mail_an_alias_forwards_to_another_domain_leaves_from_an_srs0_address_of_the_alias_domain(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.submit("carol@c.test", ["fwd@a.test"])
    [(_, address, sender, recipients, _, _)] = h.network.sent
    assert (address, recipients) == (B_HOP, ["bob@b.test"])
    assert re.fullmatch(r"SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=c\.test=carol@a\.test", sender), sender


def test_remote_recipients_the_client_named_keep_its_sender_beside_forwarded_ones(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.submit("alice@a.test", ["carol@c.test", "fwd@a.test"])
    senders = {tuple(recipients): sender for _, _, sender, recipients, _, _ in h.network.sent}
    assert senders == {("carol@c.test",): "alice@a.test", ("bob@b.test",): "alice@a.test"}  # our own domain: no rewrite
    h.submit("dave@d.test", ["fwd@a.test"])
    assert h.network.sent[-1][2].startswith("SRS0=")


def test_a_bounce_for_forwarded_mail_reaches_the_original_sender_once_through_the_srs_address(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.network.servers[B_HOP] = lambda r: REFUSED
    h.submit("carol@c.test", ["fwd@a.test"])
    dsns = [s for s in h.network.sent if s[1] == C_HOP]
    assert [(sender, recipients) for _, _, sender, recipients, _, _ in dsns] == [("", ["carol@c.test"])]
    assert b"multipart/report" in dsns[0][4]
    assert h.envelopes() == []


def test_rcpt_to_an_srs_address_of_ours_goes_to_the_original_sender(tmp_path: Path) -> None:
    h = harness(tmp_path)
    address = h.router.forwarding.sender_for("carol@c.test", "fwd@a.test")
    transaction = h.router.start("", relay_allowed=False)
    transaction.addRecipient(address.lower())
    assert transaction.remote == ["carol@c.test"]


def test_rcpt_to_an_invalid_or_expired_srs_address_gets_550_5_1_1(tmp_path: Path) -> None:
    h = harness(tmp_path)
    address = h.router.forwarding.sender_for("carol@c.test", "fwd@a.test")
    forged = SRS(b"not our secret").forward("carol@c.test", "a.test", h.clock.seconds())
    tampered = address.replace("=carol@", "=mallory@")
    for refused in (forged, tampered, "SRS0=xxxx=AA=c.test@a.test"):
        error = rcpt(h, refused)
        assert isinstance(error, NoSuchUser), refused
        assert error.reply() == b"550 5.1.1 No such user here"
    h.clock.advance(22 * DAY)
    assert isinstance(rcpt(h, address), NoSuchUser)


def test_an_alias_forwarding_past_its_rate_gets_451_4_7_1_and_other_aliases_are_not_slowed(tmp_path: Path) -> None:
    h = harness(tmp_path, burst=3, per_hour=60)
    assert [rcpt(h, "fwd@a.test") for _ in range(3)] == [None, None, None]
    error = rcpt(h, "fwd@a.test")
    assert isinstance(error, ForwardingRateExceeded)
    assert error.reply() == b"451 4.7.1 Too much mail forwarded through this address; try again later"
    assert rcpt(h, "other@a.test") is None
    assert rcpt(h, "alice@a.test") is None  # local delivery is not forwarding
    h.clock.advance(60)  # one a minute
    assert rcpt(h, "fwd@a.test") is None
    assert isinstance(rcpt(h, "fwd@a.test"), ForwardingRateExceeded)


def test_a_loop_through_one_alias_is_held_to_its_rate(tmp_path: Path) -> None:
    burst = 5
    h = harness(tmp_path, burst=burst, per_hour=60)
    accepted = 0
    for _ in range(50):  # fifty hops arriving as fast as they can
        accepted += rcpt(h, "fwd@a.test") is None
    assert accepted == burst


def test_forwards_through_an_alias_in_another_worker_count_against_its_rate() -> None:
    """With two workers each held an alias to its own burst: twice the rate, a loop twice as fast."""
    from twisted.internet.task import Clock

    from mailapp.abuse import AbuseGuard

    clock = Clock()
    rates = [ForwardingRate(clock, burst=3, per_hour=60) for _ in range(2)]
    guards = [AbuseGuard(clock.seconds), AbuseGuard(clock.seconds)]
    for guard, rate in zip(guards, rates):
        guard.shareForwardingRate(rate)
    for here, there in ((0, 1), (1, 0)):
        guards[here].share = lambda fact, fields, there=there: guards[there].learn(fact, fields)
    assert rates[0].admit("fwd@a.test") and rates[0].admit("fwd@a.test")
    assert rates[1].admit("fwd@a.test")
    assert not rates[1].admit("fwd@a.test") and not rates[0].admit("fwd@a.test"), "three in all"
    assert rates[1].admit("other@a.test"), "another alias is not slowed"
    clock.advance(60)  # one token back, in both
    assert rates[0].admit("fwd@a.test")
    assert not rates[1].admit("fwd@a.test")
