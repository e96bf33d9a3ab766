"""
SRS (mailapp.srs): the address forms of Shevek's scheme as libsrs2 writes
them, round trips, the case-insensitive checks, expiry, tampering, and the
secret file.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from mailapp.srs import SRS, InvalidSRS, is_srs, load_secret

DAY = 86400
NOW = 20000 * DAY + 3600  # day 20000 since 1970: 20000 % 1024 = 544 = 17 * 32 + 0 -> "RA"
srs = SRS(b"our secret")


def test_a_forwarded_sender_becomes_srs0_with_hash_day_domain_and_local_part() -> None:
    rewritten = srs.forward("alice@c.test", "a.test", NOW)
    assert re.fullmatch(r"SRS0=[A-Za-z0-9+/]{4}=RA=c\.test=alice@a\.test", rewritten), rewritten


def test_a_bounce_to_our_srs0_address_goes_to_the_original_sender() -> None:
    assert srs.reverse(srs.forward("Alice.Smith+tag@c.test", "a.test", NOW), NOW + 20 * DAY) == "Alice.Smith+tag@c.test"


def test_the_checks_are_case_insensitive_as_the_scheme_says() -> None:
    rewritten = srs.forward("alice@c.test", "a.test", NOW)
    assert srs.reverse(rewritten.lower(), NOW) == "alice@c.test"
    assert srs.reverse(rewritten.upper(), NOW) == "ALICE@C.TEST"


def test_an_address_older_than_21_days_is_refused() -> None:
    rewritten = srs.forward("alice@c.test", "a.test", NOW)
    assert srs.reverse(rewritten, NOW + 21 * DAY) == "alice@c.test"
    with pytest.raises(InvalidSRS, match="expired"):
        srs.reverse(rewritten, NOW + 22 * DAY)


def test_a_day_in_the_future_is_refused() -> None:
    with pytest.raises(InvalidSRS, match="expired"):
        srs.reverse(srs.forward("alice@c.test", "a.test", NOW + 2 * DAY), NOW)


def test_a_tampered_or_foreign_address_is_refused() -> None:
    rewritten = srs.forward("alice@c.test", "a.test", NOW)
    with pytest.raises(InvalidSRS, match="bad hash"):
        srs.reverse(rewritten.replace("=alice@", "=mallory@"), NOW)
    with pytest.raises(InvalidSRS, match="bad hash"):
        SRS(b"another secret").reverse(rewritten, NOW)
    for malformed in ("SRS0=abcd=RA=c.test@a.test", "SRS0==RA=c.test=alice@a.test", "SRS1=abcd=x.test@a.test", "alice@a.test"):
        with pytest.raises(InvalidSRS):
            srs.reverse(malformed, NOW)


def test_the_null_sender_and_our_own_domain_are_not_rewritten() -> None:
    assert srs.forward("", "a.test", NOW) == ""
    assert srs.forward("bob@A.test", "a.test", NOW) == "bob@A.test"


def test_re_forwarding_an_srs0_address_makes_srs1_naming_the_first_forwarder() -> None:
    first = SRS(b"first forwarder's secret").forward("alice@c.test", "first.test", NOW)
    srs0_part = first.split("@")[0][len("SRS0=") :]
    second = srs.forward(first, "a.test", NOW)
    assert re.fullmatch(r"SRS1=[A-Za-z0-9+/]{4}=first\.test==" + re.escape(srs0_part) + r"@a\.test", second), second
    assert srs.reverse(second, NOW + 400 * DAY) == first  # SRS1 carries no day of its own


def test_re_forwarding_an_srs1_address_keeps_it_flat() -> None:
    first = SRS(b"first").forward("alice@c.test", "first.test", NOW)
    second = SRS(b"second").forward(first, "second.test", NOW)
    third = srs.forward(second, "a.test", NOW)
    assert third.count("SRS") == 1
    assert third.endswith("=first.test==" + first.split("@")[0][len("SRS0=") :] + "@a.test")
    assert srs.reverse(third, NOW) == first


def test_other_implementations_separators_are_understood() -> None:
    rewritten = srs.forward("alice@c.test", "a.test", NOW)
    assert srs.reverse("SRS0+" + rewritten[5:], NOW) == "alice@c.test"
    assert is_srs("srs0-x") and is_srs("SRS1=x") and not is_srs("srs0") and not is_srs("srs2=x")


def test_the_secret_is_made_once_with_mode_0600_and_kept(tmp_path: Path) -> None:
    secret = load_secret(tmp_path)
    assert len(secret) == 64
    assert stat.S_IMODE((tmp_path / "srs-secret").stat().st_mode) == 0o600
    assert load_secret(tmp_path) == secret
    assert [p.name for p in tmp_path.iterdir()] == ["srs-secret"]
