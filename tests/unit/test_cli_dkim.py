"""
``mailapp dkim`` (keygen, list, rotate, del) and ``mailapp dns``'s
printed records: permissions of the key store, what becomes the signing
selector, and the zone-file lines an admin pastes.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from mailapp import cli
from mailapp.dkim.keys import ED25519, RSA, KeyStore

CONFIG = (
    "[server]\n"
    'hostname = "mail.example.test"\n'
    "state_dir = {state}\n"
    "[domains]\n"
    'local = ["example.test"]\n'
    "[listeners.smtp]\n"
    'protocol = "smtp"\nendpoint = "tcp:25"\ntls = "none"\n'
    "[listeners.submission]\n"
    'protocol = "submission"\nendpoint = "tcp:587"\ntls = "starttls"\n'
    "[listeners.imaps]\n"
    'protocol = "imap"\nendpoint = "tcp:993"\ntls = "implicit"\n'
    "[tls]\ngenerate_self_signed = true\n"
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mailapp.toml"
    path.write_text(CONFIG.format(state=json.dumps(str(tmp_path / "var"))))
    return path


def run(config: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["--config", str(config), *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_keygen_makes_both_keys_private_and_prints_their_records(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(config, capsys, "dkim", "keygen", "example.test", "--selector", "one")
    assert status == 0
    root = config.parent / "var" / "dkim"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "example.test").stat().st_mode) == 0o700
    for name in ("one.rsa.pem", "one.ed25519", "../keys.json"):
        assert stat.S_IMODE((root / "example.test" / name).stat().st_mode) == 0o600
    assert 'one-rsa._domainkey.example.test.\tIN\tTXT\t"v=DKIM1; k=rsa; h=sha256; p=' in out
    assert 'one-ed25519._domainkey.example.test.\tIN\tTXT\t"v=DKIM1; k=ed25519; p=' in out
    keys = KeyStore(config.parent / "var").signing_keys("example.test")
    assert keys is not None and keys.selector == "one"
    assert [key.algorithm for key in keys.keys] == [RSA, ED25519]


def test_an_rsa_record_is_split_into_strings_of_at_most_255_bytes(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(config, capsys, "dkim", "keygen", "example.test", "--selector", "one")
    status, out, _ = run(config, capsys, "dkim", "list")
    assert status == 0
    line = next(line for line in out.splitlines() if "one-rsa._domainkey" in line)
    strings = line.split("\t")[-1].split('" "')
    assert len(strings) == 2 and all(len(text.strip('"')) <= 255 for text in strings)


def test_a_second_keygen_is_staged_and_rotate_activates_it(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(config, capsys, "dkim", "keygen", "example.test", "--selector", "one")
    status, out, _ = run(config, capsys, "dkim", "keygen", "example.test", "--selector", "two")
    assert status == 0 and "still signs with its current selector" in out
    store = KeyStore(config.parent / "var")
    assert store.signing_keys("example.test").selector == "one"  # type: ignore[union-attr]
    status, out, _ = run(config, capsys, "dkim", "rotate", "example.test", "--selector", "two")
    assert status == 0
    assert "now signs with selector two" in out
    assert "previous selector one no longer signs, but keep its records" in out
    assert store.signing_keys("example.test").selector == "two"  # type: ignore[union-attr]
    status, out, _ = run(config, capsys, "--json", "dkim", "list", "example.test")
    listed = json.loads(out)
    assert [(k["selector"], k["active"]) for k in listed] == [
        ("one-rsa", False),
        ("one-ed25519", False),
        ("two-rsa", True),
        ("two-ed25519", True),
    ]


def test_rotate_without_a_selector_makes_a_new_one(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(config, capsys, "dkim", "keygen", "example.test", "--selector", "one")
    status, out, _ = run(config, capsys, "--json", "dkim", "rotate", "example.test")
    result = json.loads(out)
    assert status == 0 and result["previous"] == "one" and result["selector"].startswith("s")
    assert len(KeyStore(config.parent / "var").keys("example.test")) == 4


def test_rotate_of_a_domain_without_keys_is_refused(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(config, capsys, "dkim", "rotate", "example.test")
    assert status == 1
    assert "example.test has no DKIM keys: run 'mailapp dkim keygen example.test' first" in err


def test_the_signing_selector_cannot_be_deleted_an_old_one_can(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(config, capsys, "dkim", "keygen", "example.test", "--selector", "one")
    run(config, capsys, "dkim", "rotate", "example.test", "--selector", "two")
    status, _, err = run(config, capsys, "dkim", "del", "example.test", "two")
    assert status == 1 and "signing selector" in err
    status, _, _ = run(config, capsys, "dkim", "del", "example.test", "one")
    assert status == 0
    assert not (config.parent / "var" / "dkim" / "example.test" / "one.rsa.pem").exists()


def test_keygen_refuses_a_bad_domain_and_a_bad_selector(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, capsys, "dkim", "keygen", "not a domain")[0] == 1
    status, _, err = run(config, capsys, "dkim", "keygen", "example.test", "--selector", "a_b")
    assert status == 1 and "not a selector" in err


def test_dns_prints_every_record_of_the_domain(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(config, capsys, "dkim", "keygen", "example.test", "--selector", "one")
    status, out, _ = run(config, capsys, "dns", "example.test")
    assert status == 0
    lines = [line for line in out.splitlines() if not line.startswith(";")]
    assert lines[0] == "example.test.\tIN\tMX\t10 mail.example.test."
    assert lines[1] == 'example.test.\tIN\tTXT\t"v=spf1 mx -all"'
    assert lines[2].startswith('one-rsa._domainkey.example.test.\tIN\tTXT\t"v=DKIM1; k=rsa; h=sha256; p=')
    assert lines[3].startswith('one-ed25519._domainkey.example.test.\tIN\tTXT\t"v=DKIM1; k=ed25519; p=')
    assert lines[4] == '_dmarc.example.test.\tIN\tTXT\t"v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@example.test"'
    assert lines[5].startswith('_mta-sts.example.test.\tIN\tTXT\t"v=STSv1; id=')
    assert lines[6] == '_smtp._tls.example.test.\tIN\tTXT\t"v=TLSRPTv1; rua=mailto:postmaster@example.test"'
    assert lines[7:] == [
        "_submission._tcp.example.test.\tIN\tSRV\t0 1 587 mail.example.test.",
        "_imaps._tcp.example.test.\tIN\tSRV\t0 1 993 mail.example.test.",
        "_pop3s._tcp.example.test.\tIN\tSRV\t0 0 0 .",
    ]
    assert "; MTA-STS policy: serve this text as https://mta-sts.example.test/.well-known/mta-sts.txt" in out
    assert ";   mode: testing" in out and ";   mx: mail.example.test" in out


def test_dns_takes_the_policy_choices_and_more_spf_terms(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        config, capsys, "--json", "dns", "example.test", "--dmarc-policy", "reject", "--spf", "ip4:192.0.2.0/24",
        "--report-address", "reports@example.test", "--mta-sts-mode", "enforce",
    )
    assert status == 0
    result = json.loads(out)
    values = {record["kind"]: record["value"] for record in result["records"]}
    assert values["spf"] == "v=spf1 mx ip4:192.0.2.0/24 -all"
    assert values["dmarc"] == "v=DMARC1; p=reject; adkim=r; aspf=r; rua=mailto:reports@example.test"
    assert "mode: enforce" in result["mta_sts_policy"]
    assert "dkim" not in values


def test_dns_refuses_a_bad_policy_choice(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(config, capsys, "dns", "example.test", "--dmarc-policy", "drop")
    assert status == 2 and "invalid choice" in err


def test_dns_names_the_mx_hosts_addresses_when_the_mx_listens_on_its_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "public.toml"
    config.write_text(
        CONFIG.format(state=json.dumps(str(tmp_path / "var"))).replace(
            'endpoint = "tcp:25"', "endpoint = 'tcp:25:interface=198.51.100.7'"
        )
        + "[listeners.smtp6]\nprotocol = \"smtp\"\nendpoint = 'tcp:25:interface=2001\\:db8\\:\\:7'\ntls = \"none\"\n"
        + "[listeners.local]\nprotocol = \"smtp\"\nendpoint = 'tcp:2525:interface=127.0.0.1'\ntls = \"none\"\n"
    )
    status, out, _ = run(config, capsys, "dns", "example.test")
    assert status == 0
    lines = [line for line in out.splitlines() if not line.startswith(";")]
    assert lines[:3] == [
        "example.test.\tIN\tMX\t10 mail.example.test.",
        "mail.example.test.\tIN\tA\t198.51.100.7",
        "mail.example.test.\tIN\tAAAA\t2001:db8::7",
    ]
