"""
``mailapp dns --check``'s MTA-STS policy check (mailapp.cli.mtastscheck) on
a fake fetch: a policy that parses and lists every MX host is ok; a 404 or
no policy host is missing; another status, a policy that does not parse or
leaves an MX host out is wrong; what the fetch could not tell is passed on.
"""

from __future__ import annotations

import pytest

from mailapp.cli.mtastscheck import FetchFailed, check_policy, policy_record
from mailapp.dnscheck import MISSING, OK, UNKNOWN, WRONG

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.check.test\r\nmx: *.backup.check.test\r\nmax_age: 604800\r\n"
RECORD = policy_record("check.test", POLICY)


def _fetch(status: int, body: str | bytes = POLICY) -> object:
    def fetch(host: str, path: str) -> tuple[int, bytes]:
        assert (host, path) == ("mta-sts.check.test", "/.well-known/mta-sts.txt")
        return status, body.encode() if isinstance(body, str) else body

    return fetch


def test_the_policy_record_is_its_url_and_the_text_to_serve() -> None:
    assert (RECORD.name, RECORD.type) == ("https://mta-sts.check.test/.well-known/mta-sts.txt", "URL")
    assert RECORD.value.startswith("version: STSv1; mode: enforce; mx: mail.check.test")


def test_a_policy_listing_every_mx_host_is_ok() -> None:
    finding = check_policy(RECORD, "check.test", ["mail.check.test", "two.backup.check.test"], _fetch(200))  # type: ignore[arg-type]
    assert finding.status == OK
    assert finding.found[:2] == ("version: STSv1", "mode: enforce")


def test_a_policy_leaving_out_an_mx_host_is_wrong() -> None:
    finding = check_policy(RECORD, "check.test", ["mail.check.test", "mx2.check.test"], _fetch(200))  # type: ignore[arg-type]
    assert (finding.status, finding.detail) == (WRONG, "it does not list the MX host mx2.check.test: senders would refuse it")


@pytest.mark.parametrize(
    "status, body, verdict, detail",
    [
        (404, "", MISSING, "mta-sts.check.test answered HTTP 404"),
        (301, "", WRONG, "mta-sts.check.test answered HTTP 301, not 200"),
        (200, "version: STSv1\nmode: strict\nmx: mail.check.test\nmax_age: 1\n", WRONG, "the policy does not parse: "),
        (200, b"\xff\xfe", WRONG, "the policy is not UTF-8"),
        (200, "x" * (65 * 1024), WRONG, "the policy is larger than 65536 bytes"),
    ],
)
def test_a_policy_that_is_not_there_or_not_right_is_said_so(status: int, body: str | bytes, verdict: str, detail: str) -> None:
    finding = check_policy(RECORD, "check.test", ["mail.check.test"], _fetch(status, body))  # type: ignore[arg-type]
    assert finding.status == verdict and finding.detail.startswith(detail), finding


@pytest.mark.parametrize("verdict", [MISSING, WRONG, UNKNOWN])
def test_what_the_fetch_could_not_tell_is_its_verdict(verdict: str) -> None:
    def fetch(host: str, path: str) -> tuple[int, bytes]:
        raise FetchFailed(verdict, "the certificate of mta-sts.check.test does not verify")

    finding = check_policy(RECORD, "check.test", ["mail.check.test"], fetch)
    assert (finding.status, finding.detail) == (verdict, "the certificate of mta-sts.check.test does not verify")
